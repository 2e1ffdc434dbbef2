"""The one runner behind every way of mapping a raster: resume, scratch, outputs, done marker.

Mapping a raster accumulates per-class probabilities and a weight in a scratch array the size
of the raster, then writes the outputs from it. Both ways of mapping (tiles with an adapter in
:mod:`samadapt.mapping.tiled`, objects with prompts in :mod:`samadapt.mapping.prompted`) share
what happens around that, here:

* a raster whose ``<stem>.done.json`` names outputs that all exist is skipped (resume), unless
  ``overwrite``;
* the accumulator lives in ``.<stem>.scratch/`` beside the outputs, removed whatever happens;
* ``<stem>_classes.tif`` (class ids, 255 = nodata), optionally ``<stem>_probabilities.tif``
  (one band per class, 0-255) and ``<stem>_polygons.gpkg`` (or ``.geojson``) are written
  under temporary names and renamed when complete;
* ``<stem>.done.json`` is written last, so a raster is done only once every output is.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import rasterio
from rasterio.io import DatasetReader
from rasterio.windows import Window

from samadapt._io import atomic_file, describe_os_error, new_folder, write_json
from samadapt.errors import DiskFullError, InputError, InputFileError, SamadaptError
from samadapt.imagery.sources import RasterSource, open_source, resolve_source

if TYPE_CHECKING:
    import geopandas as gpd

NODATA = 255
DONE = ".done.json"
#: Free space kept beyond the scratch file, for the outputs written from it.
SCRATCH_MARGIN_BYTES = 16 << 20


@dataclass(frozen=True)
class MapOptions:
    """Settings of a mapping run.

    Attributes:
        tile: tile side in pixels; None = the model's input size.
        overlap: pixels shared by neighbouring tiles; None = an eighth of the tile.
        probabilities: also write a per-class probability GeoTIFF.
        cog: write Cloud-Optimised GeoTIFFs.
        polygons: "gpkg", "geojson" or None for no vector output.
        min_area: drop polygons smaller than this, in map units squared.
        simplify: polygon simplification tolerance in map units.
        overwrite: redo rasters whose outputs are complete.
        tile_gsd: ground sampling distance (map units per pixel, e.g. 0.5 for 0.5 m) the model
            sees: tiles are resampled to it and predictions resampled back, so results do not
            depend on the raster's own resolution or extent.
        batch_size: tiles per pass of the model (in-process runs); results do not depend on it.
        instances: also write ``<stem>_instances.tif`` (one id per object, see
            :mod:`samadapt.mapping.instances`) and an ``instance_id`` column in the polygons.
    """

    tile: int | None = None
    overlap: int | None = None
    probabilities: bool = False
    cog: bool = False
    polygons: Literal["gpkg", "geojson"] | None = "gpkg"
    min_area: float = 0.0
    simplify: float = 0.0
    overwrite: bool = False
    tile_gsd: float | None = None
    batch_size: int = 1
    instances: bool = False

    def __post_init__(self) -> None:
        if self.tile is not None and self.tile < 1:
            raise InputError(f"--tile must be a tile side of at least 1 pixel, got {self.tile}; leave it out for "
                             "the model's input size")


@dataclass
class MapResult:
    """What mapping one raster produced (``raster``: the local file, or the remote / virtual source)."""

    raster: Path | RasterSource
    outputs: dict[str, Path] = field(default_factory=dict)
    tiles: int = 0
    skipped_tiles: int = 0
    status: str = "done"
    error: str = ""


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


class Scratch:
    """A (bands, H, W) float32 accumulator in a file, mapped into memory a band of rows at a time.

    Pages of a memory map count towards the process's resident memory while it stays mapped;
    re-mapping whenever the work moves to new rows releases them, so memory stays bounded by
    one band of tiles however large the raster.
    """

    def __init__(self, path: Path, shape: tuple[int, int, int]) -> None:
        self.path = path
        need = 4 * int(np.prod(shape))
        free = shutil.disk_usage(path.parent).free
        if free < need + SCRATCH_MARGIN_BYTES:
            raise DiskFullError(f"mapping needs {_gb(need + SCRATCH_MARGIN_BYTES)} of scratch space in "
                                f"{path.parent.parent} and its disk has {_gb(free)} free; free some space or "
                                "choose another --out")
        np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=shape).flush()
        # Reserve the blocks now: a memory map over a sparse file on a disk that fills up later
        # dies of SIGBUS with no message; a reservation fails here, with an OSError.
        with open(path, "r+b") as f:
            try:
                os.posix_fallocate(f.fileno(), 0, os.fstat(f.fileno()).st_size)
            except OSError as e:
                if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL):  # file systems without it: go on
                    raise OSError(e.errno, e.strerror, str(path.parent)) from None
        self._map: np.memmap | None = None
        self._row = -1

    def at(self, row: int) -> np.ndarray:
        """The mapped array, re-mapped when ``row`` differs from the last row asked for."""
        if self._map is None or row != self._row:
            self.release()
            self._map = np.load(self.path, mmap_mode="r+")
            self._row = row
        return self._map

    def release(self) -> None:
        """Flush and unmap."""
        if self._map is not None:
            self._map.flush()
            self._map = None


def finished_result(raster: Path | RasterSource, done: Path, options: MapOptions) -> MapResult | None:
    """The earlier result when a raster's outputs are complete (and not to be overwritten), else None."""
    if not done.is_file() or options.overwrite:
        return None
    record = json.loads(done.read_text())
    if not all(Path(p).is_file() for p in record["outputs"].values()):
        return None
    if options.instances and "instances" not in record["outputs"]:
        return None  # mapped before without instances: redo
    return MapResult(raster, {k: Path(v) for k, v in record["outputs"].items()}, status="skipped")


