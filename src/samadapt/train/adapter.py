"""Trained adapters as small folders, and prediction with them.

An adapter folder holds only what training changed plus the facts needed to rebuild it:

- ``adapter.safetensors``: the trainable weights (decoder, LoRA, U-Net, band adapter ...);
- ``config.json``: the method and its settings, the base model (name, family, weights
  sha256), classes, bands, preprocessing, training settings and best validation metrics;
- ``training_log.jsonl`` and ``training.png`` from the run.

Loading checks that the base model has the same weights digest as the one trained on, so
an adapter never runs silently on a different SAM.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from samadapt import __version__
from samadapt.errors import CheckpointError, InputError, ModelNotFoundError
from samadapt.imagery.read import from_array
from samadapt.methods import build_method
from samadapt.methods.base import AdaptationMethod, Sample
from samadapt.models.loading import LoadedModel, load_model

if TYPE_CHECKING:
    from samadapt.models.accel.speed import RuntimeOptions
    from samadapt.prompts.types import ObjectPrompt

WEIGHTS = "adapter.safetensors"
#: Methods whose inputs are cached embeddings (their encoder runs in make_inputs, not forward).
EMBEDDING_METHODS = ("domain-decoder",)
CONFIG = "config.json"


def _portable_name(name: str) -> str:
    """A base model's reference as the adapter stores it: a folder or file as an absolute path (a
    relative one would break from another working folder), a registry name as it is."""
    path = Path(name).expanduser()
    return str(path.resolve()) if path.exists() else name


#: Every file an adapter folder holds.
ADAPTER_FILES = frozenset({WEIGHTS, CONFIG, "training_log.jsonl", "training.png"})


def is_adapter_folder(folder: Path) -> bool:
    """True when a folder holds nothing but an adapter samadapt wrote (so ``--overwrite`` may replace it)."""
    try:
        config = json.loads((Path(folder) / CONFIG).read_text())
    except (OSError, ValueError):
        return False
    names = {p.name for p in Path(folder).iterdir()}
    return isinstance(config, dict) and "samadapt_version" in config and "method" in config and names <= ADAPTER_FILES


def save_adapter(
    method: AdaptationMethod,
    out_dir: Path,
    *,
    classes: dict[int, str] | None = None,
    bands: tuple[int, ...] | None = None,
    train_config: dict[str, Any] | None = None,
    data: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    extra_files: tuple[Path, ...] = (),
    overwrite: bool = False,
) -> Path:
    """Write an adapter folder atomically (temporary folder, then rename).

    ``data`` records the split the adapter was trained on: ``{"train": [ids], "val": [ids],
    "test": [ids], "dataset": path}`` (train after the label budget), so that ``evaluate``
    scores the adapter's own test split and refuses its training images.
    """
    from samadapt._io import atomic_dir

    out_dir = Path(out_dir)
    with atomic_dir(out_dir, overwrite=overwrite, kind="adapter", owned=is_adapter_folder) as tmp:
        base = method.base
        save_file(method.trainable_state_dict(), str(tmp / WEIGHTS))
        config = {
            "samadapt_version": __version__,
            **method.config(),
            "base_model": {"name": _portable_name(base.name), "family": base.family,
                           "weights_sha256": base.weights_sha256,
                           "trusted": base.trusted},
            "classes": {str(k): v for k, v in sorted((classes or {0: "background", 1: "object"}).items())},
            "bands": list(bands) if bands else None,
            "preprocessing": asdict(base.preprocessing),
            "train": train_config or {},
            "data": data or {},
            "metrics": metrics or {},
        }
        (tmp / CONFIG).write_text(json.dumps(config, indent=2, default=str))
        for f in extra_files:
            if Path(f).is_file():
                shutil.copy2(f, tmp / Path(f).name)
    return out_dir


@dataclass
class Prediction:
    """A prediction at the image's own size: class ids (H, W) uint8 and probabilities (C, H, W)."""

    labels: np.ndarray
    probabilities: np.ndarray


