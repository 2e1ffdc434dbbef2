"""Point and box prompts generated from masks: ground truth for training, rough masks at inference.

Conventions (shared with segment-anything's ``SamPredictor`` and transformers' ``SamProcessor``):

* Masks are (H, W) arrays, rows top to bottom, columns left to right.
* A point is (x, y) = (column, row) of a pixel: the point returned for pixel ``(r, c)`` is
  ``x = c, y = r``, so ``mask[int(y), int(x)]`` is that pixel. SAM's prompt encoder adds the
  half-pixel shift to the pixel centre itself, which is why no 0.5 is added here.
* A box is XYXY in pixel edges: ``(x0, y0, x1, y1)`` = (first column, first row, last column + 1,
  last row + 1), so the box covers whole pixels and ``x1 - x0`` is the width in pixels.
* A label mask holds class ids; 255 means "ignore" and is never part of a region, and negative
  points are never placed on it.

Every random choice goes through a ``numpy.random.Generator`` (or a ``seed`` that makes one), so
the same seed gives the same prompts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import get_args

import numpy as np
from scipy import ndimage

from samadapt.errors import InputError
from samadapt.prompts.types import IGNORE, ObjectPrompt, PromptMode


def _check_2d(array: np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(array)
    if array.ndim != 2 or 0 in array.shape:
        raise InputError(f"{name} must be a non-empty (H, W) array, got shape {array.shape}")
    return array


def _check_region(region: np.ndarray) -> np.ndarray:
    region = _check_2d(region, "region")
    if region.dtype != np.bool_:
        raise InputError(f"region must be a bool (H, W) array as returned by regions(), got dtype {region.dtype}")
    if not region.any():
        raise InputError("region is empty (no True pixel); give a region with at least one pixel")
    return region


def _check_count(value: int, name: str, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise InputError(f"{name} must be an integer of at least {minimum}, got {value!r}")
    return int(value)


def _check_distance(value: float, name: str) -> float:
    value = float(value)
    if not (np.isfinite(value) and value >= 0.0):
        raise InputError(f"{name} must be a finite number of pixels >= 0, got {value!r}")
    return value


def foreground(mask: np.ndarray, class_id: int | None = None) -> np.ndarray:
    """The pixels that belong to the object class, as an (H, W) bool array.

    Args:
        mask: (H, W) binary mask (bool, or numbers 0 = background, 1 = object, 255 = ignore)
            when ``class_id`` is None; otherwise a label mask of integer class ids.
        class_id: the class to take from a label mask; 255 (ignore) is not allowed.

    Returns:
        (H, W) bool, True on object pixels; ignore pixels (255) are always False.

    Raises:
        InputError: if the mask is not 2-D, or is binary-mode but holds values other than
            0, 1 and 255 (pass ``class_id`` for label masks; convert 0/255 images with ``mask > 0``).
    """
    mask = _check_2d(mask, "mask")
    if class_id is not None:
        class_id = _check_count(class_id, "class_id")
        if class_id == IGNORE:
            raise InputError("class_id 255 is the ignore value and cannot be a class; give another class id")
    if mask.dtype == np.bool_:
        return mask.copy() if class_id is None else (mask == class_id)
    if mask.dtype.kind not in "iuf":
        raise InputError(f"mask must hold bool or numeric values, got dtype {mask.dtype}")
    if class_id is None:
        values = np.unique(mask)
        extra = values[~np.isin(values, (0, 1, IGNORE))]
        if extra.size:
            raise InputError(
                f"a binary mask may hold only 0, 1 and 255 (ignore), found {extra[:5].tolist()}; "
                "pass class_id= to take one class of a label mask"
            )
        return mask == 1
    return mask == class_id


def regions(
    mask: np.ndarray, *, class_id: int | None = None, min_area: int = 1, connectivity: int = 8
) -> list[np.ndarray]:
    """Connected regions of a binary mask, or of one class of a label mask.

    Args:
        mask: (H, W) binary or label mask; see :func:`foreground`. 255 is never in a region.
        class_id: the class to split into regions; None for a binary mask.
        min_area: regions with fewer pixels are dropped.
        connectivity: 8 (diagonal neighbours connect) or 4.

    Returns:
        One (H, W) bool array per region, largest first; regions of equal area are ordered by
        their first pixel in row-major order. The order is the same as in
        :func:`prompts_from_mask`.

    Raises:
        InputError: on a bad mask, class id, ``min_area`` or ``connectivity``.
    """
    fg = foreground(mask, class_id)
    min_area = _check_count(min_area, "min_area", 1)
    if connectivity not in (4, 8):
        raise InputError(f"connectivity must be 4 or 8, got {connectivity!r}")
    structure = ndimage.generate_binary_structure(2, 1 if connectivity == 4 else 2)
    labels, count = ndimage.label(fg, structure=structure)
    areas = np.bincount(labels.ravel(), minlength=count + 1)
    keep = [i for i in range(1, count + 1) if areas[i] >= min_area]
    # ndimage.label numbers regions in row-major order of their first pixel, so a stable
    # sort on area keeps that order among ties.
    keep.sort(key=lambda i: -int(areas[i]))
    return [labels == i for i in keep]


def _bounds(region: np.ndarray) -> tuple[int, int, int, int]:
    """(row0, row1, col0, col1) of the region's pixels, ends exclusive."""
    rows = np.flatnonzero(region.any(axis=1))
    cols = np.flatnonzero(region.any(axis=0))
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def _depth(region: np.ndarray) -> tuple[np.ndarray, int, int]:
    """Euclidean distance of each region pixel to the nearest non-region pixel or image edge.

    Computed on the region's bounding box only (the exact result, since every pixel just
    outside the box is outside the region). Returns the (h, w) depth of the box and its
    (row, col) offset in the image; depth is 0 outside the region.
    """
    r0, r1, c0, c1 = _bounds(region)
    crop = np.pad(region[r0:r1, c0:c1], 1, constant_values=False)
    return ndimage.distance_transform_edt(crop)[1:-1, 1:-1], r0, c0


