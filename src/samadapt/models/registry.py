"""The model registry: short names and the facts about each public checkpoint, as data.

The facts live in ``published.json`` beside this module, each entry with the sources it was
read from (the repositories' own files, transformers' conversion scripts, the original
releases); nothing there is guessed, and a digest no public record gives is left out.
Preprocessing derives from these facts, never from code paths that test the name. Where a
sha256 is not recorded, a download is checked against the sha256 the hub publishes for the
file (its LFS object id, which names the blob in the Hugging Face cache).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

from samadapt.errors import InputError, ModelNotFoundError
from samadapt.imagery.preprocess import IMAGENET_MEAN_255, IMAGENET_STD_255, Preprocessing

Family = Literal["sam", "sam2", "sam-hq", "sam3", "edgetam"]

#: Families of the open-vocabulary detectors that turn phrases into boxes for SAM, SAM-HQ and SAM 2.
DetectorFamily = Literal["grounding-dino", "owlv2"]

#: The family of each transformers ``model_type`` samadapt loads. The SAM 2.1 repositories are
#: saved from ``Sam2VideoModel`` (``sam2_video``); samadapt loads their image model.
MODEL_TYPES: dict[str, Family] = {"sam": "sam", "sam2": "sam2", "sam2_video": "sam2", "sam_hq": "sam-hq",
                                   "sam3_video": "sam3", "edgetam": "edgetam", "edgetam_video": "edgetam"}


@dataclass(frozen=True)
class OfficialRelease:
    """The original release of a registry model's weights (Meta's ``.pth`` / ``.pt``, SAM-HQ's ``.pth``).

    Attributes:
        url: where the original file is published.
        file: its file name.
        bytes: its size.
        sha256: its full sha256, where a public record gives it.
        md5: its full md5, where a public record gives it.
        name_digest: the digest whose first hex digits end the file name ("md5" for Meta's SAM
            files: ``sam_vit_b_01ec64.pth``), or None when the name carries none.
    """

    url: str
    file: str
    bytes: int
    sha256: str | None = None
    md5: str | None = None
    name_digest: Literal["md5", "sha256"] | None = None


@dataclass(frozen=True)
class ModelSpec:
    """Facts about one public checkpoint, read from ``published.json``.

    Attributes:
        name: the short name users type.
        family: a segmenter's ("sam", "sam2", "sam-hq", "sam3", "edgetam") or a detector's
            ("grounding-dino", "owlv2").
        repo_id: Hugging Face repository holding the transformers layout.
        size_mb: approximate size of the weights file in megabytes.
        license: licence of the weights.
        files: files samadapt fetches from the repository.
        weights: which of ``files`` holds the weights.
        sha256: published digests by file name, where a public record gives them.
        config: what the repository's ``config.json`` states (model_type, architectures and
            architecture sizes, nested as in the file); other values are transformers' defaults.
        published_files: every file the repository publishes (for reference and errors).
        official: the original release samadapt can convert, if any.
        sources: where each of these facts was read.
        gated: the repository asks each user to accept its terms; downloads need ``HF_TOKEN``.
        revision: the branch (or ref) of the repository that holds ``files``.
    """

    name: str
    family: Family | DetectorFamily
    repo_id: str
    size_mb: int
    license: str = "Apache-2.0"
    files: tuple[str, ...] = ("config.json", "model.safetensors")
    weights: str = "model.safetensors"
    sha256: dict[str, str] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    published_files: tuple[str, ...] = ()
    official: OfficialRelease | None = None
    sources: tuple[str, ...] = ()
    gated: bool = False
    revision: str = "main"

    @property
    def model_type(self) -> str:
        """The ``model_type`` the repository's ``config.json`` states."""
        return str(self.config["model_type"])

    @property
    def input_size(self) -> int:
        """The model input side in pixels, as the repository's ``config.json`` states it."""
        return input_size_of_config(self.config)

    @property
    def preprocessing(self) -> Preprocessing:
        """The input preprocessing this checkpoint expects: its family's, at its input size.

        Raises:
            InputError: for a detector, whose preprocessing is its own (:mod:`samadapt.text`).
        """
        if self.family not in MODEL_TYPES.values():
            raise InputError(f"{self.name} is a {self.family} detector; its preprocessing is its processor's")
        return preprocessing_for(cast("Family", self.family), self.input_size)


#: transformers' default prompt-encoder ``image_size``, which a ``config.json`` that leaves it out gets.
DEFAULT_INPUT_SIZE = 1024

#: transformers' default SAM 3 ViT ``image_size`` (``Sam3ViTConfig``), which ``facebook/sam3`` keeps.
SAM3_INPUT_SIZE = 1008

