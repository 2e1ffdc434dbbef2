"""Tests of samadapt.prompts.sampling: properties over random shapes, plus fixed cases and errors."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from samadapt.errors import InputError
from samadapt.prompts.sampling import (
    SamplingOptions,
    interior_point,
    perturb_box,
    prompts_from_mask,
    regions,
    sample_points,
    tight_box,
)

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])


def disc(shape: tuple[int, int], cy: float, cx: float, radius: float) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2


@st.composite
def shapes(draw: st.DrawFn) -> np.ndarray:
    """One non-empty region: ellipse, rectangle, ring, crescent or single pixel, often touching
    or cut by the image border."""
    h, w = draw(st.integers(1, 40)), draw(st.integers(1, 40))
    cy, cx = draw(st.integers(-3, h + 2)), draw(st.integers(-3, w + 2))
    kind = draw(st.sampled_from(["ellipse", "rectangle", "ring", "crescent", "pixel"]))
    yy, xx = np.mgrid[:h, :w]
    if kind == "ellipse":
        ry, rx = draw(st.floats(0.5, 20)), draw(st.floats(0.5, 20))
        region = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    elif kind == "rectangle":
        region = np.zeros((h, w), bool)
        region[max(cy, 0) : cy + draw(st.integers(1, 30)), max(cx, 0) : cx + draw(st.integers(1, 30))] = True
    elif kind == "ring":
        inner = draw(st.floats(0.5, 12))
        d2 = (yy - cy) ** 2 + (xx - cx) ** 2
        region = (d2 > inner**2) & (d2 <= (inner + draw(st.floats(1, 6))) ** 2)
    elif kind == "crescent":
        radius = draw(st.floats(2, 15))
        dy, dx = draw(st.floats(-radius, radius)), draw(st.floats(-radius, radius))
        region = disc((h, w), cy, cx, radius) & ~disc((h, w), cy + dy, cx + dx, radius * draw(st.floats(0.5, 1.0)))
    else:
        region = np.zeros((h, w), bool)
        region[draw(st.integers(0, h - 1)), draw(st.integers(0, w - 1))] = True
    assume(region.any())
    return region


def distance_to(region: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Euclidean distance of each (row, col) to the nearest region pixel."""
    rr, cc = np.nonzero(region)
    return np.sqrt(((rows[:, None] - rr[None]) ** 2 + (cols[:, None] - cc[None]) ** 2).min(axis=1))


@SETTINGS
@given(region=shapes())
def test_interior_point_is_a_region_pixel_of_maximal_depth(region: np.ndarray) -> None:
    x, y = interior_point(region)
    assert x == int(x) and y == int(y)
    assert region[int(y), int(x)]
    assert interior_point(region) == (x, y)  # deterministic


@SETTINGS
@given(
    region=shapes(),
    n_pos=st.integers(0, 6),
    n_neg=st.integers(0, 6),
    erode=st.integers(0, 4),
    min_spacing=st.floats(0, 8),
    neg_margin=st.integers(1, 6),
    seed=st.integers(0, 2**32 - 1),
)
def test_sampled_points_respect_region_spacing_and_ring(
    region: np.ndarray, n_pos: int, n_neg: int, erode: int, min_spacing: float, neg_margin: int, seed: int
) -> None:
    kwargs = dict(erode=erode, min_spacing=min_spacing, neg_margin=neg_margin)
    points, labels = sample_points(region, n_pos, n_neg, rng=np.random.default_rng(seed), **kwargs)
    assert points.shape == (len(labels), 2) and points.dtype == np.float64 and labels.dtype == np.int64
    pos, neg = points[labels == 1], points[labels == 0]
    assert len(pos) <= n_pos and len(neg) <= n_neg
    assert (labels[: len(pos)] == 1).all()  # positives first
    if n_pos:
        assert len(pos) >= 1 and tuple(pos[0]) == interior_point(region)
    for x, y in pos:
        assert region[int(y), int(x)]
    if len(pos) > 1:
        gaps = np.sqrt(((pos[:, None] - pos[None]) ** 2).sum(-1))[np.triu_indices(len(pos), 1)]
        assert gaps.min() >= max(min_spacing, 1.0) - 1e-9
    h, w = region.shape
    for x, y in neg:
        assert 0 <= x < w and 0 <= y < h and not region[int(y), int(x)]
    if len(neg):
        assert distance_to(region, neg[:, 1], neg[:, 0]).max() <= neg_margin + 1e-9
        assert len(np.unique(neg, axis=0)) == len(neg)
    again = sample_points(region, n_pos, n_neg, rng=np.random.default_rng(seed), **kwargs)
    np.testing.assert_array_equal(again[0], points)


