"""The ``samadapt`` command: parses options, calls the library, prints.

Every error samadapt raises on purpose is printed as one sentence and exits with code 2;
``--debug`` (or ``SAMADAPT_DEBUG=1``) shows the traceback instead.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import numpy as np
import rasterio
import typer
from rich.console import Console
from rich.table import Column, Table

from samadapt.errors import InputError, SamadaptError

app = typer.Typer(
    name="samadapt",
    help="Adapt Segment Anything (SAM, SAM 2) to remote-sensing and planetary imagery.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
models_app = typer.Typer(help="List, fetch, convert and build models.", no_args_is_help=True)
app.add_typer(models_app, name="models")
data_app = typer.Typer(help="Check and build datasets (images/ + masks/).", no_args_is_help=True)
app.add_typer(data_app, name="data")

out = Console()
err = Console(stderr=True)

ModelOpt = Annotated[str, typer.Option("--model", "-m", help="Registry name, model folder or Meta .pth file.")]
BandsOpt = Annotated[str | None, typer.Option("--bands", help="1-based bands to use, e.g. 4,3,2 (1 or 3 bands).")]
DeviceOpt = Annotated[str, typer.Option("--device", help="torch device: cpu, cuda, cuda:1, mps.")]
RuntimeOpt = Annotated[str, typer.Option("--runtime", help="Encoder runtime: auto, or a comma list of fp32|bf16, "
                                         "fused|no-fused, compile, onnx, threads=N (see `samadapt info`).")]
PrecisionOpt = Annotated[str | None, typer.Option("--precision", help="Encoder precision: auto, fp32 or bf16 "
                                                     "(overrides --runtime).")]


_STATE = {"debug": False}


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
    cache_max_bytes: Annotated[str | None, typer.Option("--cache-max-bytes", help="Bound of the on-disk "
                                                           "embedding cache, e.g. 20G (default: "
                                                           "$SAMADAPT_CACHE_MAX_BYTES, else 4G).")] = None,
) -> None:
    _STATE["debug"] = debug
    if cache_max_bytes is not None:
        from samadapt.predict.cache import cache_max_bytes as _bound

        os.environ["SAMADAPT_CACHE_MAX_BYTES"] = cache_max_bytes
        _bound()  # a bad value stops here, with one sentence


def _read(path: Path, bands: str | None):  # noqa: ANN202
    from samadapt.imagery.read import parse_bands, read_image

    return read_image(path, bands=parse_bands(bands) if bands else None)


def _runtime(runtime: str, precision: str | None):  # noqa: ANN202
    """RuntimeOptions from --runtime and --precision; bad values raise InputError (exit 2)."""
    from dataclasses import replace

    from samadapt.models.accel.speed import RuntimeOptions

    opts = RuntimeOptions.parse(runtime)
    if precision is None:
        return opts
    if precision not in ("auto", "fp32", "bf16"):
        raise InputError(f"--precision must be auto, fp32 or bf16, got {precision!r}")
    return replace(opts, precision=precision)


#: How many times larger than the model input an image may be before segment says so.
DOWNSAMPLING_NOTE = 4


def _note_downsampling(path: Path, hw: tuple[int, int], size: int, model: str) -> None:
    """A note when SAM will see a large image shrunk many times (a HiRISE strip, say)."""
    factor = max(hw) / size
    if factor > DOWNSAMPLING_NOTE:
        err.print(
            f"[bold yellow]note:[/] {path.name} is {hw[1]} x {hw[0]} px: SAM sees it whole at {size} px, "
            f"{factor:.0f}x smaller. For objects in a large raster, `samadapt predict {model} {path} "
            "--prompts FILE --out DIR` segments each in a window centred on it, at full resolution.",
            highlight=False, soft_wrap=True,
        )


def _warn_untrusted(trusted: bool) -> None:
    if not trusted:
        err.print(
            "[bold yellow]NOTE: this model is random-initialised (a tiny test model); "
            "its masks mean nothing.[/]"
        )


@app.command()
def segment(
    image: Annotated[Path, typer.Argument(help="PNG, JPEG, TIFF or GeoTIFF.")],
    out_paths: Annotated[list[Path], typer.Option("--out", "-o", help="Output .png, .tif, .gpkg or .geojson (repeatable).")],
    model: ModelOpt = "sam-vit-base",
    box: Annotated[list[str] | None, typer.Option("--box", help="x0,y0,x1,y1; each box is one object.")] = None,
    point: Annotated[list[str] | None, typer.Option("--point", help="x,y[,label]; label 1 = object, 0 = background.")] = None,
    prompts: Annotated[Path | None, typer.Option("--prompts", help="GeoJSON/GeoPackage/CSV of boxes or points.")] = None,
    crs: Annotated[str | None, typer.Option("--crs", help="Prompts are map coordinates in this CRS, e.g. EPSG:4326.")] = None,
    everything: Annotated[bool, typer.Option("--everything", help="Segment every object (point grid); no prompts.")] = False,
    points_per_side: Annotated[int, typer.Option(help="Grid size of --everything.")] = 32,
    bands: BandsOpt = None,
    multimask: Annotated[bool, typer.Option("--multimask/--single-mask", help="Pick the best of 3 masks per object.")] = True,
    wgs84: Annotated[bool, typer.Option("--wgs84", help="Write GeoJSON polygons in EPSG:4326.")] = False,
    min_area: Annotated[int, typer.Option("--min-area", help="Drop polygons smaller than this many pixels.")] = 0,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace existing outputs.")] = False,
    device: DeviceOpt = "cpu",
    runtime: RuntimeOpt = "auto",
    precision: PrecisionOpt = None,
) -> None:
    """Segment objects in IMAGE from box / point prompts (or everything) and write masks and polygons."""
    from samadapt.mapping.outputs import write_segmentation
    from samadapt.predict.segmenter import Segmenter
    from samadapt.prompts.io import prompts_from_cli, read_prompt_file

    encoder_runtime = _runtime(runtime, precision)
    suffixes = {".png", ".tif", ".tiff", ".gpkg", ".geojson", ".json"}
    for p in out_paths:
        if p.suffix.lower() not in suffixes:
            raise InputError(f"--out {p} has an unknown suffix; use one of {', '.join(sorted(suffixes))}")
        if p.exists() and not overwrite:
            raise InputError(f"--out {p} exists; pass --overwrite to replace it")
    from samadapt._io import check_writable

    check_writable(out_paths)
    geo = _read(image, bands)
    if geo.crs is None and any(p.suffix.lower() in (".gpkg", ".geojson", ".json") for p in out_paths):
        units = "pixel coordinates (x = column, y = row)" if geo.transform is None else "the raster's map units"
        err.print(f"[bold yellow]note:[/] {image.name} has no CRS, so the polygons are written without one, in {units}",
                  highlight=False, soft_wrap=True)
    objects = []
    if box or point:
        objects += prompts_from_cli(point or [], box or [], crs=crs, transform=geo.transform, raster_crs=geo.crs)
    if prompts is not None:
        objects += read_prompt_file(prompts, transform=geo.transform, raster_crs=geo.crs, crs=crs)
    if everything and objects:
        raise InputError("--everything takes no prompts; drop --box/--point/--prompts or --everything")
    if not everything and not objects:
        raise InputError("give at least one --box, --point or --prompts file, or --everything")
    segmenter = Segmenter(model, device=device, runtime=encoder_runtime)
    if not everything:
        _note_downsampling(image, geo.pixels.shape[:2], segmenter.loaded.preprocessing.size, model)
    if everything:
        from samadapt.predict.automatic import AutomaticOptions

        result = segmenter.segment_everything(geo, AutomaticOptions(points_per_side=points_per_side))
    else:
        result = segmenter.segment(geo, objects, multimask=multimask)
    _warn_untrusted(result.trusted)
    written: list[Path] = []
    try:
        for p in out_paths:
            write_segmentation(
                p, result, crs=geo.crs, transform=geo.transform, valid=geo.valid,
                overwrite=overwrite, to_wgs84=wgs84, min_area_pixels=min_area,
            )
            written.append(p)
    except BaseException:
        for p in written:  # all outputs or none: a half set would pass for a finished run
            p.unlink(missing_ok=True)
        raise
    for p in written:
        out.print(f"wrote {p}")
    table = Table("object", "pixels", "predicted IoU", title=f"{len(result)} objects")
    for i, (pixels, s) in enumerate(zip(result.pixel_counts(), result.scores, strict=False)):
        if i < 20:
            table.add_row(str(i), str(pixels), f"{s:.3f}")
    out.print(table)


@app.command()
def embed(
    images: Annotated[list[Path], typer.Argument(help="Images to embed.")],
    model: ModelOpt = "sam-vit-base",
    bands: BandsOpt = None,
    batch_size: Annotated[int, typer.Option(help="Images per encoder call.")] = 1,
    device: DeviceOpt = "cpu",
    runtime: RuntimeOpt = "auto",
    precision: PrecisionOpt = None,
) -> None:
    """Precompute and cache image embeddings, so later prompts cost only the decoder."""
    from rich.progress import Progress

    from samadapt.predict.segmenter import Segmenter

    encoder_runtime = _runtime(runtime, precision)
    if batch_size < 1:
        raise InputError(f"--batch-size must be at least 1, got {batch_size}")
    for p in images:
        if not p.exists():
            raise InputError(f"image file not found: {p}")
    segmenter = Segmenter(model, device=device, runtime=encoder_runtime)
    root = segmenter.cache.root
    try:
        from samadapt._io import check_writable

        check_writable([root / "entry"])
    except InputError:
        raise InputError(f"embed stores embeddings in {root}, which this user cannot write; set SAMADAPT_HOME "
                         "to a folder on a writable disk") from None
    _ = segmenter.loaded
    hits = 0
    with Progress(console=err) as progress:
        task = progress.add_task("embedding", total=len(images))
        for e in segmenter.embed_many((_read(p, bands) for p in images), batch_size=batch_size):
            hits += e.from_cache
            progress.advance(task)
    if segmenter.cache.write_failures:
        raise InputError(f"{segmenter.cache.write_failures} of {len(images)} embeddings could not be stored in "
                         f"{root} (see the warning above); free some space there or set SAMADAPT_HOME elsewhere")
    out.print(
        f"{len(images)} images: {len(images) - hits} encoded, {hits} already cached in {segmenter.cache.root}"
    )


@models_app.command("list")
def models_list() -> None:
    """Show the registry: names, families, sizes, and where each model's files were found."""
    from samadapt.models.hub import hf_hub_cache
    from samadapt.models.loading import cached_model_dir, locate
    from samadapt.models.registry import REGISTRY

    places = {"samadapt": "samadapt cache", "hf-cache": "HF cache", "missing": "missing"}
    table = Table("name", "family", "size", "found", Column("repository / folder", overflow="fold"))
    for spec in REGISTRY.values():
        place, folder = locate(spec.name)
        table.add_row(spec.name, spec.family, f"{spec.size_mb} MB", places[place], str(folder or spec.repo_id))
    out.print(table, soft_wrap=True)
    out.print(f"samadapt cache: {cached_model_dir('').parent}\nHF cache: {hf_hub_cache()}", highlight=False)


