"""``POST /map``: segment every class in a view with a trained adapter, no prompts.

The view is fetched like a ``view``-mode ``/segment`` request, predicted whole when it fits
the model input, else in overlapping tiles of the model's input size blended with the
mapping module's smooth window (so no seams show), and each 4-connected region of each
non-background class becomes a polygon in lng/lat with its class, name and mean probability.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import numpy as np

from samadapt.errors import InputError
from samadapt.mapping.runner import NODATA
from samadapt.mapping.tiled import blend_window
from samadapt.methods.base import Sample
from samadapt.service.engine import SegmentEngine
from samadapt.service.geometry import bbox_extent, view_window
from samadapt.service.schemas import MapRequest
from samadapt.service.vector import label_features

if TYPE_CHECKING:
    from samadapt.train.adapter import Adapter


def _starts(length: int, tile: int, overlap: int) -> list[int]:
    """Tile origins along one axis: a step of tile - overlap, the last tile ending at the edge."""
    if length <= tile:
        return [0]
    step = tile - overlap
    starts = list(range(0, length - tile, step)) + [length - tile]
    return sorted(set(starts))


def predict_view(adapter: Adapter, pixels: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Class ids (h, w) uint8 (255 = no imagery) and probabilities (C, h, w) of an RGB view.

    Args:
        adapter: a loaded adapter (anything with ``predict_sample`` and ``method.num_classes``,
            ``method.preprocessing.size``).
        pixels: (h, w, 3) uint8 view.
        valid: (h, w) bool, False where the view holds no imagery.
    """
    h, w = valid.shape
    tile = int(adapter.method.preprocessing.size)
    if h <= tile and w <= tile:
        pred = adapter.predict_sample(Sample("view", pixels, valid))
        probs = pred.probabilities
    else:
        overlap = tile // 8
        weights = blend_window(tile, overlap)
        acc = np.zeros((int(adapter.method.num_classes), h, w), np.float32)
        wsum = np.zeros((h, w), np.float32)
        for r0 in _starts(h, tile, overlap):
            for c0 in _starts(w, tile, overlap):
                sl = (slice(r0, r0 + tile), slice(c0, c0 + tile))
                tile_valid = valid[sl]
                if not tile_valid.any():
                    continue
                pred = adapter.predict_sample(Sample(f"view_{r0}_{c0}", np.ascontiguousarray(pixels[sl]), tile_valid))
                th, tw = tile_valid.shape
                wgt = weights[:th, :tw] * tile_valid
                acc[:, sl[0], sl[1]] += pred.probabilities * wgt
                wsum[sl] += wgt
        probs = acc / np.maximum(wsum, 1e-12)
    labels = probs.argmax(0).astype(np.uint8)
    labels[~valid] = NODATA
    return labels, probs


async def map_classes(engine: SegmentEngine, adapter: Adapter, adapter_name: str,
                      request: MapRequest) -> dict[str, Any]:
    """Answer one ``/map`` request with a FeatureCollection of class polygons."""
    t0 = time.perf_counter()
    if getattr(adapter, "needs_prompts", False):
        raise InputError("this adapter segments prompted objects (mask-decoder); use /segment with prompts instead")
    source = engine.source(request.source_type)
    frame = source.frame(request.zoom)
    view = view_window(frame, bbox_extent(frame, request.bbox), request.zoom, int(engine.settings.max_view_pixels))
    pixels = await engine.fetch(source, frame, view)
    t1 = time.perf_counter()
    valid = np.ones(pixels.shape[:2], dtype=bool)
    labels, probs = await engine.run_in_pool(predict_view, adapter, pixels, valid)
    t2 = time.perf_counter()
    classes = {int(k): str(v) for k, v in getattr(adapter, "classes", {}).items()}
    features = await engine.run_in_pool(label_features, labels, probs, classes, view, frame)
    t3 = time.perf_counter()
    return {
        "type": "FeatureCollection", "features": features, "body": frame.body, "crs": frame.crs,
        "source": source.name, "zoom": request.zoom, "model": engine.model_name, "adapter": adapter_name,
        "timings_ms": {"fetch": round((t1 - t0) * 1000, 2), "predict": round((t2 - t1) * 1000, 2),
                       "vectorise": round((t3 - t2) * 1000, 2), "total": round((t3 - t0) * 1000, 2)},
    }
