"""Map a raster with a prompt-based model: plain SAM or a mask-decoder adapter, prompted by a
file of boxes / points or by a rough (thresholded index) mask.

Each object is segmented in a window of the model's input size centred on its prompt, so
an object is never cut by a tile edge; object probabilities are combined by their maximum,
class by class, in a memory-mapped scratch array and written as the same class (and
probability) rasters as :func:`samadapt.mapping.tiled.predict_raster`: class 1 = object, or,
with a class column (:mod:`samadapt.prompts.records`), each object's class, named in
``<stem>_classes.json``. Polygons are one row per object, its pixels of probability >= 0.5,
with the ``prompt_id`` of the feature or row it came from, its ``class`` (``class_name`` too with
a class column), ``area`` in map units squared and, with probabilities, its ``mean_probability``;
objects may overlap.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np
from rasterio.windows import Window

from samadapt._io import write_json
from samadapt.errors import InputError
from samadapt.imagery.sources import RasterSource, open_source, resolve_source
from samadapt.imagery.windows import bands_for, raster_limits, read_tile
from samadapt.mapping.runner import Fill, MapOptions, MapResult, RasterRun, run_each, run_raster
from samadapt.predict.result import MaskCrop
from samadapt.prompts.records import PromptId, PromptRecords, check_class_column
from samadapt.prompts.types import ObjectPrompt

if TYPE_CHECKING:
    import geopandas as gpd
    import shapely
    from rasterio.io import DatasetReader

    from samadapt.models.accel.speed import RuntimeOptions
    from samadapt.predict.segmenter import Segmenter
    from samadapt.train.adapter import Adapter

#: (h, w, 3) uint8 pixels of a window, their (h, w) validity and a prompt in the window's
#: pixels -> the (h, w) probability of the object.
Predict = Callable[[np.ndarray, np.ndarray, ObjectPrompt], np.ndarray]


def rough_prompts(raster: Path | RasterSource, *, a: int, b: int, threshold: float = 0.0, min_area: int = 20,
                  mode: str = "box") -> list[ObjectPrompt]:
    """Prompts from a normalised-difference index of two bands, e.g. NDWI = (green - nir) / (green + nir).

    The index is computed over the whole raster, so this suits rasters that fit in memory.
    """
    from samadapt.prompts.rough import index_from_bands, prompts_from_rough, rough_mask
    from samadapt.prompts.sampling import SamplingOptions

    index = index_from_bands(raster, a, b)
    mask = rough_mask(index=index, threshold=threshold, min_area=min_area)
    return prompts_from_rough(mask, SamplingOptions(mode=mode, min_area=min_area))  # type: ignore[arg-type]


def _predictor(model: Adapter | Segmenter) -> Predict:
    """A function (pixels (h, w, 3) uint8, valid, prompt in window pixels) -> (h, w) probability."""
    from samadapt.methods.base import Sample

    if hasattr(model, "needs_prompts"):  # duck-typed, so stand-ins work too
        adapter = cast("Adapter", model)  # for mypy, hasattr leaves a Segmenter subclass possible
        if not adapter.needs_prompts:
            raise InputError("prompts apply to mask-decoder adapters and plain SAM models, not to this adapter")

        def with_adapter(pixels: np.ndarray, valid: np.ndarray, prompt: ObjectPrompt) -> np.ndarray:
            return adapter.predict_sample(Sample("tile", pixels, valid), prompts=[prompt]).probabilities[1]

        return with_adapter

    def with_sam(pixels: np.ndarray, valid: np.ndarray, prompt: ObjectPrompt) -> np.ndarray:
        result = model.segment(pixels, [prompt], multimask=prompt.box is None)
        return result.masks[0].astype(np.float32)

    return with_sam


def _shift(prompt: ObjectPrompt, dx: float, dy: float) -> ObjectPrompt:
    box = None if prompt.box is None else prompt.box - np.array([dx, dy, dx, dy])
    return ObjectPrompt(points=prompt.points - np.array([dx, dy]), labels=prompt.labels, box=box)


@dataclass
class ObjectShapes:
    """Each object's outline in raster pixels, gathered while mapping: prompt id, class, mean probability.

    With instances, object ``i`` (in this order) is instance ``i + 1``, in the polygons and in the instance
    raster alike (:func:`samadapt.mapping.instances.rasterize_objects`: an overlapped pixel goes to the
    object of higher mean probability).
    """

    ids: list[PromptId] = field(default_factory=list)
    classes: list[int] = field(default_factory=list)
    mean_probability: list[float] = field(default_factory=list)
    geometry: list[shapely.Geometry] = field(default_factory=list)

    def frame(self, ds: DatasetReader, records: PromptRecords, options: MapOptions) -> gpd.GeoDataFrame:
        """The objects in the raster's map coordinates and CRS, simplified and filtered by area."""
        import geopandas as gpd
        import shapely.affinity

        t = ds.transform
        rows = []
        for i, (pid, k, prob, pixel_geom) in enumerate(zip(self.ids, self.classes, self.mean_probability,
                                                           self.geometry, strict=True)):
            geom = shapely.affinity.affine_transform(pixel_geom, [t.a, t.b, t.d, t.e, t.c, t.f])
            if options.simplify > 0:
                geom = geom.simplify(options.simplify, preserve_topology=True)
            if geom.is_empty or geom.area < options.min_area:
                continue
            row = {"prompt_id": pid, "instance_id": i + 1, "class": k,
                   "class_name": (records.names or {}).get(k, ""), "area": float(geom.area),
                   "mean_probability": prob, "geometry": geom}
            rows.append(row)
        columns = ["prompt_id", *(["instance_id"] if options.instances else []), "class",
                   *(["class_name"] if records.names else []), "area",
                   *(["mean_probability"] if options.probabilities else []), "geometry"]
        frame = gpd.GeoDataFrame([{c: r[c] for c in columns} for r in rows], columns=columns, geometry="geometry",
                                 crs=ds.crs)
        return frame.astype({"class": "int64", "area": "float64"})