@models_app.command("fetch")
def models_fetch(
    name: Annotated[str, typer.Argument(help="Registry name.")],
    official: Annotated[bool, typer.Option("--official", help="Fetch the original release (Meta's .pth / .pt, "
                                           "SAM-HQ's .pth) instead of the Hugging Face repository; it is "
                                           "converted when loaded.")] = False,
) -> None:
    """Fetch a registry model: into the Hugging Face cache (verified), or its original release with --official."""
    if official:
        from samadapt.models.download import fetch_official

        path = fetch_official(name)
        out.print(f"{name}'s original release is {path}; load it with --model {path}", highlight=False, soft_wrap=True)
        return
    from samadapt.models.loading import fetch, locate

    place, _ = locate(name)
    folder = fetch(name)
    note = {"samadapt": "already in samadapt's folder", "hf-cache": "already in the Hugging Face cache"}.get(place, "")
    out.print(f"{name} is in {folder}" + (f" ({note})" if note else ""), highlight=False, soft_wrap=True)


@models_app.command("check")
def models_check(
    name: Annotated[str, typer.Argument(help="Registry name, model folder or Meta .pth / .pt file.")],
    device: DeviceOpt = "cpu",
    runtime: RuntimeOpt = "auto",
) -> None:
    """Load a model, encode and decode one generated image, and compare its files with the published ones.

    Exits 1 when anything mismatches (a digest, the architecture, the outputs).
    """
    from samadapt.models.check import check_model

    report = check_model(name, device=device, runtime=_runtime(runtime, None))
    table = Table("", Column("", overflow="fold"))
    table.add_row("model", report.name)
    table.add_row("weights", str(report.weights_file))
    table.add_row("sha256", report.weights_sha256)
    table.add_row("weights are", report.provenance)
    if report.input_size:
        table.add_row("family", report.family)
        table.add_row("input size", f"{report.input_size} px")
        table.add_row("runtime", report.runtime)
        table.add_row("seconds per image", f"{report.seconds_per_image:.2f} (encoder, this machine)")
    else:
        table.add_row("run", "not run: the files differ from the published ones")
    out.print(table, soft_wrap=True)
    for problem in report.problems:
        err.print(f"[bold red]mismatch:[/] {problem}", highlight=False, soft_wrap=True)
    if not report.ok:
        raise typer.Exit(1)
    out.print("check passed")


