"""Pseudo-labels from phrases alone: ``samadapt annotate --mode text``, no expert labels needed.

Each image is searched with :func:`samadapt.text.search.segment_text` (SAM 3 reads the phrases;
other families take a detector's boxes). The pseudo-label mask gives each object's pixels the
class of its phrase (class id = phrase index + 1, 0 = background, 255 = nodata). Where objects
overlap, the one of the higher detector score wins, whatever its phrase (on a tie, the first
found). The dataset written is one ``samadapt train`` takes: ``images/`` (copies), ``masks/``,
``classes.json`` naming the phrases, ``splits.json`` when the source has one, ``sources.csv``
(one row per object: its phrase and detector score) and ``annotation.json``, which records how
the labels were made (model, detector, phrases, thresholds), beside the ``samadapt.json``
manifest that lists every file.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from samadapt import __version__
from samadapt._io import write_json
from samadapt.annotate.core import (
    AnnotateSummary,
    ImageAnnotation,
    ObjectRecord,
    check_out_dir,
    write_pseudo_labels,
)
from samadapt.imagery.read import GeoImage
from samadapt.prompts.types import IGNORE
from samadapt.text.search import TextQuery, segment_text

if TYPE_CHECKING:
    from samadapt.predict.segmenter import Segmenter
    from samadapt.text.types import Detector

#: What records the way a text-mode dataset was made, in the dataset folder.
ANNOTATION_RECORD = "annotation.json"


def annotate_text_image(segmenter: Segmenter, image: GeoImage, stem: str, query: TextQuery,
                        detector: Detector | None = None) -> ImageAnnotation:
    """Pseudo-label one image from the phrases of ``query`` (see the module docstring).

    Returns:
        The (H, W) uint8 labels and one record per object found (source ``text:<phrase>``,
        score = the detector's score, pixels = those the object holds in the labels).
    """
    result = segment_text(segmenter, image, query, detector)
    index = {p: k for k, p in enumerate(query.phrases)}
    labels = np.zeros((image.height, image.width), dtype=np.uint8)
    best = np.full(labels.shape, -np.inf, dtype=np.float32)
    owner = np.full(labels.shape, -1, dtype=np.int32)
    phrases = result.phrases or ()
    scores = result.detector_scores if result.detector_scores is not None else np.zeros(len(result), np.float32)
    records = []
    for i, (crop, phrase, score) in enumerate(zip(result.crops, phrases, scores, strict=True)):
        sl = (slice(crop.row, crop.row + crop.mask.shape[0]), slice(crop.col, crop.col + crop.mask.shape[1]))
        wins = crop.mask & (float(score) > best[sl])
        best[sl][wins] = float(score)
        labels[sl][wins] = index[phrase] + 1
        owner[sl][wins] = i
        records.append(ObjectRecord(stem, i, index[phrase] + 1, "text", f"text:{phrase}", float(score), 0))
    counts = np.bincount(owner[owner >= 0], minlength=len(records))
    for rec, n in zip(records, counts, strict=False):
        rec.pixels = int(n)
    labels[~image.valid] = IGNORE
    return ImageAnnotation(stem, labels, records)


def annotation_record(segmenter: Segmenter, query: TextQuery, detector: Detector | None) -> dict[str, Any]:
    """How a text-mode dataset was made: the model, the detector, the phrases and the thresholds
    (None = the detector's, or SAM 3's, default)."""
    loaded = segmenter.loaded
    return {
        "mode": "text",
        "samadapt_version": __version__,
        "model": {"name": loaded.name, "family": loaded.family, "id": loaded.model_id, "trusted": loaded.trusted},
        "detector": None if detector is None else {"name": detector.name, "id": detector.model_id,
                                                   "trusted": detector.trusted},
        "phrases": list(query.phrases),
        "classes": {str(k + 1): p for k, p in enumerate(query.phrases)},
        "thresholds": {"box": query.thresholds.box, "text": query.thresholds.text},
    }


def annotate_text_dataset(
    dataset_dir: Path,
    out_dir: Path,
    *,
    segmenter: Segmenter,
    query: TextQuery,
    detector: Detector | None = None,
    split: str | None = None,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
    coco: bool = False,
) -> AnnotateSummary:
    """Write a dataset whose masks are pseudo-labels of the phrases of ``query`` (see the module docstring).

    Args:
        dataset_dir: a dataset folder; only its ``images/`` (and ``splits.json``) are read.
        out_dir: folder to write.
        segmenter: the segmenting model; SAM 3 reads the phrases itself.
        query: the phrases, one class each, and the thresholds.
        detector: the detector giving boxes, for every family but SAM 3.
        split: annotate only this split.
        overwrite: replace an ``out_dir`` holding a previous annotation samadapt wrote, unchanged since.
        progress: called with (done, total) after each image.
        coco: also write the pseudo-labels as COCO ``annotations.json``.

    Raises:
        InputError: an unknown split, or a detector missing for the model's family (or given to SAM 3).
        OutputExistsError: see :func:`samadapt.annotate.core.check_out_dir`.
    """
    from samadapt.data.dataset import SegDataset

    dataset = SegDataset.open(dataset_dir)
    stems = dataset.stems(split)
    check_out_dir(Path(out_dir), overwrite=overwrite)
    return write_pseudo_labels(
        dataset, stems, Path(out_dir), lambda stem, image: annotate_text_image(segmenter, image, stem, query, detector),
        {0: "background", **{k + 1: p for k, p in enumerate(query.phrases)}},
        source=f"text ({', '.join(query.phrases)})", overwrite=overwrite, progress=progress,
        more=lambda tmp: write_json(tmp / ANNOTATION_RECORD, annotation_record(segmenter, query, detector)),
        coco=coco)
