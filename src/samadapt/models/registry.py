"""The model registry: short names and the facts about each public checkpoint, as data.

Preprocessing derives from these facts, never from code paths that test the name. Sizes
are the approximate download sizes of the weights file. Where a sha256 is not pinned here,
the download is checked against the sha256 the Hugging Face server reports for the file
(the LFS object id in the ``X-Linked-Etag`` header).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from samadapt.errors import ModelNotFoundError
from samadapt.imagery.preprocess import IMAGENET_MEAN_255, IMAGENET_STD_255, Preprocessing

Family = Literal["sam", "sam2", "sam-hq"]

#: The family of each transformers ``model_type`` samadapt loads. The SAM 2.1 repositories are
#: saved from ``Sam2VideoModel`` (``sam2_video``); samadapt loads their image model.
MODEL_TYPES: dict[str, Family] = {"sam": "sam", "sam2": "sam2", "sam2_video": "sam2", "sam_hq": "sam-hq"}


@dataclass(frozen=True)
class ModelSpec:
    """Facts about one public checkpoint.

    Attributes:
        name: the short name users type.
        family: "sam", "sam2" or "sam-hq".
        repo_id: Hugging Face repository holding the transformers layout.
        size_mb: approximate size of the weights file in megabytes.
        license: licence of the weights.
        files: files fetched from the repository.
        sha256: pinned digests by file name, where known.
        meta_url: the official Meta release of the same weights, where one exists.
        meta_sha256_prefix: the digest prefix Meta puts in that file's name.
    """

    name: str
    family: Family
    repo_id: str
    size_mb: int
    license: str = "Apache-2.0"
    files: tuple[str, ...] = ("config.json", "model.safetensors")
    sha256: dict[str, str] = field(default_factory=dict)
    meta_url: str | None = None
    meta_sha256_prefix: str | None = None

    @property
    def preprocessing(self) -> Preprocessing:
        """The input preprocessing every checkpoint of this family expects."""
        return preprocessing_for(self.family, 1024)


def preprocessing_for(family: Family, size: int) -> Preprocessing:
    """Preprocessing for a family at a given input size (1024 for public checkpoints)."""
    return Preprocessing(
        size=size,
        mean=IMAGENET_MEAN_255,
        std=IMAGENET_STD_255,
        resize="square" if family == "sam2" else "longest",
    )


_META = "https://dl.fbaipublicfiles.com/segment_anything"

REGISTRY: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec("sam-vit-base", "sam", "facebook/sam-vit-base", 375,
                  meta_url=f"{_META}/sam_vit_b_01ec64.pth", meta_sha256_prefix="01ec64"),
        ModelSpec("sam-vit-large", "sam", "facebook/sam-vit-large", 1250,
                  meta_url=f"{_META}/sam_vit_l_0b3195.pth", meta_sha256_prefix="0b3195"),
        ModelSpec("sam-vit-huge", "sam", "facebook/sam-vit-huge", 2560,
                  meta_url=f"{_META}/sam_vit_h_4b8939.pth", meta_sha256_prefix="4b8939"),
        ModelSpec("sam2.1-hiera-tiny", "sam2", "facebook/sam2.1-hiera-tiny", 156),
        ModelSpec("sam2.1-hiera-small", "sam2", "facebook/sam2.1-hiera-small", 184),
        ModelSpec("sam2.1-hiera-base-plus", "sam2", "facebook/sam2.1-hiera-base-plus", 324),
        ModelSpec("sam2.1-hiera-large", "sam2", "facebook/sam2.1-hiera-large", 898),
        ModelSpec("sam-hq-vit-base", "sam-hq", "syscv-community/sam-hq-vit-base", 379),
        ModelSpec("sam-hq-vit-large", "sam-hq", "syscv-community/sam-hq-vit-large", 1260),
        ModelSpec("sam-hq-vit-huge", "sam-hq", "syscv-community/sam-hq-vit-huge", 2570),
    )
}

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
