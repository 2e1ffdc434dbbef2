"""Resolve a model name or path to a loaded model, downloading or converting on the way.

Three kinds of reference are accepted: a registry name (``sam-vit-base``), a folder in the
transformers layout (``config.json`` + weights), and an official Meta ``.pth`` file, which
is converted to the transformers layout once and the conversion cached.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch

from samadapt._home import models_dir
from samadapt.errors import CheckpointError, InputError, ModelNotFoundError
from samadapt.imagery.preprocess import Preprocessing
from samadapt.models.digest import file_sha256, published_sha256
from samadapt.models.registry import (
    MODEL_TYPES,
    REGISTRY,
    Family,
    get_spec,
    input_size_of_config,
    preprocessing_for,
)
from samadapt.models.strict import quiet_from_pretrained, report_loading
from samadapt.models.tiny import MARKER

if TYPE_CHECKING:
    from transformers import Sam2Model, SamHQModel, SamModel

    from samadapt.models.accel.speed import EncoderRuntime, RuntimeOptions

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")

#: Top-level modules of ``Sam2VideoModel`` that the image model ``Sam2Model`` does not have.
VIDEO_ONLY_PREFIXES = (
    "memory_attention.", "memory_encoder.", "mask_downsample.", "memory_temporal_positional_encoding",
    "no_memory_positional_encoding", "no_object_pointer", "object_pointer_proj.",
    "occlusion_spatial_embedding_parameter", "temporal_positional_encoding_projection_layer.",
)


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
        runtime: how the encoder runs (``samadapt.models.accel.speed.EncoderRuntime``); None for
            transformers' plain call. Set by ``samadapt.models.accel.speed.apply_runtime``.
        folder: the transformers folder the weights were read from (SAM 3 reads its tokenizer there).
    """

    name: str
    family: Family
    model: torch.nn.Module
    preprocessing: Preprocessing
    weights_sha256: str
    trusted: bool
    device: torch.device
    runtime: EncoderRuntime | None = None
    folder: Path | None = None

    @property
    def model_id(self) -> str:
        """Identity of the weights for cache keys: family and weights digest, plus the encoder
        runtime's precision when its embeddings differ from fp32 (e.g. ``:bf16``)."""
        tag = getattr(self.runtime, "cache_tag", "")
        return f"{self.family}:{self.weights_sha256}" + (f":{tag}" if tag else "")


def weights_file(folder: Path) -> Path:
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    raise ModelNotFoundError(
        f"{folder} has a config.json but no weights file ({' or '.join(WEIGHT_FILES)}); copy the weights there"
    )


def read_config(folder: Path) -> dict[str, Any]:
    """The parsed ``config.json`` of a transformers folder.

    Raises:
        CheckpointError: if the file is unreadable or not a JSON object.
    """
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(f"cannot read {folder / 'config.json'}: {err}") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{folder / 'config.json'} is not a JSON object of a transformers config")
    return config


def family_of_config(config: dict[str, Any], where: Path | str) -> Family:
    """The family of a parsed ``config.json``, from its ``model_type``.

    Raises:
        CheckpointError: if the config is of a model that is not SAM-family.
    """
    model_type = config.get("model_type")
    if model_type not in MODEL_TYPES:
        known = ", ".join(MODEL_TYPES)
        raise CheckpointError(f"{where} holds a {model_type!r} model, not a SAM-family checkpoint ({known})")
    return MODEL_TYPES[model_type]


def family_of_folder(folder: Path) -> Family:
    """Read the model family from a transformers folder's ``config.json``.

    Raises:
        CheckpointError: if the config is unreadable or of a model that is not SAM-family.
    """
    return family_of_config(read_config(folder), folder)


def image_model_config(folder: Path, config: dict[str, Any]):  # noqa: ANN202 - a transformers config
    """The transformers config of the image model a folder's ``config.json`` describes.

    A ``sam2_video`` config (as the SAM 2.1 repositories publish) carries the image model's
    three parts unchanged beside its memory settings; the image model is built from those parts.
    """
    from transformers import AutoConfig, Sam2Config

    if config.get("model_type") == "sam2_video":
        parts = ("vision_config", "prompt_encoder_config", "mask_decoder_config", "initializer_range")
        return Sam2Config(**{k: config[k] for k in parts if k in config})
    return AutoConfig.from_pretrained(folder)


