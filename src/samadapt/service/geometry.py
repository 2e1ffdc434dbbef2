"""Where objects are decoded: a request's bbox and prompts in frame pixels, grid cells and windows.

Pure functions of the request and the source's frame (no I/O, no model), so the engine's
window choices can be tested on their own. Frame pixel (c, r) covers [c, c+1) x [r, r+1);
windows are (x0, y0, x1, y1) in whole frame pixels, x1 and y1 excluded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from samadapt.errors import InputError
from samadapt.prompts.types import ObjectPrompt
from samadapt.service.frames import Frame
from samadapt.service.schemas import BBox, PointPrompt, RectanglePrompt, SegmentRequest
from samadapt.service.sources import SourceError
from samadapt.service.vector import Window

#: Fewest pixels a view may span per side. A smaller one is almost always a client sending a
#: bbox that does not match its zoom, and SAM would see a few pixels blown up to its whole input.
MIN_VIEW_SIDE = 8


@dataclass
class FrameObject:
    """One object's prompts in continuous frame pixels.

    Attributes:
        points: (P, 2) float (x, y) continuous frame coordinates (pixel centres at +0.5).
        labels: (P,) int, 1 foreground, 0 background.
        box: (4,) float XYXY on frame pixel edges, or None.
    """

    points: np.ndarray
    labels: np.ndarray
    box: np.ndarray | None = None

    def extent(self) -> tuple[float, float, float, float]:
        """(x0, y0, x1, y1) covering the foreground points and the box (all points if none is foreground)."""
        pts = self.points[self.labels == 1] if (self.labels == 1).any() else self.points
        parts = [pts] if len(pts) else []
        if self.box is not None:
            parts.append(self.box.reshape(2, 2))
        xy = np.concatenate(parts)
        return float(xy[:, 0].min()), float(xy[:, 1].min()), float(xy[:, 0].max()), float(xy[:, 1].max())

    def in_window(self, window: Window) -> ObjectPrompt:
        """The SamPredictor prompt of this object in the pixels of ``window``, clamped inside it."""
        x0, y0, x1, y1 = window
        w, h = x1 - x0, y1 - y0
        points = self.points - (x0 + 0.5, y0 + 0.5)
        points[:, 0] = points[:, 0].clip(0, w - 1)
        points[:, 1] = points[:, 1].clip(0, h - 1)
        box = None
        if self.box is not None:
            box = (self.box - (x0, y0, x0, y0)).clip(0, (w, h, w, h))
            if not (box[0] < box[2] and box[1] < box[3]):  # a box thinner than a pixel
                box = np.array([min(box[0], w - 1), min(box[1], h - 1), min(box[0], w - 1) + 1,
                                min(box[1], h - 1) + 1])
        return ObjectPrompt(points=points, labels=self.labels, box=box)


def bbox_extent(frame: Frame, bbox: BBox) -> tuple[float, float, float, float]:
    """Continuous frame-pixel extent (x0, y0, x1, y1) of a lat/lng bbox (its four corners)."""
    lng = np.array([bbox.sw.lng, bbox.ne.lng, bbox.ne.lng, bbox.sw.lng])
    lat = np.array([bbox.sw.lat, bbox.sw.lat, bbox.ne.lat, bbox.ne.lat])
    x, y = frame.to_pixel(lng, lat)
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise InputError("the bbox cannot be placed on this source's imagery (its corners do not project)")
    return float(x.min()), float(y.min()), float(x.max()), float(y.max())


def view_window(frame: Frame, extent: tuple[float, float, float, float], zoom: int, max_side: int) -> Window:
    """The bbox's whole-pixel extent clipped to the frame's imagery; 400 errors when too large, too
    small (under :data:`MIN_VIEW_SIDE` pixels a side, before or after clipping) or outside."""
    x0, y0 = math.floor(extent[0]), math.floor(extent[1])
    x1, y1 = max(math.ceil(extent[2]), x0 + 1), max(math.ceil(extent[3]), y0 + 1)
    if x1 - x0 > max_side or y1 - y0 > max_side:
        raise InputError(
            f"bbox too large for zoom {zoom}: it spans {x1 - x0} x {y1 - y0} pixels and at most {max_side} per side "
            f"are allowed; zoom in or choose a smaller area"
        )
    if x1 - x0 < MIN_VIEW_SIDE or y1 - y0 < MIN_VIEW_SIDE:
        raise InputError(
            f"bbox too small for zoom {zoom}: it spans {x1 - x0} x {y1 - y0} pixels and at least {MIN_VIEW_SIDE} per "
            f"side are needed; zoom in or choose a larger area"
        )
    b = frame.bounds
    win = (max(x0, b[0]), max(y0, b[1]), min(x1, b[2]), min(y1, b[3]))
    if win[0] >= win[2] or win[1] >= win[3]:
        raise SourceError(f"the bbox lies outside the imagery of source {frame.source!r}")
    if win[2] - win[0] < MIN_VIEW_SIDE or win[3] - win[1] < MIN_VIEW_SIDE:
        raise SourceError(
            f"the bbox overlaps the imagery of source {frame.source!r} by only {win[2] - win[0]} x {win[3] - win[1]} "
            f"pixels and at least {MIN_VIEW_SIDE} per side are needed; move the view onto the imagery"
        )
    return win


def build_objects(request: SegmentRequest, frame: Frame, window: Window) -> list[FrameObject]:
    """Turn the request's point and rectangle prompts into objects in frame pixels (see ``SegmentRequest`` for
    grouping; text prompts have no place and are answered by :mod:`samadapt.service.text`)."""
    points = [p for p in request.prompt if isinstance(p, PointPrompt)]
    rects = [p for p in request.prompt if isinstance(p, RectanglePrompt)]
    if not request.separate and len(rects) > 1:
        raise InputError(f"got {len(rects)} rectangles for one object; send one rectangle per request, "
                         f"or set \"separate\": true to segment each rectangle as its own object")
    if not any(p.label == 1 for p in points) and not rects:
        raise InputError("the prompts hold background points only; add a foreground point (label 1) or a rectangle")
    lng = [p.data.lng for p in points] + [c.lng for r in rects for c in (r.data.sw, r.data.ne)]
    lat = [p.data.lat for p in points] + [c.lat for r in rects for c in (r.data.sw, r.data.ne)]
    x, y = frame.to_pixel(np.asarray(lng, np.float64), np.asarray(lat, np.float64))
    xy = np.column_stack([np.asarray(x, np.float64), np.asarray(y, np.float64)])
    x0, y0, x1, y1 = window
    outside = ~((xy[:, 0] >= x0) & (xy[:, 0] <= x1) & (xy[:, 1] >= y0) & (xy[:, 1] <= y1))
    if outside[: len(points)].any() or (len(rects) and outside[len(points):].reshape(-1, 2).all(axis=1).any()):
        raise SourceError(f"a prompt lies outside the imagery of source {frame.source!r}")
    pxy, labels = xy[: len(points)], np.array([p.label for p in points], dtype=np.int64)
    boxes = []
    for i in range(len(rects)):
        c = xy[len(points) + 2 * i : len(points) + 2 * i + 2]
        boxes.append(np.array([c[:, 0].min(), c[:, 1].min(), c[:, 0].max(), c[:, 1].max()]))
    if not request.separate:
        return [FrameObject(pxy, labels, boxes[0] if boxes else None)]
    bg = labels == 0
    objects = [FrameObject(np.concatenate([pxy[i : i + 1], pxy[bg]]), np.concatenate([[1], labels[bg]]))
               for i in np.flatnonzero(~bg)]
    objects += [FrameObject(pxy[bg], labels[bg], b) for b in boxes]
    return objects


def check_prompts(request: SegmentRequest, max_prompts: int) -> None:
    """400 errors for too many prompts and point or rectangle prompts outside the bbox."""
    if len(request.prompt) > max_prompts:
        raise InputError(f"too many prompts: {len(request.prompt)}, at most {max_prompts} per request")
    bbox = request.bbox
    for i, p in enumerate(request.prompt):
        if isinstance(p, PointPrompt):
            corners = [p.data]
        elif isinstance(p, RectanglePrompt):
            corners = [p.data.sw, p.data.ne]
        else:  # a text prompt: the whole view
            continue
        for c in corners:
            if not bbox.contains(c.lat, c.lng):
                raise InputError(f"prompt {i} ({p.type} at lat {c.lat:g}, lng {c.lng:g}) lies outside the bbox")


def cell_of(extent: tuple[float, float, float, float], size: int) -> Window | None:
    """The grid cell (side ``size``, origin at multiples of it) holding the extent, or None when it crosses cells."""
    x0, y0, x1, y1 = extent
    cx, cy = math.floor(x0 / size), math.floor(y0 / size)
    # An extent ending exactly on a cell edge (a box's right edge) still belongs to the cell.
    if math.floor(max(x1 - 1e-6, x0) / size) != cx or math.floor(max(y1 - 1e-6, y0) / size) != cy:
        return None
    return (cx * size, cy * size, cx * size + size, cy * size + size)


def recentred(extent: tuple[float, float, float, float], size: int) -> Window:
    """A window of side ``size`` holding the extent, centred on it, origin on multiples of size/4 when possible."""
    q = max(size // 4, 1)
    origin = []
    for lo_e, hi_e in ((extent[0], extent[2]), (extent[1], extent[3])):
        lo, hi = hi_e - size, lo_e  # origins for which the window holds [lo_e, hi_e]
        centre = (lo_e + hi_e) / 2 - size / 2
        k0, k1 = math.ceil(lo / q), math.floor(hi / q)
        if k0 <= k1:
            k = min(max(round(centre / q), k0), k1)
            origin.append(k * q)
        else:
            origin.append(math.floor(min(max(centre, lo), hi)))
    return (origin[0], origin[1], origin[0] + size, origin[1] + size)


def inner_edges_touched(mask: np.ndarray, window: Window, bounds: tuple[int, int, int, int]) -> bool:
    """True when the mask reaches an edge of its window that is not the frame's boundary."""
    x0, y0, x1, y1 = window
    return bool((mask[:, 0].any() and x0 > bounds[0]) or (mask[:, -1].any() and x1 < bounds[2])
                or (mask[0].any() and y0 > bounds[1]) or (mask[-1].any() and y1 < bounds[3]))
