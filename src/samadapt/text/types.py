"""What text prompting passes around: detections, thresholds and the detector interface."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch


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


def ranked_detections(boxes: np.ndarray, scale: tuple[float, float], scores: np.ndarray, best: np.ndarray,
                      keep: np.ndarray, phrases: Sequence[str]) -> list[Detection]:
    """Detections from a detector's relative boxes, best first.

    Args:
        boxes: (Q, 4) boxes as (centre x, centre y, width, height), relative to the model input (0-1).
        scale: (sx, sy) pixels of the original image per unit of the relative x and y.
        scores: (Q,) each box's score.
        best: (Q,) the index of the phrase naming each box.
        keep: (Q,) bool, the boxes that pass the thresholds.
        phrases: the phrases, as the user gave them.
    """
    sx, sy = scale
    cx, cy, bw, bh = np.asarray(boxes, dtype=np.float64).T
    corners = np.stack([(cx - bw / 2) * sx, (cy - bh / 2) * sy, (cx + bw / 2) * sx, (cy + bh / 2) * sy], axis=1)
    order = [i for i in np.argsort(-scores, kind="stable") if keep[i]]
    return [Detection(box=(float(corners[i, 0]), float(corners[i, 1]), float(corners[i, 2]), float(corners[i, 3])),
                      phrase=phrases[int(best[i])], score=float(scores[i])) for i in order]


class LoadedDetector:
    """What every loaded detector holds: a transformers model, its tokenizer and preprocessing, and its identity.

    Attributes:
        name: registry name or folder it was loaded from.
        trusted: False for a random-initialised model.
        model_id: the family and the sha256 of the weights.
        model: the transformers model, eval mode, fp32.
        tokenizer: its tokenizer.
        preprocessing: its image preprocessing (from its ``preprocessor_config.json``).
        device: where the model runs.
    """

    def __init__(self, model: torch.nn.Module, tokenizer: Any, preprocessing: Any, *,  # noqa: ANN401
                 name: str, model_id: str, trusted: bool, device: torch.device) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.preprocessing = preprocessing
        self.name = name
        self.model_id = model_id
        self.trusted = trusted
        self.device = device