def predict_prompted_raster(model: Adapter | Segmenter, raster: Path | RasterSource, out_dir: Path,
                            prompts: list[ObjectPrompt] | PromptRecords, options: MapOptions | None = None, *,
                            tile: int | None = None) -> MapResult:
    """Segment every prompted object of a raster (prompts in the raster's pixel coordinates).

    Args:
        model: a mask-decoder adapter (``load_adapter``) or a ``Segmenter`` for plain SAM.
        raster: the raster.
        out_dir: folder for the outputs.
        prompts: one ObjectPrompt per object, pixels of the whole raster (prompt ids 0, 1, ...),
            or records with the objects' prompt ids and classes.
        options: output settings (tile overlap does not apply).
        tile: window side; default the model's input size.

    Raises:
        InputError: no prompts, a prompt outside the raster, or a model that takes no prompts.
        InputFileError: the raster is missing or not readable.
    """
    options = options or MapOptions()
    records = prompts if isinstance(prompts, PromptRecords) else PromptRecords(prompts, list(range(len(prompts))))
    if not records.prompts:
        name = raster.name if isinstance(raster, RasterSource) else Path(raster).name
        raise InputError(f"no prompts for {name}: the prompt file or rough mask gave no objects")
    shapes = ObjectShapes()

    def prepare() -> Fill:
        predict = _predictor(model)
        spec = model.method.preprocessing if hasattr(model, "method") else model.loaded.preprocessing
        side = tile or options.tile or spec.size
        return lambda run: _fill_objects(run, predict, getattr(model, "bands", None), records, side, shapes)

    def write_more(ds: DatasetReader, folder: Path, stem: str) -> dict[str, Path]:
        from samadapt.mapping.outputs import write_polygons

        outputs = {}
        if records.classes is not None:
            outputs["names"] = write_json(folder / f"{stem}_classes.json", records.class_names())
        if options.instances:  # one id per prompted object, not per region of the class raster
            from samadapt._io import atomic_file
            from samadapt.mapping.instances import rasterize_objects

            with atomic_file(folder / f"{stem}_instances.tif", overwrite=True) as tmp:
                rasterize_objects(shapes.geometry, shapes.mean_probability, tmp, height=ds.height, width=ds.width,
                                  crs=ds.crs, transform=ds.transform)
            outputs["instances"] = folder / f"{stem}_instances.tif"
        if options.polygons:
            outputs["polygons"] = write_polygons(folder / f"{stem}_polygons.{options.polygons}",
                                                 shapes.frame(ds, records, options), overwrite=True)
        return outputs

    return run_raster(raster, out_dir, options, classes=records.num_classes,
                      prepare=prepare, extra=write_more, own_objects=True)


def _fill_objects(run: RasterRun, predict: Predict, model_bands: tuple[int, ...] | None,
                  records: PromptRecords, tile: int, shapes: ObjectShapes) -> dict[str, int]:
    """Combine the objects' probabilities by their maximum per class; class 0 is 1 - the maximum
    over classes, weight 1 on data. Each object's pixels of probability >= 0.5 go to ``shapes``."""
    from samadapt.mapping.outputs import vectorize_crops

    ds, result, classes = run.ds, run.result, run.classes
    prompts = records.prompts
    bands = bands_for(ds, model_bands)
    limits = raster_limits(ds, bands)
    h, w = ds.height, ds.width
    acc = run.accumulator()
    for n, prompt in enumerate(prompts):
        prompt.check_inside(h, w)
        if prompt.box is not None:
            cx, cy = (prompt.box[0] + prompt.box[2]) / 2, (prompt.box[1] + prompt.box[3]) / 2
            side = int(max(tile, prompt.box[2] - prompt.box[0] + 32, prompt.box[3] - prompt.box[1] + 32))
        else:
            positive = prompt.labels == 1
            cx, cy = prompt.points[positive].mean(axis=0) if positive.any() else prompt.points[0]
            side = tile
        c0 = int(np.clip(round(cx - side / 2), 0, max(w - side, 0)))
        r0 = int(np.clip(round(cy - side / 2), 0, max(h - side, 0)))
        win = Window(c0, r0, min(side, w - c0), min(side, h - r0))
        pixels, valid = read_tile(ds, win, bands, limits)
        if not valid.any():
            result.skipped_tiles += 1
            continue
        prob = predict(np.ascontiguousarray(pixels), valid, _shift(prompt, c0, r0)) * valid
        sl = (slice(r0, r0 + int(win.height)), slice(c0, c0 + int(win.width)))
        k = records.classes[n] if records.classes is not None else 1
        arr = acc.at(r0)
        arr[(k, *sl)] = np.maximum(arr[(k, *sl)], prob)
        result.tiles += 1
        inside = prob >= 0.5
        for geom in vectorize_crops([MaskCrop(r0, c0, inside)], np.zeros(1), transform=None, crs=None).geometry:
            shapes.ids.append(records.ids[n])
            shapes.classes.append(k)
            shapes.mean_probability.append(float(prob[inside].mean()))
            shapes.geometry.append(geom)
    # background probability and a weight of 1 wherever the raster has data
    for r in range(0, h, 1024):
        sl = (slice(r, min(r + 1024, h)), slice(0, w))
        valid = ds.dataset_mask(window=Window(0, r, w, sl[0].stop - r)) > 0
        arr = acc.at(r)
        arr[(0, *sl)] = 1.0 - arr[(slice(1, classes), *sl)].max(axis=0)
        arr[(classes, *sl)] = valid.astype(np.float32)
    return {"prompts": len(prompts)}