class Adapter:
    """A loaded adapter: the method with its trained weights, ready to predict.

    Attributes:
        method: the adaptation method (in eval mode).
        config: the adapter's ``config.json``.
        classes: class id -> name.
        bands: 1-based bands the adapter reads, or None for the default RGB choice.
    """

    def __init__(self, method: AdaptationMethod, config: dict[str, Any]) -> None:
        self.method = method.eval()
        self.config = config
        self.classes = {int(k): v for k, v in config.get("classes", {}).items()}
        self.bands = tuple(config["bands"]) if config.get("bands") else None
        self.path: Path | None = None  # the folder it was loaded from (workers reload it from there)
        self.base_ref: str | None = None

    @property
    def needs_prompts(self) -> bool:
        """True for methods that segment prompted objects (mask-decoder)."""
        return self.method.name == "mask-decoder"

    def _prompted(self, sample: Sample, prompts: list[ObjectPrompt] | None, rough: np.ndarray | None) -> Prediction:
        if prompts is None and rough is None:
            raise InputError(
                "a mask-decoder adapter segments prompted objects: pass prompts (boxes / points) or a rough mask"
            )
        fg = self.method.predict(sample.pixels, prompts=prompts, rough=rough)  # type: ignore[operator]
        probs = np.stack([1 - fg, fg]).astype(np.float32)
        labels = (fg > 0.5).astype(np.uint8)
        labels[~sample.valid] = 255
        return Prediction(labels=labels, probabilities=probs)

    @torch.no_grad()
    def predict_sample(self, sample: Sample, *, prompts: list[ObjectPrompt] | None = None,
                       rough: np.ndarray | None = None) -> Prediction:
        """Predict one prepared sample (pixels as the method expects them).

        ``prompts`` (ObjectPrompts in pixels) or ``rough`` (an (H, W) rough mask) are needed by
        mask-decoder adapters and ignored by the others.
        """
        if self.needs_prompts:
            return self._prompted(sample, prompts, rough)
        m = self.method
        inputs = m.make_inputs(Sample(sample.stem, sample.pixels, sample.valid, None), train=False,
                               rng=np.random.default_rng(0))
        batch = {k: v[None].to(m.base.device) for k, v in inputs.items()}
        probs = m.probabilities(m(batch))[0].float().cpu()
        h, w = sample.pixels.shape[:2]
        full = m.to_original(probs, m.geometry_of(h, w)).numpy()
        labels = full.argmax(0).astype(np.uint8)
        labels[~sample.valid] = 255
        return Prediction(labels=labels, probabilities=full.astype(np.float32))

    @torch.no_grad()
    def predict_samples(self, samples: list[Sample]) -> list[Prediction]:
        """Predict several samples with one pass of the model (the encoder sees them as one batch).

        Gives what :meth:`predict_sample` gives for each; mask-decoder adapters, which need
        prompts, predict one sample at a time.
        """
        m = self.method
        if self.needs_prompts or len(samples) < 2:
            return [self.predict_sample(s) for s in samples]
        if m.name in EMBEDDING_METHODS and all(s.pixels.shape[2] == 3 for s in samples):
            # These methods read the embedding through the cache in make_inputs: fill it with
            # one encoder call first (through the embedder AdaptationMethod.embedding uses).
            images = [from_array(s.pixels, channel_axis="last") for s in samples]  # (H, W, 3), as embedding() says
            for _ in m.embedder.embed_many(images, batch_size=len(samples)):
                pass
        inputs = [m.make_inputs(Sample(s.stem, s.pixels, s.valid, None), train=False, rng=np.random.default_rng(0))
                  for s in samples]
        if any(inp[k].shape != inputs[0][k].shape for inp in inputs for k in inputs[0]):
            return [self.predict_sample(s) for s in samples]
        batch = {k: torch.stack([inp[k] for inp in inputs]).to(m.base.device) for k in inputs[0]}
        probs = m.probabilities(m(batch)).float().cpu()
        out = []
        for s, p in zip(samples, probs, strict=False):
            h, w = s.pixels.shape[:2]
            full = m.to_original(p, m.geometry_of(h, w)).numpy()
            labels = full.argmax(0).astype(np.uint8)
            labels[~s.valid] = 255
            out.append(Prediction(labels=labels, probabilities=full.astype(np.float32)))
        return out

    def predict(self, image: str | os.PathLike[str] | np.ndarray, *,
                prompts: list[ObjectPrompt] | None = None,
                rough: np.ndarray | None = None) -> Prediction:
        """Predict an image file (bands as trained) or an (H, W, C) uint8 array.

        Mask-decoder adapters also take ``prompts`` or a ``rough`` mask (see :meth:`predict_sample`).
        """
        if isinstance(image, np.ndarray):
            pixels = image if image.ndim == 3 else np.repeat(image[:, :, None], 3, axis=2)
            sample = Sample("array", pixels, np.ones(pixels.shape[:2], bool))
        else:
            sample = read_sample(Path(image), bands=self.bands)
        return self.predict_sample(sample, prompts=prompts, rough=rough)


