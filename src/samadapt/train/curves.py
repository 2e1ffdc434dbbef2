"""Learning curves over label budgets (the Mars pits paper, Figure 5) and method comparisons.

For every method, budget N and seed: train on the first N images of that seed's shuffle of
the train split, keep the best epoch on the validation split, and score the test split.
Results go to ``learning_curve.csv`` (one row per run) and ``learning_curve.png`` (each
metric against N, mean and spread over seeds, one line per method).
"""

from __future__ import annotations

import csv
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from samadapt._io import atomic_file, check_replaceable, save_figure
from samadapt.data.dataset import require_dataset_dir
from samadapt.errors import InputError

if TYPE_CHECKING:
    from samadapt.models.loading import LoadedModel

METRICS = ("miou", "accuracy", "f1_macro", "precision_macro", "recall_macro", "f1_micro", "iou_fg", "f1_fg",
           "object_f1")


def learning_curve(
    dataset_dir: Path,
    out_dir: Path,
    *,
    methods: Sequence[str],
    model: str | os.PathLike[str] | LoadedModel,
    sizes: Sequence[int],
    seeds: int = 3,
    epochs: int = 20,
    lr: float = 1e-3,
    batch_size: int = 4,
    bands: tuple[int, ...] | None = None,
    device: str = "cpu",
    method_options: dict[str, Any] | None = None,
    eval_dataset: Path | None = None,
    select: str = "best",
    oracle_prompts: bool = False,
    keep_checkpoints: bool = False,
    log: Callable[[str], None] | None = None,
) -> Path:
    """Train every (method, budget, seed) and write the CSV, the plot and ``report.md``; returns the CSV path.

    Args:
        eval_dataset: score on this dataset's ground truth instead of ``dataset_dir``'s test split
            (see :class:`samadapt.train.learner.Learner`), e.g. train on pseudo-labels, test on truth.
        select: "best" keeps each run's best validation epoch, "last" its last epoch.
        oracle_prompts: prompted methods are scored with prompts built from the test masks
            (``report.md`` then says so); by default no ground truth reaches a test prediction.
        keep_checkpoints: keep each run's last-epoch checkpoint (``runs/*/checkpoints``); by
            default only its log and plot stay.
    """
    from samadapt.models.loading import LoadedModel, load_model
    from samadapt.train.learner import Learner

    if not sizes or min(sizes) < 1:
        raise InputError(f"--sizes must be positive label counts, got {list(sizes)}")
    if seeds < 1:
        raise InputError(f"--seeds must be at least 1, got {seeds}")
    out_dir = Path(out_dir)
    require_dataset_dir(Path(dataset_dir))  # before --out is made: a typo leaves nothing behind
    check_replaceable(out_dir, overwrite=True, kind="learning curve", owned=is_curve_folder)
    out_dir.mkdir(parents=True, exist_ok=True)
    base = model if isinstance(model, LoadedModel) else load_model(model, device=device)
    rows: list[dict[str, Any]] = []
    splits: list[dict[str, Any]] = []
    for method in methods:
        for size in sorted(set(sizes)):
            for seed in range(seeds):
                learner = Learner(dataset_dir, method=method, model=base, labels=size, bands=bands, seed=seed,
                                  device=device, eval_data=eval_dataset, oracle_prompts=oracle_prompts,
                                  **(method_options or {}))
                run_dir = out_dir / "runs" / f"{method}_n{size}_s{seed}"
                learner.fit(epochs, lr=lr, batch_size=batch_size, progress=False, select=select, out_dir=run_dir)
                m = learner.evaluate("test")
                if not keep_checkpoints:
                    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
                row = {"method": method, "labels": size, "seed": seed, "oracle": learner.method.oracle,
                       **{k: getattr(m, k) for k in METRICS}}
                rows.append(row)
                splits.append(learner.data_record())
                if log:
                    log(f"{method} n={size} seed={seed}: test mIoU {m.miou:.3f}")
    csv_path = _write_csv(out_dir / "learning_curve.csv", rows)
    plot_curve(rows, out_dir / "learning_curve.png")
    write_report(out_dir / "report.md", rows, splits, protocol={
        "dataset": str(Path(dataset_dir).resolve()),
        "eval_dataset": str(Path(eval_dataset).resolve()) if eval_dataset else None,
        "methods": list(methods), "sizes": sorted(set(sizes)), "seeds": seeds, "epochs": epochs, "lr": lr,
        "batch_size": batch_size, "select": select, "bands": list(bands) if bands else None,
        "method_options": method_options or {}, "oracle_prompts": oracle_prompts,
        "base_model": base.name, "base_weights_sha256": base.weights_sha256,
    })
    return csv_path


#: What a learning-curve folder holds; a folder holding anything else is not replaced.
CURVE_FILES = frozenset({"learning_curve.csv", "learning_curve.png", "report.md", "run_splits.json", "runs"})


def is_curve_folder(folder: Path) -> bool:
    """True when ``folder`` holds only what a (possibly interrupted) learning curve writes."""
    return {p.name for p in Path(folder).iterdir()} <= CURVE_FILES


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    with atomic_file(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["method", "labels", "seed", "oracle", *METRICS])
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in r.items()})
    return path


@dataclass(frozen=True)
class CurvePoint:
    """One budget of one method: the spread over the seeds that produced a score.

    Attributes:
        labels: the label budget N.
        mean: mean over the scored seeds (NaN when none scored).
        sd: sample standard deviation (ddof=1) over them; NaN with fewer than two.
        n: how many seeds produced a score.
        missing: the seeds whose score is undefined (NaN), named so that a reader sees them.
    """

    labels: int
    mean: float
    sd: float
    n: int
    missing: tuple[int, ...]


