"""Map rasters by name: ``samadapt predict --text``, one class per phrase, one polygon per object.

The raster is cut into square tiles of the model's input size that overlap by an eighth of a
tile (as :mod:`samadapt.mapping.tiled` cuts it). Each tile is searched with
:func:`samadapt.text.search.segment_text`: SAM 3 answers the phrases itself, the other families
take a detector's boxes and turn each into a mask. Every mask is written into the raster's
frame twice:

* into the class accumulator, where each phrase's band keeps, per pixel, the highest detector
  score of the objects of that phrase covering it; the class raster takes the phrase of the best
  score (class id = phrase index + 1, 0 = nothing found, 255 = nodata);
* as a polygon in raster pixels. An object cut by a tile edge is found in both tiles (in
  the overlap, or on both sides of the edge): pieces of one phrase from different tiles that
  overlap or touch are merged into one polygon, whose detector score is the best of its pieces.
  Pieces from the same tile stay apart, so neighbouring objects found in one tile are not merged.

Outputs per raster, besides :mod:`samadapt.mapping.runner`'s class (and probability) GeoTIFFs:
``<stem>_polygons.gpkg`` (or ``.geojson``) with columns ``class``, ``phrase``,
``detector_score``, ``area`` (map units squared) and the geometry in the raster's CRS, and
``<stem>_classes.json`` naming the class ids. The probability GeoTIFF, when asked for, holds
per phrase the best detector score at each pixel (0-255), and in its first band 255 where
nothing was found.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import rasterio
import shapely
import shapely.affinity
from rasterio.io import DatasetReader
from rasterio.windows import Window

from samadapt._io import write_json
from samadapt.errors import InputError
from samadapt.imagery.read import GeoImage
from samadapt.imagery.sources import RasterSource
from samadapt.imagery.tiling import covering_offsets
from samadapt.imagery.windows import bands_for, raster_limits, read_tile
from samadapt.mapping.runner import DONE, Fill, MapOptions, MapResult, RasterRun, run_each, run_raster
from samadapt.mapping.tiled import GDAL_CACHE_MB
from samadapt.predict.result import MaskCrop
from samadapt.text.search import TextQuery, needs_detector, segment_text

if TYPE_CHECKING:
    import geopandas as gpd

    from samadapt.predict.segmenter import Segmenter
    from samadapt.text.types import Detector

#: Score an object's pixels get in the accumulator at least, so a detection scored 0 still counts.
MIN_SCORE = 1e-6
#: Called with (raster name, tiles done, tiles in all).
Progress = Callable[[str, int, int], None]


@dataclass
class Pieces:
    """Polygons (raster pixel coordinates) of the objects found tile by tile, before merging.

    Attributes:
        phrase: phrase index of each piece.
        score: detector score of each piece.
        tile: index of the tile each piece was found in.
        geometry: each piece's (Multi)Polygon, in pixels of the whole raster (x = column, y = row).
    """

    phrase: list[int] = field(default_factory=list)
    score: list[float] = field(default_factory=list)
    tile: list[int] = field(default_factory=list)
    geometry: list[shapely.Geometry] = field(default_factory=list)


def merge_pieces(pieces: Pieces) -> list[tuple[int, float, shapely.Geometry]]:
    """One (phrase, best score, geometry) per object: pieces of one phrase from different tiles
    that overlap or touch are merged, transitively; pieces of one tile are never merged together.

    Args:
        pieces: pieces in raster pixels, where shared tile edges coincide exactly.

    Returns:
        The objects, by phrase index, then by their first piece.
    """
    geoms = np.array(pieces.geometry, dtype=object)
    parent = list(range(len(geoms)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    if len(geoms):
        left, right = shapely.STRtree(geoms).query(geoms, predicate="intersects")
        for i, j in zip(left.tolist(), right.tolist(), strict=True):
            if pieces.phrase[i] == pieces.phrase[j] and pieces.tile[i] != pieces.tile[j]:
                parent[root(i)] = root(j)
    groups: dict[int, list[int]] = {}
    for i in range(len(geoms)):
        groups.setdefault(root(i), []).append(i)
    objects = []
    for members in sorted(groups.values(), key=lambda m: (pieces.phrase[m[0]], m[0])):
        geom = shapely.union_all(geoms[members]) if len(members) > 1 else geoms[members[0]]
        objects.append((pieces.phrase[members[0]], max(pieces.score[i] for i in members), geom))
    return objects


def polygon_frame(objects: Sequence[tuple[int, float, shapely.Geometry]], phrases: Sequence[str],
                  ds: DatasetReader, options: MapOptions, *, instance_ids: bool = False) -> gpd.GeoDataFrame:
    """The merged objects in the raster's map coordinates and CRS, simplified and filtered by area.

    Returns:
        Columns ``class`` (phrase index + 1), ``phrase``, ``detector_score``, ``area`` and geometry;
        with ``instance_ids``, ``instance_id`` after ``class``: object ``i`` of ``objects`` is id ``i + 1``,
        as in the instance raster (:func:`samadapt.mapping.instances.rasterize_objects`).
    """
    import geopandas as gpd

    t = ds.transform
    rows = []
    for i, (k, score, pixel_geom) in enumerate(objects):
        geom = shapely.affinity.affine_transform(pixel_geom, [t.a, t.b, t.d, t.e, t.c, t.f])
        if options.simplify > 0:
            geom = geom.simplify(options.simplify, preserve_topology=True)
        if geom.is_empty or geom.area < options.min_area:
            continue
        rows.append({"class": k + 1, "instance_id": i + 1, "phrase": phrases[k], "detector_score": float(score),
                     "area": float(geom.area), "geometry": geom})
    columns = ["class", *(["instance_id"] if instance_ids else []), "phrase", "detector_score", "area", "geometry"]
    frame = gpd.GeoDataFrame(rows, columns=columns, geometry="geometry", crs=ds.crs)
    types = {"class": "int64", "detector_score": "float64", "area": "float64"}
    return frame.astype({**types, "instance_id": "int64"} if instance_ids else types)


def _check_previous(raster: Path | RasterSource, out_dir: Path, phrases: Sequence[str], options: MapOptions) -> None:
    """Refuse to resume from outputs of another search (other phrases) unless ``overwrite``."""
    source = raster if isinstance(raster, RasterSource) else Path(raster)
    done = Path(out_dir) / f"{source.stem}{DONE}"
    if options.overwrite or not done.is_file():
        return
    try:
        earlier = json.loads(done.read_text(encoding="utf-8")).get("phrases")
    except (OSError, ValueError, AttributeError):
        return
    if earlier != list(phrases):
        what = f"the phrases {', '.join(map(repr, earlier))}" if isinstance(earlier, list) else "no --text"
        raise InputError(f"{out_dir} holds outputs for {source.name} mapped with {what}; pass --overwrite "
                         "to redo it, or choose another --out")


def predict_text_raster(segmenter: Segmenter, raster: Path | RasterSource, out_dir: Path, query: TextQuery,
                        detector: Detector | None = None, options: MapOptions | None = None, *,
                        progress: Progress | None = None) -> MapResult:
    """Find the objects ``query`` names in a raster, tile by tile (see the module docstring).

    Args:
        segmenter: the segmenting model; SAM 3 reads the phrases itself.
        raster: the raster.
        out_dir: folder for the outputs.
        query: the phrases (one class each) and thresholds.
        detector: the detector giving boxes, for every family but SAM 3.
        options: tile, overlap and output settings (``tile_gsd`` and ``batch_size`` do not apply).
        progress: called with (raster name, tiles done, tiles in all).

    Returns:
        The outputs written (``classes``, ``probabilities``, ``polygons``, ``names``), or those
        of an earlier run of the same phrases with status "skipped".

    Raises:
        InputError: a bad tile or overlap, a detector missing or given to SAM 3, or outputs of
            other phrases in ``out_dir`` without ``overwrite``.
        InputFileError: the raster is missing or not readable.
    """
    options = options or MapOptions()
    phrases = query.phrases
    pieces = Pieces()

    def prepare() -> Fill:
        family = segmenter.loaded.family
        if needs_detector(family) and detector is None:
            raise InputError(f"a {family} model cannot read text; add --detector grounding-dino-tiny (or owlv2-base)")
        if not needs_detector(family) and detector is not None:
            raise InputError("SAM 3 reads text itself; drop --detector")
        tile = options.tile or segmenter.loaded.preprocessing.size
        overlap = options.overlap if options.overlap is not None else tile // 8
        if not 0 <= overlap < tile:
            raise InputError(f"overlap must be at least 0 and smaller than the tile ({tile}), got {overlap}")
        return lambda run: _fill_text(run, segmenter, query, detector, tile, overlap, pieces, progress)

    def write_more(ds: DatasetReader, folder: Path, stem: str) -> dict[str, Path]:
        from samadapt.mapping.outputs import write_polygons

        outputs = {"names": write_json(folder / f"{stem}_classes.json",
                                       {"0": "background", **{str(k + 1): p for k, p in enumerate(phrases)}})}
        objects = merge_pieces(pieces)
        if options.instances:
            from samadapt._io import atomic_file
            from samadapt.mapping.instances import rasterize_objects

            with atomic_file(folder / f"{stem}_instances.tif") as tmp:
                rasterize_objects([g for _, _, g in objects], [sc for _, sc, _ in objects], tmp,
                                  height=ds.height, width=ds.width, crs=ds.crs, transform=ds.transform)
            outputs["instances"] = folder / f"{stem}_instances.tif"
        if options.polygons:
            frame = polygon_frame(objects, phrases, ds, options, instance_ids=options.instances)
            outputs["polygons"] = write_polygons(folder / f"{stem}_polygons.{options.polygons}", frame,
                                                 overwrite=True)
        return outputs

    _check_previous(raster, out_dir, phrases, options)
    with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB):
        return run_raster(raster, out_dir, options, classes=len(phrases) + 1,
                          prepare=prepare, extra=write_more, own_objects=True)


def _fill_text(run: RasterRun, segmenter: Segmenter, query: TextQuery, detector: Detector | None, tile: int,
               overlap: int, pieces: Pieces, progress: Progress | None) -> dict[str, object]:
    """Search every tile; keep each phrase's best detector score per pixel and the objects' polygons."""
    from samadapt.mapping.outputs import vectorize_crops

    ds, result, classes = run.ds, run.result, run.classes
    bands = bands_for(ds, None)
    limits = raster_limits(ds, bands)
    h, w = ds.height, ds.width
    acc = run.accumulator()
    index = {p: k for k, p in enumerate(query.phrases)}
    rows, cols = covering_offsets(h, tile, overlap), covering_offsets(w, tile, overlap)
    windows = [Window(c0, r0, min(tile, w - c0), min(tile, h - r0)) for r0 in rows for c0 in cols]
    found_objects = 0
    for n, win in enumerate(windows, start=1):
        r0, c0 = int(win.row_off), int(win.col_off)
        pixels, valid = read_tile(ds, win, bands, limits)
        if not valid.any():
            result.skipped_tiles += 1
        else:
            found = segment_text(segmenter, GeoImage(np.ascontiguousarray(pixels), valid), query, detector)
            phrases = found.phrases or ()
            scores = found.detector_scores if found.detector_scores is not None else np.zeros(len(found))
            band = acc.at(r0)
            crops = [MaskCrop(c.row + r0, c.col + c0, c.mask) for c in found.crops]
            for crop, phrase, score in zip(crops, phrases, scores, strict=True):
                if not crop.mask.any():
                    continue
                sl = (slice(crop.row, crop.row + crop.mask.shape[0]), slice(crop.col, crop.col + crop.mask.shape[1]))
                k = index[phrase] + 1
                band[(k, *sl)] = np.where(crop.mask, np.maximum(band[(k, *sl)], max(float(score), MIN_SCORE)),
                                          band[(k, *sl)])
            frame = vectorize_crops(crops, np.asarray(scores, dtype=np.float64), transform=None, crs=None)
            for i, geom in zip(frame["object"].tolist(), frame.geometry, strict=True):
                pieces.phrase.append(index[phrases[i]])
                pieces.score.append(float(scores[i]))
                pieces.tile.append(n)
                pieces.geometry.append(geom)
            found_objects += len(frame)
            result.tiles += 1
        if progress:
            progress(result.raster.name, n, len(windows))
    # "nothing found" where no phrase scored, and a weight of 1 wherever the raster has data
    for r in range(0, h, 1024):
        sl = (slice(r, min(r + 1024, h)), slice(0, w))
        data = ds.dataset_mask(window=Window(0, r, w, sl[0].stop - r)) > 0
        arr = acc.at(r)
        arr[(0, *sl)] = (arr[(slice(1, classes), *sl)].max(axis=0) <= 0).astype(np.float32)
        arr[(classes, *sl)] = data.astype(np.float32)
    return {"phrases": list(query.phrases), "pieces": found_objects, "skipped_tiles": result.skipped_tiles}


def predict_text_rasters(segmenter: Segmenter, rasters: Sequence[Path | RasterSource], out_dir: Path, query: TextQuery,
                         detector: Detector | None = None, options: MapOptions | None = None, *,
                         progress: Progress | None = None) -> list[MapResult]:
    """:func:`predict_text_raster` over many rasters; a failure on one is recorded in its result
    (status "failed", one sentence) and the rest go on (see :func:`samadapt.mapping.runner.run_each`)."""
    return run_each(rasters, out_dir, lambda raster: predict_text_raster(segmenter, raster, out_dir, query, detector,
                                                                        options, progress=progress))
