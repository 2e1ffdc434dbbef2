"""Object logits at the original image size, computed over each object's window only.

:func:`~samadapt.imagery.preprocess.masks_to_original` resizes every object's logits to the
whole image: N objects on a 6000 x 6000 raster take N x 144 MB of float32. Here the last, large
bilinear resize is evaluated only over the rows and columns where an object's logits can exceed
a threshold. A pixel of a bilinear resize is a weighted sum, with non-negative weights, of at most
four source pixels, so it cannot exceed 0 when none of them does.

The values inside a window are torch's, bit for bit: source positions and weights are computed as
torch's CPU kernel computes them (float32, ``scale * (i + 0.5) - 0.5``, ``t0 * w0 + t1 * w1``),
with or without fused multiply-adds as the build and the CPU run them. Which one this torch does
is found out once per process by comparing with torch on a small resize. When neither matches,
or an object covers much of the image, the object takes torch's own full-size resize instead,
which gives the same values, only with more memory and time.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import lru_cache
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from samadapt.imagery.preprocess import Geometry, Preprocessing, logits_before_final_resize

#: Images smaller than this many pixels take the full-size resize: it is cheap there, and torch
#: switches to another kernel for very small outputs.
MIN_WINDOWED_PIXELS = 512 * 512
#: Objects resized to the model-input frame at once (64 MB of float32 for SAM's 1024 px input).
CHUNK = 16
#: Window rows are evaluated in strips of about this many pixels (a few float64 temporaries each).
_STRIP_PIXELS = 1 << 18


class Axis(NamedTuple):
    """Where each output position along one axis reads from, and with which weights.

    Attributes:
        i0, i1: (n,) int64 source indices (``i1 == i0`` at the last source position).
        w0, w1: (n,) float32 weights of the two sources.
    """

    i0: np.ndarray
    i1: np.ndarray
    w0: np.ndarray
    w1: np.ndarray

    def window(self, start: int, stop: int) -> Axis:
        """The output positions start..stop-1."""
        return Axis(*(a[start:stop] for a in self))


def resize_axis(n_in: int, n_out: int, *, fused: bool) -> Axis:
    """Source indices and weights of a bilinear resize from ``n_in`` to ``n_out`` positions
    (``align_corners=False``), in float32 as torch's CPU kernel computes them.

    Args:
        n_in: input length.
        n_out: output length.
        fused: the kernel computes ``scale * (i + 0.5) - 0.5`` as one fused multiply-add.
    """
    f32 = np.float32
    scale = f32(n_in) / f32(n_out)
    pos = np.arange(n_out, dtype=f32) + f32(0.5)
    if fused:
        # The float64 product of two float32 is exact and so is subtracting 0.5 from it (the
        # result spans fewer than 53 bits): rounding once to float32 is what the fused instruction does.
        src = (np.float64(scale) * pos.astype(np.float64) - 0.5).astype(f32)
    else:
        src = scale * pos - f32(0.5)
    src = np.maximum(src, f32(0))
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    lam = np.clip(src - i0.astype(f32), f32(0), f32(1))
    i1 = i0 + (i0 < n_in - 1)
    return Axis(i0, i1, f32(1) - lam, lam)


def fma32(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """float32 ``a * b + c`` rounded once, as a fused multiply-add instruction computes it.

    The product is exact in float64; the sum is exact too except when ``a * b`` and ``c`` are far
    apart in size. That one rounding matters only when it lands exactly half-way between two
    float32 values, where the sign of its error (found exactly with Knuth's TwoSum) decides.
    """
    p = a.astype(np.float64) * b
    s = p + c
    back = s - p
    err = (p - (s - back)) + (c - back)
    out = s.astype(np.float32)
    towards = np.nextafter(out, np.where(s > out, np.float32(np.inf), np.float32(-np.inf)))
    tie = (err != 0) & (2 * s == out.astype(np.float64) + towards)
    # the exact sum lies past the half-way point on err's side; rounding half to even chose ``out``
    return np.where(tie & ((err > 0) == (towards > out)), towards, out)


def _lerp(t0: np.ndarray, w0: np.ndarray, t1: np.ndarray, w1: np.ndarray, fused: bool) -> np.ndarray:
    """``t0 * w0 + t1 * w1`` in float32, with the rounding torch's kernel has."""
    return fma32(t0, w0, t1 * w1) if fused else t0 * w0 + t1 * w1


def resize_window(x: np.ndarray, rows: Axis, cols: Axis, *, fused: bool) -> np.ndarray:
    """Bilinear resize of the (h, w) float32 ``x`` at the given output rows and columns only.

    Returns:
        (len(rows.i0), len(cols.i0)) float32, the values torch's resize has there.
    """
    out = np.empty((len(rows.i0), len(cols.i0)), dtype=np.float32)
    step = max(1, _STRIP_PIXELS // max(len(cols.i0), 1))
    for s in range(0, len(rows.i0), step):
        r = rows.window(s, s + step)
        top = _lerp(x[np.ix_(r.i0, cols.i0)], cols.w0, x[np.ix_(r.i0, cols.i1)], cols.w1, fused)
        bottom = _lerp(x[np.ix_(r.i1, cols.i0)], cols.w0, x[np.ix_(r.i1, cols.i1)], cols.w1, fused)
        out[s : s + step] = _lerp(top, r.w0[:, None], bottom, r.w1[:, None], fused)
    return out


def _torch_resize(x: torch.Tensor, hw: tuple[int, int]) -> np.ndarray:
    return F.interpolate(x.reshape(1, 1, *x.shape[-2:]), hw, mode="bilinear", align_corners=False)[0, 0].numpy()


@lru_cache(maxsize=1)
def kernel_arithmetic() -> bool | None:
    """True when this torch's CPU bilinear resize fuses its multiply-adds, False when it does
    not, None when :func:`resize_window` reproduces it neither way."""
    x = np.random.default_rng(0).standard_normal((37, 53)).astype(np.float32)
    hw = (301, 419)
    expected = _torch_resize(torch.from_numpy(x), hw)
    for fused in (True, False):
        got = resize_window(x, resize_axis(37, hw[0], fused=fused), resize_axis(53, hw[1], fused=fused), fused=fused)
        if np.array_equal(got.view(np.uint32), expected.view(np.uint32)):
            return fused
    return None


def logit_windows(
    low_res: torch.Tensor, geometry: Geometry, spec: Preprocessing, *, above: float = 0.0
) -> Iterator[tuple[int, int, np.ndarray]]:
    """Each object's logits at the original image size, over a window holding every pixel above ``above``.

    Args:
        low_res: (N, h, w) float logits as the mask decoder returns them.
        geometry: from :func:`~samadapt.imagery.preprocess.prepare` for the image.
        spec: the model's preprocessing.
        above: every pixel outside an object's window has a logit of at most this.

    Yields:
        Per object, in order, (row, col, logits): logits (h, w) float32 equal bit for bit to
        ``masks_to_original(low_res, geometry, spec)[i, row:row + h, col:col + w]``; a (0, 0)
        array at (0, 0) when no pixel can exceed ``above``.
    """
    height, width = geometry.original_hw
    fused = kernel_arithmetic() if height * width >= MIN_WINDOWED_PIXELS else None
    # Away from 0 the weights' rounding (they may sum to 1 +- 2**-24) could lift a pixel past the
    # threshold; a margin far larger than that keeps the window a superset.
    edge = above - abs(above) / 4096
    axes: tuple[Axis, Axis] | None = None
    for start in range(0, len(low_res), CHUNK):
        for frame in logits_before_final_resize(low_res[start : start + CHUNK], geometry, spec):
            x = frame[0].numpy()
            hot = x > edge
            rows, cols = np.flatnonzero(hot.any(axis=1)), np.flatnonzero(hot.any(axis=0))
            if len(rows) == 0:
                yield 0, 0, np.zeros((0, 0), dtype=np.float32)
                continue
            if fused is not None:
                if axes is None:
                    axes = (resize_axis(x.shape[0], height, fused=fused), resize_axis(x.shape[1], width, fused=fused))
                r0 = int(np.searchsorted(axes[0].i1, rows[0], "left"))
                r1 = int(np.searchsorted(axes[0].i0, rows[-1], "right"))
                c0 = int(np.searchsorted(axes[1].i1, cols[0], "left"))
                c1 = int(np.searchsorted(axes[1].i0, cols[-1], "right"))
                if 4 * (r1 - r0) * (c1 - c0) <= height * width:
                    yield r0, c0, resize_window(x, axes[0].window(r0, r1), axes[1].window(c0, c1), fused=fused)
                    continue
            yield 0, 0, _torch_resize(frame, (height, width))