def load_prompted_model(ref: str | Path, *, base: str | None = None, device: str = "cpu",
                        runtime: RuntimeOptions | str = "auto") -> Adapter | Segmenter:
    """The model behind ``ref`` for prompted mapping: a mask-decoder adapter when ``ref`` is an
    adapter folder (a damaged one too, so loading says what is wrong with it), else a
    ``Segmenter`` over the SAM model ``ref`` names (registry name, folder or ``.pth``).

    Args:
        ref: an adapter folder or a SAM model reference.
        base: the adapter's base model, instead of the one its config names.
        device: torch device.
        runtime: encoder runtime (see :class:`samadapt.models.accel.speed.RuntimeOptions`).
    """
    from samadapt.train.adapter import is_adapter_ref, load_adapter

    if is_adapter_ref(ref):
        return load_adapter(ref, base=base, device=device, runtime=runtime)
    from samadapt.predict.segmenter import Segmenter

    return Segmenter(str(ref), device=device, runtime=runtime)


def predict_prompted_rasters(model: Adapter | Segmenter | str | Path, rasters: Sequence[Path | RasterSource],
                             out_dir: Path, *,
                             prompts: Path | None = None, rough: tuple[int, int, float] | None = None,
                             options: MapOptions | None = None, base: str | None = None, device: str = "cpu",
                             runtime: RuntimeOptions | str = "auto", class_column: str | None = None
                             ) -> list[MapResult]:
    """Map many rasters with prompts from one file or from a rough index mask of each raster.

    A failure on one raster is recorded in its result (status "failed", the error's message)
    and the rest go on.

    Args:
        model: a mask-decoder adapter or a ``Segmenter``, or a reference loaded with
            :func:`load_prompted_model` (``base``, ``device`` and ``runtime`` apply to it).
        rasters: the rasters to map.
        out_dir: folder for the outputs.
        prompts: a file of boxes / points (GeoPackage, GeoJSON, CSV), read in each raster's CRS
            and pixel grid.
        rough: (band A, band B, threshold): prompts where (A - B) / (A + B) > threshold in each
            raster (see :func:`rough_prompts`).
        options: output settings.
        base, device, runtime: see :func:`load_prompted_model`.
        class_column: the column of ``prompts`` that holds each object's class
            (see :mod:`samadapt.prompts.records`).

    Raises:
        InputError: both or neither of ``prompts`` and ``rough``, or ``class_column`` without
            ``prompts``, checked before the model loads.
    """
    from samadapt.prompts.io import read_prompt_records

    if prompts is not None and rough is not None:
        raise InputError("give --prompts or --rough, not both")
    if class_column is not None and prompts is None:
        raise InputError("--class-column names a column of the --prompts file; give --prompts FILE or drop it")
    if class_column is not None and prompts is not None:
        check_class_column(Path(prompts), class_column)
    if rough is not None:
        a, b, threshold = rough

        def objects_of(raster: Path | RasterSource) -> list[ObjectPrompt] | PromptRecords:
            return rough_prompts(raster, a=a, b=b, threshold=threshold)
    elif prompts is not None:
        prompt_file = prompts

        def objects_of(raster: Path | RasterSource) -> list[ObjectPrompt] | PromptRecords:
            with open_source(resolve_source(raster)) as ds:
                return read_prompt_records(prompt_file, transform=ds.transform, raster_crs=ds.crs,
                                           class_column=class_column)
    else:
        raise InputError("prompted mapping needs --prompts (a file of boxes / points) or --rough A,B[,threshold]")
    if isinstance(model, (str, Path)):
        model = load_prompted_model(model, base=base, device=device, runtime=runtime)
    loaded = model
    return run_each(rasters, out_dir,
                    lambda raster: predict_prompted_raster(loaded, raster, out_dir, objects_of(raster), options))