def _deepest(depth: np.ndarray) -> tuple[int, int]:
    """(row, col) of the depth maximum; ties go to the pixel nearest the centroid of the tied
    pixels, then to the first in row-major order."""
    rows, cols = np.nonzero(depth >= depth.max() - 1e-9)
    d2 = (rows - rows.mean()) ** 2 + (cols - cols.mean()) ** 2
    best = int(np.argmin(d2))  # argmin returns the first (row-major) minimum
    return int(rows[best]), int(cols[best])


def interior_point(region: np.ndarray) -> tuple[float, float]:
    """The point deepest inside a region: the maximum of its Euclidean distance transform.

    Unlike the centroid, the result is always a pixel of the region, also for rings,
    crescents and one-pixel regions. The image edge counts as the region's boundary, so a
    region cut by the edge gets a point away from it.

    Args:
        region: (H, W) bool, one region with at least one True pixel.

    Returns:
        (x, y) = (column, row) of the chosen pixel, as floats. Ties are broken by distance
        to the centroid of the tied pixels, then by row-major order.

    Raises:
        InputError: if the region is not a non-empty 2-D bool array.
    """
    region = _check_region(region)
    depth, r0, c0 = _depth(region)
    row, col = _deepest(depth)
    return float(c0 + col), float(r0 + row)


def _pick_spaced(
    rows: np.ndarray, cols: np.ndarray, first: tuple[int, int], k: int, spacing: float, rng: np.random.Generator
) -> list[tuple[int, int]]:
    """Greedy random choice of up to ``k`` candidate pixels (plus ``first``), pairwise at least
    ``spacing`` apart and all distinct; stops early when no candidate is left."""
    chosen = [first]
    alive = np.ones(rows.shape, dtype=bool)
    for _ in range(k):
        d2 = (rows - chosen[-1][0]) ** 2 + (cols - chosen[-1][1]) ** 2
        alive &= (d2 > 0) & (d2 >= spacing**2)
        left = np.flatnonzero(alive)
        if left.size == 0:
            break
        pick = int(left[rng.integers(left.size)])
        chosen.append((int(rows[pick]), int(cols[pick])))
    return chosen