def summarise(rows: list[dict[str, Any]], metric: str) -> dict[str, list[CurvePoint]]:
    """Per method, one :class:`CurvePoint` per label budget for ``metric``."""
    out: dict[str, list[CurvePoint]] = {}
    for method in dict.fromkeys(r["method"] for r in rows):
        pts = []
        for n in sorted({r["labels"] for r in rows if r["method"] == method}):
            runs = [r for r in rows if r["method"] == method and r["labels"] == n]
            vals = np.array([r[metric] for r in runs], dtype=float)
            ok = ~np.isnan(vals)
            missing = tuple(int(r["seed"]) for r, good in zip(runs, ok, strict=False) if not good)
            mean = float(vals[ok].mean()) if ok.any() else float("nan")
            sd = float(vals[ok].std(ddof=1)) if ok.sum() >= 2 else float("nan")
            pts.append(CurvePoint(int(n), mean, sd, int(ok.sum()), missing))
        out[method] = pts
    return out


def plot_curve(rows: list[dict[str, Any]], path: Path) -> Path:
    """Each metric against the label budget: mean line and a band of one sample standard deviation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows_of_panels = -(-len(METRICS) // 3)
    fig, axes = plt.subplots(rows_of_panels, 3, figsize=(13, 3.5 * rows_of_panels), squeeze=False)
    for ax, metric in zip(axes.ravel(), METRICS, strict=False):
        for method, pts in summarise(rows, metric).items():
            n = [p.labels for p in pts]
            mean = np.array([p.mean for p in pts])
            sd = np.nan_to_num(np.array([p.sd for p in pts]))
            ax.plot(n, mean, marker="o", label=method)
            ax.fill_between(n, mean - sd, mean + sd, alpha=0.2)
        ax.set_title(metric)
        ax.set_xlabel("labelled images")
        ax.set_ylim(0, 1)
    axes[0, 0].legend()
    fig.tight_layout()
    return save_figure(fig, path)


def write_report(path: Path, rows: list[dict[str, Any]], splits: list[dict[str, Any]],
                 protocol: dict[str, Any]) -> Path:
    """``report.md``: the protocol a reader needs to rerun the curve, and its results.

    States the datasets and split sizes, a digest of every run's image ids, the seeds,
    epochs and selection rule, the method options (prompts included), whether any ground
    truth reached a prediction, and the software versions.
    """
    import hashlib
    import json
    import platform

    from samadapt.versions import dependency_versions

    digest = hashlib.sha256(json.dumps(splits, sort_keys=True).encode()).hexdigest()
    first = splits[0] if splits else {}
    oracle = bool(protocol.get("oracle_prompts"))
    lines = [
        "# Learning curve", "",
        "## Protocol", "",
        f"- Training dataset: `{protocol['dataset']}`; its train pool, validation and test splits hold "
        f"{len(first.get('train', []))} (largest budget drawn), {len(first.get('val', []))} and "
        f"{len(first.get('test', []))} images (first run).",
        "- Test images: " + (f"the ground truth of `{protocol['eval_dataset']}` (its test split, or all of it), less "
                              "any image id used for training or validation" if protocol.get("eval_dataset")
                              else "the training dataset's test split") + ".",
        f"- Split ids: sha256 `{digest}` over every run's train / val / test ids (`run_splits.json` beside this file).",
        f"- Methods: {', '.join(protocol['methods'])}; label budgets {protocol['sizes']}; "
        f"seeds 0..{protocol['seeds'] - 1} "
        "(each seed draws its own nested budgets and initialisation).",
        f"- Training: {protocol['epochs']} epochs, peak learning rate {protocol['lr']}, "
        f"batch size {protocol['batch_size']}; "
        + ("the last epoch's weights are kept." if protocol["select"] == "last"
           else "the epoch with the best validation mIoU is kept."),
        f"- Method options (prompts included): `{json.dumps(protocol['method_options'], sort_keys=True)}`.",
        f"- Ground truth at test time: {'yes: prompts were built from the test masks (oracle)' if oracle else 'none'} "
        "(validation of prompted methods prompts from the validation masks, to pick an epoch).",
        f"- Base model: `{protocol['base_model']}` (weights sha256 `{protocol['base_weights_sha256']}`).",
        "- Spread: sample standard deviation (ddof = 1) over the seeds that produced a score; n is their count.",
        "- Software: " + ", ".join([f"python {platform.python_version()}"]
                                   + [f"{d.name} {d.installed}" for d in dependency_versions() if d.installed]) + ".",
        "", "## Results (test split)", "",
        "| method | labels | mIoU mean | sd | n | F1 macro mean | sd | seeds without a score |",
        "|---|---|---|---|---|---|---|---|",
    ]
    miou, f1 = summarise(rows, "miou"), summarise(rows, "f1_macro")
    for method in miou:
        for a, b in zip(miou[method], f1[method], strict=False):
            missing = ", ".join(str(s) for s in sorted(set(a.missing) | set(b.missing))) or "none"
            lines.append(f"| {method} | {a.labels} | {a.mean:.4f} | {a.sd:.4f} | {a.n} | {b.mean:.4f} | {b.sd:.4f} | "
                         f"{missing} |")
    lines += ["", "Every run's scores are in `learning_curve.csv`; the figure is `learning_curve.png`.", ""]
    from samadapt._io import write_json

    write_json(path.with_name("run_splits.json"), splits)
    with atomic_file(path) as tmp:
        tmp.write_text("\n".join(lines))
    return path
