"""RoIAlign as SAM 3's exemplar boxes use it, against a point-by-point reading of the algorithm."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from samadapt.models.roi_align import roi_align, torchvision_stand_in


def _sample(f: np.ndarray, y: float, x: float) -> np.ndarray:
    """One bilinear read of a (C, H, W) map as RoIAlign defines it, one scalar at a time."""
    _, h, w = f.shape
    if y < -1.0 or y > h or x < -1.0 or x > w:
        return np.zeros(f.shape[0])
    y, x = max(y, 0.0), max(x, 0.0)
    y_lo, x_lo = int(y), int(x)
    if y_lo >= h - 1:
        y_lo = y_hi = h - 1
        y = float(y_lo)
    else:
        y_hi = y_lo + 1
    if x_lo >= w - 1:
        x_lo = x_hi = w - 1
        x = float(x_lo)
    else:
        x_hi = x_lo + 1
    ly, lx = y - y_lo, x - x_lo
    return ((1 - ly) * (1 - lx) * f[:, y_lo, x_lo] + (1 - ly) * lx * f[:, y_lo, x_hi]
            + ly * (1 - lx) * f[:, y_hi, x_lo] + ly * lx * f[:, y_hi, x_hi])


def _reference(f: np.ndarray, box: tuple[float, float, float, float], out: int) -> np.ndarray:
    x0, y0, x1, y1 = box
    rw, rh = max(x1 - x0, 1.0), max(y1 - y0, 1.0)
    gh, gw = max(math.ceil(rh / out), 1), max(math.ceil(rw / out), 1)
    result = np.zeros((f.shape[0], out, out))
    for ph in range(out):
        for pw in range(out):
            acc = np.zeros(f.shape[0])
            for iy in range(gh):
                for ix in range(gw):
                    y = y0 + ph * rh / out + (iy + 0.5) * rh / out / gh
                    x = x0 + pw * rw / out + (ix + 0.5) * rw / out / gw
                    acc += _sample(f, y, x)
            result[:, ph, pw] = acc / (gh * gw)
    return result


@pytest.mark.parametrize("box", [
    (2.0, 3.0, 9.0, 8.0),  # inside
    (0.3, 0.2, 0.9, 0.7),  # under one cell: widened to 1 x 1
    (-2.5, -1.5, 4.0, 3.0),  # partly outside, top-left
    (10.0, 7.0, 13.5, 11.0),  # reaching past the bottom-right edge
    (0.0, 0.0, 12.0, 10.0),  # the whole map: several samples per bin
])
def test_roi_align_is_the_point_by_point_algorithm(box: tuple[float, float, float, float]) -> None:
    rng = np.random.default_rng(0)
    features = rng.normal(size=(2, 3, 10, 12))
    out = roi_align(torch.from_numpy(features), [torch.zeros(0, 4), torch.tensor([box], dtype=torch.float64)], 7)
    assert out.shape == (1, 3, 7, 7)
    np.testing.assert_allclose(out[0].numpy(), _reference(features[1], box, 7), rtol=1e-10, atol=1e-12)


def test_a_constant_map_pools_to_itself_and_a_ramp_to_bin_centres() -> None:
    const = torch.full((1, 2, 8, 8), 3.0, dtype=torch.float64)
    assert torch.allclose(roi_align(const, [torch.tensor([[1.0, 1.0, 6.0, 6.0]])], 5), const.new_tensor(3.0))
    ramp = torch.arange(8, dtype=torch.float64).expand(1, 1, 8, 8).clone()  # value = column
    pooled = roi_align(ramp, [torch.tensor([[0.0, 0.0, 7.0, 7.0]])], 7)[0, 0]
    assert torch.allclose(pooled[0], torch.arange(7, dtype=torch.float64) + 0.5)  # each bin's mean x


def test_the_stand_in_is_lent_only_while_the_block_runs() -> None:
    from types import ModuleType

    module = ModuleType("fake_sam3")
    with torchvision_stand_in(module):
        assert module.torchvision.ops.roi_align is roi_align
    assert not hasattr(module, "torchvision")
    module.torchvision = "the real one"
    with torchvision_stand_in(module):
        assert module.torchvision == "the real one"
