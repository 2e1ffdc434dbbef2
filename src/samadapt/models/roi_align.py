"""RoIAlign for SAM 3's exemplar boxes, without torchvision.

transformers' SAM 3 pools the image features under each exemplar box with torchvision's
``ops.roi_align`` (its defaults: spatial scale 1, an adaptive number of samples per bin, boxes not
shifted by half a pixel). samadapt keeps torchvision out, so :func:`roi_align` computes the same
operation (RoIAlign of Mask R-CNN, He et al. 2017, in the convention torchvision documents):

- a box (x0, y0, x1, y1) is at least 1 x 1 feature cell; it is cut into ``out x out`` bins;
- each bin averages ``ceil(box side / out)`` x ``ceil(...)`` bilinear samples at evenly spaced
  points inside it;
- a sample more than one cell outside the map reads 0; otherwise coordinates are clamped to the
  map and read bilinearly, the last row and column standing in for their outside neighbours.

:func:`torchvision_stand_in` lends it to transformers' SAM 3 module while a concept call runs.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from types import SimpleNamespace

import torch


def _bilinear(feature: torch.Tensor, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(C, len(y), len(x)) samples of a (C, H, W) map at every (y, x) pair of the two grids."""
    c, h, w = feature.shape
    ys, xs = torch.meshgrid(y, x, indexing="ij")
    outside = (ys < -1.0) | (ys > h) | (xs < -1.0) | (xs > w)
    ys, xs = ys.clamp(min=0.0), xs.clamp(min=0.0)
    y0, x0 = ys.floor().long(), xs.floor().long()
    y_last, x_last = y0 >= h - 1, x0 >= w - 1
    y0, x0 = y0.clamp(max=h - 1), x0.clamp(max=w - 1)
    y1, x1 = (y0 + 1).clamp(max=h - 1), (x0 + 1).clamp(max=w - 1)
    ys = torch.where(y_last, y0.to(ys.dtype), ys)
    xs = torch.where(x_last, x0.to(xs.dtype), xs)
    ly, lx = ys - y0, xs - x0
    hy, hx = 1.0 - ly, 1.0 - lx
    value = (hy * hx * feature[:, y0, x0] + hy * lx * feature[:, y0, x1]
             + ly * hx * feature[:, y1, x0] + ly * lx * feature[:, y1, x1])
    return value.masked_fill(outside, 0.0)


def roi_align(features: torch.Tensor, boxes: Sequence[torch.Tensor], output_size: int | tuple[int, int],
              spatial_scale: float = 1.0, sampling_ratio: int = -1, aligned: bool = False) -> torch.Tensor:
    """Pool ``features`` (B, C, H, W) under each box: (K, C, out_h, out_w), the boxes of image 0 first.

    Args:
        features: the feature maps.
        boxes: one (k_i, 4) tensor of (x0, y0, x1, y1) boxes per image, in feature cells / ``spatial_scale``.
        output_size: bins per side (or (rows, cols)).
        spatial_scale: feature cells per box unit.
        sampling_ratio: samples per bin side; <= 0 takes ``ceil(box side / bins)``.
        aligned: shift boxes by half a cell (torchvision's ``aligned=True``); SAM 3 leaves it False.
    """
    out_h, out_w = (output_size, output_size) if isinstance(output_size, int) else output_size
    pooled = []
    offset = 0.5 if aligned else 0.0
    for image, image_boxes in enumerate(boxes):
        feature = features[image]
        for box in image_boxes.to(features.dtype):
            x0, y0, x1, y1 = (float(v) * spatial_scale - offset for v in box)
            width, height = x1 - x0, y1 - y0
            if not aligned:
                width, height = max(width, 1.0), max(height, 1.0)
            bin_h, bin_w = height / out_h, width / out_w
            grid_h = sampling_ratio if sampling_ratio > 0 else max(math.ceil(height / out_h), 1)
            grid_w = sampling_ratio if sampling_ratio > 0 else max(math.ceil(width / out_w), 1)
            ys = y0 + bin_h * (torch.arange(out_h * grid_h, dtype=features.dtype) + 0.5) / grid_h
            xs = x0 + bin_w * (torch.arange(out_w * grid_w, dtype=features.dtype) + 0.5) / grid_w
            samples = _bilinear(feature, ys.to(feature.device), xs.to(feature.device))
            c = samples.shape[0]
            pooled.append(samples.view(c, out_h, grid_h, out_w, grid_w).mean(dim=(2, 4)))
    if not pooled:
        return features.new_zeros(0, features.shape[1], out_h, out_w)
    return torch.stack(pooled)


_LOCK = threading.Lock()


@contextmanager
def torchvision_stand_in(module: object) -> Iterator[None]:
    """Give ``module`` (transformers' SAM 3 modeling module) a ``torchvision`` whose ``ops.roi_align`` is
    :func:`roi_align`, for the duration of the block; a real torchvision already there is left alone."""
    with _LOCK:
        if hasattr(module, "torchvision"):
            yield
            return
        module.torchvision = SimpleNamespace(ops=SimpleNamespace(roi_align=roi_align))  # type: ignore[attr-defined]
        try:
            yield
        finally:
            del module.torchvision  # type: ignore[attr-defined]
