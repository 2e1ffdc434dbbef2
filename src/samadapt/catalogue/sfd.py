"""Cumulative size-frequency distributions, the form crater counters use.

Bins follow the Crater Analysis Techniques Working Group (1979) standard: diameters in
``sqrt(2)`` steps, ``D_k = 2^(k/2)`` (in km, or in the polygons' units without a CRS). For each
bin's lower edge ``D_k`` the table gives the cumulative count ``N(>=D_k)`` of objects at least that
large, the count in the bin ``[D_k, D_k+1)``, the cumulative density ``N(>=D_k) / A`` per unit
area of the counting area ``A`` and its one-sigma Poisson error ``sqrt(N) / A``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

#: Columns of the table.
COLUMNS = ("diameter", "count_in_bin", "cumulative_count", "cumulative_density", "density_error")


def bin_edges(diameters: Sequence[float] | np.ndarray) -> np.ndarray:
    """``sqrt(2)``-spaced bin edges ``2^(k/2)`` covering the positive diameters (empty without any)."""
    d = np.asarray([v for v in diameters if v > 0], dtype=np.float64)
    if not len(d):
        return np.zeros(0)
    lo = math.floor(2 * math.log2(d.min()) + 1e-9)
    hi = math.floor(2 * math.log2(d.max()) + 1e-9) + 1
    return 2.0 ** (np.arange(lo, hi + 1) / 2.0)


def cumulative_table(diameters: Sequence[float], area: float) -> list[dict[str, float]]:
    """One row per bin (see the module docstring), smallest diameter first.

    Args:
        diameters: the objects' diameters.
        area: the counting area, in the diameters' unit squared.

    Raises:
        ValueError: the area is not positive.
    """
    if not area > 0:
        raise ValueError(f"the counting area must be positive, got {area}")
    d = np.asarray(diameters, dtype=np.float64)
    edges = bin_edges(d)
    rows = []
    for k, low in enumerate(edges[:-1]):
        n = int((d >= low).sum())
        rows.append({"diameter": float(low), "count_in_bin": int(((d >= low) & (d < edges[k + 1])).sum()),
                     "cumulative_count": n, "cumulative_density": n / area, "density_error": math.sqrt(n) / area})
    return rows


def plot_cumulative(rows: Sequence[dict[str, float]], path: Path, *, unit: str, title: str) -> Path:
    """Log-log plot of the cumulative density against diameter, with Poisson error bars, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter

    from samadapt._io import save_figure

    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    shown = [r for r in rows if r["cumulative_count"] > 0]
    if shown:
        x = np.array([r["diameter"] for r in shown])
        y = np.array([r["cumulative_density"] for r in shown])
        err = np.array([r["density_error"] for r in shown])
        # sqrt(N) / A reaches zero for N = 1, which a log axis cannot show: lower bars end at y / 10
        ax.errorbar(x, y, yerr=[np.minimum(err, y * 0.9), err], fmt="o", ms=4, capsize=2)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
        ax.xaxis.set_minor_formatter(NullFormatter())
    else:
        ax.text(0.5, 0.5, "no objects", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel(f"Diameter D ({unit})")
    ax.set_ylabel(f"Cumulative number N(≥D) per {unit}²")
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path, dpi=100)