def _load_weights_strictly(folder: Path, family: Family, config: dict[str, Any], weights: Path) -> torch.nn.Module:
    """Load the image model of a folder in fp32; any missing, unexpected or misshapen weight is an error.

    The video-only weights of a ``sam2_video`` checkpoint (memory attention and encoder, object
    pointers, temporal encodings) have no place in the image model and are left unread, on purpose.
    A SAM 3 checkpoint loads whole and is taken apart (:mod:`samadapt.models.sam3`).
    """
    if family == "sam3":
        from samadapt.models.sam3 import load_sam3

        return load_sam3(folder, config)
    if family == "edgetam":  # built with samadapt's RepViT in place of timm's (samadapt.models.edgetam)
        from samadapt.models.edgetam import load_edgetam

        return load_edgetam(folder, config, weights)
    from transformers import Sam2Model, SamHQModel, SamModel

    classes: dict[Family, type[SamModel | SamHQModel | Sam2Model]] = {
        "sam": SamModel, "sam-hq": SamHQModel, "sam2": Sam2Model}
    cls = classes[family]
    model, info = quiet_from_pretrained(cls, folder, config=image_model_config(folder, config),
                                        use_safetensors=weights.suffix == ".safetensors", dtype=torch.float32)
    video = config.get("model_type") == "sam2_video"
    report_loading(folder, cls.__name__, info, VIDEO_ONLY_PREFIXES if video else ())
    return cast(torch.nn.Module, model)


def _load_folder(folder: Path, name: str, device: torch.device, expected: Family | None) -> LoadedModel:
    config = read_config(folder)
    family = family_of_config(config, folder)
    if expected is not None and family != expected:
        raise CheckpointError(f"{name} is a {family} checkpoint, but a {expected} checkpoint was expected")
    weights = weights_file(folder)
    digest = file_sha256(weights)
    published = published_sha256(weights)
    if published is not None and digest != published:
        raise CheckpointError(
            f"{weights} has sha256 {digest}, which differs from the sha256 the hub published for it ({published}): "
            f"the copy in the Hugging Face cache is damaged; delete {weights.resolve()} and fetch the model again"
        )
    model = _load_weights_strictly(folder, family, config, weights)
    model.eval().to(device)
    if family == "sam-hq":
        from samadapt.models.hq_fix import fix_sam_hq_decoder, needs_hq_decoder_fix

        if needs_hq_decoder_fix():
            fix_sam_hq_decoder(model)
    marker = folder / MARKER
    trusted = True
    if marker.is_file():
        trusted = not json.loads(marker.read_text()).get("random_init", False)
    return LoadedModel(
        name=name,
        family=family,
        model=model,
        preprocessing=preprocessing_for(family, input_size_of_config(config)),
        weights_sha256=digest,
        trusted=trusted,
        device=device,
        folder=folder,
    )


def cached_model_dir(name: str) -> Path:
    """samadapt's own folder for a registry model's files (placed there by hand, say)."""
    return models_dir() / name


def is_cached(name: str) -> bool:
    """True when a registry model's files are in samadapt's folder or the Hugging Face cache."""
    return locate(name)[1] is not None


def locate(name: str) -> tuple[str, Path | None]:
    """Where a registry model's files are, asking nothing of the network.

    Returns:
        ``("samadapt", folder)`` when every file is in :func:`cached_model_dir`,
        ``("hf-cache", snapshot folder)`` when the Hugging Face cache holds them,
        ``("missing", None)`` otherwise.
    """
    from samadapt.models.hub import cached_snapshot

    spec = get_spec(name)
    own = cached_model_dir(name)
    if all((own / f).is_file() for f in spec.files):
        return "samadapt", own
    snapshot = cached_snapshot(spec.repo_id, spec.files, spec.revision)
    if snapshot is not None:
        return "hf-cache", snapshot
    return "missing", None


