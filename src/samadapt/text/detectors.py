"""Load an open-vocabulary detector (GroundingDINO or OWLv2) that turns phrases into boxes.

A detector is named by a registry name (``grounding-dino-tiny``, ``grounding-dino-base``,
``owlv2-base``) or by a folder in the transformers layout: ``config.json`` (``model_type``
"grounding-dino" or "owlv2"), the weights, the tokenizer files and, usually,
``preprocessor_config.json``. Weights load strictly, in fp32, in eval mode; the image
preprocessing is samadapt's own (numpy and PIL), read from ``preprocessor_config.json`` and
checked against transformers' image processors in the tests.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, cast

import torch

from samadapt.errors import CheckpointError, ModelNotFoundError
from samadapt.models.digest import file_sha256, published_sha256
from samadapt.models.registry import DetectorFamily
from samadapt.models.tiny import MARKER
from samadapt.text.types import Detector

__all__ = ["DETECTOR_MODEL_TYPES", "detector_family_of_folder", "load_detector"]

#: The detector family of each transformers ``model_type`` samadapt loads as a detector.
DETECTOR_MODEL_TYPES: dict[str, DetectorFamily] = {"grounding-dino": "grounding-dino", "owlv2": "owlv2"}

_CLASSES = {"grounding-dino": "GroundingDinoForObjectDetection", "owlv2": "Owlv2ForObjectDetection"}


def _read_json(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(f"cannot read {path}: {err}") from None
    if not isinstance(doc, dict):
        raise CheckpointError(f"{path} is not a JSON object")
    return doc


def detector_family_of_folder(folder: Path) -> DetectorFamily:
    """The detector family of a transformers folder, from its ``config.json``.

    Raises:
        ModelNotFoundError: the folder has no ``config.json``.
        CheckpointError: the config is unreadable or of a model that is not a detector samadapt reads.
    """
    if not (folder / "config.json").is_file():
        raise ModelNotFoundError(f"{folder} is a folder but has no config.json of a transformers checkpoint")
    model_type = _read_json(folder / "config.json").get("model_type")
    if model_type not in DETECTOR_MODEL_TYPES:
        raise CheckpointError(f"{folder} holds a {model_type!r} model, not a detector; give a GroundingDINO "
                              "(model_type 'grounding-dino') or OWLv2 (model_type 'owlv2') checkpoint")
    return DETECTOR_MODEL_TYPES[model_type]


def _resolve(ref: str | os.PathLike[str], download: bool) -> tuple[Path, str]:
    """The folder a detector reference names, fetched if it is a registry name not yet cached."""
    from samadapt.models.loading import cached_model_dir, fetch, locate
    from samadapt.models.registry import REGISTRY, get_spec

    text = os.fspath(ref)
    path = Path(text).expanduser()
    if path.is_dir():
        return path, text
    if text in REGISTRY:
        spec = get_spec(text)
        if spec.family not in DETECTOR_MODEL_TYPES.values():
            raise CheckpointError(f"{text} is a {spec.family} segmenter, not a detector; use grounding-dino-tiny, "
                                  "grounding-dino-base or owlv2-base")
        _, folder = locate(text)
        if folder is not None:
            return folder, text
        if not download:
            from samadapt.models.hub import missing_message

            raise ModelNotFoundError(missing_message(
                spec.repo_id, spec.files, "it is not downloaded and downloads are off", cached_model_dir(text)
            ) + f"; `samadapt models fetch {text}` fetches them")
        return fetch(text), text
    if path.exists():
        raise CheckpointError(f"{path} is a file; give a detector folder (config.json, weights, tokenizer files)")
    if any(sep in text for sep in ("/", "\\")) or path.suffix:
        raise ModelNotFoundError(f"detector path {text} does not exist")
    get_spec(text)  # raises ModelNotFoundError listing the known names
    raise ModelNotFoundError(f"unknown detector {text!r}")


def _weights(folder: Path) -> Path:
    from samadapt.models.loading import weights_file

    weights = weights_file(folder)
    digest, published = file_sha256(weights), published_sha256(weights)
    if published is not None and digest != published:
        raise CheckpointError(
            f"{weights} has sha256 {digest}, which differs from the sha256 the hub published for it ({published}): "
            f"the copy in the Hugging Face cache is damaged; delete {weights.resolve()} and fetch the model again"
        )
    return weights


def _load_model_strictly(folder: Path, family: DetectorFamily, weights: Path) -> torch.nn.Module:
    """The detector model of a folder in fp32; any missing, unexpected or misshapen weight is an error."""
    import transformers

    from samadapt.models.strict import quiet_from_pretrained, report_loading

    name = _CLASSES[family]
    model, info = quiet_from_pretrained(getattr(transformers, name), folder,
                                        use_safetensors=weights.suffix == ".safetensors", dtype=torch.float32)
    report_loading(folder, name, info)
    return cast(torch.nn.Module, model).float().eval()


def _load_tokenizer(folder: Path) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError, TypeError, KeyError) as err:
        raise CheckpointError(f"cannot load the tokenizer in {folder} (vocab and tokenizer files): {err}") from None


def _is_trusted(folder: Path) -> bool:
    marker = folder / MARKER
    if not marker.is_file():
        return True
    try:
        return not json.loads(marker.read_text()).get("random_init", False)
    except (OSError, ValueError, AttributeError):
        return False  # a marker we cannot read: do not vouch for the weights


def load_detector(ref: str | os.PathLike[str], *, device: str | torch.device = "cpu",
                  download: bool = True) -> Detector:
    """Load GroundingDINO or OWLv2 from a registry name or a transformers folder.

    Args:
        ref: registry name (``grounding-dino-tiny``, ``grounding-dino-base``, ``owlv2-base``) or
            a folder holding ``config.json``, the weights, the tokenizer files and, usually,
            ``preprocessor_config.json`` (without it, transformers' defaults of the family apply).
        device: torch device the model runs on, e.g. "cpu" or "cuda:0".
        download: fetch a registry model that is not cached; when False a missing one is an error.

    Returns:
        A :class:`samadapt.text.grounding_dino.GroundingDinoDetector` or
        :class:`samadapt.text.owlv2.Owlv2Detector`; ``trusted`` is False for a random-initialised
        (tiny) model, ``model_id`` is the family and the weights' sha256.

    Raises:
        ModelNotFoundError: nothing found under that name or path, or not downloaded with downloads off.
        CheckpointError: the folder holds another kind of model, or its weights, tokenizer or
            preprocessing settings do not load.
        DownloadError: a needed download failed.
        InputError: an unusable device.
    """
    from samadapt.models.loading import check_device

    dev = check_device(device)
    folder, name = _resolve(ref, download)
    family = detector_family_of_folder(folder)
    weights = _weights(folder)
    model_id = f"{family}:{file_sha256(weights)}"
    model = _load_model_strictly(folder, family, weights).to(dev)
    tokenizer = _load_tokenizer(folder)
    pre_path = folder / "preprocessor_config.json"
    settings = _read_json(pre_path) if pre_path.is_file() else {}
    trusted = _is_trusted(folder)
    if family == "grounding-dino":
        from samadapt.text.grounding_dino import GroundingDinoDetector, GroundingDinoPreprocessing

        return GroundingDinoDetector(model, tokenizer, GroundingDinoPreprocessing.from_config(settings), name=name,
                                     model_id=model_id, trusted=trusted, device=dev)
    from samadapt.text.owlv2 import Owlv2Detector, Owlv2Preprocessing

    pre = Owlv2Preprocessing.from_config(settings)
    image_size = int(cast(Any, model).config.vision_config.image_size)
    if pre.size != image_size:
        raise CheckpointError(f"{pre_path} resizes to {pre.size} px but the model in {folder} reads {image_size} px; "
                              "make the two agree")
    return Owlv2Detector(model, tokenizer, pre, name=name, model_id=model_id, trusted=trusted, device=dev)