@dataclass
class RasterRun:
    """One raster being mapped, as the filling step sees it.

    Attributes:
        ds: the open raster.
        scratch_dir: the scratch folder, removed when the run ends.
        classes: number of classes; the accumulator has one more band, the weight.
        result: counts of tiles (or objects) done and skipped, filled in by the step.
    """

    ds: DatasetReader
    scratch_dir: Path
    classes: int
    result: MapResult
    acc: Scratch | None = None

    def accumulator(self) -> Scratch:
        """A new (classes + 1, H, W) accumulator: per-class weighted probability sums, then the weight."""
        self.acc = Scratch(self.scratch_dir / "acc.npy", (self.classes + 1, self.ds.height, self.ds.width))
        return self.acc


#: Fills a run's accumulator; returns the fields it adds to the done record (after outputs and tiles).
Fill = Callable[[RasterRun], dict[str, Any]]
#: Writes outputs of an open raster beyond the class rasters: (raster, out_dir, stem) -> paths by kind.
Extra = Callable[[DatasetReader, Path, str], dict[str, Path]]


def run_raster(raster: Path | RasterSource, out_dir: Path, options: MapOptions, *, classes: int,
               prepare: Callable[[], Fill], extra: Extra | None = None, own_objects: bool = False) -> MapResult:
    """Map one raster: skip it when done, else fill an accumulator and write the outputs from it.

    Args:
        raster: the raster to map: a local file or a resolved source (URL, ``/vsi*`` path, STAC item),
            whose stem names the outputs.
        out_dir: folder for the outputs (created when needed).
        options: output and resume settings.
        classes: number of classes of the accumulator and outputs.
        prepare: called once the raster is known to need work; checks settings and returns
            the step that fills the accumulator (:meth:`RasterRun.accumulator`).
        extra: writes more outputs once the class rasters are written, before the done
            marker (so a raster is done only once they are too); returns their paths by kind.
        own_objects: ``extra`` writes the polygons and (with ``options.instances``) the instance raster
            itself, one per object found, instead of the class raster's regions; ``options`` still
            decides whether an earlier run is complete.

    Returns:
        The outputs written, or those of an earlier run with status "skipped".

    Raises:
        InputFileError: the raster is missing or not readable.
    """
    out_dir = Path(out_dir)
    if not isinstance(raster, RasterSource):
        raster = Path(raster)
        if not raster.is_file():
            raise InputFileError(f"raster not found: {raster}")
    source = resolve_source(raster)
    stem = source.stem
    done = out_dir / f"{stem}{DONE}"
    finished = finished_result(raster, done, options)
    if finished is not None:
        return finished
    fill = prepare()
    out_dir.mkdir(parents=True, exist_ok=True)
    scratch = out_dir / f".{stem}.scratch"
    result = MapResult(raster)
    try:
        with open_source(source) as ds:
            scratch.mkdir(exist_ok=True)
            run = RasterRun(ds, scratch, classes, result)
            record = fill(run)
            acc = run.acc if run.acc is not None else run.accumulator()  # nothing filled: all nodata
            acc.release()
            written = replace(options, polygons=None, instances=False) if own_objects else options
            result.outputs = write_class_rasters(ds, acc, classes, out_dir, stem, written)
            if extra is not None:
                result.outputs.update(extra(ds, out_dir, stem))
        write_json(done, {"outputs": {k: str(v) for k, v in result.outputs.items()}, "tiles": result.tiles,
                          **record})
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return result