def fetch(name: str, *, progress: bool = True) -> Path:
    """Fetch a registry model into the Hugging Face cache (resumable, verified) and return its folder.

    A model already in samadapt's folder or the Hugging Face cache is returned with no request.

    Raises:
        ModelNotFoundError: unknown name, or offline (``HF_HUB_OFFLINE=1``) and not cached.
        DownloadError: the hub refused or the network failed; the message says where to put the files.
    """
    from samadapt.models.hub import download_hf_files

    spec = get_spec(name)
    _, folder = locate(name)
    if folder is not None:
        return folder
    return download_hf_files(spec.repo_id, spec.files, revision=spec.revision, sha256=spec.sha256 or None,
                             progress=progress, also=cached_model_dir(name))


def _convert_meta(path: Path) -> Path:
    from samadapt.models.convert import convert_meta_checkpoint

    digest = file_sha256(path)
    out = models_dir() / "converted" / f"{path.stem}-{digest[:12]}"
    if not (out / "config.json").is_file():
        convert_meta_checkpoint(path, out)
    return out


def check_device(device: str | torch.device) -> torch.device:
    """A torch device that this torch build and machine have.

    Raises:
        InputError: an unparsable device, or CUDA / MPS where this torch has none.
    """
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise InputError(f"--device {device!r} is not a torch device ({exc}); use cpu, cuda, cuda:1 or mps") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
            raise InputError(f"--device {device} asks for a GPU, but this torch ({torch.__version__}, {build}) sees "
                             "none; use --device cpu, or install a CUDA build of torch into .venv")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise InputError(f"--device {device}: this machine has {torch.cuda.device_count()} GPU(s), numbered from 0")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise InputError(f"--device {device}: MPS (Apple GPU) is not available here; use --device cpu")
    return dev


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
        runtime: how the image encoder runs (see :mod:`samadapt.models.accel.speed`): "auto" picks
            the fastest faithful path for this CPU (bf16 and fused attention where they pay),
            a spec such as "fp32" or "bf16,fused", or None for transformers' plain call.

    Raises:
        ModelNotFoundError: nothing found under that name or path.
        CheckpointError: the checkpoint is of the wrong family or does not load.
        DownloadError: a needed download failed.
    """
    loaded = _load(ref, check_device(device), download, expected_family, progress)
    if runtime is not None:
        from samadapt.models.accel.speed import apply_runtime

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
        _, folder = locate(text)
        if folder is None and not download:
            from samadapt.models.hub import missing_message

            spec = REGISTRY[text]
            raise ModelNotFoundError(missing_message(
                spec.repo_id, spec.files, "it is not downloaded and downloads are off", cached_model_dir(text)
            ) + f"; `samadapt models fetch {text}` fetches them")
        return _load_folder(folder or fetch(text, progress=progress), text, device, expected_family)
    if any(sep in text for sep in ("/", "\\")) or path.suffix:
        raise ModelNotFoundError(f"model path {text} does not exist")
    return _load_folder(_missing(text), text, device, expected_family)


def _missing(text: str) -> Path:
    get_spec(text)  # raises ModelNotFoundError listing the known names
    raise ModelNotFoundError(f"unknown model {text!r}")


def family_and_size(model: str) -> tuple[Family, int]:
    """The family and input size (px) of a model reference, read without loading its weights.

    Args:
        model: a registry name or a transformers model folder.

    Raises:
        InputError: if ``model`` is neither a registry name nor a folder with a ``config.json``.
        CheckpointError: if the folder's ``config.json`` is unreadable or not of a SAM-family model.
    """
    if model in REGISTRY:
        spec = REGISTRY[model]
        if spec.family not in MODEL_TYPES.values():
            raise InputError(f"{model} is a {spec.family} detector, not a segmenter; give it as --detector {model}")
        return cast("Family", spec.family), spec.input_size
    folder = Path(model)
    if not (folder / "config.json").is_file():
        raise InputError(f"--model {model} is neither a registry name nor a model folder with a config.json")
    config = read_config(folder)
    return family_of_config(config, folder), input_size_of_config(config)
