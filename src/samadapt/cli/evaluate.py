"""``samadapt evaluate-map``: object-level scores of mapped polygons against truth polygons."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from samadapt.cli.console import stdout

REPORT = "report.json"
PLOT = "sfd.png"


def evaluate_map_cmd(
    predicted: Annotated[Path, typer.Argument(help="Predicted polygons (GeoPackage, GeoJSON, Shapefile).")],
    truth: Annotated[Path, typer.Argument(help="Truth polygons, e.g. a catalogue's outlines.")],
    iou: Annotated[float, typer.Option("--iou", help="IoU a predicted and a truth object need to match "
                                       "(inclusive).")] = 0.5,
    class_column: Annotated[str | None, typer.Option("--class-column", help="Column holding each object's class; "
                                                     "objects match within their class.")] = None,
    truth_class_column: Annotated[str | None, typer.Option("--truth-class-column", help="The truth file's class "
                                                           "column, when it differs from --class-column.")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Folder for report.json and sfd.png.")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing report.")] = False,
) -> None:
    """Match predicted objects to truth objects one to one (IoU >= 0.5) and report precision, recall, F1,
    counts and size-frequency agreement."""
    from samadapt._io import check_target, check_writable, write_json
    from samadapt.errors import InputError
    from samadapt.mapping.evaluate import evaluate_map, plot_sfd

    if truth_class_column is not None and class_column is None:
        raise InputError("--truth-class-column goes with --class-column (the predicted file's class column)")
    targets = [out / REPORT, out / PLOT] if out is not None else []
    for target in targets:
        check_target(target, overwrite=overwrite)
    check_writable(targets)
    evaluation = evaluate_map(predicted, truth, iou=iou, class_column=class_column,
                              truth_class_column=truth_class_column)
    rows = [*evaluation.per_class, evaluation.overall] if len(evaluation.per_class) > 1 else [evaluation.overall]
    table = Table("class", "predicted", "truth", "matched", "precision", "recall", "F1", "KS D", "KS p",
                  title=f"objects matched one to one at IoU >= {iou:g} ({evaluation.diameter_units} diameters)")
    for r in rows:
        ks = (f"{r.ks_statistic:.3f}", f"{r.ks_pvalue:.3g}") if r.ks_statistic is not None else ("-", "-")
        table.add_row(r.name, str(r.predicted), str(r.truth), str(r.matched), f"{r.precision:.3f}",
                      f"{r.recall:.3f}", f"{r.f1:.3f}", *ks)
    stdout.print(table)
    if out is not None:
        written = [write_json(out / REPORT, evaluation.to_json())]
        try:
            written.append(plot_sfd(evaluation, out / PLOT))
        except BaseException:
            written[0].unlink(missing_ok=True)  # both or neither
            raise
        for p in written:
            stdout.print(f"wrote {p}")