@models_app.command("convert")
def models_convert(
    checkpoint: Annotated[Path, typer.Argument(help="Official Meta SAM .pth file.")],
    out_dir: Annotated[Path, typer.Argument(help="Folder to write the transformers layout to.")],
) -> None:
    """Convert an official Meta SAM .pth checkpoint to the transformers layout."""
    from samadapt.models.convert import convert_meta_checkpoint

    if not checkpoint.is_file():
        raise InputError(f"checkpoint not found: {checkpoint}")
    out.print(f"wrote {convert_meta_checkpoint(checkpoint, out_dir)}")


@models_app.command("tiny")
def models_tiny(
    out_dir: Annotated[Path, typer.Argument(help="Folder to write the model to.")],
    family: Annotated[str, typer.Option("--family", help="sam, sam2 or sam-hq.")] = "sam",
    seed: Annotated[int, typer.Option(help="Random seed of the weights.")] = 0,
    overwrite: Annotated[bool, typer.Option("--overwrite")] = False,
) -> None:
    """Write a tiny random-initialised model (for tests and offline smoke tests)."""
    from samadapt.models.tiny import save_tiny_model

    if family not in ("sam", "sam2", "sam-hq"):
        raise InputError(f"--family must be sam, sam2 or sam-hq, got {family!r}")
    save_tiny_model(out_dir, family, seed=seed, overwrite=overwrite)  # type: ignore[arg-type]
    out.print(f"wrote a tiny random {family} model to {out_dir} (its masks mean nothing)")


def _expert_labels(dataset_dir: Path, labels: Path | None):  # noqa: ANN202
    """Expert prompts from --labels (YOLO folder, CSV, vector file), or a YOLO labels/ beside images/."""
    from samadapt.annotate.experts import read_csv_labels, read_vector_labels, read_yolo_folder
    from samadapt.data.dataset import SegDataset

    if labels is None:
        default = dataset_dir / "labels"
        if default.is_dir() and any(default.glob("*.txt")) and not (dataset_dir / "masks").is_dir():
            labels = default
        else:
            return None
    if not labels.exists():
        raise InputError(f"--labels {labels} does not exist")
    ds = SegDataset.open(dataset_dir)
    if labels.is_dir():
        sizes = {}
        for stem in ds.stems():
            img = ds.read_image(stem)
            sizes[stem] = (img.height, img.width)
        return read_yolo_folder(labels, sizes)
    if labels.suffix.lower() == ".csv":
        return read_csv_labels(labels)
    georef = {}
    for stem in ds.stems():
        img = ds.read_image(stem)
        georef[stem] = (img.crs, img.transform, (img.height, img.width))
    return read_vector_labels(labels, georef)


