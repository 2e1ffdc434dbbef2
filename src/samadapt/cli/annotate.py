"""``samadapt annotate``: SAM pseudo-labels for a dataset, or a comparison of the prompt modes."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal, cast

import typer
from rich.table import Table

from samadapt.cli.console import stderr, stdout, warn_untrusted
from samadapt.cli.options import (
    BoxThresholdOpt,
    DetectorOpt,
    DeviceOpt,
    ModelOpt,
    TextOpt,
    TextThresholdOpt,
    choice,
)
from samadapt.errors import InputError

if TYPE_CHECKING:
    from samadapt.annotate.compare import ModeComparison
    from samadapt.predict.segmenter import Segmenter
    from samadapt.text.options import TextSearch


def annotate(
    dataset_dir: Annotated[Path, typer.Argument(help="Dataset folder with images/ (and masks/ or labels).")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Folder for the annotated dataset or comparison.")],
    model: ModelOpt = "sam-vit-base",
    mode: Annotated[str, typer.Option("--mode", help="box, point, auto, or text (objects found by --text "
                                      "phrases; no labels needed).",
                                      callback=choice("--mode", ("box", "point", "auto", "text")))] = "box",
    labels: Annotated[Path | None, typer.Option("--labels", help="Expert prompts: YOLO folder, CSV (pixels) or "
                                                "GeoPackage/GeoJSON (map coordinates).")] = None,
    compare: Annotated[bool, typer.Option("--compare", help="Run all three modes against ground-truth masks.")] = False,
    split: Annotated[str | None, typer.Option("--split", help="Only this split of splits.json.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of random choices.")] = 0,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a previous annotation or comparison "
                                            "samadapt wrote in --out.")] = False,
    text: TextOpt = None,
    detector: DetectorOpt = None,
    box_threshold: BoxThresholdOpt = None,
    text_threshold: TextThresholdOpt = None,
    device: DeviceOpt = "cpu",
    output_format: Annotated[str, typer.Option("--format", help="masks (the dataset alone), or coco: the dataset "
                                               "and its objects in annotations.json (COCO, RLE).",
                                               callback=choice("--format", ("masks", "coco")))] = "masks",
) -> None:
    """Annotate a dataset with SAM pseudo-labels from boxes, points, the automatic mode or phrases (--mode text)."""
    from samadapt.annotate import annotate_dataset, compare_modes
    from samadapt.annotate.core import check_out_dir
    from samadapt.annotate.experts import read_expert_labels
    from samadapt.data.dataset import require_dataset_dir
    from samadapt.predict.segmenter import Segmenter
    from samadapt.progress import progress_bar

    search = _text_search(mode, text, detector, box_threshold, text_threshold, model, labels=labels, compare=compare)
    coco = output_format == "coco"
    if coco and compare:
        raise InputError("--compare writes a comparison, not pseudo-labels; drop --format coco")
    require_dataset_dir(dataset_dir)
    check_out_dir(out_dir, overwrite=overwrite, compare=compare)  # before the model loads
    segmenter = Segmenter(model, device=device)
    if search is not None:
        _annotate_text(dataset_dir, out_dir, segmenter, search, split=split, overwrite=overwrite, device=device,
                       coco=coco)
        return
    if compare:
        report = compare_modes(dataset_dir, out_dir, segmenter=segmenter, split=split, seed=seed, overwrite=overwrite)
        warn_untrusted(segmenter.loaded.trusted)
        _print_comparison(report)
        return
    experts = read_expert_labels(dataset_dir, labels)
    with progress_bar(console=stderr) as progress:
        task = progress.add_task(f"annotating ({mode})", total=None)
        summary = annotate_dataset(
            dataset_dir, out_dir, segmenter=segmenter, mode=cast(Literal["box", "point", "auto"], mode),
            experts=experts, split=split, seed=seed, coco=coco,
            overwrite=overwrite, progress=lambda n, total: progress.update(task, completed=n, total=total),
        )
    warn_untrusted(segmenter.loaded.trusted)
    stdout.print(
        f"annotated {summary.images} images, {summary.objects} objects from {summary.source} "
        f"({summary.empty_objects} came out empty) into {summary.out_dir}; sources in {summary.out_dir / 'sources.csv'}"
        + (f", COCO objects in {summary.out_dir / 'annotations.json'}" if coco else "")
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


def _text_search(mode: str, text: list[str] | None, detector: str | None, box_threshold: float | None,
                 text_threshold: float | None, model: str, *, labels: Path | None, compare: bool) -> TextSearch | None:
    """The text search of ``--mode text``, checked with the other options before any model loads; None otherwise."""
    from samadapt.text.options import family_for_text, text_search

    if not text:
        text_search(text, detector, box_threshold, text_threshold, "sam")  # a text option without --text
        if mode == "text":
            raise InputError("--mode text finds objects by name; add --text PHRASE (e.g. --text pit)")
        return None
    if mode != "text":
        raise InputError(f"--text goes with --mode text, not --mode {mode}; add --mode text")
    if labels is not None or compare:
        raise InputError("--mode text needs no labels; drop --labels/--compare")
    return text_search(text, detector, box_threshold, text_threshold, family_for_text(model))


def _annotate_text(dataset_dir: Path, out_dir: Path, segmenter: Segmenter, search: TextSearch, *, split: str | None,
                   overwrite: bool, device: str, coco: bool = False) -> None:
    """``annotate --mode text``: pseudo-labels of the phrases, with no expert labels."""
    from samadapt.annotate.text import annotate_text_dataset
    from samadapt.progress import progress_bar

    detector = search.open_detector(device)
    with progress_bar(console=stderr) as progress:
        task = progress.add_task("annotating (text)", total=None)
        summary = annotate_text_dataset(
            dataset_dir, out_dir, segmenter=segmenter, query=search.query, detector=detector, split=split,
            overwrite=overwrite, progress=lambda n, total: progress.update(task, completed=n, total=total), coco=coco,
        )
    warn_untrusted(segmenter.loaded.trusted and (detector is None or detector.trusted))
    stdout.print(
        f"annotated {summary.images} images, {summary.objects} objects from {summary.source} "
        f"({summary.empty_objects} came out empty) into {summary.out_dir}; classes in "
        f"{summary.out_dir / 'classes.json'}, how they were made in {summary.out_dir / 'annotation.json'}"
    )
