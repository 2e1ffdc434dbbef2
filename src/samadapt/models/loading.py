"""Resolve a model name or path to a loaded model, downloading or converting on the way.

Three kinds of reference are accepted: a registry name (``sam-vit-base``), a folder in the
transformers layout (``config.json`` + weights), and an official Meta ``.pth`` file, which
is converted to the transformers layout once and the conversion cached.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from samadapt._home import models_dir
from samadapt.errors import CheckpointError, ModelNotFoundError
from samadapt.imagery.preprocess import Preprocessing
from samadapt.models.registry import MODEL_TYPES, REGISTRY, Family, get_spec, preprocessing_for
from samadapt.models.tiny import MARKER

if TYPE_CHECKING:
    from samadapt.models.speed import RuntimeOptions

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


@dataclass
class LoadedModel:
    """A model ready for inference, with the facts the rest of samadapt needs.

    Attributes:
        name: registry name, or the path it was loaded from.
        family: "sam", "sam2" or "sam-hq".
        model: the transformers model, in eval mode, on ``device``.
        preprocessing: the input preprocessing the model expects.
        weights_sha256: digest of the weights file; part of every embedding-cache key.
        trusted: False for random-initialised models (their masks mean nothing).
        device: torch device the model lives on.
        runtime: how the encoder runs (``samadapt.models.speed.EncoderRuntime``); None for
            transformers' plain call. Set by ``samadapt.models.speed.apply_runtime``.
    """

    name: str
    family: Family
    model: torch.nn.Module
    preprocessing: Preprocessing
    weights_sha256: str
    trusted: bool
    device: torch.device
    runtime: Any = None

    @property
    def model_id(self) -> str:
        """Identity of the weights for cache keys: family and weights digest, plus the encoder
        runtime's precision when its embeddings differ from fp32 (e.g. ``:bf16``)."""
        tag = getattr(self.runtime, "cache_tag", "")
        return f"{self.family}:{self.weights_sha256}" + (f":{tag}" if tag else "")


def file_sha256(path: Path) -> str:
    """sha256 of a file, remembered in a ``<file>.sha256`` sidecar keyed by size and mtime."""
    path = Path(path)
    st = path.stat()
    stamp = f"{st.st_size}:{st.st_mtime_ns}"
    sidecar = path.with_name(path.name + ".sha256")
    try:
        saved_stamp, digest = sidecar.read_text().split()
        if saved_stamp == stamp and len(digest) == 64:
            return digest
    except (OSError, ValueError):
        pass
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    digest = h.hexdigest()
    try:
        tmp = sidecar.with_name(sidecar.name + f".{os.getpid()}.tmp")
        tmp.write_text(f"{stamp} {digest}\n")
        os.replace(tmp, sidecar)
    except OSError:
        pass  # a read-only model folder still loads; the hash is recomputed next time
    return digest


def _weights_file(folder: Path) -> Path:
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    raise ModelNotFoundError(
        f"{folder} has a config.json but no weights file ({' or '.join(WEIGHT_FILES)}); copy the weights there"
    )


def family_of_folder(folder: Path) -> Family:
    """Read the model family from a transformers folder's ``config.json``.

    Raises:
        CheckpointError: if the config is unreadable or of a model that is not SAM-family.
    """
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(f"cannot read {folder / 'config.json'}: {err}") from None
    model_type = config.get("model_type")
    if model_type not in MODEL_TYPES:
        raise CheckpointError(
            f"{folder} holds a {model_type!r} model, not a SAM-family checkpoint (sam, sam2 or sam_hq)"
        )
    return MODEL_TYPES[model_type]


def _load_folder(folder: Path, name: str, device: torch.device, expected: Family | None) -> LoadedModel:
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    family = family_of_folder(folder)
    if expected is not None and family != expected:
        raise CheckpointError(f"{name} is a {family} checkpoint, but a {expected} checkpoint was expected")
    weights = _weights_file(folder)
    hf_logging.disable_progress_bar()
    try:
        model = AutoModel.from_pretrained(folder, use_safetensors=weights.suffix == ".safetensors")
    except (OSError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"cannot load the checkpoint in {folder}: {err}") from None
    model.eval().to(device)
    if family == "sam-hq":
        from samadapt.models.hq_fix import fix_sam_hq_decoder, needs_hq_decoder_fix

        if needs_hq_decoder_fix():
            fix_sam_hq_decoder(model)
    marker = folder / MARKER
    trusted = True
    if marker.is_file():
        trusted = not json.loads(marker.read_text()).get("random_init", False)
    # The prompt encoder's input size is the model input size in every family.
    size = model.config.prompt_encoder_config.image_size
    size = size[0] if isinstance(size, (list, tuple)) else size
    return LoadedModel(
        name=name,
        family=family,
        model=model,
        preprocessing=preprocessing_for(family, int(size)),
        weights_sha256=file_sha256(weights),
        trusted=trusted,
        device=device,
    )