#: Failures that belong to the output folder, not to one raster: mapping stops at the first.
OUTPUT_FOLDER_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)


def run_each(rasters: Sequence[Path | RasterSource], out_dir: Path,
             map_one: Callable[[Path | RasterSource], MapResult]) -> list[MapResult]:
    """Map each raster with ``map_one``: a failure on one is recorded in its result (status
    "failed", one sentence) and the rest go on, unless the output folder is full or read-only;
    then the error is raised, since no later raster could be written either. Folders created for
    ``out_dir`` are removed again when nothing was written in them.
    """
    results = []
    with new_folder(out_dir):
        for item in rasters:
            raster = item if isinstance(item, RasterSource) else Path(item)
            try:
                results.append(map_one(raster))
            except (SamadaptError, rasterio.errors.RasterioError, OSError, ValueError) as e:
                if isinstance(e, DiskFullError) or isinstance(e, OSError) and e.errno in OUTPUT_FOLDER_ERRNOS:
                    raise
                reason = str(e) if isinstance(e, SamadaptError) or not isinstance(e, OSError) else describe_os_error(e)
                results.append(MapResult(raster, status="failed", error=reason))
    return results


def _blocks(ds: DatasetReader, tiled: bool) -> Iterator[Window]:
    if not tiled:
        yield Window(0, 0, ds.width, ds.height)
        return
    for _, win in ds.block_windows(1):
        yield win


def write_class_rasters(ds: DatasetReader, acc: Scratch, num_classes: int, out_dir: Path, stem: str,
                        options: MapOptions) -> dict[str, Path]:
    """Write the outputs of an accumulator (see the module docstring) in ``ds``'s grid and CRS.

    Args:
        ds: the raster mapped.
        acc: (num_classes + 1, H, W): per-class weighted probability sums, then the weight; a
            pixel of weight 0 is nodata.
        num_classes: number of classes.
        out_dir: folder for the outputs.
        stem: the raster's file stem, which names the outputs.
        options: which outputs, COG or not, polygon settings.

    Returns:
        The paths written, by kind: "classes", "probabilities", "polygons".
    """
    profile: dict[str, Any] = {
        "driver": "GTiff", "width": ds.width, "height": ds.height, "count": 1, "dtype": "uint8",
        "crs": ds.crs, "transform": ds.transform, "nodata": NODATA, "compress": "deflate",
        "tiled": ds.width >= 256 and ds.height >= 256, "blockxsize": 256, "blockysize": 256,
    }
    targets = {"classes": out_dir / f"{stem}_classes.tif"}
    if options.probabilities:
        targets["probabilities"] = out_dir / f"{stem}_probabilities.tif"
    with ExitStack() as stack:
        tmps = {key: stack.enter_context(atomic_file(path)) for key, path in targets.items()}
        # A COG is copied from a plain GeoTIFF, written first in the scratch folder.
        plain = {key: acc.path.parent / path.name if options.cog else tmps[key] for key, path in targets.items()}
        prob_profile = {**profile, "count": num_classes, "nodata": None}
        dst_p = rasterio.open(plain["probabilities"], "w", **prob_profile) if options.probabilities else None
        with rasterio.open(plain["classes"], "w", **profile) as dst:
            for win in _blocks(dst, profile["tiled"]):
                sl = (slice(win.row_off, win.row_off + win.height), slice(win.col_off, win.col_off + win.width))
                arr = acc.at(int(win.row_off))
                wsum = np.array(arr[(num_classes, *sl)])
                probs = arr[(slice(0, num_classes), *sl)] / np.maximum(wsum, 1e-12)
                labels = probs.argmax(0).astype(np.uint8)
                labels[wsum <= 0] = NODATA
                dst.write(labels, 1, window=win)
                if dst_p is not None:
                    dst_p.write(np.clip(probs * 255 + 0.5, 0, 255).astype(np.uint8), window=win)
        acc.release()
        if dst_p is not None:
            dst_p.close()
        if options.cog:
            for key in targets:
                _copy_as_cog(plain[key], tmps[key])
    outputs = dict(targets)
    if options.instances:
        from samadapt.mapping.instances import write_instances

        outputs["instances"] = write_instances(targets["classes"], out_dir / f"{stem}_instances.tif",
                                               acc.path.parent, cog=options.cog)
    if options.polygons:
        outputs["polygons"] = _write_polygons(targets["classes"], targets.get("probabilities"),
                                              out_dir / f"{stem}_polygons.{options.polygons}", options,
                                              outputs.get("instances"))
    return outputs


