"""``samadapt segment`` and ``samadapt embed``: prompted segmentation of one image, and its embedding cache."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from samadapt.cli.console import stderr, stdout, warn_untrusted
from samadapt.cli.options import (
    AssetOpt,
    BandsOpt,
    BoxThresholdOpt,
    DetectorOpt,
    DeviceOpt,
    ModelOpt,
    PrecisionOpt,
    RuntimeOpt,
    TextOpt,
    TextThresholdOpt,
    batch_size_option,
    encoder_runtime,
    read,
)
from samadapt.errors import InputError

if TYPE_CHECKING:
    from samadapt.imagery.read import GeoImage
    from samadapt.prompts.records import PromptRecords

#: How many times larger than the model input an image may be before segment says so.
DOWNSAMPLING_NOTE = 4

#: What ``segment --out`` writes, by suffix: masks (.png, .tif) and polygons (.gpkg, .geojson).
OUTPUT_SUFFIXES = {".png", ".tif", ".tiff", ".gpkg", ".geojson", ".json"}
VECTOR_SUFFIXES = (".gpkg", ".geojson", ".json")


def _note_downsampling(path: str, hw: tuple[int, int], size: int, model: str) -> None:
    """A note when SAM will see a large image shrunk many times (a HiRISE strip, say)."""
    factor = max(hw) / size
    if factor > DOWNSAMPLING_NOTE:
        stderr.print(
            f"[bold yellow]note:[/] {path} is {hw[1]} x {hw[0]} px: SAM sees it whole at {size} px, "
            f"{factor:.0f}x smaller. For objects in a large raster, `samadapt predict {model} {path} "
            "--prompts FILE --out DIR` segments each in a window centred on it, at full resolution.",
            highlight=False, soft_wrap=True,
        )


def _exemplars(values: list[str], crs: str | None, geo: GeoImage) -> tuple[list[list[float]], list[int]]:
    """``--exemplar x0,y0,x1,y1[,label]`` values as pixel boxes (from map coordinates with ``--crs``) and labels."""
    from samadapt.prompts.io import prompts_from_cli

    boxes, labels = [], []
    for value in values:
        parts = value.split(",")
        if len(parts) not in (4, 5) or (len(parts) == 5 and parts[4].strip() not in ("0", "1")):
            raise InputError(f"--exemplar takes x0,y0,x1,y1 or x0,y0,x1,y1,label with label 1 or 0, got {value!r}")
        labels.append(int(parts[4]) if len(parts) == 5 else 1)
        (found,) = prompts_from_cli([], [",".join(parts[:4])], crs=crs, transform=geo.transform, raster_crs=geo.crs)
        assert found.box is not None  # a box prompt
        boxes.append([float(v) for v in found.box])
    return boxes, labels


def _write_class_names(raster: Path, records: PromptRecords, overwrite: bool) -> Path:
    """``<stem>_classes.json`` beside a class raster, naming its class ids."""
    from samadapt._io import check_target, write_json

    names = raster.with_name(f"{raster.stem}_classes.json")
    check_target(names, overwrite=overwrite)
    return write_json(names, records.class_names())


def segment(
    image: Annotated[str, typer.Argument(help="PNG, JPEG, TIFF, GeoTIFF, JPEG 2000, ISIS3 .cub, PDS4 .xml; a file, "
                                         "https:// or s3:// URL, /vsi* path or STAC item (.json).")],
    out_paths: Annotated[list[Path], typer.Option("--out", "-o",
                                                  help="Output .png, .tif, .gpkg or .geojson (repeatable).")],
    model: ModelOpt = "sam-vit-base",
    box: Annotated[list[str] | None, typer.Option("--box", help="x0,y0,x1,y1; each box is one object.")] = None,
    point: Annotated[list[str] | None, typer.Option("--point",
                                                    help="x,y[,label]; label 1 = object, 0 = background.")] = None,
    prompts: Annotated[Path | None, typer.Option("--prompts",
                                                 help="GeoJSON/GeoPackage/CSV of boxes or points.")] = None,
    class_column: Annotated[str | None, typer.Option("--class-column", help="Column of the --prompts file holding "
                                                     "each object's class (integer ids or names).")] = None,
    crs: Annotated[str | None, typer.Option("--crs",
                                            help="Prompts are map coordinates in this CRS, e.g. EPSG:4326.")] = None,
    everything: Annotated[bool, typer.Option("--everything",
                                             help="Segment every object (point grid); no prompts.")] = False,
    points_per_side: Annotated[int, typer.Option(help="Grid size of --everything.")] = 32,
    text: TextOpt = None,
    exemplar: Annotated[list[str] | None, typer.Option(
        "--exemplar", help="SAM 3: x0,y0,x1,y1[,label] box of an example object (label 0: not like this); "
        "read with every --text phrase, or alone.")] = None,
    detector: DetectorOpt = None,
    box_threshold: BoxThresholdOpt = None,
    text_threshold: TextThresholdOpt = None,
    bands: BandsOpt = None,
    asset: AssetOpt = None,
    multimask: Annotated[bool, typer.Option("--multimask/--single-mask",
                                            help="Pick the best of 3 masks per object.")] = True,
    wgs84: Annotated[bool, typer.Option("--wgs84", help="Write GeoJSON polygons in EPSG:4326.")] = False,
    min_area: Annotated[int, typer.Option("--min-area", help="Drop polygons smaller than this many pixels.")] = 0,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace existing outputs.")] = False,
    device: DeviceOpt = "cpu",
    runtime: RuntimeOpt = "auto",
    precision: PrecisionOpt = None,
) -> None:
    """Segment objects in IMAGE from box / point prompts, phrases (--text) or everything; write masks and polygons."""
    from samadapt._io import check_writable
    from samadapt.imagery.sources import resolve_source
    from samadapt.mapping.outputs import write_segmentation
    from samadapt.predict.segmenter import Segmenter
    from samadapt.prompts.io import prompts_from_cli, read_prompt_records
    from samadapt.prompts.records import PromptRecords
    from samadapt.text.options import family_for_text, text_search

    for p in out_paths:
        if p.suffix.lower() not in OUTPUT_SUFFIXES:
            raise InputError(f"--out {p} has an unknown suffix; use one of {', '.join(sorted(OUTPUT_SUFFIXES))}")
        if p.exists() and not overwrite:
            raise InputError(f"--out {p} exists; pass --overwrite to replace it")
    family = family_for_text(model) if text or exemplar else "sam"
    if exemplar and family != "sam3":
        raise InputError(f"--exemplar is SAM 3's concept prompt; a {family} model takes --box prompts")
    if exemplar and not text:
        from samadapt.text.concept import VISUAL_PROMPT

        text = [VISUAL_PROMPT]  # what SAM 3 reads for exemplars alone (as Sam3Processor does)
    search = text_search(text, detector, box_threshold, text_threshold, family)
    if class_column is not None and prompts is None:
        raise InputError("--class-column names a column of the --prompts file; give --prompts FILE or drop it")
    if search is not None and (box or point or prompts is not None or everything):
        raise InputError("--text finds its own objects; drop --box/--point/--prompts/--everything, or --text")
    check_writable(out_paths)
    source = resolve_source(image, asset)
    geo = read(source, bands)
    if geo.crs is None and any(p.suffix.lower() in VECTOR_SUFFIXES for p in out_paths):
        units = "pixel coordinates (x = column, y = row)" if geo.transform is None else "the raster's map units"
        stderr.print(f"[bold yellow]note:[/] {source.name} has no CRS, so the polygons are written without one, "
                     f"in {units}", highlight=False, soft_wrap=True)
    records = PromptRecords([], [])
    if box or point:
        given = prompts_from_cli(point or [], box or [], crs=crs, transform=geo.transform, raster_crs=geo.crs)
        records += PromptRecords(given, list(range(len(given))))  # command-line prompts: ids by order
    if prompts is not None:
        records += read_prompt_records(prompts, transform=geo.transform, raster_crs=geo.crs, crs=crs,
                                       class_column=class_column)
    objects = records.prompts
    if everything and objects:
        raise InputError("--everything takes no prompts; drop --box/--point/--prompts or --everything")
    if not everything and not objects and search is None:
        raise InputError("give at least one --box, --point or --prompts file, --text, or --everything")
    segmenter = Segmenter(model, device=device, runtime=encoder_runtime(runtime, precision))
    if search is not None:
        from samadapt.text.search import segment_text

        boxes, labels = _exemplars(exemplar or [], crs, geo)
        result = segment_text(segmenter, geo, search.query, search.open_detector(device), multimask=multimask,
                              exemplars=boxes, exemplar_labels=labels)
    elif everything:
        from samadapt.predict.automatic import AutomaticOptions

        result = segmenter.segment_everything(geo, AutomaticOptions(points_per_side=points_per_side))
    else:
        _note_downsampling(image, geo.pixels.shape[:2], segmenter.loaded.preprocessing.size, model)
        result = segmenter.segment(geo, objects, multimask=multimask)
    warn_untrusted(result.trusted)
    written: list[Path] = []
    try:
        for p in out_paths:
            write_segmentation(
                p, result, crs=geo.crs, transform=geo.transform, valid=geo.valid,
                overwrite=overwrite, to_wgs84=wgs84, min_area_pixels=min_area,
                records=records if objects else None,
            )
            written.append(p)
            if records.classes is not None and p.suffix.lower() not in VECTOR_SUFFIXES:
                written.append(_write_class_names(p, records, overwrite))
    except BaseException:
        for p in written:  # all outputs or none: a half set would pass for a finished run
            p.unlink(missing_ok=True)
        raise
    for p in written:
        stdout.print(f"wrote {p}")
    phrases = result.phrases
    table = Table("object", *(["phrase", "detector score"] if phrases else []), "pixels", "predicted IoU",
                  title=f"{len(result)} objects")
    for i, (pixels, s) in enumerate(zip(result.pixel_counts(), result.scores, strict=False)):
        if i < 20:
            found = [phrases[i], f"{result.detector_scores[i]:.3f}"] if phrases and result.detector_scores is not None \
                else []
            table.add_row(str(i), *found, str(pixels), f"{s:.3f}")
    stdout.print(table)


def embed(
    images: Annotated[list[str], typer.Argument(help="Images to embed: files, URLs, /vsi* paths or STAC items.")],
    model: ModelOpt = "sam-vit-base",
    bands: BandsOpt = None,
    asset: AssetOpt = None,
    batch_size: Annotated[int, batch_size_option("Images per encoder call.")] = 1,
    device: DeviceOpt = "cpu",
    runtime: RuntimeOpt = "auto",
    precision: PrecisionOpt = None,
) -> None:
    """Precompute and cache image embeddings, so later prompts cost only the decoder."""
    from samadapt._io import check_writable
    from samadapt.imagery.sources import resolve_source
    from samadapt.predict.segmenter import Segmenter
    from samadapt.progress import progress_bar

    sources = [resolve_source(p, asset) for p in images]  # a missing file or --asset without STAC stops here
    segmenter = Segmenter(model, device=device, runtime=encoder_runtime(runtime, precision))
    root = segmenter.cache.root
    try:
        check_writable([root / "entry"])
    except InputError:
        raise InputError(f"embed stores embeddings in {root}, which this user cannot write; set SAMADAPT_HOME "
                         "to a folder on a writable disk") from None
    _ = segmenter.loaded
    hits = 0
    with progress_bar(console=stderr) as progress:
        task = progress.add_task("embedding", total=len(images))
        for e in segmenter.embed_many((read(s, bands) for s in sources), batch_size=batch_size):
            hits += e.from_cache
            progress.advance(task)
    if segmenter.cache.write_failures:
        raise InputError(f"{segmenter.cache.write_failures} of {len(images)} embeddings could not be stored in "
                         f"{root} (see the warning above); free some space there or set SAMADAPT_HOME elsewhere")
    stdout.print(
        f"{len(images)} images: {len(images) - hits} encoded, {hits} already cached in {segmenter.cache.root}"
    )
