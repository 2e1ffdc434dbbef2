"""The result of a segmentation: masks with their scores, in the pixel grid of the image.

Each mask is kept cropped to the rows and columns its object covers (a :class:`MaskCrop`), so
the memory of a result grows with the area of its objects, not with the image's area times their
number: 91 objects on a 6000 x 6000 raster would take 3.3 GB as full-size bool masks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, eq=False)
class MaskCrop:
    """One object's mask over its bounding box.

    Attributes:
        row: image row of ``mask[0, 0]`` (rows grow downwards).
        col: image column of ``mask[0, 0]``.
        mask: (h, w) bool; the object has no pixel outside it. (0, 0) for an empty mask.
    """

    row: int
    col: int
    mask: np.ndarray

    @property
    def box(self) -> tuple[int, int, int, int]:
        """XYXY pixel box (x0, y0, x1, y1), maximum exclusive."""
        h, w = self.mask.shape
        return self.col, self.row, self.col + w, self.row + h

    @classmethod
    def tight(cls, mask: np.ndarray, row: int = 0, col: int = 0, *, copy: bool = False) -> MaskCrop:
        """Crop a bool mask lying at (``row``, ``col``) of the image to the box of its set pixels.

        The crop is a view of ``mask`` unless ``copy`` (which lets a larger ``mask`` be freed).
        """
        rows = np.flatnonzero(mask.any(axis=1))
        if len(rows) == 0:
            return cls(0, 0, np.zeros((0, 0), dtype=bool))
        cols = np.flatnonzero(mask.any(axis=0))
        r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
        crop = mask[r0:r1, c0:c1]
        return cls(row + r0, col + c0, crop.copy() if copy else crop)


class SegmentationResult:
    """Masks predicted for N objects of one image.

    Build it from full-size masks, ``SegmentationResult(masks, scores)`` ((N, H, W) bool, at
    the size of the image as read), or from crops with :meth:`from_crops`. Read whole-image masks
    with :attr:`masks` (all N) or :meth:`mask` (one); code that must stay within memory
    proportional to the objects reads :attr:`crops`.

    Attributes:
        crops: one :class:`MaskCrop` per object.
        shape: (H, W) of the image.
        scores: (N,) float32, the model's predicted IoU of each mask.
        logits: (N, h, w) float32 low-resolution logits (the model's 256x256 output for SAM),
            usable as a mask prompt for a refining call; None when not kept.
        trusted: False when the model is random-initialised (a tiny or smoke-test model),
            so the masks mean nothing and outputs say so.
        phrases: for a text search, the phrase each object was found for; else None.
        detector_scores: for a text search, (N,) float32 confidence of the detector (or of SAM 3's
            concept model) that each object matches its phrase; else None.

    Raises:
        ValueError: masks not (N, H, W) or scores not (N,).
    """

    def __init__(
        self,
        masks: np.ndarray,
        scores: np.ndarray,
        logits: np.ndarray | None = None,
        trusted: bool = True,
    ) -> None:
        if masks.ndim != 3:
            raise ValueError(f"masks must be (N, H, W), got shape {masks.shape}")
        crops = tuple(MaskCrop.tight(m) for m in masks)  # views: no copy of the caller's array
        self._init(crops, (int(masks.shape[1]), int(masks.shape[2])), scores, logits, trusted)
        self._full: np.ndarray | None = masks

    @classmethod
    def from_crops(
        cls,
        crops: Sequence[MaskCrop],
        shape: tuple[int, int],
        scores: np.ndarray,
        logits: np.ndarray | None = None,
        trusted: bool = True,
    ) -> SegmentationResult:
        """A result from one crop per object in an image of ``shape`` (rows, cols).

        Raises:
            ValueError: scores not (N,), or a crop reaching outside the image.
        """
        result = cls.__new__(cls)
        result._init(tuple(crops), (int(shape[0]), int(shape[1])), scores, logits, trusted)
        result._full = None
        for c in result.crops:
            x0, y0, x1, y1 = c.box
            if c.mask.size and not (0 <= x0 and 0 <= y0 and x1 <= shape[1] and y1 <= shape[0]):
                raise ValueError(f"a crop spans x {x0}-{x1}, y {y0}-{y1}, outside the {shape[1]} x {shape[0]} image")
        return result

    def _init(self, crops: tuple[MaskCrop, ...], shape: tuple[int, int], scores: np.ndarray,
              logits: np.ndarray | None, trusted: bool) -> None:
        if scores.shape != (len(crops),):
            raise ValueError(f"scores must be ({len(crops)},), got {scores.shape}")
        self.crops = crops
        self.shape = shape
        self.scores = scores
        self.logits = logits
        self.trusted = trusted
        self.phrases: tuple[str, ...] | None = None
        self.detector_scores: np.ndarray | None = None

    def with_phrases(self, phrases: Sequence[str], detector_scores: np.ndarray) -> SegmentationResult:
        """This result with each object's phrase and detector score set (returns ``self``).

        Raises:
            ValueError: not one phrase and one score per object.
        """
        scores = np.asarray(detector_scores, dtype=np.float32)
        if len(phrases) != len(self) or scores.shape != (len(self),):
            raise ValueError(f"need {len(self)} phrases and scores, got {len(phrases)} and {scores.shape}")
        self.phrases, self.detector_scores = tuple(phrases), scores
        return self

    def __len__(self) -> int:
        return len(self.crops)

    @property
    def masks(self) -> np.ndarray:
        """(N, H, W) bool, every mask at the image's size; built on first use and then kept."""
        if self._full is None:
            full = np.zeros((len(self), *self.shape), dtype=bool)
            for i in range(len(self)):
                self._paste(i, full[i])
            self._full = full
        return self._full

    def mask(self, i: int) -> np.ndarray:
        """(H, W) bool mask of object ``i`` at the image's size (a new array)."""
        out = np.zeros(self.shape, dtype=bool)
        self._paste(i, out)
        return out

    def _paste(self, i: int, out: np.ndarray) -> None:
        c = self.crops[i]
        h, w = c.mask.shape
        out[c.row : c.row + h, c.col : c.col + w] |= c.mask

    def pixel_counts(self) -> np.ndarray:
        """(N,) int64 number of pixels in each mask."""
        return np.array([int(np.count_nonzero(c.mask)) for c in self.crops], dtype=np.int64)

    @property
    def mask_bytes(self) -> int:
        """Bytes of memory the masks hold: their crops and any full-size array behind them."""
        owners: dict[int, int] = {}
        for a in [c.mask for c in self.crops] + ([self._full] if self._full is not None else []):
            while isinstance(a.base, np.ndarray):  # a view keeps the whole of its base alive
                a = a.base
            owners[id(a)] = a.nbytes
        return sum(owners.values())

    def label_image(self) -> np.ndarray:
        """(H, W) uint16 image: 0 = background, i + 1 where mask i is set (later masks win ties)."""
        labels = np.zeros(self.shape, dtype=np.uint16)
        for i, c in enumerate(self.crops):
            h, w = c.mask.shape
            labels[c.row : c.row + h, c.col : c.col + w][c.mask] = i + 1
        return labels
