"""The result of a segmentation: masks with their scores, at the original image size."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SegmentationResult:
    """Masks predicted for N objects of one image.

    Attributes:
        masks: (N, H, W) bool, one mask per object, at the size of the image as read.
        scores: (N,) float32, the model's predicted IoU of each mask.
        logits: (N, h, w) float32 low-resolution logits (the model's 256x256 output for SAM),
            usable as a mask prompt for a refining call; None when not kept.
        trusted: False when the model is random-initialised (a tiny or smoke-test model),
            so the masks mean nothing and outputs say so.
    """

    masks: np.ndarray
    scores: np.ndarray
    logits: np.ndarray | None = None
    trusted: bool = True

    def __post_init__(self) -> None:
        if self.masks.ndim != 3:
            raise ValueError(f"masks must be (N, H, W), got shape {self.masks.shape}")
        if self.scores.shape != (self.masks.shape[0],):
            raise ValueError(f"scores must be ({self.masks.shape[0]},), got {self.scores.shape}")

    def __len__(self) -> int:
        return int(self.masks.shape[0])

    def label_image(self) -> np.ndarray:
        """(H, W) uint16 image: 0 = background, i + 1 where mask i is set (later masks win ties)."""
        labels = np.zeros(self.masks.shape[1:], dtype=np.uint16)
        for i, mask in enumerate(self.masks):
            labels[mask] = i + 1
        return labels