def _copy_as_cog(src_path: Path, dst_path: Path) -> None:
    with rasterio.open(src_path) as src:
        cog_profile = {**src.profile, "driver": "COG"}
        for k in ("tiled", "blockxsize", "blockysize", "interleave"):
            cog_profile.pop(k, None)
        with rasterio.open(dst_path, "w", **cog_profile) as cog:
            cog.write(src.read())


def _write_polygons(classes: Path, probs: Path | None, path: Path, options: MapOptions,
                    instances: Path | None = None) -> Path:
    """Vectorise the class raster by row bands, then merge pieces that touch across band edges."""
    import geopandas as gpd
    import shapely
    from rasterio.features import shapes
    from shapely.geometry import shape

    from samadapt.mapping.instances import ids_at_points
    from samadapt.mapping.outputs import write_polygons

    pieces: dict[int, list[shapely.Geometry]] = {}
    with rasterio.open(classes) as ds:
        band = 1024
        for r0 in range(0, ds.height, band):
            win = Window(0, r0, ds.width, min(band, ds.height - r0))
            data = ds.read(1, window=win)
            tr = ds.window_transform(win)
            for geom, value in shapes(data, mask=(data != 0) & (data != NODATA), transform=tr):
                pieces.setdefault(int(value), []).append(shape(geom))
        crs = ds.crs
    rows = []
    for cls, geoms in sorted(pieces.items()):
        merged = shapely.union_all(geoms)
        parts = list(getattr(merged, "geoms", [merged]))
        ids = ids_at_points(instances, parts) if instances is not None else [0] * len(parts)
        for poly, instance_id in zip(parts, ids, strict=True):
            if options.simplify > 0:
                poly = poly.simplify(options.simplify)
            if poly.is_empty or poly.area < options.min_area:
                continue
            rows.append({"class": cls, "instance_id": instance_id, "area": float(poly.area), "geometry": poly})
    frame = gpd.GeoDataFrame(rows, columns=["class", "instance_id", "area", "geometry"], geometry="geometry", crs=crs)
    if instances is None:
        frame = frame.drop(columns="instance_id")
    else:
        frame = frame.sort_values("instance_id", kind="stable").reset_index(drop=True)
    if probs is not None and len(frame):
        frame["mean_probability"] = _mean_probability(frame, probs)
    return write_polygons(path, frame, overwrite=True)


def _mean_probability(frame: gpd.GeoDataFrame, probs: Path) -> list[float]:
    from rasterio.mask import mask as mask_raster

    out = []
    with rasterio.open(probs) as ds:
        for cls, geom in zip(frame["class"], frame.geometry, strict=False):
            data, _ = mask_raster(ds, [geom], crop=True, indexes=int(cls) + 1, filled=False)
            out.append(float(data.mean()) / 255.0 if data.count() else float("nan"))
    return out
