"""Learning curves over label budgets (seed 000, Figure 5) and method comparisons.

For every method, budget N and seed: train on the first N images of that seed's shuffle of
the train split, keep the best epoch on the validation split, and score the test split.
Results go to ``learning_curve.csv`` (one row per run) and ``learning_curve.png`` (each
metric against N, mean and spread over seeds, one line per method).
"""

from __future__ import annotations

from samadapt._io import save_figure

import csv
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from samadapt.errors import InputError

METRICS = ("miou", "accuracy", "f1_macro", "precision_macro", "recall_macro", "f1_micro")


def learning_curve(
    dataset_dir: Path,
    out_dir: Path,
    *,
    methods: Sequence[str],
    model: Any,
    sizes: Sequence[int],
    seeds: int = 3,
    epochs: int = 20,
    lr: float = 1e-3,
    batch_size: int = 4,
    bands: tuple[int, ...] | None = None,
    device: str = "cpu",
    method_options: dict[str, Any] | None = None,
    log: Callable[[str], None] | None = None,
) -> Path:
    """Train every (method, budget, seed) and write the CSV and the plot; returns the CSV path."""
    from samadapt.learner import Learner
    from samadapt.models.loading import LoadedModel, load_model

    if not sizes or min(sizes) < 1:
        raise InputError(f"--sizes must be positive label counts, got {list(sizes)}")
    if seeds < 1:
        raise InputError(f"--seeds must be at least 1, got {seeds}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    base = model if isinstance(model, LoadedModel) else load_model(model, device=device)
    rows: list[dict[str, Any]] = []
    for method in methods:
        for size in sorted(set(sizes)):
            for seed in range(seeds):
                learner = Learner(dataset_dir, method=method, model=base, labels=size, bands=bands, seed=seed,
                                  device=device, **(method_options or {}))
                learner.fit(epochs, lr=lr, batch_size=batch_size, progress=False,
                            out_dir=out_dir / "runs" / f"{method}_n{size}_s{seed}")
                m = learner.evaluate("test")
                row = {"method": method, "labels": size, "seed": seed, **{k: getattr(m, k) for k in METRICS}}
                rows.append(row)
                if log:
                    log(f"{method} n={size} seed={seed}: test mIoU {m.miou:.3f}")
    csv_path = _write_csv(out_dir / "learning_curve.csv", rows)
    plot_curve(rows, out_dir / "learning_curve.png")
    return csv_path


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["method", "labels", "seed", *METRICS])
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in r.items()})
    os.replace(tmp, path)
    return path


def summarise(rows: list[dict[str, Any]], metric: str) -> dict[str, list[tuple[int, float, float]]]:
    """Per method: (labels, mean, standard deviation over seeds) for ``metric``, by label count."""
    out: dict[str, list[tuple[int, float, float]]] = {}
    for method in dict.fromkeys(r["method"] for r in rows):
        pts = []
        for n in sorted({r["labels"] for r in rows if r["method"] == method}):
            vals = np.array([r[metric] for r in rows if r["method"] == method and r["labels"] == n], dtype=float)
            vals = vals[~np.isnan(vals)]
            pts.append((n, float(vals.mean()) if len(vals) else float("nan"), float(vals.std()) if len(vals) else 0.0))
        out[method] = pts
    return out


def plot_curve(rows: list[dict[str, Any]], path: Path) -> Path:
    """Each metric against the label budget: mean line and a band of one standard deviation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(13, 7), squeeze=False)
    for ax, metric in zip(axes.ravel(), METRICS):
        for method, pts in summarise(rows, metric).items():
            n = [p[0] for p in pts]
            mean = np.array([p[1] for p in pts])
            std = np.array([p[2] for p in pts])
            ax.plot(n, mean, marker="o", label=method)
            ax.fill_between(n, mean - std, mean + std, alpha=0.2)
        ax.set_title(metric)
        ax.set_xlabel("labelled images")
        ax.set_ylim(0, 1)
    axes[0, 0].legend()
    fig.tight_layout()
    return save_figure(fig, path)