@SETTINGS
@given(region=shapes())
def test_tight_box_covers_the_region_exactly(region: np.ndarray) -> None:
    x0, y0, x1, y1 = tight_box(region).astype(int)
    inside = np.zeros_like(region)
    inside[y0:y1, x0:x1] = True
    assert not (region & ~inside).any()
    assert region[y0].any() and region[y1 - 1].any() and region[:, x0].any() and region[:, x1 - 1].any()


@SETTINGS
@given(region=shapes(), max_shift=st.floats(0, 15), seed=st.integers(0, 2**32 - 1))
def test_perturbed_box_is_bounded_inside_and_reproducible(region: np.ndarray, max_shift: float, seed: int) -> None:
    box = tight_box(region)
    h, w = region.shape
    out = perturb_box(box, max_shift, rng=np.random.default_rng(seed), shape=(h, w))
    assert np.abs(out - box).max() <= max_shift + 1e-9
    assert 0 <= out[0] < out[2] <= w and 0 <= out[1] < out[3] <= h
    assert out[2] - out[0] >= 1 - 1e-9 and out[3] - out[1] >= 1 - 1e-9
    np.testing.assert_array_equal(perturb_box(box, max_shift, rng=np.random.default_rng(seed), shape=(h, w)), out)


def test_perturbed_box_differs_between_seeds() -> None:
    box = np.array([20.0, 30.0, 60.0, 50.0])
    a = perturb_box(box, 5.0, rng=np.random.default_rng(1), shape=(100, 100))
    b = perturb_box(box, 5.0, rng=np.random.default_rng(2), shape=(100, 100))
    assert not np.array_equal(a, b)
    np.testing.assert_array_equal(perturb_box(box, 0.0, rng=np.random.default_rng(1), shape=(100, 100)), box)


def ring(shape: tuple[int, int] = (41, 41), inner: float = 12, outer: float = 16) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    d2 = (yy - 20) ** 2 + (xx - 20) ** 2
    return (d2 > inner**2) & (d2 <= outer**2)


def test_interior_point_of_a_ring_is_on_the_ring_unlike_its_centroid() -> None:
    region = ring()
    rows, cols = np.nonzero(region)
    assert not region[round(rows.mean()), round(cols.mean())]
    x, y = interior_point(region)
    assert region[int(y), int(x)]
    assert 12 < np.hypot(x - 20, y - 20) <= 16


def test_interior_point_conventions_on_simple_shapes() -> None:
    one = np.zeros((5, 7), bool)
    one[3, 5] = True
    assert interior_point(one) == (5.0, 3.0)  # x = column, y = row
    rect = np.zeros((20, 30), bool)
    rect[2:9, 10:25] = True  # 7 rows x 15 cols: the deepest row is 5, the middle column 17
    assert interior_point(rect) == (17.0, 5.0)


def test_min_spacing_returns_fewer_points_rather_than_crowding() -> None:
    region = np.zeros((10, 10), bool)
    region[4:7, 4:7] = True
    points, labels = sample_points(region, 5, min_spacing=100.0, rng=np.random.default_rng(0))
    assert points.tolist() == [[5.0, 5.0]] and labels.tolist() == [1]


def test_erosion_falls_back_to_the_region() -> None:
    region = np.zeros((10, 10), bool)
    region[5, 2:8] = True  # one pixel thick: any erosion empties it
    points, _ = sample_points(region, 4, erode=3, rng=np.random.default_rng(0))
    assert len(points) == 4 and all(region[int(y), int(x)] for x, y in points)


def test_erosion_keeps_positives_away_from_the_edge() -> None:
    region = disc((60, 60), 30, 30, 20)
    points, _ = sample_points(region, 30, erode=5, rng=np.random.default_rng(3))
    assert len(points) == 30
    assert distance_to(~region, points[:, 1], points[:, 0]).min() > 5