#: SAM 3's input normalisation in 0-255 units: mean and std 0.5 of the 0-1 range (transformers'
#: ``Sam3ImageProcessor``: IMAGENET_STANDARD_MEAN / _STD).
SAM3_MEAN_STD_255 = (127.5, 127.5, 127.5)


def input_size_of_config(config: dict[str, Any]) -> int:
    """The model input size (px) a parsed ``config.json`` states: its prompt encoder's image size.

    The one place the input size is read; registry entries and model folders both go through it.
    SAM 3 (``sam3_video``) states it as its ViT's image size (1008 for ``facebook/sam3``).
    """
    if config.get("model_type") == "sam3_video":
        vit = (config.get("detector_config") or {}).get("vision_config", {}).get("backbone_config", {})
        size = vit.get("image_size", SAM3_INPUT_SIZE)
        return int(size[0] if isinstance(size, (list, tuple)) else size)
    size = config.get("prompt_encoder_config", {}).get("image_size", DEFAULT_INPUT_SIZE)
    return int(size[0] if isinstance(size, (list, tuple)) else size)


def preprocessing_for(family: Family, size: int) -> Preprocessing:
    """Preprocessing for a family at a given input size (see :func:`input_size_of_config`)."""
    if family == "sam3":  # a square resize to 1008 px, no padding (Sam3ImageProcessor)
        return Preprocessing(size=size, mean=SAM3_MEAN_STD_255, std=SAM3_MEAN_STD_255, resize="square")
    return Preprocessing(
        size=size,
        mean=IMAGENET_MEAN_255,
        std=IMAGENET_STD_255,
        resize="square" if family in ("sam2", "edgetam") else "longest",
    )


PUBLISHED_FACTS = Path(__file__).with_name("published.json")


def _read_registry(path: Path) -> dict[str, ModelSpec]:
    doc = json.loads(path.read_text())
    specs = {}
    for entry in doc["models"]:
        official = entry.pop("official", None)
        for key in ("files", "published_files", "sources"):
            entry[key] = tuple(entry.get(key, ()))
        specs[entry["name"]] = ModelSpec(**entry, official=OfficialRelease(**official) if official else None)
    return specs


REGISTRY: dict[str, ModelSpec] = _read_registry(PUBLISHED_FACTS)

#: The transformers classes of each published ``model_type``: (config, model as published, image model).
PUBLISHED_CLASSES = {
    "sam": ("SamConfig", "SamModel", "SamModel"),
    "sam_hq": ("SamHQConfig", "SamHQModel", "SamHQModel"),
    "sam2": ("Sam2Config", "Sam2Model", "Sam2Model"),
    "sam2_video": ("Sam2VideoConfig", "Sam2VideoModel", "Sam2Model"),
    # EdgeTAM's backbone is a timm wrapper; samadapt builds it with its own RepViT (samadapt.models.edgetam)
    "edgetam": ("EdgeTamConfig", "EdgeTamModel", "EdgeTamModel"),
    "edgetam_video": ("EdgeTamVideoConfig", "EdgeTamVideoModel", "EdgeTamModel"),
    "sam3_video": ("Sam3VideoConfig", "Sam3VideoModel", "Sam3VideoModel"),
    "grounding-dino": ("GroundingDinoConfig", "GroundingDinoForObjectDetection", "GroundingDinoForObjectDetection"),
    "owlv2": ("Owlv2Config", "Owlv2ForObjectDetection", "Owlv2ForObjectDetection"),
}

#: The families of the registry's segmenters, which read images and prompts (the rest are detectors).
SEGMENTER_FAMILIES = frozenset(MODEL_TYPES.values())


def published_config(spec: ModelSpec):  # noqa: ANN201 - a transformers config
    """The transformers config a registry model's repository publishes, built from its recorded facts.

    Used to build a random model laid out as the repository is (tests, ``models check``); the
    values the facts leave out are transformers' defaults, as in the published files.
    """
    import transformers

    parts = {k: v for k, v in spec.config.items() if k not in ("model_type", "architectures")}
    config = getattr(transformers, PUBLISHED_CLASSES[spec.model_type][0])(**parts)
    config.architectures = list(spec.config.get("architectures", ()))
    return config


DEFAULT_MODEL = "sam-vit-base"


def get_spec(name: str) -> ModelSpec:
    """Return the registry entry for a short name.

    Raises:
        ModelNotFoundError: naming the known models when the name is not one of them.
    """
    try:
        return REGISTRY[name]
    except KeyError:
        known = ", ".join(REGISTRY)
        raise ModelNotFoundError(
            f"unknown model {name!r}; use one of {known}, a folder with a transformers checkpoint, or a Meta .pth file"
        ) from None
