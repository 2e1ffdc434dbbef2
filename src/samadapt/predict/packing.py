"""Object prompts packed into the padded arrays SAM's prompt encoder takes.

The one packing of :class:`~samadapt.prompts.types.ObjectPrompt` lists into arrays, used by
the Segmenter (objects of mixed kinds, decoded by shape groups) and by the mask-decoder
method (a fixed number of objects and point slots per image, so that batches stack).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from samadapt.imagery.preprocess import Geometry, boxes_to_model, coords_to_model
from samadapt.models.sam import PAD_LABEL, DecoderPrompts
from samadapt.prompts.types import ObjectPrompt


def pack_prompts(
    prompts: Sequence[ObjectPrompt],
    geometry: Geometry,
    *,
    objects: int | None = None,
    points: int | None = None,
    boxes: bool | None = None,
    missing_box: float = float("nan"),
) -> DecoderPrompts:
    """Every object's points and box in the model-input frame, padded to common shapes.

    Args:
        prompts: one prompt per object, in pixels of the original image (mask prompts are
            not packed; the caller passes them one object at a time).
        geometry: the image's preprocessing geometry.
        objects: rows of the arrays (at least ``len(prompts)``); rows beyond the prompts are
            padding objects with no point and a ``missing_box`` box. None: one per prompt.
        points: point slots per object; an object's points beyond it are dropped, and unused
            slots are (0, 0) with label :data:`~samadapt.models.sam.PAD_LABEL`. None: the
            largest point count. 0: no point arrays.
        boxes: whether to give box arrays; None: when some prompt has a box.
        missing_box: the value of the box row of an object without a box. NaN (the default) is
            what the decoder reads as "no box"; 0 gives a padding object a box of zeros.

    Returns:
        ``points`` (N, P, 2) float64 (x, y) and ``labels`` (N, P) int64, or None without point
        slots; ``boxes`` (N, 4) float64 XYXY, or None; N = ``objects``.
    """
    n = len(prompts) if objects is None else objects
    slots = max((len(p.points) for p in prompts), default=0) if points is None else points
    xy = labels = box_rows = None
    if slots:
        xy = np.zeros((n, slots, 2))
        labels = np.full((n, slots), PAD_LABEL, dtype=np.int64)
        for j, p in enumerate(prompts):
            k = min(len(p.points), slots)
            xy[j, :k] = p.points[:k]
            labels[j, :k] = p.labels[:k]
        xy = coords_to_model(xy, geometry)
    if boxes if boxes is not None else any(p.box is not None for p in prompts):
        box_rows = np.full((n, 4), missing_box)
        for j, p in enumerate(prompts):
            if p.box is not None:
                box_rows[j] = p.box
        box_rows = boxes_to_model(box_rows, geometry)
    return DecoderPrompts(points=xy, labels=labels, boxes=box_rows)
