"""What text prompting passes around: detections, thresholds and the detector interface."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class Detection:
    """One object a detector found for a phrase.

    Attributes:
        box: (x0, y0, x1, y1) in pixels of the image the detector was given (column, row; maximum exclusive).
        phrase: the phrase, as the user gave it, the object was found for.
        score: the detector's confidence in [0, 1].
    """

    box: tuple[float, float, float, float]
    phrase: str
    score: float


@dataclass(frozen=True)
class Thresholds:
    """Score thresholds of a text search; None takes the detector's (or SAM 3's) default.

    Attributes:
        box: minimum score of an object (GroundingDINO's box threshold, OWLv2's and SAM 3's score threshold).
        text: GroundingDINO only: minimum score of a phrase's tokens for the phrase to name the object.
    """

    box: float | None = None
    text: float | None = None


class Detector(Protocol):
    """An open-vocabulary detector: phrases in, boxes out.

    Attributes:
        name: registry name or folder it was loaded from.
        trusted: False for random-initialised (tiny) detectors, whose boxes mean nothing.
        model_id: identity of its weights (family and weights digest).
    """

    name: str
    trusted: bool
    model_id: str

    def detect(self, rgb: np.ndarray, phrases: Sequence[str], thresholds: Thresholds) -> list[Detection]:
        """Objects in an (H, W, 3) uint8 RGB image matching any of ``phrases``, best first."""
        ...