def _ring(region: np.ndarray, margin: int) -> tuple[np.ndarray, int, int]:
    """Pixels outside the region within Euclidean distance ``margin`` of it, on the region's
    bounding box grown by ``margin`` (clipped to the image); returns (ring, row0, col0)."""
    r0, r1, c0, c1 = _bounds(region)
    h, w = region.shape
    r0, c0 = max(r0 - margin, 0), max(c0 - margin, 0)
    r1, c1 = min(r1 + margin, h), min(c1 + margin, w)
    crop = region[r0:r1, c0:c1]
    if crop.all():
        return np.zeros_like(crop), r0, c0
    distance = ndimage.distance_transform_edt(~crop)
    return ~crop & (distance <= margin), r0, c0


def sample_points(
    region: np.ndarray,
    n_pos: int,
    n_neg: int = 0,
    *,
    erode: int = 0,
    min_spacing: float = 0.0,
    neg_margin: int = 10,
    rng: np.random.Generator,
    avoid: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Positive points inside a region and negative points in a ring around it.

    The first positive is :func:`interior_point`; the others are drawn uniformly from the
    region eroded by a disc of radius ``erode`` (the image edge counts as boundary). If the
    erosion leaves nothing, the whole region is used. Positives are distinct pixels at least
    ``min_spacing`` apart (Euclidean, in pixels): when the region cannot hold ``n_pos`` such
    points, fewer are returned rather than breaking the spacing. Negatives are distinct pixels
    outside the region within ``neg_margin`` pixels of it (a disc dilation minus the region),
    fewer when the ring is smaller than ``n_neg`` (e.g. a region filling the image).

    Args:
        region: (H, W) bool, one non-empty region.
        n_pos: wanted number of positive points (0 or more).
        n_neg: wanted number of negative points (0 or more).
        erode: erosion radius in pixels for positives after the first.
        min_spacing: minimum Euclidean distance in pixels between any two positives.
        neg_margin: how far from the region negatives may lie, in pixels (>= 1 if n_neg > 0).
        rng: the random generator; the same generator state gives the same points.
        avoid: optional (H, W) bool, pixels where no negative may go (e.g. ignore pixels).

    Returns:
        ``points``: (P, 2) float64 (x, y) = (column, row), positives first, then negatives,
        P <= n_pos + n_neg; ``labels``: (P,) int64, 1 for positives, 0 for negatives.

    Raises:
        InputError: on an empty or non-bool region, negative counts or distances, or an
            ``avoid`` mask of another shape.
    """
    region = _check_region(region)
    n_pos, n_neg = _check_count(n_pos, "n_pos"), _check_count(n_neg, "n_neg")
    erode = _check_count(erode, "erode")
    min_spacing = _check_distance(min_spacing, "min_spacing")
    neg_margin = _check_count(neg_margin, "neg_margin", 1 if n_neg else 0)
    if not isinstance(rng, np.random.Generator):
        raise InputError(
            f"rng must be a numpy.random.Generator (np.random.default_rng(seed)), got {type(rng).__name__}"
        )
    if avoid is not None and np.shape(avoid) != region.shape:
        raise InputError(f"avoid has shape {np.shape(avoid)} but the region is {region.shape} (rows, cols)")

    points: list[tuple[int, int]] = []  # (row, col)
    if n_pos:
        depth, r0, c0 = _depth(region)
        first = _deepest(depth)
        # Kept by a disc erosion of radius e <=> no outside pixel within distance e <=> depth > e;
        # the deepest pixel is therefore in the eroded set whenever that set is not empty.
        candidates = depth > erode if erode and (depth > erode).any() else depth > 0
        rows, cols = np.nonzero(candidates)
        points = [(r + r0, c + c0) for r, c in _pick_spaced(rows, cols, first, n_pos - 1, min_spacing, rng)]
    n_found = len(points)
    if n_neg:
        ring, r0, c0 = _ring(region, neg_margin)
        if avoid is not None:
            ring &= ~np.asarray(avoid, dtype=bool)[r0 : r0 + ring.shape[0], c0 : c0 + ring.shape[1]]
        rows, cols = np.nonzero(ring)
        picks: np.ndarray | list[int] = (rng.choice(rows.size, size=min(n_neg, rows.size), replace=False)
                                         if rows.size else [])
        points += [(int(rows[i]) + r0, int(cols[i]) + c0) for i in picks]
    xy = np.array([(c, r) for r, c in points], dtype=np.float64).reshape(-1, 2)
    labels = np.zeros(len(points), dtype=np.int64)
    labels[:n_found] = 1
    return xy, labels


def tight_box(region: np.ndarray) -> np.ndarray:
    """The smallest box covering every pixel of a region.

    Args:
        region: (H, W) bool, non-empty.

    Returns:
        (4,) float64 XYXY in pixel edges: (first column, first row, last column + 1,
        last row + 1).

    Raises:
        InputError: if the region is empty or not a 2-D bool array.
    """
    r0, r1, c0, c1 = _bounds(_check_region(region))
    return np.array([c0, r0, c1, r1], dtype=np.float64)


def perturb_box(box: np.ndarray, max_shift: float, *, rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Jitter a box as a hand-drawn box would be off: each coordinate moves by at most ``max_shift``.

    The box is first clipped to the image. Each of the four coordinates then gets an
    independent uniform shift in [-max_shift, max_shift] and is clipped to the image again
    (which never moves it further from the original). An axis whose result would be thinner
    than min(1 pixel, original size) is drawn again (up to 100 times, then left unshifted),
    so the result is never empty.

    Args:
        box: (4,) XYXY in pixels, x0 < x1 and y0 < y1.
        max_shift: largest shift of any coordinate, in pixels (>= 0).
        rng: the random generator.
        shape: (H, W) of the image, rows then columns.

    Returns:
        (4,) float64 XYXY inside [0, W] x [0, H].

    Raises:
        InputError: on a malformed or empty box, a box outside the image, a negative
            ``max_shift`` or a bad shape.
    """
    box = np.asarray(box, dtype=np.float64).reshape(-1)
    if box.shape != (4,) or not np.isfinite(box).all() or not (box[0] < box[2] and box[1] < box[3]):
        raise InputError(
            f"a box must be four finite numbers x0, y0, x1, y1 with x0 < x1 and y0 < y1, got {box.tolist()}"
        )
    max_shift = _check_distance(max_shift, "max_shift")
    if len(shape) != 2 or min(shape) < 1:
        raise InputError(f"shape must be the image's (height, width) in pixels, got {shape!r}")
    out = box.copy()
    for axis, limit in ((0, float(shape[1])), (1, float(shape[0]))):
        lo, hi = min(max(box[axis], 0.0), limit), min(max(box[axis + 2], 0.0), limit)
        if hi <= lo:
            raise InputError(
                f"box {box.tolist()} lies outside the image, which is {shape[1]} x {shape[0]} pixels (x, y)"
            )
        min_size = min(1.0, hi - lo)
        out[axis], out[axis + 2] = lo, hi
        for _ in range(100):
            a, b = np.clip(np.array([lo, hi]) + rng.uniform(-max_shift, max_shift, size=2), 0.0, limit)
            if b - a >= min_size:
                out[axis], out[axis + 2] = a, b
                break
    return out


@dataclass(frozen=True)
class SamplingOptions:
    """How each region of a mask is turned into a prompt, for :func:`prompts_from_mask` and
    :func:`samadapt.prompts.rough.prompts_from_rough`.

    The options that depend on the mode are checked here; the others are checked where they
    are used (:func:`regions`, :func:`sample_points`).

    Attributes:
        mode: ``"box"``, ``"point"`` (the interior point), ``"points"`` or ``"box+point"``
            (see :data:`samadapt.prompts.types.PromptMode`).
        n_pos: positive points per region for ``points`` and ``box+point`` (must be 1 for
            ``point``); see :func:`sample_points`.
        n_neg: negative points per region (not with ``box``); never placed on ignore pixels.
        erode: erosion radius in pixels for positives after the first.
        min_spacing: minimum distance between positives, in pixels.
        neg_margin: how far outside the region negatives may lie, in pixels.
        box_noise: largest shift of each box coordinate in pixels (:func:`perturb_box`); 0 = tight box.
        min_area: regions with fewer pixels get no prompt.
        connectivity: 8 or 4, how pixels connect into regions.
        seed: random seed; region ``i`` uses the ``i``-th child of ``SeedSequence(seed)``, so a
            region's prompt depends only on the seed and its rank.

    Raises:
        InputError: on an unknown mode, options that do not fit the mode, a negative
            ``box_noise`` or a negative ``seed``.
    """

    mode: PromptMode = "box"
    n_pos: int = 1
    n_neg: int = 0
    erode: int = 0
    min_spacing: float = 0.0
    neg_margin: int = 10
    box_noise: float = 0.0
    min_area: int = 1
    connectivity: int = 8
    seed: int = 0

    def __post_init__(self) -> None:
        mode, n_pos, n_neg = self.mode, self.n_pos, self.n_neg
        if mode not in get_args(PromptMode):
            raise InputError(f"mode must be one of {', '.join(get_args(PromptMode))}, got {mode!r}")
        if mode == "point" and n_pos != 1:
            raise InputError(f"mode 'point' prompts with the one interior point, got n_pos={n_pos}; use mode 'points'")
        if mode == "points" and (isinstance(n_pos, bool) or not isinstance(n_pos, (int, np.integer)) or n_pos < 1):
            raise InputError(f"mode 'points' needs n_pos of at least 1, got {n_pos!r}")
        if mode == "box" and n_neg:
            raise InputError(
                f"mode 'box' takes no points, got n_neg={n_neg}; use mode 'box+point' for points with the box"
            )
        object.__setattr__(self, "box_noise", _check_distance(self.box_noise, "box_noise"))
        object.__setattr__(self, "seed", _check_count(self.seed, "seed"))


def prompts_from_mask(
    mask: np.ndarray, options: SamplingOptions, *, class_id: int | None = None
) -> list[ObjectPrompt]:
    """One prompt per connected region of a mask, e.g. to train a mask decoder on ground truth.

    Prompt ``i`` belongs to ``regions(mask, class_id=..., min_area=..., connectivity=...)[i]``
    (largest region first), which is the target mask to train it against.

    Args:
        mask: (H, W) binary or label mask; see :func:`foreground` (255 = ignore).
        options: the prompt mode and how points and boxes are drawn (:class:`SamplingOptions`).
        class_id: the class to prompt in a label mask; None for a binary mask.

    Returns:
        The prompts, largest region first; empty when the mask has no region.

    Raises:
        InputError: on a bad mask, class id or option (see :func:`regions`, :func:`sample_points`).
    """
    o = options
    found = regions(mask, class_id=class_id, min_area=o.min_area, connectivity=o.connectivity)
    ignore = None if np.asarray(mask).dtype == np.bool_ else np.asarray(mask) == IGNORE
    prompts = []
    for region, child in zip(found, np.random.SeedSequence(o.seed).spawn(len(found)), strict=False):
        rng = np.random.default_rng(child)
        box = None
        if o.mode in ("box", "box+point"):
            box = tight_box(region)
            if o.box_noise:
                box = perturb_box(box, o.box_noise, rng=rng, shape=region.shape)
        if o.mode == "box":
            prompts.append(ObjectPrompt(box=box))
            continue
        points, labels = sample_points(region, o.n_pos, o.n_neg, erode=o.erode, min_spacing=o.min_spacing,
                                       neg_margin=o.neg_margin, rng=rng, avoid=ignore)
        prompts.append(ObjectPrompt(points=points, labels=labels, box=box))
    return prompts
