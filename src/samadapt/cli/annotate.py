"""``samadapt annotate``: SAM pseudo-labels for a dataset, or a comparison of the prompt modes."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal, cast

import typer
from rich.table import Table

from samadapt.cli.console import stderr, stdout, warn_untrusted
from samadapt.cli.options import DeviceOpt, ModelOpt, choice

if TYPE_CHECKING:
    from samadapt.annotate.compare import ModeComparison


def annotate(
    dataset_dir: Annotated[Path, typer.Argument(help="Dataset folder with images/ (and masks/ or labels).")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Folder for the annotated dataset or comparison.")],
    model: ModelOpt = "sam-vit-base",
    mode: Annotated[str, typer.Option("--mode", help="box, point or auto.",
                                      callback=choice("--mode", ("box", "point", "auto")))] = "box",
    labels: Annotated[Path | None, typer.Option("--labels", help="Expert prompts: YOLO folder, CSV (pixels) or "
                                                "GeoPackage/GeoJSON (map coordinates).")] = None,
    compare: Annotated[bool, typer.Option("--compare", help="Run all three modes against ground-truth masks.")] = False,
    split: Annotated[str | None, typer.Option("--split", help="Only this split of splits.json.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of random choices.")] = 0,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a previous annotation or comparison "
                                            "samadapt wrote in --out.")] = False,
    device: DeviceOpt = "cpu",
) -> None:
    """Annotate a dataset with SAM pseudo-labels from boxes, points or the automatic mode."""
    from rich.progress import Progress

    from samadapt.annotate import annotate_dataset, compare_modes
    from samadapt.annotate.core import check_out_dir
    from samadapt.annotate.experts import read_expert_labels
    from samadapt.data.dataset import require_dataset_dir
    from samadapt.predict.segmenter import Segmenter

    require_dataset_dir(dataset_dir)
    check_out_dir(out_dir, overwrite=overwrite, compare=compare)  # before the model loads
    segmenter = Segmenter(model, device=device)
    if compare:
        report = compare_modes(dataset_dir, out_dir, segmenter=segmenter, split=split, seed=seed, overwrite=overwrite)
        warn_untrusted(segmenter.loaded.trusted)
        _print_comparison(report)
        return
    experts = read_expert_labels(dataset_dir, labels)
    with Progress(console=stderr) as progress:
        task = progress.add_task(f"annotating ({mode})", total=None)
        summary = annotate_dataset(
            dataset_dir, out_dir, segmenter=segmenter, mode=cast(Literal["box", "point", "auto"], mode),
            experts=experts, split=split, seed=seed,
            overwrite=overwrite, progress=lambda n, total: progress.update(task, completed=n, total=total),
        )
    warn_untrusted(segmenter.loaded.trusted)
    stdout.print(
        f"annotated {summary.images} images, {summary.objects} objects from {summary.source} "
        f"({summary.empty_objects} came out empty) into {summary.out_dir}; sources in {summary.out_dir / 'sources.csv'}"
    )


def _print_comparison(report: ModeComparison) -> None:
    """The foreground IoU of each prompt mode per image, their means and the files written."""
    modes = ("auto", "point", "box")
    empty = dict(report.without_objects)
    table = Table("image", "automatic", "point", "box", title="foreground IoU against ground truth")
    for stem, row in report.per_image[:30]:
        table.add_row(stem, *(f"no objects ({empty[stem][m]} px found)" if stem in empty else f"{row[m]:.3f}"
                              for m in modes))
    n_scored = len(report.per_image) - len(empty)
    table.add_row(f"[bold]mean of {n_scored}[/]", *(f"[bold]{report.mean_iou(m):.3f}[/]" for m in modes))
    table.add_row("dataset mIoU", *(f"{report.miou[m]:.3f}" for m in modes))
    stdout.print(table)
    if empty:
        spurious = ", ".join(f"{m} {sum(r[m] for _, r in report.without_objects)}" for m in modes)
        stdout.print(f"{len(empty)} images have no objects in the ground truth: not in the mean; pixels wrongly "
                     f"labelled there: {spurious}", highlight=False)
    stdout.print(f"wrote {report.csv_path} and {report.figure_path}")
