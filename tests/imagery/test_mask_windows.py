"""Windowed mask resizing gives torch's full-size resize bit for bit, only over each object's window."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch

from samadapt.imagery.mask_windows import MIN_WINDOWED_PIXELS, fma32, kernel_arithmetic, logit_windows
from samadapt.imagery.preprocess import Preprocessing, masks_to_original, prepare


def _blob_logits(n: int, side: int, seed: int) -> torch.Tensor:
    """(n, side, side) logits: far below 0 except a random-valued patch per object (object 0 is
    empty, object 1 covers everything), so the resized values cross 0 at arbitrary places."""
    rng = np.random.default_rng(seed)
    low = np.full((n, side, side), -30.0, dtype=np.float32)
    low[1] = rng.normal(0.5, 3.0, (side, side))
    for i in range(2, n):
        r, c = rng.integers(0, side - 12, 2)
        h, w = rng.integers(2, 12, 2)
        low[i, r : r + h, c : c + w] = rng.normal(0.0, 3.0, (h, w))
    low[-1, -3:, -4:] = rng.normal(1.0, 3.0, (3, 4))  # against the bottom-right edge of the frame
    return torch.from_numpy(low)


@pytest.mark.parametrize("resize", ["longest", "square"])
@pytest.mark.parametrize("hw", [(517, 733), (811, 530)])
def test_windows_equal_the_full_resize_bit_for_bit(resize: str, hw: tuple[int, int]) -> None:
    spec = Preprocessing(size=256, resize=resize)  # type: ignore[arg-type]
    _, geometry = prepare(np.zeros((*hw, 3), np.uint8), spec)
    low = _blob_logits(8, 64, seed=hw[0])
    full = masks_to_original(low, geometry, spec).numpy()
    windowed = 0
    for i, (row, col, win) in enumerate(logit_windows(low, geometry, spec)):
        h, w = win.shape
        if win.size == 0:  # object 0, or a patch in the padding SAM crops away
            assert (row, col, h, w) == (0, 0, 0, 0) and not (full[i] > 0).any()
            continue
        # bit for bit: a window shifted by one pixel, or any other rounding, fails here
        np.testing.assert_array_equal(win.view(np.uint32), full[i, row : row + h, col : col + w].view(np.uint32))
        outside = full[i].copy()
        outside[row : row + h, col : col + w] = -1.0
        assert not (outside > 0).any(), f"object {i} has positive pixels outside its window"
        if h * w < hw[0] * hw[1]:
            windowed += 1
            shifted = full[i, row + 1 : row + 1 + h, col : col + w]
            assert shifted.shape != win.shape or not np.array_equal(shifted, win)
    assert windowed >= 4  # the patches went through the windowed resize, not the full-size one


def test_windows_hold_everything_above_a_negative_threshold() -> None:
    spec = Preprocessing(size=256)
    _, geometry = prepare(np.zeros((600, 700, 3), np.uint8), spec)
    low = _blob_logits(5, 64, seed=1)
    full = masks_to_original(low, geometry, spec).numpy()
    for i, (row, col, win) in enumerate(logit_windows(low, geometry, spec, above=-1.0)):
        h, w = win.shape
        outside = full[i].copy()
        outside[row : row + h, col : col + w] = -30.0
        assert (outside <= -1.0).all()
        np.testing.assert_array_equal(win, full[i, row : row + h, col : col + w])


def test_this_torch_is_reproduced_and_small_images_take_the_full_resize() -> None:
    assert kernel_arithmetic() is not None, "the windowed resize does not reproduce this torch's bilinear kernel"
    spec = Preprocessing(size=256)
    _, geometry = prepare(np.zeros((300, 500, 3), np.uint8), spec)
    assert 300 * 500 < MIN_WINDOWED_PIXELS
    low = _blob_logits(3, 64, seed=2)
    full = masks_to_original(low, geometry, spec).numpy()
    for i, (row, col, win) in enumerate(logit_windows(low, geometry, spec)):
        assert (row, col) == (0, 0) and (i == 0 or win.shape == (300, 500))
        if i:
            np.testing.assert_array_equal(win, full[i])


def test_fma32_rounds_once_even_where_float64_would_round_twice() -> None:
    # a * b = 2**-24 - 2**-70: the exact sum lies just below the half-way point between
    # 1 + 2**-23 and 1 + 2**-22; float64 rounds it onto that point, then to the even neighbour.
    a = np.array([2.0**-24 * (1 + 2.0**-23)], np.float32)
    b = np.array([1 - 2.0**-23], np.float32)
    c = np.array([1 + 2.0**-23], np.float32)
    twice = (a.astype(np.float64) * b + c).astype(np.float32)
    assert twice[0] == np.float32(1 + 2.0**-22)
    assert fma32(a, b, c)[0] == np.float32(1 + 2.0**-23)
    rng = np.random.default_rng(0)
    a, b, c = (rng.standard_normal(2000).astype(np.float32) * s for s in (1.0, 1.0, 1e-6))
    got = fma32(a, b, c)
    for x, y, z, g in zip(a[:300], b[:300], c[:300], got[:300], strict=False):
        exact = Fraction(float(x)) * Fraction(float(y)) + Fraction(float(z))
        error = abs(Fraction(float(g)) - exact)
        for neighbour in (np.nextafter(g, np.float32(-np.inf)), np.nextafter(g, np.float32(np.inf))):
            assert error <= abs(Fraction(float(neighbour)) - exact)  # no float32 lies closer