def cached_model_dir(name: str) -> Path:
    """Where a registry model lives once downloaded."""
    return models_dir() / name


def is_cached(name: str) -> bool:
    """True when a registry model is downloaded completely."""
    folder = cached_model_dir(name)
    return (folder / ".complete").is_file() and (folder / "config.json").is_file()


def fetch(name: str, *, progress: bool = True) -> Path:
    """Download a registry model into the cache (resumable, checksummed) and return its folder.

    Raises:
        ModelNotFoundError: unknown name.
        DownloadError: no network or a bad download; the message says where to put the files.
    """
    from samadapt.models.download import download_hf_model

    spec = get_spec(name)
    return download_hf_model(
        spec.repo_id, cached_model_dir(name), files=spec.files, sha256=spec.sha256 or None, progress=progress
    )


def _convert_meta(path: Path) -> Path:
    from samadapt.models.convert import convert_meta_checkpoint

    digest = file_sha256(path)
    out = models_dir() / "converted" / f"{path.stem}-{digest[:12]}"
    if not (out / "config.json").is_file():
        convert_meta_checkpoint(path, out)
    return out


def load_model(
    ref: str | os.PathLike[str],
    *,
    device: str | torch.device = "cpu",
    download: bool = True,
    expected_family: Family | None = None,
    progress: bool = True,
    runtime: RuntimeOptions | str | None = "auto",
) -> LoadedModel:
    """Load a SAM-family model from a registry name, a transformers folder or a Meta ``.pth``.

    Args:
        ref: registry name (see ``samadapt models list``), folder, or ``.pth`` / ``.pt`` file.
        device: torch device, e.g. "cpu" or "cuda:0".
        download: fetch a registry model that is not cached; when False a missing model is an error.
        expected_family: fail with a clear error if the checkpoint is of another family.
        progress: show a progress bar while downloading.
        runtime: how the image encoder runs (see :mod:`samadapt.models.speed`): "auto" picks
            the fastest faithful path for this CPU (bf16 and fused attention where they pay),
            a spec such as "fp32" or "bf16,fused", or None for transformers' plain call.

    Raises:
        ModelNotFoundError: nothing found under that name or path.
        CheckpointError: the checkpoint is of the wrong family or does not load.
        DownloadError: a needed download failed.
    """
    loaded = _load(ref, torch.device(device), download, expected_family, progress)
    if runtime is not None:
        from samadapt.models.speed import apply_runtime

        apply_runtime(loaded, runtime)
    return loaded


def _load(ref: str | os.PathLike[str], device: torch.device, download: bool, expected_family: Family | None,
          progress: bool) -> LoadedModel:
    text = os.fspath(ref)
    path = Path(text).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(f"{path} is a folder but has no config.json of a transformers checkpoint")
        return _load_folder(path, text, device, expected_family)
    if path.is_file():
        if path.suffix not in (".pth", ".pt"):
            raise CheckpointError(f"{path} is not a checkpoint samadapt reads; give a .pth file or a model folder")
        return _load_folder(_convert_meta(path), text, device, expected_family)
    if text in REGISTRY:
        if is_cached(text):
            folder = cached_model_dir(text)
        elif download:
            folder = fetch(text, progress=progress)
        else:
            raise ModelNotFoundError(
                f"model {text} is not downloaded; run `samadapt models fetch {text}` with network access, "
                f"or put its config.json and model.safetensors in {cached_model_dir(text)}"
            )
        return _load_folder(folder, text, device, expected_family)
    if any(sep in text for sep in ("/", "\\")) or path.suffix:
        raise ModelNotFoundError(f"model path {text} does not exist")
    return _load_folder(_missing(text), text, device, expected_family)


def _missing(text: str) -> Path:
    get_spec(text)  # raises ModelNotFoundError listing the known names
    raise ModelNotFoundError(f"unknown model {text!r}")
