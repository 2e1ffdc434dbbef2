"""A detector whose answer the test chooses: known boxes for known phrases, so masks can be checked against them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from samadapt.text.types import Detection, Thresholds


@dataclass
class KnownBoxDetector:
    """Finds, for each phrase asked that it knows, the boxes it was given (in the pixels of the image it sees).

    Attributes:
        boxes: phrase -> boxes (x0, y0, x1, y1) it "finds".
        score: the score of every detection.
        calls: the (image shape, phrases) of each call, to check what the detector was shown.
    """

    boxes: dict[str, list[tuple[float, float, float, float]]]
    score: float = 0.9
    name: str = "known-box"
    trusted: bool = True
    model_id: str = "known-box:0"
    calls: list[tuple[tuple[int, ...], tuple[str, ...]]] = field(default_factory=list)

    def detect(self, rgb: np.ndarray, phrases: Sequence[str], thresholds: Thresholds) -> list[Detection]:
        self.calls.append((rgb.shape, tuple(phrases)))
        return [Detection(tuple(map(float, b)), p, self.score) for p in phrases for b in self.boxes.get(p, [])]


@dataclass
class BrightDetector:
    """Finds, for ``phrase``, the box of the image's bright pixels (red above 200): one object a tile may cut."""

    phrase: str = "pit"
    score: float = 0.9
    name: str = "bright"
    trusted: bool = True
    model_id: str = "bright:0"
    calls: int = 0

    def detect(self, rgb: np.ndarray, phrases: Sequence[str], thresholds: Thresholds) -> list[Detection]:
        self.calls += 1
        rows, cols = np.nonzero(rgb[..., 0] > 200)
        if self.phrase not in phrases or not len(rows):
            return []
        return [Detection((float(cols.min()), float(rows.min()), float(cols.max() + 1), float(rows.max() + 1)),
                          self.phrase, self.score)]
