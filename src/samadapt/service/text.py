"""Text prompts of ``POST /segment``: phrases searched for over the whole view.

A request of text prompts (``{"type": "text", "data": "pit"}``, one phrase each) is answered on
the view window, like a ``view``-mode request: the view's pixels are fetched, and
:func:`samadapt.text.search.segment_text` finds every object matching a phrase. SAM 3 reads the
phrases itself; every other family needs the detector the server was started with
(``samadapt serve --detector``), whose boxes, in the view's pixels, the model turns into masks.
Each object becomes one feature with its ``phrase`` and ``detector_score`` besides ``score``
and ``object``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from samadapt.errors import InputError
from samadapt.service.vector import Window, mask_geometry
from samadapt.text.search import TextQuery, needs_detector, segment_text
from samadapt.text.types import Detector, Thresholds

if TYPE_CHECKING:
    from samadapt.imagery.read import GeoImage
    from samadapt.predict.result import SegmentationResult
    from samadapt.predict.segmenter import Segmenter
    from samadapt.service.frames import Frame
    from samadapt.service.settings import ServiceSettings


@dataclass(frozen=True)
class TextPrompts:
    """How a server answers text prompts, fixed when it starts.

    Attributes:
        family: the segmenting model's family ("sam3" reads text itself).
        detector: the loaded detector for the other families; None without one.
        thresholds: score thresholds of every search (None: the detector's or SAM 3's defaults).
    """

    family: str
    detector: Detector | None = None
    thresholds: Thresholds = field(default_factory=Thresholds)

    @property
    def available(self) -> bool:
        """True when text prompts can be answered: a SAM 3 model, or a detector."""
        return self.detector is not None or not needs_detector(self.family)

    @property
    def detector_name(self) -> str | None:
        """How responses name the detector: a registry name as is, a folder by its last part; None without one."""
        if self.detector is None:
            return None
        from samadapt.models.registry import REGISTRY

        name = str(self.detector.name)
        return name if name in REGISTRY else Path(name).name

    def check(self) -> None:
        """Refuse text prompts (a 400) when this server cannot answer them.

        Raises:
            InputError: a model that cannot read text and no detector.
        """
        if not self.available:
            raise InputError(f"this server cannot answer text prompts: its {self.family} model cannot read text and "
                             "it was started without a detector; restart it with --detector grounding-dino-tiny "
                             "(or owlv2-base, or a detector folder) or with a sam3 model")

    def search(self, segmenter: Segmenter, image: GeoImage,
               phrases: Sequence[str]) -> tuple[SegmentationResult, float]:
        """Every object of ``image`` matching a phrase, and the milliseconds the search took.

        The detector (if any) sees the image's pixels, so its boxes are in the image's pixels.
        """
        t0 = time.perf_counter()
        result = segment_text(segmenter, image, TextQuery(tuple(phrases), self.thresholds), self.detector)
        return result, (time.perf_counter() - t0) * 1000


def open_text_prompts(settings: ServiceSettings, family: str, device: str = "cpu") -> TextPrompts:
    """Check the text-prompt settings against the model and load the detector (once, at startup).

    Args:
        settings: the service settings (``detector``, ``box_threshold``, ``text_threshold``).
        family: the segmenting model's family.
        device: torch device of the detector.

    Raises:
        InputError: a detector given to SAM 3, or a threshold that no text search of this server would use.
        ModelNotFoundError: the detector name or folder does not resolve.
        CheckpointError: the folder holds no detector samadapt reads.
    """
    detector_ref, box, text = settings.detector, settings.box_threshold, settings.text_threshold
    if not needs_detector(family) and detector_ref is not None:
        raise InputError("SAM 3 reads text itself; drop --detector")
    if detector_ref is None and text is not None:
        raise InputError("--text-threshold applies to GroundingDINO only; give --detector grounding-dino-tiny "
                         "(or another GroundingDINO) or drop it")
    if detector_ref is None and box is not None and needs_detector(family):
        raise InputError(f"--box-threshold applies to text prompts, which a {family} model answers only with a "
                         "detector; add --detector grounding-dino-tiny (or owlv2-base) or drop it")
    detector = None
    if detector_ref is not None:
        from samadapt.text.detectors import load_detector

        detector = load_detector(detector_ref, device=device)
    return TextPrompts(family, detector, Thresholds(box=box, text=text))


def text_features(result: SegmentationResult, window: Window, frame: Frame) -> list[dict[str, Any]]:
    """One GeoJSON Feature per object of a text search over ``window``, with its phrase and scores.

    Args:
        result: the search's result, its masks in the window's pixels.
        window: (x0, y0, x1, y1) of the image searched, in frame pixels.
        frame: the frame the window belongs to.

    Returns:
        Features with properties ``score``, ``object``, ``phrase`` and ``detector_score``;
        objects with an empty mask are left out.
    """
    phrases = result.phrases or ("",) * len(result)
    confidence = result.detector_scores if result.detector_scores is not None else result.scores
    features = []
    for i, crop in enumerate(result.crops):
        if not crop.mask.any():
            continue
        h, w = crop.mask.shape
        x0, y0 = window[0] + crop.col, window[1] + crop.row
        geometry = mask_geometry(crop.mask, (x0, y0, x0 + w, y0 + h), frame)
        if geometry is None:
            continue
        features.append({"type": "Feature", "geometry": geometry,
                         "properties": {"score": round(float(result.scores[i]), 4), "object": i,
                                        "phrase": phrases[i], "detector_score": round(float(confidence[i]), 4)}})
    return features
