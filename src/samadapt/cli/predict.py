"""``samadapt predict``: map whole rasters with an adapter, or with SAM from prompts."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal, cast

import typer
from rich.table import Table

from samadapt.cli.console import stderr, stdout, warn_untrusted
from samadapt.cli.options import (
    AssetOpt,
    BoxThresholdOpt,
    DetectorOpt,
    DeviceOpt,
    PrecisionOpt,
    RuntimeOpt,
    TextOpt,
    TextThresholdOpt,
    batch_size_option,
    choice,
    encoder_runtime,
)
from samadapt.errors import InputError

if TYPE_CHECKING:
    from samadapt.imagery.sources import RasterSource
    from samadapt.mapping.tiled import MapOptions, MapResult
    from samadapt.models.accel.speed import RuntimeOptions
    from samadapt.text.options import TextSearch


def predict_cmd(
    adapter: Annotated[Path, typer.Argument(help="Adapter folder from `samadapt train` (or, with --prompts / "
                                            "--rough / --text, a SAM model: registry name, folder or .pth).")],
    rasters: Annotated[list[str], typer.Argument(help="Rasters, globs ('tiles/*.tif'), .txt files of paths, "
                                                 "https:// / s3:// URLs, /vsi* paths or STAC items (.json).")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Folder for the outputs.")],
    tile: Annotated[int | None, typer.Option(help="Tile side in pixels (default: the model's input size).")] = None,
    overlap: Annotated[int | None, typer.Option(help="Overlap of neighbouring tiles in pixels.")] = None,
    tile_gsd: Annotated[str | None, typer.Option(help="Resolution the model sees, e.g. 0.5m or 0.5 "
                                                 "(map units).")] = None,
    probabilities: Annotated[bool, typer.Option("--probabilities", help="Also write class probabilities.")] = False,
    cog: Annotated[bool, typer.Option("--cog", help="Write Cloud-Optimised GeoTIFFs.")] = False,
    vector: Annotated[str, typer.Option("--vector", help="gpkg, geojson or none.",
                                        callback=choice("--vector", ("gpkg", "geojson", "none")))] = "gpkg",
    min_area: Annotated[float, typer.Option(help="Drop polygons smaller than this (map units squared).")] = 0.0,
    simplify: Annotated[float, typer.Option(help="Simplification tolerance in map units.")] = 0.0,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Redo rasters whose outputs are complete.")] = False,
    model: Annotated[str | None, typer.Option("--model", "-m", help="Base model (default: the adapter's).")] = None,
    scheduler: Annotated[str, typer.Option(help="local, processes:N (a Dask LocalCluster) or "
                                           "tcp://host:port.")] = "local",
    prompts: Annotated[Path | None, typer.Option("--prompts", help="Boxes / points (GeoPackage, GeoJSON, CSV) "
                                                 "for a prompt-based model.")] = None,
    class_column: Annotated[str | None, typer.Option("--class-column", help="Column of the --prompts file holding "
                                                     "each object's class (integer ids or names).")] = None,
    rough: Annotated[str | None, typer.Option("--rough", help="Prompts from a rough mask: A,B[,threshold] = "
                                              "(band A - band B)/(A + B) > threshold, e.g. NDWI 2,4,0.")] = None,
    text: TextOpt = None,
    detector: DetectorOpt = None,
    box_threshold: BoxThresholdOpt = None,
    text_threshold: TextThresholdOpt = None,
    asset: AssetOpt = None,
    device: DeviceOpt = "cpu",
    batch_size: Annotated[int, batch_size_option("Tiles per pass of the model (in-process mapping).")] = 1,
    runtime: RuntimeOpt = "auto",
    precision: PrecisionOpt = None,
    instances: Annotated[bool, typer.Option("--instances", help="Also write <stem>_instances.tif (one id per "
                                            "object, stable across tiles) and an instance_id polygon column.")] = False,
    catalogue: Annotated[bool, typer.Option("--catalogue", help="Also write <stem>_catalogue/ (`samadapt objects` "
                                            "on the polygons; counting area: the raster's extent).")] = False,
) -> None:
    """Map whole rasters with an adapter, or with SAM from prompts or phrases (--text): class GeoTIFF,
    probabilities and polygons in the raster's CRS."""
    from samadapt.mapping.tiled import MapOptions, dask_client, expand_inputs, predict_rasters
    from samadapt.progress import progress_bar
    from samadapt.text.options import family_for_text, text_search
    from samadapt.train.adapter import load_adapter

    opts = encoder_runtime(runtime, precision)
    polygons = None if vector == "none" else cast(Literal["gpkg", "geojson"], vector)  # checked by its callback
    if catalogue and polygons is None:
        raise InputError("--catalogue catalogues the polygons predict writes; drop --vector none or --catalogue")
    if class_column is not None and prompts is None:
        raise InputError("--class-column names a column of the --prompts file; give --prompts FILE or drop it")
    if not text:
        text_search(text, detector, box_threshold, text_threshold, "sam")  # a text option without --text
    else:
        _refuse_with_text(adapter, prompts=prompts, rough=rough, model=model, tile_gsd=tile_gsd,
                          scheduler=scheduler, batch_size=batch_size)
        search = text_search(text, detector, box_threshold, text_threshold, family_for_text(str(adapter)))
        assert search is not None  # there is --text
        paths = _reachable(expand_inputs(rasters, asset))
        _predict_text(str(adapter), paths, out_dir, search, MapOptions(
            tile=tile, overlap=overlap, probabilities=probabilities, cog=cog, polygons=polygons, min_area=min_area,
            simplify=simplify, overwrite=overwrite, instances=instances), device, opts, catalogue)
        return
    paths = _reachable(expand_inputs(rasters, asset))
    if prompts is not None or rough is not None:
        _predict_prompted(adapter, paths, out_dir, prompts, rough, MapOptions(
            tile=tile, probabilities=probabilities, cog=cog, polygons=polygons, min_area=min_area,
            simplify=simplify, overwrite=overwrite, instances=instances), model, device, runtime=opts,
            class_column=class_column, catalogue=catalogue)
        return
    ad = load_adapter(adapter, base=model, device=device, runtime=opts)
    if ad.needs_prompts:
        raise InputError("a mask-decoder adapter needs prompts; map with a domain-decoder, lora or encoder-adapter "
                         "adapter")
    gsd = None
    if tile_gsd is not None:
        try:
            gsd = float(tile_gsd.lower().removesuffix("m"))
        except ValueError:
            raise InputError(f"--tile-gsd takes a distance per pixel like 0.5m, got {tile_gsd!r}") from None
    options = MapOptions(tile=tile, overlap=overlap, probabilities=probabilities, cog=cog, tile_gsd=gsd,
                         polygons=polygons, min_area=min_area, simplify=simplify, overwrite=overwrite,
                         batch_size=batch_size, instances=instances)
    client = dask_client(scheduler)
    try:
        with progress_bar(console=stderr) as bar:
            task = bar.add_task("tiles", total=None)
            results = predict_rasters(ad, paths, out_dir, options, client=client,
                                      progress=lambda name, n, t: bar.update(task, completed=n, total=t,
                                                                             description=name))
    finally:
        if client is not None:
            client.close()
    _report_maps(results, "tiles", catalogue)