def read_sample(path: Path, *, bands: tuple[int, ...] | None = None, mask: Path | None = None,
                stem: str | None = None) -> Sample:
    """Read an image (and optionally its mask) as a :class:`Sample`; any band count with ``bands``."""
    from samadapt.imagery.read import read_bands, read_image

    if bands is not None and len(bands) != 3:
        pixels, valid = read_bands(path, bands)
    else:
        img = read_image(path, bands=bands)
        pixels, valid = img.pixels, img.valid
    target = None
    if mask is not None:
        from samadapt.data.dataset import read_mask_file

        target = read_mask_file(mask)
        if target.shape != pixels.shape[:2]:
            raise InputError(f"mask {mask} is {target.shape} but its image is {pixels.shape[:2]} (rows, cols)")
    return Sample(stem or Path(path).stem, pixels, valid, target)


def is_adapter_ref(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` names an adapter folder, even a damaged one, rather than a SAM model.

    A SAM model folder holds a ``config.json`` too, so the test is ``adapter.safetensors`` or a
    ``config.json`` that names a samadapt method; :func:`load_adapter` then says what is wrong.
    """
    folder = Path(path)
    if (folder / WEIGHTS).is_file():
        return True
    try:
        config = json.loads((folder / CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and "method" in config and "samadapt_version" in config


#: Fix given by every message about a damaged adapter folder.
_REDO = "copy the whole folder again from where it was trained, or train it again"


def _check_files(path: Path) -> None:
    """Refuse a path that is not a folder holding both files of an adapter.

    Raises:
        ModelNotFoundError: naming what is missing.
    """
    if not path.exists():
        raise ModelNotFoundError(f"adapter folder {path} does not exist; give the folder `samadapt train --out` wrote")
    if not path.is_dir():
        raise ModelNotFoundError(f"{path} is a file, not an adapter folder; give the folder `samadapt train --out` "
                                 f"wrote (it holds {CONFIG} and {WEIGHTS})")
    have = [name for name in (CONFIG, WEIGHTS) if (path / name).is_file()]
    if not have:
        raise ModelNotFoundError(f"{path} is not a samadapt adapter (it needs {CONFIG} and {WEIGHTS})")
    if len(have) == 1:
        lacking = WEIGHTS if have == [CONFIG] else CONFIG
        raise ModelNotFoundError(f"adapter folder {path} has {have[0]} but no {lacking}, so it is incomplete; {_REDO}")


def _config_problems(config: dict[str, Any]) -> list[str]:
    """Keys of an adapter's config.json that are missing or of the wrong type."""

    def whole(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v >= 1

    base = config.get("base_model")
    checks = {
        "method": isinstance(config.get("method"), str),
        "num_classes": whole(config.get("num_classes")),
        "in_channels": whole(config.get("in_channels")),
        "base_model": isinstance(base, dict) and isinstance(base.get("name"), str)
        and isinstance(base.get("weights_sha256"), str),
        "options": isinstance(config.get("options", {}), dict),
        "classes": isinstance(config.get("classes", {}), dict)
        and all(isinstance(k, str) and k.isdigit() for k in config.get("classes", {})),
        "bands": config.get("bands") is None
        or (isinstance(config["bands"], list) and all(whole(b) for b in config["bands"])),
    }
    return [key for key, ok in checks.items() if not ok]


def read_adapter_config(path: Path) -> dict[str, Any]:
    """The ``config.json`` of an adapter folder, checked to hold what :func:`load_adapter` reads.

    Raises:
        CheckpointError: the file is not JSON (e.g. cut short by an interrupted copy), not an
            object, or lacks a key or gives it the wrong type.
    """
    file = Path(path) / CONFIG
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise CheckpointError(f"{file} is not text, so the adapter is damaged; {_REDO}") from None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{file} is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg}), so the "
                              f"adapter is damaged; {_REDO}") from None
    except OSError as e:
        raise CheckpointError(f"{file} cannot be read ({e.strerror}); check its permissions") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{file} holds a JSON {type(config).__name__}, not the object of settings an adapter "
                              f"has, so the adapter is damaged; {_REDO}")
    bad = _config_problems(config)
    if bad:
        raise CheckpointError(f"{file} lacks or garbles {', '.join(bad)}, which every adapter records, so the adapter "
                              f"is damaged or not one samadapt wrote; {_REDO}")
    return config


def _read_weights(file: Path) -> dict[str, torch.Tensor]:
    """The tensors of an adapter's ``adapter.safetensors``.

    Raises:
        CheckpointError: the file is not a complete safetensors file.
    """
    from safetensors import SafetensorError

    try:
        return load_file(str(file))
    except SafetensorError as e:
        raise CheckpointError(f"{file} is not a complete safetensors file ({e}), so the adapter is damaged; "
                              f"{_REDO}") from None
    except OSError as e:
        raise CheckpointError(f"{file} cannot be read ({e.strerror}); check its permissions") from None


def _check_weights(file: Path, weights: dict[str, torch.Tensor], method: AdaptationMethod) -> None:
    """Refuse weights that do not fit the method their ``config.json`` describes.

    Raises:
        CheckpointError: a tensor the method lacks, a trained tensor the file lacks, or a shape
            that differs (the file and config.json come from different runs, or one was edited).
    """
    state = method.state_dict()
    what = f"the {method.name} method its {CONFIG} describes"
    unexpected = sorted(set(weights) - set(state))
    if unexpected:
        raise CheckpointError(f"{file} holds weights {what} does not have ({', '.join(unexpected[:3])}), so the two "
                              f"files do not match; {_REDO}")
    lacking = sorted(set(method.trainable_state_dict()) - set(weights))
    if lacking:
        raise CheckpointError(f"{file} lacks {len(lacking)} of the weights {what} trains ({', '.join(lacking[:3])}), "
                              f"so the two files do not match; {_REDO}")
    for key, tensor in weights.items():
        if tensor.shape != state[key].shape:
            raise CheckpointError(
                f"{file} does not match the {CONFIG} beside it: {key} is {list(tensor.shape)} in the file but "
                f"{list(state[key].shape)} in {what}; {_REDO}"
            )


def load_adapter(path: str | os.PathLike[str], *, base: str | LoadedModel | None = None,
                 device: str = "cpu", runtime: RuntimeOptions | str | None = "auto") -> Adapter:
    """Load an adapter folder; the base model comes from its config unless given.

    The folder is checked before the base model loads: both files present, ``config.json``
    complete, ``adapter.safetensors`` whole; then its weights must fit the method the config
    describes, name for name and shape for shape.

    ``runtime`` is the base encoder's runtime (see :func:`samadapt.models.loading.load_model`);
    a given LoadedModel keeps its own unless ``runtime`` is something other than "auto".

    Raises:
        ModelNotFoundError: the folder does not exist, is not an adapter, or lacks one of its files.
        CheckpointError: a damaged file, weights that do not match the config, a method this
            samadapt cannot build, or a base model whose weights differ from those the adapter
            was trained on.
    """
    path = Path(path)
    _check_files(path)
    config = read_adapter_config(path)
    weights = _read_weights(path / WEIGHTS)
    expected = config["base_model"]
    if base is None:
        base = expected["name"]
    if isinstance(base, LoadedModel):
        loaded = base
        if runtime is not None and runtime != "auto":
            from samadapt.models.accel.speed import apply_runtime

            apply_runtime(loaded, runtime)
    else:
        loaded = load_model(base, device=device, runtime=runtime)
    if loaded.weights_sha256 != expected["weights_sha256"]:
        raise CheckpointError(
            f"this adapter was trained on {expected['name']} (weights sha256 {expected['weights_sha256'][:12]}), "
            f"not on {loaded.name} (sha256 {loaded.weights_sha256[:12]}); load it with --model {expected['name']}"
        )
    try:
        method = build_method(config["method"], loaded, num_classes=config["num_classes"],
                              in_channels=config["in_channels"], **config.get("options", {}))
    except InputError as e:
        written = config.get("samadapt_version")
        fix = (f"; it was written by samadapt {written}: use that version or train it again"
               if written and written != __version__ else f", so it is damaged; {_REDO}")
        raise CheckpointError(f"{path / CONFIG} describes an adapter samadapt {__version__} cannot build ({e}){fix}"
                              ) from None
    method.to(loaded.device)
    _check_weights(path / WEIGHTS, weights, method)
    method.load_state_dict(weights, strict=False)
    adapter = Adapter(method, config)
    adapter.path = path
    adapter.base_ref = base if isinstance(base, str) else None
    return adapter