@app.command()
def annotate(
    dataset_dir: Annotated[Path, typer.Argument(help="Dataset folder with images/ (and masks/ or labels).")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Folder for the annotated dataset or comparison.")],
    model: ModelOpt = "sam-vit-base",
    mode: Annotated[str, typer.Option("--mode", help="box, point or auto.")] = "box",
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
    from samadapt.data.dataset import require_dataset_dir
    from samadapt.predict.segmenter import Segmenter

    if mode not in ("box", "point", "auto"):
        raise InputError(f"--mode must be box, point or auto, got {mode!r}")
    require_dataset_dir(dataset_dir)
    check_out_dir(out_dir, overwrite=overwrite, compare=compare)  # before the model loads
    segmenter = Segmenter(model, device=device)
    if compare:
        report = compare_modes(dataset_dir, out_dir, segmenter=segmenter, split=split, seed=seed, overwrite=overwrite)
        _warn_untrusted(segmenter.loaded.trusted)
        modes = ("auto", "point", "box")
        empty = dict(report.without_objects)
        table = Table("image", "automatic", "point", "box", title="foreground IoU against ground truth")
        for stem, row in report.per_image[:30]:
            table.add_row(stem, *(f"no objects ({empty[stem][m]} px found)" if stem in empty else f"{row[m]:.3f}"
                                  for m in modes))
        n_scored = len(report.per_image) - len(empty)
        table.add_row(f"[bold]mean of {n_scored}[/]", *(f"[bold]{report.mean_iou(m):.3f}[/]" for m in modes))
        table.add_row("dataset mIoU", *(f"{report.miou[m]:.3f}" for m in modes))
        out.print(table)
        if empty:
            spurious = ", ".join(f"{m} {sum(r[m] for _, r in report.without_objects)}" for m in modes)
            out.print(f"{len(empty)} images have no objects in the ground truth: not in the mean; pixels wrongly "
                      f"labelled there: {spurious}", highlight=False)
        out.print(f"wrote {report.csv_path} and {report.figure_path}")
        return
    experts = _expert_labels(dataset_dir, labels)
    with Progress(console=err) as progress:
        task = progress.add_task(f"annotating ({mode})", total=None)
        summary = annotate_dataset(
            dataset_dir, out_dir, segmenter=segmenter, mode=mode, experts=experts, split=split, seed=seed,
            overwrite=overwrite, progress=lambda n, total: progress.update(task, completed=n, total=total),
        )
    _warn_untrusted(segmenter.loaded.trusted)
    out.print(
        f"annotated {summary.images} images, {summary.objects} objects from {summary.source} "
        f"({summary.empty_objects} came out empty) into {summary.out_dir}; sources in {summary.out_dir / 'sources.csv'}"
    )


@data_app.command("check")
def data_check(
    dataset_dir: Annotated[Path, typer.Argument(help="Dataset folder.")],
    num_classes: Annotated[int | None, typer.Option(help="Expected number of classes, background included.")] = None,
) -> None:
    """Validate a dataset folder and print a summary; exit code 1 when it has errors."""
    from samadapt.data.check import check_dataset, format_report

    report = check_dataset(dataset_dir, num_classes=num_classes)
    out.print(format_report(report))
    if not report.ok:
        raise typer.Exit(1)


@data_app.command("build")
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
    out.print(f"wrote dataset {path}; check it with `samadapt data check {path}`")


@data_app.command("from-hf")
def data_from_hf(
    path: Annotated[Path, typer.Argument(help="A Hugging Face dataset saved with save_to_disk.")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Dataset folder to write.")],
    split: Annotated[str | None, typer.Option(help="Split of a DatasetDict.")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite")] = False,
) -> None:
    """Convert a Hugging Face `datasets` dataset (save_to_disk) to samadapt's folder format."""
    from samadapt.data.hf import from_hf_dataset

    out.print(f"wrote dataset {from_hf_dataset(path, out_dir, split=split, overwrite=overwrite)}")


def _parse_ints(text: str, flag: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise InputError(f"{flag} takes comma-separated whole numbers, got {text!r}") from None


def _options(values: list[str] | None) -> dict[str, object]:
    """--option key=value pairs (numbers and true/false are converted)."""
    import json as _json

    out: dict[str, object] = {}
    for item in values or []:
        if "=" not in item:
            raise InputError(f"--option takes key=value, got {item!r}")
        key, raw = item.split("=", 1)
        try:
            out[key.replace("-", "_")] = _json.loads(raw)
        except ValueError:
            out[key.replace("-", "_")] = raw
    return out


MethodOpt = Annotated[str, typer.Option("--method", help="domain-decoder, lora, mask-decoder, encoder-adapter, unet.")]
EvalDatasetOpt = Annotated[Path | None, typer.Option(
    "--eval-dataset", help="Score on this dataset's ground truth (its test split, or all of it when it has none; "
    "images used for training are left out by id), e.g. train on `annotate` pseudo-labels, test on the truth.")]
SelectOpt = Annotated[str, typer.Option("--select", help="Weights kept: best (by --monitor on the val split) or "
                                        "last (the Mars pits paper's 'no additional control').")]
OptionOpt = Annotated[list[str] | None, typer.Option("--option", help="Method setting key=value, e.g. rank=8.")]


@app.command("train")
def train_cmd(
    dataset_dir: Annotated[Path | None, typer.Argument(help="Dataset folder (images/, masks/, splits.json).")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Adapter folder to write.")] = None,
    method: MethodOpt = "domain-decoder",
    help_options: Annotated[bool, typer.Option("--help-options", help="List the --option settings of --method "
                                               "(types, defaults, meaning) and exit.")] = False,
    class_name: Annotated[str | None, typer.Option("--class", help="Train one foreground class (id or name) "
                                                      "against the rest. mask-decoder on multi-class data without it "
                                                      "trains one adapter per class, in OUT/<class>/.")] = None,
    model: ModelOpt = "sam-vit-base",
    labels: Annotated[int | None, typer.Option("--labels", help="Train on the first N images of a seeded shuffle.")] = None,
    epochs: Annotated[int, typer.Option(help="Epochs.")] = 20,
    lr: Annotated[float, typer.Option(help="Peak learning rate.")] = 1e-3,
    batch_size: Annotated[int, typer.Option(help="Images per step.")] = 4,
    seed: Annotated[int, typer.Option(help="Seed of split, budget and training.")] = 0,
    patience: Annotated[int | None, typer.Option(help="Stop after N epochs without improvement.")] = None,
    monitor: Annotated[str, typer.Option(help="Validation metric picking the best epoch (miou, f1_macro, loss).")] = "miou",
    select: SelectOpt = "best",
    eval_dataset: EvalDatasetOpt = None,
    bands: BandsOpt = None,
    unfreeze: Annotated[bool, typer.Option("--unfreeze", help="lora: train the whole SAM, not only the adapters.")] = False,
    prompt: Annotated[str | None, typer.Option(help="mask-decoder: prompts generated from masks: box, point, points.")] = None,
    multimask: Annotated[str | None, typer.Option(help="mask-decoder: loss on the best or the mean of 3 masks.")] = None,
    rank: Annotated[int | None, typer.Option(help="lora: rank of the adapters.")] = None,
    option: OptionOpt = None,
    mixed_precision: Annotated[str, typer.Option(help="no, bf16 or fp16.")] = "no",
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --out after an interruption.")] = False,
    keep_checkpoints: Annotated[bool, typer.Option("--keep-checkpoints", help="Keep the run folder (.OUT.run/, "
                                                   "last epoch's checkpoint) after a finished training.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite")] = False,
    device: DeviceOpt = "cpu",
) -> None:
    """Adapt SAM to a dataset with one of its methods; writes a small adapter folder."""
    from samadapt.data.dataset import SegDataset
    from samadapt.imagery.read import parse_bands
    from samadapt.methods import describe_options, method_class, validate_options

    if help_options:
        globals()["out"].print(describe_options(method), highlight=False, soft_wrap=True)
        return
    if dataset_dir is None or out is None:
        raise InputError("train needs a DATASET folder and --out ADAPTER_FOLDER (or --help-options)")
    opts = _options(option)
    for key, value, only in (("unfreeze", unfreeze or None, "lora"), ("rank", rank, "lora"),
                             ("prompt", prompt, "mask-decoder"), ("multimask", multimask, "mask-decoder")):
        if value is not None:
            if method != only:
                raise InputError(f"--{key} applies to the {only} method, not {method}")
            opts[key] = value
    validate_options(method, opts)
    dataset = SegDataset.open(dataset_dir)
    if class_name is not None:
        targets = [(_class_id(dataset, class_name), out)]
    elif method_class(method).binary_only and dataset.num_classes > 2:
        targets = [(c, out / _safe_name(name)) for c, name in sorted(dataset.classes.items()) if c]
        globals()["out"].print(f"{method} predicts one class; training one adapter per class: "
                               + ", ".join(str(t) for _, t in targets), highlight=False, soft_wrap=True)
    else:
        targets = [(None, out)]
    from samadapt._io import check_replaceable
    from samadapt.train.adapter import is_adapter_folder

    for _, folder in targets:  # before any training: nothing of the user's is ever replaced
        check_replaceable(folder, overwrite=overwrite or resume, kind="adapter", owned=is_adapter_folder)
    for class_id, folder in targets:
        fit = dict(epochs=epochs, lr=lr, batch_size=batch_size, resume=resume, patience=patience, monitor=monitor,
                   select=select, mixed_precision=mixed_precision)
        _train_one(dataset_dir, folder, method, model, labels, parse_bands(bands) if bands else None, seed, device,
                   eval_dataset, class_id, opts, keep_checkpoints, fit)


def _class_id(dataset, name: str) -> int:  # noqa: ANN001
    """A foreground class of a dataset by id or by name."""
    by_name = {v: k for k, v in dataset.classes.items()}
    if name in by_name and by_name[name]:
        return by_name[name]
    if name.isdigit() and int(name) in dataset.classes and int(name):
        return int(name)
    known = ", ".join(f"{k} ({v})" for k, v in sorted(dataset.classes.items()) if k)
    raise InputError(f"--class {name!r} is not a foreground class of {dataset.root}; use one of {known}")


def _safe_name(name: str) -> str:
    """A class name as a folder name."""
    import re

    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "class"


def _train_one(dataset_dir: Path, out: Path, method: str, model: str, labels: int | None, bands, seed: int,  # noqa: ANN001
               device: str, eval_dataset: Path | None, class_id: int | None, opts: dict, keep_checkpoints: bool,
               fit: dict) -> None:
    from samadapt.train.learner import Learner

    learner = Learner(dataset_dir, method=method, model=model, labels=labels, bands=bands, seed=seed, device=device,
                      eval_data=eval_dataset, class_id=class_id, **opts)
    if learner.method.uses_sam_weights:
        _warn_untrusted(learner.base.trusted)
    else:
        size = learner.base.preprocessing.size
        side = learner.method.output_side
        err.print(f"{method} does not use SAM's weights: it trains from scratch on each image resized as SAM's "
                  f"input ({size} px) and runs at {side} x {side} px", highlight=False)
    out.parent.mkdir(parents=True, exist_ok=True)
    run_dir = out.with_name(f".{out.name}.run")
    select = fit["select"]
    import shutil

    try:
        result = learner.fit(fit.pop("epochs"), out_dir=run_dir, **fit)
        learner.save(out, overwrite=True)
    except BaseException:  # a kill, Ctrl-C, a full disk: keep what --resume can use, and only that
        if any((run_dir / "checkpoints").glob("*.pt")):
            err.print(f"note: {run_dir} keeps the last finished epoch; run the same command with --resume to go on",
                      highlight=False, soft_wrap=True)
        else:
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    if not keep_checkpoints:  # the adapter holds the weights, the log and the plot; the run folder is spent
        shutil.rmtree(run_dir, ignore_errors=True)
    kept = next(r for r in result.history if r["epoch"] == result.best_epoch)
    which = "last epoch" if select == "last" else "best epoch"
    what = "" if class_id is None else f" (class {learner.classes[1]} against the rest)"
    globals()["out"].print(
        f"trained {method}{what} on {len(learner.train_stems)} images; kept the {which}, {result.best_epoch + 1} "
        f"(val mIoU {kept.get('val_miou', float('nan')):.3f}); adapter in {out}; its test split "
        f"({len(learner.test_stems)} images) is what `samadapt evaluate {out} DATASET` scores",
        highlight=False, soft_wrap=True,
    )


@app.command("evaluate")
def evaluate_cmd(
    adapter: Annotated[Path, typer.Argument(help="Adapter folder from `samadapt train`.")],
    dataset_dir: Annotated[Path, typer.Argument(help="Dataset folder with masks.")],
    split: Annotated[str | None, typer.Option(help="train, val, test or all of DATASET; default: the adapter's "
                                                 "own test split, as recorded when it was trained.")] = None,
    allow_train_images: Annotated[bool, typer.Option("--allow-train-images", help="Score images the adapter was "
                                                     "trained on instead of refusing them.")] = False,
    oracle_prompts: Annotated[bool, typer.Option("--oracle-prompts", help="Prompted methods build their prompts "
                                                 "from the masks being scored (outputs say oracle).")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON document.")] = False,
    overlays: Annotated[Path | None, typer.Option(help="Folder for overlay PNGs of a few predictions.")] = None,
    model: Annotated[str | None, typer.Option("--model", "-m", help="Base model (default: the adapter's).")] = None,
    device: DeviceOpt = "cpu",
) -> None:
    """Score an adapter on images it did not train on: mIoU, precision / recall / F1, accuracy, objects."""
    import json as _json

    from samadapt.train.evaluation import evaluate_adapter
    from samadapt.train.metrics import COUNT_FIELDS, SCALAR_FIELDS

    if overlays is not None:
        from samadapt._io import check_writable

        check_writable([overlays / "overlay.png"], flag="--overlays")  # before the scoring, not after
    report = evaluate_adapter(adapter, dataset_dir, split=split, allow_train_images=allow_train_images,
                              oracle_prompts=oracle_prompts, model=model, device=device)
    metrics = report.metrics
    ad_classes = report.adapter.classes
    if as_json:
        print(_json.dumps(report.as_dict(), indent=2))
    else:
        oracle = " [bold red](oracle prompts from the scored masks)[/]" if report.oracle else ""
        table = Table("metric", "value", title=f"{report.method} on {len(report.image_ids)} images: {report.split}{oracle}")
        scores = metrics.as_dict()
        for key in (*SCALAR_FIELDS, *COUNT_FIELDS):
            value = scores[key]
            table.add_row(key, "undefined" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value))
        for c, v in enumerate(metrics.iou):
            table.add_row(f"IoU class {c} ({ad_classes.get(c, c)})", f"{v:.4f}")
        globals()["out"].print(table)
        if report.comparison is not None:
            cmp = Table("model", "foreground IoU", title="U-Net alone, SAM alone and adapted SAM on the same images")
            for key, label in (("unet", "U-Net alone"), ("sam", "SAM alone"), ("adapted", "adapted SAM")):
                cmp.add_row(label, f"{report.comparison[key]:.4f}")
            globals()["out"].print(cmp)
        if report.train_images_scored:
            err.print(f"[bold yellow]note:[/] {len(report.train_images_scored)} of these images trained the adapter",
                      highlight=False)
        for note in report.notes:
            err.print(f"note: {note}", highlight=False, soft_wrap=True)
    if overlays is not None:
        from samadapt.data.dataset import SegDataset
        from samadapt.imagery.overlay import overlay, save_png
        from samadapt.train.learner import load_samples

        ad = report.adapter
        for s in load_samples(SegDataset.open(dataset_dir), report.image_ids[:4], ad.bands):
            pred = ad.predict_sample(s)
            masks = np.stack([pred.labels == c for c in range(1, ad.method.num_classes)])
            save_png(overlays / f"{s.stem}.png", overlay(s.pixels[:, :, :3], masks))
        err.print(f"overlays in {overlays}")


@app.command("learning-curve")
def learning_curve_cmd(
    dataset_dir: Annotated[Path, typer.Argument(help="Dataset folder (images/, masks/, splits.json).")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Folder for the CSV, plot, report and runs.")],
    method: MethodOpt = "domain-decoder",
    compare_methods: Annotated[str | None, typer.Option(help="Comma-separated methods to run on the same splits.")] = None,
    model: ModelOpt = "sam-vit-base",
    sizes: Annotated[str, typer.Option(help="Label budgets.")] = "5,10,15,20,25,50",
    seeds: Annotated[int, typer.Option(help="Seeds per budget.")] = 3,
    epochs: Annotated[int, typer.Option(help="Epochs per run.")] = 20,
    lr: Annotated[float, typer.Option(help="Peak learning rate.")] = 1e-3,
    select: SelectOpt = "best",
    eval_dataset: EvalDatasetOpt = None,
    oracle_prompts: Annotated[bool, typer.Option("--oracle-prompts", help="Prompted methods are scored with prompts "
                                                 "built from the test masks (report.md says oracle).")] = False,
    keep_checkpoints: Annotated[bool, typer.Option("--keep-checkpoints", help="Keep each run's last-epoch "
                                                   "checkpoint in OUT/runs/.")] = False,
    bands: BandsOpt = None,
    option: OptionOpt = None,
    device: DeviceOpt = "cpu",
) -> None:
    """Train on growing label budgets over several seeds; CSV, plot and report.md of every metric against N."""
    from samadapt.imagery.read import parse_bands
    from samadapt.train.curves import METRICS, learning_curve, summarise

    methods = [m.strip() for m in compare_methods.split(",")] if compare_methods else [method]
    path = learning_curve(dataset_dir, out_dir, methods=methods, model=model, sizes=_parse_ints(sizes, "--sizes"),
                          seeds=seeds, epochs=epochs, lr=lr, bands=parse_bands(bands) if bands else None,
                          device=device, method_options=_options(option), eval_dataset=eval_dataset, select=select,
                          oracle_prompts=oracle_prompts, keep_checkpoints=keep_checkpoints, log=err.print)
    import csv as _csv

    rows = [{**r, **{k: float(r[k]) for k in METRICS}, "labels": int(r["labels"])} for r in _csv.DictReader(open(path))]
    oracle = " [bold red](oracle prompts from the test masks)[/]" if oracle_prompts else ""
    table = Table("method", "labels", "mIoU mean ± sd (n)", "F1 macro mean ± sd (n)", title=f"test split{oracle}")
    miou, f1 = summarise(rows, "miou"), summarise(rows, "f1_macro")
    missing = []
    for m in miou:
        for a, b in zip(miou[m], f1[m], strict=False):
            table.add_row(m, str(a.labels), f"{a.mean:.3f} ± {a.sd:.3f} ({a.n})", f"{b.mean:.3f} ± {b.sd:.3f} ({b.n})")
            if a.missing:
                missing.append(f"{m} n={a.labels}: seeds {', '.join(map(str, a.missing))}")
    globals()["out"].print(table)
    if missing:
        err.print(f"[bold yellow]note:[/] runs without a mIoU, left out of the means: {'; '.join(missing)}",
                  highlight=False)
    globals()["out"].print(f"wrote {path}, {path.with_suffix('.png')} and {path.with_name('report.md')}",
                           highlight=False, soft_wrap=True)


@app.command("predict")
def predict_cmd(
    adapter: Annotated[Path, typer.Argument(help="Adapter folder from `samadapt train` (or, with --prompts / "
                                            "--rough, a SAM model: registry name, folder or .pth).")],
    rasters: Annotated[list[str], typer.Argument(help="Rasters, globs ('tiles/*.tif') or .txt files of paths.")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Folder for the outputs.")],
    tile: Annotated[int | None, typer.Option(help="Tile side in pixels (default: the model's input size).")] = None,
    overlap: Annotated[int | None, typer.Option(help="Overlap of neighbouring tiles in pixels.")] = None,
    tile_gsd: Annotated[str | None, typer.Option(help="Resolution the model sees, e.g. 0.5m or 0.5 (map units).")] = None,
    probabilities: Annotated[bool, typer.Option("--probabilities", help="Also write class probabilities.")] = False,
    cog: Annotated[bool, typer.Option("--cog", help="Write Cloud-Optimised GeoTIFFs.")] = False,
    vector: Annotated[str, typer.Option("--vector", help="gpkg, geojson or none.")] = "gpkg",
    min_area: Annotated[float, typer.Option(help="Drop polygons smaller than this (map units squared).")] = 0.0,
    simplify: Annotated[float, typer.Option(help="Simplification tolerance in map units.")] = 0.0,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Redo rasters whose outputs are complete.")] = False,
    model: Annotated[str | None, typer.Option("--model", "-m", help="Base model (default: the adapter's).")] = None,
    scheduler: Annotated[str, typer.Option(help="local, processes:N (a Dask LocalCluster) or tcp://host:port.")] = "local",
    prompts: Annotated[Path | None, typer.Option("--prompts", help="Boxes / points (GeoPackage, GeoJSON, CSV) "
                                                    "for a prompt-based model.")] = None,
    rough: Annotated[str | None, typer.Option("--rough", help="Prompts from a rough mask: A,B[,threshold] = "
                                                 "(band A - band B)/(A + B) > threshold, e.g. NDWI 2,4,0.")] = None,
    device: DeviceOpt = "cpu",
    batch_size: Annotated[int, typer.Option(help="Tiles per pass of the model (in-process mapping).")] = 1,
    runtime: RuntimeOpt = "auto",
    precision: PrecisionOpt = None,
) -> None:
    """Map whole rasters with an adapter: class GeoTIFF, probabilities and polygons in the raster's CRS."""
    from rich.progress import Progress

    from samadapt.mapping.tiled import MapOptions, dask_client, expand_inputs, predict_rasters
    from samadapt.train.adapter import load_adapter

    if vector not in ("gpkg", "geojson", "none"):
        raise InputError(f"--vector must be gpkg, geojson or none, got {vector!r}")
    encoder_runtime = _runtime(runtime, precision)
    if batch_size < 1:
        raise InputError(f"--batch-size must be at least 1, got {batch_size}")
    paths = expand_inputs(rasters)
    if prompts is not None or rough is not None:
        _predict_prompted(adapter, paths, out_dir, prompts, rough, MapOptions(
            tile=tile, probabilities=probabilities, cog=cog, polygons=None if vector == "none" else vector,
            min_area=min_area, simplify=simplify, overwrite=overwrite), model, device,  # type: ignore[arg-type]
            runtime=encoder_runtime)
        return
    ad = load_adapter(adapter, base=model, device=device, runtime=encoder_runtime)
    if ad.needs_prompts:
        raise InputError("a mask-decoder adapter needs prompts; map with a domain-decoder, lora or encoder-adapter adapter")
    gsd = None
    if tile_gsd is not None:
        try:
            gsd = float(tile_gsd.lower().removesuffix("m"))
        except ValueError:
            raise InputError(f"--tile-gsd takes a distance per pixel like 0.5m, got {tile_gsd!r}") from None
    options = MapOptions(tile=tile, overlap=overlap, probabilities=probabilities, cog=cog, tile_gsd=gsd,
                         polygons=None if vector == "none" else vector, min_area=min_area, simplify=simplify,
                         overwrite=overwrite, batch_size=batch_size)  # type: ignore[arg-type]
    client = dask_client(scheduler)
    try:
        with Progress(console=err) as bar:
            task = bar.add_task("tiles", total=None)
            results = predict_rasters(ad, paths, out_dir, options, client=client,
                                      progress=lambda name, n, t: bar.update(task, completed=n, total=t,
                                                                             description=name))
    finally:
        if client is not None:
            client.close()
    _report_maps(results, "tiles")


def _report_maps(results: list, count: str) -> None:
    """Summary table of a mapping run; exit code 1 when any raster failed."""
    table = Table("raster", "status", count, "outputs / error", title=f"{len(results)} rasters")
    for r in results:
        detail = r.error if r.status == "failed" else ", ".join(p.name for p in r.outputs.values())
        table.add_row(r.raster.name, r.status, str(r.tiles), detail)
    globals()["out"].print(table)
    if any(r.status == "failed" for r in results):
        raise typer.Exit(1)


def _predict_prompted(ref: Path, paths: list[Path], out_dir: Path, prompts: Path | None, rough: str | None,
                      options: object, model: str | None, device: str, runtime: object = None) -> None:
    from samadapt.mapping.prompted import predict_prompted_raster, rough_prompts
    from samadapt.mapping.tiled import MapResult
    from samadapt.prompts.io import read_prompt_file

    if prompts is not None and rough is not None:
        raise InputError("give --prompts or --rough, not both")
    from samadapt.train.adapter import is_adapter_ref

    if is_adapter_ref(ref):  # a damaged adapter too, so load_adapter says what is wrong with it
        from samadapt.train.adapter import load_adapter

        predictor: object = load_adapter(ref, base=model, device=device, runtime=runtime)
    else:
        from samadapt.predict.segmenter import Segmenter

        predictor = Segmenter(str(ref), device=device, runtime=runtime)  # type: ignore[arg-type]
    parts = []
    if rough is not None:
        try:
            parts = [float(v) for v in rough.split(",")]
        except ValueError:
            parts = []
        if len(parts) not in (2, 3):
            raise InputError(f"--rough takes A,B[,threshold] band numbers, got {rough!r}")
    results = []
    for raster in paths:
        try:
            if prompts is not None:
                with rasterio.open(raster) as ds:
                    objects = read_prompt_file(prompts, transform=ds.transform, raster_crs=ds.crs)
            else:
                objects = rough_prompts(raster, a=int(parts[0]), b=int(parts[1]),
                                        threshold=parts[2] if len(parts) == 3 else 0.0)
            results.append(predict_prompted_raster(predictor, raster, out_dir, objects, options))  # type: ignore[arg-type]
        except (SamadaptError, rasterio.errors.RasterioError, OSError) as e:
            results.append(MapResult(raster, status="failed", error=str(e)))
    _report_maps(results, "objects")


@app.command()
def serve(
    model: ModelOpt = "sam-vit-base",
    adapter: Annotated[Path | None, typer.Option("--adapter", help="Adapter folder: enables POST /map (class polygons).")] = None,
    host: Annotated[str, typer.Option("--host", help="Address to listen on; the default only accepts this machine.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port; 0 picks a free one.")] = 8000,
    config: Annotated[Path | None, typer.Option("--config", help="TOML or JSON service settings (sources, limits, token).")] = None,
    source: Annotated[list[str] | None, typer.Option("--source", help="NAME=file.tif or NAME=https://host/{z}/{x}/{y}.png (repeatable).")] = None,
    mode: Annotated[str | None, typer.Option("--mode", help="Embedding reuse: grid (cells of the model input) or view (per view, as SamGIS).")] = None,
    device: DeviceOpt = "cpu",
    runtime: RuntimeOpt = "auto",
    precision: PrecisionOpt = None,
) -> None:
    """Serve prompted segmentation on a web map: SamGIS-compatible POST /segment and a browser page."""
    from samadapt.service.server import build_service, run

    service = build_service(model, adapter=adapter, config=config, sources=source or (), mode=mode, device=device,
                            runtime=_runtime(runtime, precision))
    _warn_untrusted(service.state.loaded.trusted)
    if host not in ("127.0.0.1", "localhost", "::1"):
        err.print(f"[bold yellow]NOTE: listening on {host}: other machines can reach this service; "
                  "set a token (SAMADAPT_TOKEN) unless the network is trusted.[/]")

    def ready(url: str) -> None:
        out.print(f"samadapt serving on {url}  (page: {url}/, API docs: {url}/docs); Ctrl+C to stop", highlight=False)

    run(service, host=host, port=port, on_ready=ready)


def _family_and_size(model: str) -> tuple[str, int]:
    """Family and input size of a model reference, read without loading the weights."""
    from samadapt.models.loading import family_of_config, input_size_of_config, read_config
    from samadapt.models.registry import REGISTRY

    if model in REGISTRY:
        return REGISTRY[model].family, 1024
    folder = Path(model)
    if not (folder / "config.json").is_file():
        raise InputError(f"--model {model} is neither a registry name nor a model folder with a config.json")
    config = read_config(folder)
    return family_of_config(config, folder), input_size_of_config(config)


@app.command()
def info(
    model: Annotated[str, typer.Option("--model", "-m", help="Model whose encoder runtime to show "
                                       "(registry name or folder; not loaded).")] = "sam-vit-base",
    runtime: RuntimeOpt = "auto",
    precision: PrecisionOpt = None,
) -> None:
    """Show versions, the CPU, the encoder runtime chosen for it, threads, and where files go."""
    from types import SimpleNamespace

    import torch

    from samadapt import __version__
    from samadapt._home import samadapt_home
    from samadapt.models.accel import sam_decoder
    from samadapt.models.accel.speed import cpu_info, resolve
    from samadapt.versions import dependency_versions

    family, size = _family_and_size(model)
    rt = resolve(_runtime(runtime, precision), family, size)
    table = Table("", "")
    table.add_row("samadapt", __version__)
    for dep in dependency_versions():
        if dep.installed is not None:
            note = "" if dep.in_range else f"  [bold yellow](outside the tested range {dep.tested})[/]"
            table.add_row(dep.name, dep.installed + note)
    table.add_row("CPU capability", cpu_info().describe())
    table.add_row("encoder runtime", f"{rt.tag} for {model} ({size} px)")
    table.add_row("why", "; ".join(rt.reasons) or "as asked")
    decoder_precision = sam_decoder.precision_for(SimpleNamespace(runtime=rt))  # follows the encoder's precision
    table.add_row("prompt decoder", f"samadapt's batched pass in {decoder_precision} (transformers' own call "
                                    "for mask prompts and decoders with adapter layers)")
    table.add_row("threads", f"{rt.threads} for the encoder (torch now: {torch.get_num_threads()})")
    table.add_row("CUDA", "yes" if torch.cuda.is_available() else "no")
    table.add_row("home", str(samadapt_home()))
    out.print(table)


@app.command()
def demo(
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for the demo's outputs.")] = Path("demo-output"),
    model: ModelOpt = "sam-vit-base",
) -> None:
    """Run the main job end to end on a generated Mars-like GeoTIFF."""
    from samadapt.demo import run_demo

    run_demo(out_dir, model=model, console=out)


def _fail(message: str) -> None:
    """Print one sentence and exit 2, or re-raise for a traceback under --debug / SAMADAPT_DEBUG."""
    if _STATE["debug"] or os.environ.get("SAMADAPT_DEBUG"):
        raise  # noqa: PLE0704 - called from an except block: re-raises the error being handled
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    sys.exit(2)


def _one_line_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                      line: str | None = None) -> str:
    """Warnings as users read them: one line, without the source line that raised them."""
    return f"warning: {message}\n"


def main() -> None:
    """Entry point of the console script."""
    _STATE["debug"] = False
    if not (os.environ.get("SAMADAPT_DEBUG") or "--debug" in sys.argv):
        import warnings

        warnings.formatwarning = _one_line_warning
    try:
        app()
    except SamadaptError as e:
        _fail(str(e))
    except OSError as e:  # disk full, permission, a missing device: the operating system said no
        from samadapt._io import describe_os_error

        _fail(describe_os_error(e))
    except Exception as e:
        from samadapt._io import errno_of

        code = errno_of(e)  # a library's wrapper around an operating-system failure
        if code is None:
            raise
        _fail(f"{os.strerror(code).lower()}: {e}")
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