def _reachable(paths: list[Path | RasterSource]) -> list[Path | RasterSource]:
    """The inputs, once every remote one has opened: a 404 or a dead server stops here, before any model loads."""
    from samadapt.imagery.sources import RasterSource, open_source

    for p in paths:
        if isinstance(p, RasterSource) and p.remote:
            with open_source(p):
                pass
    return paths


def _report_maps(results: list[MapResult], count: str, catalogue: bool = False) -> None:
    """Summary table of a mapping run (after the catalogues, with ``catalogue``); exit code 1 when any
    raster failed."""
    if catalogue:
        _write_catalogues(results)
    table = Table("raster", "status", count, "outputs / error", title=f"{len(results)} rasters")
    for r in results:
        detail = r.error if r.status == "failed" else ", ".join(p.name for p in r.outputs.values())
        table.add_row(r.raster.name, r.status, str(r.tiles), detail)
    stdout.print(table)
    if any(r.status == "failed" for r in results):
        raise typer.Exit(1)


def _predict_prompted(ref: Path, paths: list[Path | RasterSource], out_dir: Path, prompts: Path | None,
                      rough: str | None,
                      options: MapOptions, model: str | None, device: str,
                      runtime: RuntimeOptions | None = None, class_column: str | None = None,
                      catalogue: bool = False) -> None:
    from samadapt.mapping.prompted import predict_prompted_rasters

    bands = None
    if rough is not None:
        try:
            parts = [float(v) for v in rough.split(",")]
        except ValueError:
            parts = []
        if len(parts) not in (2, 3):
            raise InputError(f"--rough takes A,B[,threshold] band numbers, got {rough!r}")
        bands = (int(parts[0]), int(parts[1]), parts[2] if len(parts) == 3 else 0.0)
    results = predict_prompted_rasters(ref, paths, out_dir, prompts=prompts, rough=bands, options=options,
                                       base=model, device=device, runtime=runtime or "auto",
                                       class_column=class_column)
    _report_maps(results, "objects", catalogue)


