"""Map a raster with a prompt-based model: plain SAM or a mask-decoder adapter, prompted by a
file of boxes / points or by a rough (thresholded index) mask.

Each object is segmented in a window of the model's input size centred on its prompt, so
an object is never cut by a tile edge; object probabilities are combined by their maximum
in a memory-mapped scratch array and written as the same outputs as
:func:`samadapt.mapping.tiled.predict_raster` (classes: 1 = object).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.windows import Window

from samadapt._io import write_json
from samadapt.errors import InputError, InputFileError
from samadapt.mapping.tiled import (
    DONE,
    MapOptions,
    MapResult,
    Scratch,
    _bands_for,
    _write_outputs,
    finished_result,
    raster_limits,
    read_tile,
)
from samadapt.prompts.types import ObjectPrompt


def rough_prompts(raster: Path, *, a: int, b: int, threshold: float = 0.0, min_area: int = 20,
                  mode: str = "box") -> list[ObjectPrompt]:
    """Prompts from a normalised-difference index of two bands, e.g. NDWI = (green - nir) / (green + nir).

    The index is computed over the whole raster, so this suits rasters that fit in memory.
    """
    from samadapt.prompts.rough import index_from_bands, prompts_from_rough, rough_mask

    index = index_from_bands(raster, a, b)
    mask = rough_mask(index=index, threshold=threshold, min_area=min_area)
    return prompts_from_rough(mask, mode=mode, min_area=min_area)  # type: ignore[arg-type]


def _predictor(model: Any) -> Any:
    """A function (pixels (h, w, 3) uint8, valid, prompt in window pixels) -> (h, w) probability."""
    from samadapt.methods.base import Sample

    if hasattr(model, "needs_prompts"):
        if not model.needs_prompts:
            raise InputError("prompts apply to mask-decoder adapters and plain SAM models, not to this adapter")

        def with_adapter(pixels: np.ndarray, valid: np.ndarray, prompt: ObjectPrompt) -> np.ndarray:
            return model.predict_sample(Sample("tile", pixels, valid), prompts=[prompt]).probabilities[1]

        return with_adapter

    def with_sam(pixels: np.ndarray, valid: np.ndarray, prompt: ObjectPrompt) -> np.ndarray:
        result = model.segment(pixels, [prompt], multimask=prompt.box is None)
        return result.masks[0].astype(np.float32)

    return with_sam


def _shift(prompt: ObjectPrompt, dx: float, dy: float) -> ObjectPrompt:
    box = None if prompt.box is None else prompt.box - np.array([dx, dy, dx, dy])
    return ObjectPrompt(points=prompt.points - np.array([dx, dy]), labels=prompt.labels, box=box)


def predict_prompted_raster(model: Any, raster: Path, out_dir: Path, prompts: list[ObjectPrompt],
                            options: MapOptions | None = None, *, tile: int | None = None) -> MapResult:
    """Segment every prompted object of a raster (prompts in the raster's pixel coordinates).

    Args:
        model: a mask-decoder adapter (``load_adapter``) or a ``Segmenter`` for plain SAM.
        raster: the raster.
        out_dir: folder for the outputs.
        prompts: one ObjectPrompt per object, pixels of the whole raster.
        options: output settings (tile overlap does not apply).
        tile: window side; default the model's input size.
    """
    options = options or MapOptions()
    raster, out_dir = Path(raster), Path(out_dir)
    if not raster.is_file():
        raise InputFileError(f"raster not found: {raster}")
    if not prompts:
        raise InputError(f"no prompts for {raster.name}: the prompt file or rough mask gave no objects")
    stem = raster.stem
    done = out_dir / f"{stem}{DONE}"
    finished = finished_result(raster, done, options)
    if finished is not None:
        return finished
    predict = _predictor(model)
    spec = model.method.preprocessing if hasattr(model, "method") else model.loaded.preprocessing
    tile = tile or options.tile or spec.size
    out_dir.mkdir(parents=True, exist_ok=True)
    scratch = out_dir / f".{stem}.scratch"
    scratch.mkdir(exist_ok=True)
    result = MapResult(raster)
    try:
        with rasterio.open(raster) as ds:
            bands = _bands_for(ds, getattr(model, "bands", None))
            limits = raster_limits(ds, bands)
            h, w = ds.height, ds.width
            acc = Scratch(scratch / "acc.npy", (3, h, w))
            for prompt in prompts:
                prompt.check_inside(h, w)
                if prompt.box is not None:
                    cx, cy = (prompt.box[0] + prompt.box[2]) / 2, (prompt.box[1] + prompt.box[3]) / 2
                    side = int(max(tile, prompt.box[2] - prompt.box[0] + 32, prompt.box[3] - prompt.box[1] + 32))
                else:
                    cx, cy = prompt.points[prompt.labels == 1].mean(axis=0) if (prompt.labels == 1).any() else prompt.points[0]
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
                arr = acc.at(r0)
                arr[(1, *sl)] = np.maximum(arr[(1, *sl)], prob)
                result.tiles += 1
            # background probability and a weight of 1 wherever the raster has data
            for r in range(0, h, 1024):
                sl = (slice(r, min(r + 1024, h)), slice(0, w))
                valid = ds.dataset_mask(window=Window(0, r, w, sl[0].stop - r)) > 0
                arr = acc.at(r)
                arr[(0, *sl)] = 1.0 - arr[(1, *sl)]
                arr[(2, *sl)] = valid.astype(np.float32)
            acc.release()
            result.outputs = _write_outputs(ds, acc, 2, out_dir, stem, options)
        write_json(done, {"outputs": {k: str(v) for k, v in result.outputs.items()},
                          "tiles": result.tiles, "prompts": len(prompts)})
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return result
