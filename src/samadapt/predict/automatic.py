"""Automatic ("everything") mode: prompt the model with a grid of points, keep the good masks.

Each grid point is one single-point prompt; the decoder proposes three masks per point.
Masks are kept when the model's predicted IoU and their stability score (how little the
mask changes when the logit threshold moves by ``stability_score_offset``) are high
enough; overlapping duplicates are removed by non-maximum suppression on their boxes; small
islands and holes are cleaned away. The whole image is one crop (no multi-crop layers).
Each mask is resized to the image only over the window where its logits can pass the stability
thresholds, and kept cropped to its object.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from scipy import ndimage

from samadapt.errors import InputError
from samadapt.imagery.mask_windows import logit_windows
from samadapt.predict.result import MaskCrop, SegmentationResult
from samadapt.prompts.types import ObjectPrompt

if TYPE_CHECKING:
    from samadapt.predict.segmenter import ImageLike, Segmenter


@dataclass(frozen=True)
class AutomaticOptions:
    """Settings of the automatic mode (defaults follow the SAM paper's generator).

    Attributes:
        points_per_side: the grid has this many points along each side of the image.
        points_per_batch: points decoded per decoder call.
        pred_iou_thresh: minimum predicted IoU of a kept mask.
        stability_score_thresh: minimum stability score of a kept mask.
        stability_score_offset: logit offset used for the stability score.
        box_nms_thresh: box IoU above which the lower-scored of two masks is dropped.
        min_region_area: islands and holes smaller than this many pixels are removed/filled.
    """

    points_per_side: int = 32
    points_per_batch: int = 64
    pred_iou_thresh: float = 0.88
    stability_score_thresh: float = 0.95
    stability_score_offset: float = 1.0
    box_nms_thresh: float = 0.7
    min_region_area: int = 0

    def __post_init__(self) -> None:
        if self.points_per_side < 1 or self.points_per_batch < 1:
            raise InputError("points_per_side and points_per_batch must be at least 1")
        if not 0.0 < self.box_nms_thresh <= 1.0:
            raise InputError(f"box_nms_thresh must be in (0, 1], got {self.box_nms_thresh}")


def point_grid(height: int, width: int, n: int) -> np.ndarray:
    """(n*n, 2) (x, y) pixel coordinates of an n x n grid of cell centres over the image."""
    xs = (np.arange(n) + 0.5) / n * width
    ys = (np.arange(n) + 0.5) / n * height
    gx, gy = np.meshgrid(xs, ys)
    return np.stack([gx.ravel(), gy.ravel()], axis=1)


def stability_score(logits: torch.Tensor, offset: float) -> torch.Tensor:
    """IoU between the masks thresholded at +offset and at -offset; logits (..., H, W) -> (...)."""
    inter = (logits > offset).flatten(-2).sum(-1).float()
    union = (logits > -offset).flatten(-2).sum(-1).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.zeros_like(union))


def mask_boxes(masks: np.ndarray) -> np.ndarray:
    """(N, 4) XYXY pixel boxes (exclusive max) of (N, H, W) bool masks; zeros for empty masks."""
    boxes = np.zeros((len(masks), 4), dtype=np.float64)
    for i, m in enumerate(masks):
        rows, cols = np.any(m, axis=1), np.any(m, axis=0)
        if rows.any():
            r = np.flatnonzero(rows)
            c = np.flatnonzero(cols)
            boxes[i] = (c[0], r[0], c[-1] + 1, r[-1] + 1)
    return boxes


def box_nms(boxes: np.ndarray, scores: np.ndarray, iou_thresh: float) -> np.ndarray:
    """Greedy non-maximum suppression; returns kept indices, best score first.

    Args:
        boxes: (N, 4) XYXY.
        scores: (N,) higher is better.
        iou_thresh: a box overlapping a kept one by more than this IoU is dropped.
    """
    order = np.argsort(-scores, kind="stable")
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    keep: list[int] = []
    while order.size:
        i = order[0]
        keep.append(int(i))
        rest = order[1:]
        x0 = np.maximum(boxes[i, 0], boxes[rest, 0])
        y0 = np.maximum(boxes[i, 1], boxes[rest, 1])
        x1 = np.minimum(boxes[i, 2], boxes[rest, 2])
        y1 = np.minimum(boxes[i, 3], boxes[rest, 3])
        inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
        union = area[i] + area[rest] - inter
        iou = np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)
        order = rest[iou <= iou_thresh]
    return np.asarray(keep, dtype=np.int64)


def remove_small_regions(mask: np.ndarray, min_area: int) -> np.ndarray:
    """Drop connected islands and fill holes smaller than ``min_area`` pixels in a bool mask."""
    if min_area <= 0:
        return mask
    out = mask.copy()
    labels, n = ndimage.label(out)
    if n:
        sizes = ndimage.sum(out, labels, index=np.arange(1, n + 1))
        out[np.isin(labels, np.flatnonzero(sizes < min_area) + 1)] = False
    holes, n = ndimage.label(~out)
    if n:
        sizes = ndimage.sum(~out, holes, index=np.arange(1, n + 1))
        # a "hole" touching the border is background, not a hole
        border = np.unique(np.concatenate([holes[0], holes[-1], holes[:, 0], holes[:, -1]]))
        small = [i + 1 for i in np.flatnonzero(sizes < min_area) if i + 1 not in border]
        out[np.isin(holes, small)] = True
    return out


def segment_everything(segmenter: Segmenter, image: ImageLike, options: AutomaticOptions) -> SegmentationResult:
    """Find every object in an image with a point grid (see module docstring).

    Returns:
        Masks sorted by predicted IoU, best first, with their predicted IoUs.
    """
    emb = segmenter.embed(image)
    h, w = emb.geometry.original_hw
    grid = point_grid(h, w, options.points_per_side)
    spec = segmenter.loaded.preprocessing
    offset = options.stability_score_offset
    kept: list[MaskCrop] = []
    kept_scores: list[float] = []
    for start in range(0, len(grid), options.points_per_batch):
        pts = grid[start : start + options.points_per_batch]
        prompts = [ObjectPrompt(points=p[None], labels=np.array([1])) for p in pts]
        low, iou = segmenter.decode(emb, prompts, multimask=True)
        low, iou = low.flatten(0, 1), iou.flatten()
        good = iou > options.pred_iou_thresh
        if not good.any():
            continue
        # Outside its window a mask's logits are <= -|offset|: they count in neither stability threshold.
        windows = logit_windows(low[good], emb.geometry, spec, above=-abs(offset))
        for (row, col, logits), score in zip(windows, iou[good].tolist(), strict=False):
            stab = stability_score(torch.from_numpy(logits)[None], offset)
            if not bool(stab[0] >= options.stability_score_thresh):
                continue
            valid = emb.image.valid[row : row + logits.shape[0], col : col + logits.shape[1]]
            crop = MaskCrop.tight((logits > 0) & valid, row, col, copy=True)
            if crop.mask.size:
                kept.append(crop)
                kept_scores.append(score)
    scores = np.asarray(kept_scores, dtype=np.float32)
    if kept:
        keep = box_nms(np.array([c.box for c in kept], dtype=np.float64), scores, options.box_nms_thresh)
        kept, scores = [kept[i] for i in keep], scores[keep]
    if options.min_region_area > 0:
        # Cleaning a tight crop equals cleaning the whole image: a background region touching the
        # crop's edge reaches the image's edge through the empty pixels around the crop.
        kept = [MaskCrop.tight(remove_small_regions(c.mask, options.min_region_area), c.row, c.col) for c in kept]
        nonempty = np.array([c.mask.size > 0 for c in kept], dtype=bool)
        kept, scores = [c for c, k in zip(kept, nonempty, strict=False) if k], scores[nonempty]
    return SegmentationResult.from_crops(kept, (h, w), scores, trusted=segmenter.loaded.trusted)