def test_regions_split_classes_sort_by_area_and_skip_ignore() -> None:
    labels = np.zeros((20, 20), np.uint8)
    labels[1:3, 1:3] = 2  # 4 px
    labels[10:15, 10:15] = 2  # 25 px
    labels[5:8, 15:18] = 1  # 9 px, another class
    labels[0, 10:13] = 255
    found = regions(labels, class_id=2)
    assert [int(r.sum()) for r in found] == [25, 4]
    assert [int(r.sum()) for r in regions(labels, class_id=2, min_area=5)] == [25]
    assert regions(labels, class_id=1)[0][5:8, 15:18].all()
    diagonal = np.eye(4, dtype=bool)
    assert len(regions(diagonal)) == 1 and len(regions(diagonal, connectivity=4)) == 4
    assert regions(np.where(np.eye(3, dtype=bool), 255, 0).astype(np.uint8)) == []


def test_prompts_from_mask_modes_order_and_reproducibility() -> None:
    mask = np.zeros((40, 50), bool)
    mask[2:6, 2:6] = True
    mask[20:35, 10:40] = True
    boxes = prompts_from_mask(mask, SamplingOptions(mode="box"))
    assert [p.box.tolist() for p in boxes] == [[10, 20, 40, 35], [2, 2, 6, 6]]
    assert all(len(p.points) == 0 for p in boxes)
    point = prompts_from_mask(mask, SamplingOptions(mode="point", n_neg=2))
    assert point[0].labels.tolist() == [1, 0, 0]
    assert tuple(point[0].points[0]) == interior_point(regions(mask)[0])
    both = prompts_from_mask(mask, SamplingOptions(mode="box+point", n_pos=3, n_neg=1, box_noise=2.0, seed=7))
    again = prompts_from_mask(mask, SamplingOptions(mode="box+point", n_pos=3, n_neg=1, box_noise=2.0, seed=7))
    other = prompts_from_mask(mask, SamplingOptions(mode="box+point", n_pos=3, n_neg=1, box_noise=2.0, seed=8))
    for p, q in zip(both, again, strict=False):
        np.testing.assert_array_equal(p.points, q.points)
        np.testing.assert_array_equal(p.box, q.box)
        assert p.labels.tolist() == [1, 1, 1, 0]
    assert not all(np.array_equal(p.box, q.box) for p, q in zip(both, other, strict=False))
    for p in both:
        p.check_inside(40, 50)


def test_negatives_avoid_ignore_pixels() -> None:
    labels = np.full((30, 30), 255, np.uint8)
    labels[10:20, 10:20] = 1
    labels[10:20, 20:23] = 0  # the only labelled background
    (prompt,) = prompts_from_mask(labels, SamplingOptions(mode="points", n_neg=20, neg_margin=3), class_id=1)
    neg = prompt.points[prompt.labels == 0].astype(int)
    assert len(neg) == 20 and (labels[neg[:, 1], neg[:, 0]] == 0).all()


def test_errors_say_what_is_wrong() -> None:
    mask = np.zeros((10, 10), np.uint8)
    mask[2:5, 2:5] = 3
    with pytest.raises(InputError, match="class_id="):
        regions(mask)
    with pytest.raises(InputError, match="255 is the ignore value"):
        regions(mask, class_id=255)
    with pytest.raises(InputError, match="connectivity"):
        regions(mask, class_id=3, connectivity=6)
    with pytest.raises(InputError, match="mode must be one of"):
        SamplingOptions(mode="circle")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="mode 'box' takes no points"):
        SamplingOptions(mode="box", n_neg=2)
    with pytest.raises(InputError, match="use mode 'points'"):
        SamplingOptions(mode="point", n_pos=3)
    with pytest.raises(InputError, match="region is empty"):
        interior_point(np.zeros((4, 4), bool))
    with pytest.raises(InputError, match="neg_margin"):
        sample_points(mask == 3, 1, 2, neg_margin=0, rng=np.random.default_rng(0))
    with pytest.raises(InputError, match="x0 < x1"):
        perturb_box(np.array([5, 5, 5, 8]), 1.0, rng=np.random.default_rng(0), shape=(10, 10))
    with pytest.raises(InputError, match="outside the image"):
        perturb_box(np.array([20, 5, 25, 8]), 1.0, rng=np.random.default_rng(0), shape=(10, 10))
