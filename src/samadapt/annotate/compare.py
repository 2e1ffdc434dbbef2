"""Compare the three prompt modes against ground truth (the Mars pits paper, section 2.2 and Figure 3)."""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from samadapt._io import atomic_file, save_figure
from samadapt.annotate.core import MODES, Mode, annotate_image, regions_from_mask, require_ground_truth
from samadapt.errors import InputError
from samadapt.predict.automatic import AutomaticOptions
from samadapt.predict.segmenter import Segmenter


@dataclass
class ModeComparison:
    """Per-image foreground IoU of each mode's pseudo-labels against the ground truth.

    An image whose ground truth has no object has no foreground IoU to score (0/0): its row
    holds NaN, it is left out of :meth:`mean_iou`, and ``without_objects`` records how many
    pixels each mode wrongly labelled there instead.

    Attributes:
        per_image: rows of (stem, {mode: IoU}); NaN for an image without objects.
        miou: dataset-level mean IoU over classes (background included) per mode.
        without_objects: rows of (stem, {mode: false-positive pixels}) for the images whose
            ground truth has no object.
        csv_path, figure_path: where the table and the figure were written.
    """

    per_image: list[tuple[str, dict[str, float]]] = field(default_factory=list)
    miou: dict[str, float] = field(default_factory=dict)
    without_objects: list[tuple[str, dict[str, int]]] = field(default_factory=list)
    csv_path: Path | None = None
    figure_path: Path | None = None

    def mean_iou(self, mode: str) -> float:
        """Mean over the images with objects of the per-image foreground IoU."""
        values = [row[mode] for _, row in self.per_image if not np.isnan(row[mode])]
        return float(np.mean(values)) if values else float("nan")


def compare_modes(
    dataset_dir: Path,
    out_dir: Path,
    *,
    segmenter: Segmenter,
    split: str | None = None,
    seed: int = 0,
    figure_images: int = 3,
    auto_options: AutomaticOptions | None = None,
    modes: tuple[Mode, ...] = MODES,
    overwrite: bool = False,
) -> ModeComparison:
    """Run every prompt mode on every image with a ground-truth mask and score it.

    Writes the folder ``out_dir``: ``compare.csv`` (one row per image, a column per mode, a
    last row of means) and ``compare.png`` (image, automatic, point and box overlays for a few
    images). ``overwrite`` replaces a previous comparison samadapt wrote there, and nothing else.

    Raises:
        InputError: no image has a mask, or a mask ``samadapt data check`` rejects (another size
            than its image, class ids ``classes.json`` does not name).
        OutputExistsError: see :func:`samadapt.annotate.core.check_out_dir`.
    """
    from samadapt.data.dataset import SegDataset
    from samadapt.data.manifest import MODE_COMPARISON, output_folder
    from samadapt.train.confusion import binary_iou
    from samadapt.train.metrics import MetricAccumulator

    dataset = SegDataset.open(dataset_dir)
    stems = [s for s in dataset.stems(split) if dataset.mask_path(s) is not None]
    if not stems:
        raise InputError(f"{dataset_dir} has no images with ground-truth masks to compare against")
    require_ground_truth(dataset, stems)
    out_dir = Path(out_dir)
    num_classes = max(dataset.num_classes, 2)
    acc = {m: MetricAccumulator(num_classes, per_image=False) for m in modes}
    report = ModeComparison()
    panels: list[tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]] = []
    with output_folder(out_dir, kind=MODE_COMPARISON, overwrite=overwrite) as tmp:
        for stem in stems:
            image = dataset.read_image(stem)
            truth = dataset.read_mask(stem)
            row: dict[str, float] = {}
            spurious: dict[str, int] = {}
            shown: dict[str, np.ndarray] = {}
            for mode in modes:
                objects = regions_from_mask(truth, mode, seed)
                ann = annotate_image(segmenter, image, stem, objects, mode, auto_options=auto_options)
                pred = ann.labels.copy()
                pred[pred == 255] = 0
                scored = truth != 255
                found, wanted = (pred > 0) & scored, (truth > 0) & scored
                if wanted.any():
                    row[mode] = binary_iou(found, wanted)
                else:
                    row[mode] = float("nan")
                    spurious[mode] = int(found.sum())
                acc[mode].add(pred, truth)
                everything = ann.everything
                shown[mode] = everything.masks if (mode == "auto" and everything is not None) else (pred > 0)[None]
            report.per_image.append((stem, row))
            if spurious:
                report.without_objects.append((stem, spurious))
            if len(panels) < figure_images:
                panels.append((image.pixels, shown, truth))
        report.miou = {m: float(acc[m].compute().miou) for m in modes}
        _write_csv(tmp / "compare.csv", report, modes)
        _figure(tmp / "compare.png", panels, modes)
    report.csv_path, report.figure_path = out_dir / "compare.csv", out_dir / "compare.png"
    return report


def _write_csv(path: Path, report: ModeComparison, modes: tuple[str, ...]) -> Path:
    with atomic_file(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", *(f"iou_{m}" for m in modes)])
        empty = dict(report.without_objects)
        for stem, row in report.per_image:
            if stem in empty:
                w.writerow([stem, *(f"no objects; {empty[stem][m]} false-positive pixels" for m in modes)])
            else:
                w.writerow([stem, *(f"{row[m]:.4f}" for m in modes)])
        n = len(report.per_image) - len(empty)
        w.writerow([f"mean over {n} images with objects", *(f"{report.mean_iou(m):.4f}" for m in modes)])
        w.writerow(["dataset_miou", *(f"{report.miou[m]:.4f}" for m in modes)])
    return path


def _figure(path: Path, panels: list, modes: tuple[str, ...]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from samadapt.imagery.overlay import overlay

    titles = {"auto": "automatic", "point": "point prompt", "box": "box prompt"}
    cols = 1 + len(modes)
    fig, axes = plt.subplots(len(panels), cols, figsize=(3.2 * cols, 3.2 * len(panels)), squeeze=False)
    for r, (pixels, shown, truth) in enumerate(panels):
        axes[r, 0].imshow(overlay(pixels, (truth > 0)[None] & (truth != 255)[None], alpha=0.0))
        axes[r, 0].set_title("image + ground-truth outline" if r == 0 else "")
        for c, mode in enumerate(modes, start=1):
            axes[r, c].imshow(overlay(pixels, shown[mode]))
            axes[r, c].set_title(titles.get(mode, mode) if r == 0 else "")
        for ax in axes[r]:
            ax.set_axis_off()
    fig.tight_layout()
    return save_figure(fig, path)