def _refuse_with_text(ref: Path, *, prompts: Path | None, rough: str | None, model: str | None,
                      tile_gsd: str | None, scheduler: str, batch_size: int) -> None:
    """Refuse, before any model loads, what does not go with ``--text``."""
    from samadapt.train.adapter import is_adapter_ref

    if prompts is not None or rough is not None:
        raise InputError("--text finds its own objects; drop --prompts/--rough, or --text")
    if is_adapter_ref(ref):
        raise InputError(f"{ref} is an adapter; --text maps with a SAM model: give a registry name or model folder "
                         "(e.g. sam3) as the first argument")
    if model is not None:
        raise InputError("--model names an adapter's base model; with --text the first argument is the model")
    if tile_gsd is not None:
        raise InputError("--tile-gsd applies to adapters; with --text tiles are read at the raster's resolution")
    if scheduler != "local":
        raise InputError("--scheduler applies to adapters; --text maps in this process")
    if batch_size != 1:
        raise InputError("--batch-size applies to adapters; --text searches one tile at a time")


def _predict_text(model: str, paths: list[Path | RasterSource], out_dir: Path, search: TextSearch, options: MapOptions,
                  device: str, runtime: RuntimeOptions | str, catalogue: bool = False) -> None:
    """``predict --text``: each raster searched tile by tile, one polygon per object."""
    from samadapt.mapping.text import predict_text_rasters
    from samadapt.predict.segmenter import Segmenter
    from samadapt.progress import progress_bar

    segmenter = Segmenter(model, device=device, cache=False, runtime=runtime)  # each tile is seen once
    detector = search.open_detector(device)
    with progress_bar(console=stderr) as bar:
        task = bar.add_task("tiles", total=None)
        results = predict_text_rasters(segmenter, paths, out_dir, search.query, detector, options,
                                       progress=lambda name, n, t: bar.update(task, completed=n, total=t,
                                                                              description=name))
    if any(r.status == "done" for r in results):
        warn_untrusted(segmenter.loaded.trusted and (detector is None or detector.trusted))
    _report_maps(results, "tiles", catalogue)


def _write_catalogues(results: list[MapResult]) -> None:
    """``--catalogue``: ``<stem>_catalogue/`` beside each raster's polygons, counted over the raster's extent."""
    import rasterio
    import shapely

    from samadapt.catalogue.build import CountingArea, write_catalogue
    from samadapt.cli.objects import report

    for r in results:
        polygons, classes = r.outputs.get("polygons"), r.outputs.get("classes")
        if r.status == "failed" or polygons is None or classes is None:
            continue
        with rasterio.open(classes) as ds:  # the raster's grid, on local disk
            extent = shapely.box(*ds.bounds)
        folder = polygons.with_name(polygons.name.replace("_polygons", "_catalogue").rsplit(".", 1)[0])
        area = CountingArea(footprint=(extent, f"extent of the mapped raster ({classes.name})"))
        report(write_catalogue(polygons, folder, area=area, overwrite=True))
        r.outputs["catalogue"] = folder
