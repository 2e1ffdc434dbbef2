"""Segment objects by name: phrases in, one mask per object found, each with its phrase and score.

Two routes, chosen by the segmenter's family. SAM 3 answers a phrase itself (its concept model
finds every instance). SAM, SAM-HQ, SAM 2 and EdgeTAM cannot read text, so an open-vocabulary
detector (GroundingDINO or OWLv2, :mod:`samadapt.text.detectors`) turns the phrases into boxes and
the segmenter turns each box into a mask, as the grounded-SAM recipe does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from samadapt.errors import InputError
from samadapt.predict.embed import ImageLike, as_geoimage
from samadapt.predict.result import MaskCrop, SegmentationResult
from samadapt.predict.segmenter import Segmenter
from samadapt.prompts.types import ObjectPrompt
from samadapt.text.types import Detection, Detector, Thresholds

#: Longest phrase accepted, in characters (CLIP and BERT read 32 to 256 tokens; a sentence is not a class name).
MAX_PHRASE = 200


def check_phrases(phrases: Sequence[str]) -> tuple[str, ...]:
    """The phrases, stripped, each non-empty, distinct and short.

    Raises:
        InputError: no phrase, an empty or over-long one, or one given twice.
    """
    out = tuple(" ".join(str(p).split()) for p in phrases)
    if not out:
        raise InputError("give at least one --text phrase, e.g. --text crater")
    for p in out:
        if not p:
            raise InputError("a --text phrase is empty; give a word or short phrase such as 'crater'")
        if len(p) > MAX_PHRASE:
            raise InputError(f"a --text phrase has {len(p)} characters; keep each under {MAX_PHRASE} (a class name)")
    twice = sorted({p for p in out if out.count(p) > 1})
    if twice:
        raise InputError(f"--text {twice[0]!r} is given twice; each phrase is one class")
    return out


@dataclass(frozen=True)
class TextQuery:
    """A text search: the phrases (one class each) and the score thresholds.

    Attributes:
        phrases: the class names to find, e.g. ("pit", "dune").
        thresholds: see :class:`samadapt.text.types.Thresholds`.
    """

    phrases: tuple[str, ...]
    thresholds: Thresholds = field(default_factory=Thresholds)

    def __post_init__(self) -> None:
        object.__setattr__(self, "phrases", check_phrases(self.phrases))
        for name, value in (("box", self.thresholds.box), ("text", self.thresholds.text)):
            if value is not None and not 0.0 <= value <= 1.0:
                raise InputError(f"--{name}-threshold must be between 0 and 1, got {value}")


def needs_detector(family: str) -> bool:
    """True for families that cannot read text and so need a detector for a text search."""
    return family != "sam3"


def segment_text(
    segmenter: Segmenter,
    image: ImageLike,
    query: TextQuery,
    detector: Detector | None = None,
    *,
    multimask: bool = False,
    exemplars: Sequence[Sequence[float]] = (),
    exemplar_labels: Sequence[int] | None = None,
) -> SegmentationResult:
    """Every object in ``image`` that matches a phrase of ``query``, one mask each.

    Args:
        segmenter: the segmenter; a SAM 3 one answers the phrases itself.
        image: the image.
        query: phrases and thresholds.
        detector: the detector giving boxes; required for every family but SAM 3, refused with it.
        multimask: let SAM pick the best of 3 masks per box (a box alone is rarely ambiguous, so off);
            SAM 3's concept masks are one per object.
        exemplars: SAM 3 only: boxes (x0, y0, x1, y1, pixels) of example objects, read with every phrase.
        exemplar_labels: 1 (objects like this) or 0 (not like this) per exemplar; default all 1.

    Returns:
        A result whose ``phrases`` and ``detector_scores`` name each object's phrase and
        confidence; its ``scores`` are the segmenter's predicted IoUs (SAM 3: the same confidence).
        An image with nothing found gives an empty result.

    Raises:
        InputError: a detector missing for a family that needs one, or given to SAM 3; exemplars
            for a family other than SAM 3.
    """
    geo = as_geoimage(image)
    family = segmenter.loaded.family
    if not needs_detector(family):
        if detector is not None:
            raise InputError("SAM 3 reads text itself; drop --detector")
        from samadapt.text.concept import segment_concepts

        return segment_concepts(segmenter, geo, query, exemplars, exemplar_labels)
    if len(exemplars):
        raise InputError(f"exemplar boxes are SAM 3's concept prompt; a {family} model takes --box prompts")
    if detector is None:
        raise InputError(f"a {family} model cannot read text; add --detector grounding-dino-tiny (or owlv2-base), "
                         "or use --model sam3")
    detections = detector.detect(geo.pixels, query.phrases, query.thresholds)
    return segment_detections(segmenter, geo, detections, trusted=detector.trusted, multimask=multimask)


def segment_detections(segmenter: Segmenter, image: ImageLike, detections: Sequence[Detection], *,
                       trusted: bool = True, multimask: bool = False) -> SegmentationResult:
    """One mask per detection, from its box; the result carries the detections' phrases and scores.

    Args:
        trusted: False when the detector is random-initialised; the result is then untrusted too.
    """
    geo = as_geoimage(image)
    h, w = geo.height, geo.width
    prompts, kept = [], []
    for d in detections:
        x0, y0, x1, y1 = (float(v) for v in d.box)
        x0, x1 = min(max(x0, 0.0), w), min(max(x1, 0.0), w)
        y0, y1 = min(max(y0, 0.0), h), min(max(y1, 0.0), h)
        if x1 - x0 < 1.0 or y1 - y0 < 1.0:  # a box squeezed to under a pixel at the image edge
            continue
        prompts.append(ObjectPrompt(box=np.array([x0, y0, x1, y1])))
        kept.append(d)
    crops: list[MaskCrop] = []
    scores = np.zeros(0, np.float32)
    if prompts:
        found = segmenter.segment(geo, prompts, multimask=multimask)
        crops = [inside_box(c, p.box) for c, p in zip(found.crops, prompts, strict=True) if p.box is not None]
        scores = found.scores
    result = SegmentationResult.from_crops(crops, (h, w), scores, trusted=segmenter.loaded.trusted and trusted)
    return result.with_phrases([d.phrase for d in kept], np.array([d.score for d in kept], dtype=np.float32))


def inside_box(crop: MaskCrop, box: np.ndarray) -> MaskCrop:
    """The part of a mask inside its detection's box, widened to whole pixels.

    The detector found the object within that box; mask pixels a box prompt lets spill beyond it
    belong to something else (grounded-SAM recipes leave them; samadapt cuts them, so an object's
    polygon never reaches past the box that names it).
    """
    x0, y0 = int(np.floor(box[0])), int(np.floor(box[1]))
    x1, y1 = int(np.ceil(box[2])), int(np.ceil(box[3]))
    h, w = crop.mask.shape
    keep = np.zeros_like(crop.mask)
    r0, r1 = max(y0 - crop.row, 0), min(y1 - crop.row, h)
    c0, c1 = max(x0 - crop.col, 0), min(x1 - crop.col, w)
    if r0 < r1 and c0 < c1:
        keep[r0:r1, c0:c1] = crop.mask[r0:r1, c0:c1]
    return MaskCrop.tight(keep, crop.row, crop.col, copy=True)
