"""``samadapt data``: check and build datasets (``images/`` + ``masks/``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from samadapt.cli.console import stdout
from samadapt.cli.options import AssetOpt
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
    raster: Annotated[str, typer.Argument(help="Raster to tile: a file, https:// or s3:// URL, /vsi* path or STAC "
                                          "item (.json).")],
    vectors: Annotated[Path, typer.Argument(help="Polygons (GeoPackage, GeoJSON, Shapefile) in any CRS.")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Dataset folder to write.")],
    tile_size: Annotated[int, typer.Option(help="Tile side in pixels.")] = 512,
    class_field: Annotated[str | None, typer.Option(help="Attribute holding each polygon's class.")] = None,
    keep_empty: Annotated[bool, typer.Option(help="Keep tiles without labels.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite")] = False,
    asset: AssetOpt = None,
) -> None:
    """Build a dataset from a GeoTIFF and polygons: tiles with rasterised masks."""
    from samadapt.data.build import build_from_vectors
    from samadapt.imagery.sources import resolve_source

    source = resolve_source(raster, asset)  # a missing file, or --asset without a STAC item, stops here
    if not vectors.exists():
        raise InputError(f"file not found: {vectors}")
    path = build_from_vectors(source, vectors, out_dir, tile_size=tile_size, class_field=class_field,
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


@app.command("import-coco")
def data_import_coco(
    annotations: Annotated[Path, typer.Argument(help="COCO annotations JSON (polygons or RLE).")],
    images_dir: Annotated[Path, typer.Argument(help="Folder the images' file_name entries are in.")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Dataset folder to write.")],
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a dataset samadapt wrote in --out.")] = False,
) -> None:
    """Convert COCO instance annotations to a dataset: categories become classes 1..K, crowds ignore (255)."""
    from samadapt.data.coco import import_coco

    s = import_coco(annotations, images_dir, out_dir, overwrite=overwrite)
    stdout.print(f"wrote dataset {s.path}: {s.images} images, {s.objects} objects of {s.classes} classes, "
                 f"{s.crowd} crowd regions as ignore; check it with `samadapt data check {s.path}`")


@app.command("export-coco")
def data_export_coco(
    dataset_dir: Annotated[Path, typer.Argument(help="Dataset folder.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="COCO annotations JSON to write.")],
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing --out file.")] = False,
) -> None:
    """Write a dataset's masks as COCO annotations: one RLE object per connected region of each class."""
    from samadapt.data.coco import export_coco

    s = export_coco(dataset_dir, out, overwrite=overwrite)
    stdout.print(f"wrote {s.path}: {s.images} images, {s.objects} objects, {s.classes} categories")
