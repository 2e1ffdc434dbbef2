"""Prompt types: points, boxes and mask prompts in pixel coordinates of the original image.

Coordinates are pixels of the image as read (before SAM's resize), x to the right and y
down, as segment-anything's ``SamPredictor`` takes them: the point for the pixel in row r
and column c is (c, r) (SAM's prompt encoder adds the half pixel to reach its centre).
Boxes are XYXY on pixel edges: (x0, y0, x1, y1) with x0 < x1 and y0 < y1; a box covering
columns c0..c1 and rows r0..r1 is (c0, r0, c1 + 1, r1 + 1).

Label masks (ground truth, pseudo-labels, training targets) hold class ids with
:data:`IGNORE` (255) for pixels that carry no label.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from samadapt.errors import InputError

IGNORE = 255
"""Label-mask value of pixels that carry no label ("ignore"): never a class id nor part of a region."""

PromptMode = Literal["box", "point", "points", "box+point"]
"""How an object is prompted from its region: ``box``, the tight box; ``point``, the interior point
(plus any negatives); ``points``, several positives (the first is the interior point) plus any
negatives; ``box+point``, the box together with the points of ``points``."""


@dataclass(frozen=True)
class ObjectPrompt:
    """The prompt for one object: any mix of points, at most one box and one mask.

    Attributes:
        points: (P, 2) float array of (x, y) pixel coordinates, or empty (0, 2).
        labels: (P,) int array, 1 = foreground, 0 = background.
        box: (4,) float array XYXY in pixels, or None.
        mask: (H, W) float array of mask logits or a 0/1 mask at image size, or None.
    """

    points: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), dtype=np.float64))
    labels: np.ndarray = field(default_factory=lambda: np.zeros((0,), dtype=np.int64))
    box: np.ndarray | None = None
    mask: np.ndarray | None = None

    def __post_init__(self) -> None:
        points = np.asarray(self.points, dtype=np.float64).reshape(-1, 2)
        labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        if len(points) != len(labels):
            raise InputError(f"got {len(points)} points but {len(labels)} labels; give one label (1 or 0) per point")
        if not np.isin(labels, (0, 1)).all():
            found = sorted(set(labels.tolist()))
            raise InputError(f"point labels must be 1 (foreground) or 0 (background), got {found}")
        object.__setattr__(self, "points", points)
        object.__setattr__(self, "labels", labels)
        if self.box is not None:
            box = np.asarray(self.box, dtype=np.float64).reshape(-1)
            if box.shape != (4,) or not (box[0] < box[2] and box[1] < box[3]):
                raise InputError(f"a box must be x0,y0,x1,y1 with x0 < x1 and y0 < y1, got {box.tolist()}")
            object.__setattr__(self, "box", box)
        if len(points) == 0 and self.box is None and self.mask is None:
            raise InputError("an object prompt needs at least one point, a box or a mask")

    def check_inside(self, height: int, width: int) -> None:
        """Raise InputError if a point or box lies outside an image of this size."""
        for x, y in self.points:
            if not (0 <= x <= width and 0 <= y <= height):
                raise InputError(
                    f"point ({x:g}, {y:g}) lies outside the image, which is {width} x {height} pixels (x, y)"
                )
        if self.box is not None:
            x0, y0, x1, y1 = self.box
            if x1 <= 0 or y1 <= 0 or x0 >= width or y0 >= height:
                raise InputError(
                    f"box {self.box.tolist()} lies outside the image, which is {width} x {height} pixels (x, y)"
                )
        if self.mask is not None and np.shape(self.mask) != (height, width):
            raise InputError(
                f"mask prompt has shape {np.shape(self.mask)}, the image is {(height, width)} (rows, cols)"
            )


def point(x: float, y: float, label: int = 1) -> ObjectPrompt:
    """One object prompted by a single point (label 1 = foreground, 0 = background)."""
    return ObjectPrompt(points=np.array([[x, y]]), labels=np.array([label]))


def box(x0: float, y0: float, x1: float, y1: float) -> ObjectPrompt:
    """One object prompted by an XYXY pixel box."""
    return ObjectPrompt(box=np.array([x0, y0, x1, y1]))
