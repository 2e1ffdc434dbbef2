"""``samadapt data``: check and build datasets (``images/`` + ``masks/``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from samadapt.cli.console import stdout
from samadapt.errors import InputError

app = typer.Typer(help="Check and build datasets (images/ + masks/).", no_args_is_help=True)


@app.command("check")
def data_check(
    dataset_dir: Annotated[Path, typer.Argument(help="Dataset folder.")],
    num_classes: Annotated[int | None, typer.Option(help="Expected number of classes, background included.")] = None,
) -> None:
    """Validate a dataset folder and print a summary; exit code 1 when it has errors."""
    from samadapt.data.check import check_dataset, format_report

    report = check_dataset(dataset_dir, num_classes=num_classes)
    stdout.print(format_report(report))
    if not report.ok:
        raise typer.Exit(1)


@app.command("build")
def data_build(
    raster: Annotated[Path, typer.Argument(help="GeoTIFF to tile.")],
    vectors: Annotated[Path, typer.Argument(help="Polygons (GeoPackage, GeoJSON, Shapefile) in any CRS.")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Dataset folder to write.")],
    tile_size: Annotated[int, typer.Option(help="Tile side in pixels.")] = 512,
    class_field: Annotated[str | None, typer.Option(help="Attribute holding each polygon's class.")] = None,
    keep_empty: Annotated[bool, typer.Option(help="Keep tiles without labels.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite")] = False,
) -> None:
    """Build a dataset from a GeoTIFF and polygons: tiles with rasterised masks."""
    from samadapt.data.build import build_from_vectors

    for p in (raster, vectors):
        if not p.exists():
            raise InputError(f"file not found: {p}")
    path = build_from_vectors(raster, vectors, out_dir, tile_size=tile_size, class_field=class_field,
                              keep_empty=keep_empty, overwrite=overwrite)
    stdout.print(f"wrote dataset {path}; check it with `samadapt data check {path}`")


@app.command("from-hf")
def data_from_hf(
    path: Annotated[Path, typer.Argument(help="A Hugging Face dataset saved with save_to_disk.")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Dataset folder to write.")],
    split: Annotated[str | None, typer.Option(help="Split of a DatasetDict.")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite")] = False,
) -> None:
    """Convert a Hugging Face `datasets` dataset (save_to_disk) to samadapt's folder format."""
    from samadapt.data.hf import from_hf_dataset

    stdout.print(f"wrote dataset {from_hf_dataset(path, out_dir, split=split, overwrite=overwrite)}")
