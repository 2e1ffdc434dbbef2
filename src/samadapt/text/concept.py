"""SAM 3's concept prompts: every instance of a phrase in one image.

The concept model reads the cached ViT output of the image (the same embedding point and box
prompts use), so searching a second phrase costs the detector heads only. Scores and masks follow
transformers' ``Sam3Processor.post_process_instance_segmentation``: an object's score is its
query's probability times the image-level presence probability; its mask is the mask head's
probability resized bilinearly to the image and kept above 0.5.

Exemplar boxes, SAM 3's other concept prompt ("objects like this one"), go with every phrase; without
a phrase the model reads "visual", as transformers' ``Sam3Processor`` has it. transformers pools their
features with torchvision's ``roi_align``; samadapt lends it its own (:mod:`samadapt.models.roi_align`).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from samadapt.errors import CheckpointError, InputError
from samadapt.models.roi_align import torchvision_stand_in
from samadapt.models.sam import sam3_parts
from samadapt.models.sam3 import CONCEPT_THRESHOLD, TEXT_TOKENS
from samadapt.predict.result import MaskCrop, SegmentationResult

if TYPE_CHECKING:
    from samadapt.imagery.read import GeoImage
    from samadapt.predict.segmenter import Segmenter
    from samadapt.text.search import TextQuery

#: Probability above which a pixel belongs to a concept mask (Sam3Processor's ``mask_threshold``).
MASK_THRESHOLD = 0.5

#: The text SAM 3 reads for exemplar boxes given without a phrase (Sam3Processor's default).
VISUAL_PROMPT = "visual"


@lru_cache(maxsize=4)
def _tokenizer(folder: Path) -> Any:  # noqa: ANN401 - a transformers tokenizer
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError, TypeError) as err:
        raise CheckpointError(f"cannot read SAM 3's tokenizer in {folder} (vocab.json, merges.txt, "
                              f"tokenizer_config.json): {err}") from None


def exemplar_boxes(boxes: Sequence[Sequence[float]], hw: tuple[int, int]) -> torch.Tensor:
    """Exemplar boxes (x0, y0, x1, y1, image pixels) as the concept model takes them: (1, K, 4) normalised
    centre x, centre y, width, height. SAM 3 stretches the image to its square input without padding, so
    a box's share of the image is its share of the input.

    Raises:
        InputError: a box that is not inside the image with x0 < x1 and y0 < y1.
    """
    h, w = hw
    out = []
    for box in boxes:
        x0, y0, x1, y1 = (float(v) for v in box)
        if not (0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h):
            raise InputError(f"exemplar {x0:g},{y0:g},{x1:g},{y1:g} is not a box inside the {w} x {h} image")
        out.append([(x0 + x1) / 2 / w, (y0 + y1) / 2 / h, (x1 - x0) / w, (y1 - y0) / h])
    return torch.tensor([out], dtype=torch.float32)


@torch.no_grad()
def segment_concepts(
    segmenter: Segmenter,
    image: GeoImage,
    query: TextQuery,
    exemplars: Sequence[Sequence[float]] = (),
    exemplar_labels: Sequence[int] | None = None,
) -> SegmentationResult:
    """Every instance of each phrase of ``query`` in ``image``, by SAM 3's concept model.

    Args:
        segmenter: a segmenter of a SAM 3 model.
        image: the image.
        query: phrases (each searched on its own) and ``thresholds.box``, the score an instance must
            exceed (default 0.3, Sam3Processor's).
        exemplars: boxes (x0, y0, x1, y1, image pixels) of example objects, read with every phrase.
        exemplar_labels: per exemplar, 1 (find objects like this) or 0 (not like this); default all 1.

    Returns:
        One mask per instance, phrase by phrase, best first; ``scores`` and ``detector_scores`` are both
        the concept score (SAM 3 predicts no IoU for these masks).

    Raises:
        InputError: a model that is not SAM 3, a text threshold (GroundingDINO's), or a bad exemplar.
    """
    loaded = segmenter.loaded
    if loaded.family != "sam3":
        raise InputError(f"concept prompts need a SAM 3 model; this one is {loaded.family}")
    if query.thresholds.text is not None:
        raise InputError("--text-threshold applies to GroundingDINO only; SAM 3 takes --box-threshold")
    if loaded.folder is None:
        raise CheckpointError(f"{loaded.name} was not loaded from a folder, so SAM 3's tokenizer cannot be found")
    threshold = CONCEPT_THRESHOLD if query.thresholds.box is None else query.thresholds.box
    from transformers.models.sam3 import modeling_sam3

    parts, dev = sam3_parts(loaded), loaded.device
    emb = segmenter.embed(image)
    features = parts.concept_features(emb.embedding["vit"].to(dev))
    tokenizer = _tokenizer(loaded.folder)
    box_kwargs: dict[str, torch.Tensor] = {}
    if len(exemplars):
        labels = [1] * len(exemplars) if exemplar_labels is None else [int(v) for v in exemplar_labels]
        if len(labels) != len(exemplars) or set(labels) - {0, 1}:
            raise InputError("each exemplar's label is 1 (objects like this) or 0 (not like this)")
        box_kwargs = {"input_boxes": exemplar_boxes(exemplars, (image.height, image.width)).to(dev),
                      "input_boxes_labels": torch.tensor([labels], dtype=torch.long, device=dev)}
    crops: list[MaskCrop] = []
    scores: list[float] = []
    phrases: list[str] = []
    for phrase in query.phrases:
        ids = tokenizer([phrase], padding="max_length", max_length=TEXT_TOKENS, truncation=True, return_tensors="pt")
        with torchvision_stand_in(modeling_sam3):
            out = parts.detector(vision_embeds=features, input_ids=ids["input_ids"].to(dev),
                                 attention_mask=ids["attention_mask"].to(dev), **box_kwargs)
        probs = out.pred_logits[0].sigmoid()
        if out.presence_logits is not None:
            probs = probs * out.presence_logits[0].sigmoid()
        order = [int(i) for i in torch.argsort(probs, descending=True) if probs[i] > threshold]
        for i in order:
            crops.append(_instance_crop(out.pred_masks[0, i], image))
            scores.append(float(probs[i]))
            phrases.append(phrase)
    conf = np.array(scores, dtype=np.float32)
    result = SegmentationResult.from_crops(crops, (image.height, image.width), conf, trusted=loaded.trusted)
    return result.with_phrases(phrases, conf)


def _instance_crop(logits: torch.Tensor, image: GeoImage) -> MaskCrop:
    """One instance's mask at the image's size: the mask head's probability resized, above 0.5, nodata left out."""
    prob = F.interpolate(logits.float().sigmoid()[None, None], (image.height, image.width), mode="bilinear",
                         align_corners=False)[0, 0]
    mask = (prob > MASK_THRESHOLD).cpu().numpy() & image.valid
    return MaskCrop.tight(mask, copy=True)
