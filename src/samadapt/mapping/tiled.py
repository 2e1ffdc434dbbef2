"""Map whole rasters with a trained adapter: tiles, seamless blending, GIS outputs.

A raster is read by windows: square tiles of the model's input size overlapping by
``overlap`` pixels. Each tile's class probabilities are weighted by a smooth window (1 in
the middle, falling towards the tile edges inside the overlap) and accumulated, so no seam
shows where tiles meet. The accumulators live in a scratch file next to the outputs, mapped
into memory one band of rows at a time, so memory does not grow with the raster. Intensity scaling (16-bit, float) uses
percentiles of the whole raster computed once (from an overview when the raster is large),
never per tile, so tiles agree in brightness. Nodata stays nodata; all-nodata tiles are
skipped. No step assumes an Earth CRS: outputs keep the raster's own CRS (Mars too).

Outputs per raster, written under temporary names and renamed when complete:
``<stem>_classes.tif`` (class ids, 255 = nodata), optionally ``<stem>_probabilities.tif``
(one band per class, 0-255), and ``<stem>_polygons.gpkg`` (or ``.geojson``) with class,
area in map units and mean probability, polygons cut by tile edges merged.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import rasterio
from rasterio.windows import Window

from samadapt._io import describe_os_error, new_folder, write_json
from samadapt.errors import DiskFullError, InputError, InputFileError, SamadaptError
from samadapt.methods.base import Sample

NODATA = 255
DONE = ".done.json"


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

    def __post_init__(self) -> None:
        if self.tile is not None and self.tile < 1:
            raise InputError(f"--tile must be a tile side of at least 1 pixel, got {self.tile}; leave it out for "
                             "the model's input size")


@dataclass
class MapResult:
    """What mapping one raster produced."""

    raster: Path
    outputs: dict[str, Path] = field(default_factory=dict)
    tiles: int = 0
    skipped_tiles: int = 0
    status: str = "done"
    error: str = ""


#: Free space kept beyond the scratch file, for the outputs written from it.
SCRATCH_MARGIN_BYTES = 16 << 20


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
        self._map: np.ndarray | None = None
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


def finished_result(raster: Path, done: Path, options: MapOptions) -> MapResult | None:
    """The earlier result when a raster's outputs are complete (and not to be overwritten), else None."""
    if not done.is_file() or options.overwrite:
        return None
    record = json.loads(done.read_text())
    if not all(Path(p).is_file() for p in record["outputs"].values()):
        return None
    return MapResult(raster, {k: Path(v) for k, v in record["outputs"].items()}, status="skipped")


def blend_window(size: int, overlap: int) -> np.ndarray:
    """(size, size) float32 weights: 1 in the middle, a raised-cosine ramp over ``overlap`` at the edges.

    Never exactly 0, so a pixel covered by one tile only still gets its prediction.
    """
    ramp = np.ones(size, dtype=np.float32)
    if overlap > 0:
        i = np.arange(size, dtype=np.float32)
        d = np.minimum(i + 0.5, size - i - 0.5) / overlap
        ramp = np.clip(0.5 - 0.5 * np.cos(np.pi * np.clip(d, 0, 1)), 1e-3, 1.0).astype(np.float32)
    return np.outer(ramp, ramp)


def raster_limits(ds: Any, bands: Sequence[int], *, max_pixels: int = 4_000_000) -> np.ndarray | None:
    """Per-band 2-98 % limits of the whole raster (from a decimated read when large); None for uint8."""
    from samadapt.imagery.read import pixel_read_errors, stretch_limits

    if all(ds.dtypes[b - 1] == "uint8" for b in bands):
        return None
    factor = max(1, int(np.ceil(np.sqrt(ds.width * ds.height / max_pixels))))
    shape = (len(bands), max(1, ds.height // factor), max(1, ds.width // factor))
    with pixel_read_errors(ds.name, bands=bands):
        data = ds.read(list(bands), out_shape=shape, resampling=rasterio.enums.Resampling.nearest)
        valid = ds.dataset_mask(out_shape=shape[1:], resampling=rasterio.enums.Resampling.nearest) > 0
        valid &= _unmarked_alpha(ds, bands, out_shape=shape[1:])
    if np.issubdtype(data.dtype, np.floating):
        valid &= np.isfinite(data).all(axis=0)
    return stretch_limits(data, valid)


def _unmarked_alpha(ds: Any, bands: Sequence[int], window: Window | None = None,
                    out_shape: tuple[int, int] | None = None) -> np.ndarray | bool:
    """Validity from band 2 of a 2-band raster shown as grey, when band 2 is an alpha band GDAL
    does not know of (read_image's rule: only 0 and its type's maximum); True otherwise.

    A marked alpha band is in GDAL's dataset mask already; a second band of data (SAR VV / VH)
    is not alpha.
    """
    from rasterio.enums import ColorInterp

    from samadapt.imagery.read import looks_like_alpha

    if ds.count != 2 or set(bands) != {1} or ds.colorinterp[1] == ColorInterp.alpha:
        return True
    kwargs = {} if out_shape is None else {"out_shape": out_shape, "resampling": rasterio.enums.Resampling.nearest}
    band = ds.read(2, window=window, **kwargs)
    return band > 0 if looks_like_alpha(band) else True


def read_tile(ds: Any, window: Window, bands: Sequence[int], limits: np.ndarray | None,
              out_shape: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(h, w, C) uint8 pixels of a window scaled with the raster-wide limits, and its validity.

    With ``out_shape`` the window is resampled (bilinear; validity nearest) to that (rows, cols).
    """
    from samadapt.imagery.read import pixel_read_errors, scale_to_uint8

    with pixel_read_errors(ds.name, window=window, bands=bands):
        if out_shape is None:
            data = ds.read(list(bands), window=window)
            valid = ds.dataset_mask(window=window) > 0
        else:
            bil, near = rasterio.enums.Resampling.bilinear, rasterio.enums.Resampling.nearest
            data = ds.read(list(bands), window=window, out_shape=(len(bands), *out_shape), resampling=bil)
            valid = ds.dataset_mask(window=window, out_shape=out_shape, resampling=near) > 0
        valid &= _unmarked_alpha(ds, bands, window, out_shape)
    if np.issubdtype(data.dtype, np.floating):
        valid &= np.isfinite(data).all(axis=0)
    if limits is None:
        scaled = np.clip(np.nan_to_num(data.astype(np.float64)), 0, 255).astype(np.uint8)
    else:
        scaled = scale_to_uint8(data, limits)
    scaled[:, ~valid] = 0
    return np.moveaxis(scaled, 0, -1), valid


def _bands_for(ds: Any, bands: tuple[int, ...] | None) -> tuple[int, ...]:
    if bands:
        for b in bands:
            if not 1 <= b <= ds.count:
                raise InputError(f"band {b} does not exist: the raster has {ds.count} band(s)")
        return bands
    return (1, 1, 1) if ds.count < 3 else (1, 2, 3)


def _offsets(length: int, tile: int, overlap: int) -> list[int]:
    """Tile starts along one axis; the last tile is shifted back to end at the edge when it can."""
    from samadapt.data.build import tile_offsets

    starts = tile_offsets(length, tile, overlap)
    if length >= tile:
        starts[-1] = length - tile
    return sorted(set(starts))


#: GDAL's block cache (default: 5 % of the machine's memory) would otherwise grow with the raster.
GDAL_CACHE_MB = 64


def predict_raster(
    adapter: Any,
    raster: Path,
    out_dir: Path,
    options: MapOptions | None = None,
    *,
    progress: Callable[[int, int], None] | None = None,
    client: Any = None,
) -> MapResult:
    """Map one raster with an adapter (see the module docstring); returns the output paths.

    Args:
        adapter: a loaded adapter (``samadapt.load_adapter``) or the path of an adapter folder.
        raster: the raster to map.
        out_dir: folder for the outputs.
        options: tiling and output settings.
        progress: called with (tiles done, tiles in all).
        client: a ``dask.distributed.Client``: tiles are predicted on its workers (each loads
            the adapter once) and blended here; results equal the in-process run.
    """
    if not hasattr(adapter, "predict_sample"):
        from samadapt.train.adapter import load_adapter

        adapter = load_adapter(adapter)
    with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB):
        return _predict_raster(adapter, raster, out_dir, options or MapOptions(), progress, client)


def _predict_raster(adapter: Any, raster: Path, out_dir: Path, options: MapOptions,
                    progress: Callable[[int, int], None] | None, client: Any) -> MapResult:
    options = options or MapOptions()
    raster, out_dir = Path(raster), Path(out_dir)
    if not raster.is_file():
        raise InputFileError(f"raster not found: {raster}")
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = raster.stem
    done = out_dir / f"{stem}{DONE}"
    finished = finished_result(raster, done, options)
    if finished is not None:
        return finished
    method = adapter.method
    num_classes = method.num_classes
    tile = options.tile or method.preprocessing.size
    overlap = options.overlap if options.overlap is not None else tile // 8
    if not 0 <= overlap < tile:
        raise InputError(f"overlap must be at least 0 and smaller than the tile ({tile}), got {overlap}")
    if options.batch_size < 1:
        raise InputError(f"--batch-size must be at least 1, got {options.batch_size}")
    if options.tile_gsd is not None and not options.tile_gsd > 0:
        raise InputError(f"--tile-gsd must be a positive ground distance per pixel, got {options.tile_gsd}")
    try:
        ds = rasterio.open(raster)
    except rasterio.errors.RasterioIOError as e:
        raise InputFileError(f"{raster} is not a readable raster ({e})") from None
    scratch = out_dir / f".{stem}.scratch"
    scratch.mkdir(exist_ok=True)
    result = MapResult(raster)
    try:
        with ds, tile_embeddings_in_memory(adapter, options.batch_size):
            bands = _bands_for(ds, adapter.bands)
            limits = raster_limits(ds, bands)
            h, w = ds.height, ds.width
            scale = 1.0
            if options.tile_gsd is not None:
                res = (abs(ds.transform.a) + abs(ds.transform.e)) / 2
                scale = options.tile_gsd / res  # source pixels per model pixel
                tile, overlap = max(1, round(tile * scale)), round(overlap * scale)
            acc = Scratch(scratch / "acc.npy", (num_classes + 1, h, w))
            weights = blend_window(tile, overlap)
            rows, cols = _offsets(h, tile, overlap), _offsets(w, tile, overlap)
            windows = [Window(c0, r0, min(tile, w - c0), min(tile, h - r0)) for r0 in rows for c0 in cols]
            for n, (win, out) in enumerate(
                _tile_predictions(adapter, ds, raster, windows, bands, limits, client, scale, options.batch_size),
                start=1,
            ):
                if out is None:
                    result.skipped_tiles += 1
                else:
                    probs, valid = out
                    th, tw = valid.shape
                    wgt = weights[:th, :tw] * valid
                    sl = (slice(win.row_off, win.row_off + th), slice(win.col_off, win.col_off + tw))
                    band = acc.at(int(win.row_off))
                    band[(slice(0, num_classes), *sl)] += probs * wgt
                    band[(num_classes, *sl)] += wgt
                    result.tiles += 1
                if progress:
                    progress(n, len(windows))
            acc.release()
            result.outputs = _write_outputs(ds, acc, num_classes, out_dir, stem, options)
        write_json(done, {"outputs": {k: str(v) for k, v in result.outputs.items()},
                          "tiles": result.tiles, "skipped_tiles": result.skipped_tiles})
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return result


@contextmanager
def tile_embeddings_in_memory(adapter: Any, batch_size: int = 1) -> Iterator[None]:
    """Keep the tiles' embeddings in memory while mapping, instead of the disk cache.

    Each tile is seen once, and a ViT-B embedding is about 4 MB: a 16384² raster would write
    some 20 GB to ``$SAMADAPT_HOME/embeddings`` for nothing. The adapter's own cache comes
    back afterwards.
    """
    method = adapter.method
    saved = getattr(method, "_segmenter", None)
    _use_memory_cache(method, batch_size)
    try:
        yield
    finally:
        object.__setattr__(method, "_segmenter", saved)


def _use_memory_cache(method: Any, batch_size: int) -> None:
    """Give a method's frozen encoder an in-memory embedding cache (see tile_embeddings_in_memory)."""
    from samadapt.predict.cache import EmbeddingCache
    from samadapt.predict.segmenter import Segmenter

    if getattr(method, "base", None) is None:  # a stand-in without a SAM encoder
        return
    memory = EmbeddingCache(persist=False, memory_items=max(4, batch_size))
    object.__setattr__(method, "_segmenter", Segmenter(method.base, cache=memory))


def _tile_predictions(adapter: Any, ds: Any, raster: Path, windows: list[Window], bands: tuple[int, ...],
                      limits: np.ndarray | None, client: Any, scale: float = 1.0,
                      batch_size: int = 1):
    """Yield (window, (probabilities, valid) or None for an all-nodata tile), in window order."""
    if client is None:
        for start in range(0, len(windows), batch_size):
            group = windows[start : start + batch_size]
            tiles = [_read_window(ds, win, bands, limits, raster.stem, scale) for win in group]
            samples = [t for t in tiles if t is not None]
            predictions = iter(_predict_samples(adapter, samples))
            for win, tile in zip(group, tiles, strict=False):
                yield win, None if tile is None else _back_to_window(ds, win, bands, limits, next(predictions),
                                                                     tile.valid, scale)
        return
    if getattr(adapter, "path", None) is None:
        raise InputError("distributed mapping needs an adapter loaded from a folder (samadapt.load_adapter(path))")
    runtime = getattr(getattr(getattr(adapter, "method", None), "base", None), "runtime", None)
    spec = (str(adapter.path), adapter.base_ref, str(raster), bands, limits, scale,
            runtime.options if runtime is not None else "auto")  # workers run the encoder as asked here
    futures = [client.submit(_worker_tile, spec, (w.col_off, w.row_off, w.width, w.height), pure=False)
               for w in windows]
    for win, fut in zip(windows, futures, strict=False):
        yield win, fut.result()
        fut.release()


def _predict_samples(adapter: Any, samples: list[Sample]) -> list[Any]:
    """Predictions of several tiles, in one pass when the adapter can batch them."""
    if len(samples) > 1 and hasattr(adapter, "predict_samples"):
        return adapter.predict_samples(samples)
    return [adapter.predict_sample(s) for s in samples]


def _read_window(ds: Any, win: Window, bands: tuple[int, ...], limits: np.ndarray | None, stem: str,
                 scale: float = 1.0) -> Sample | None:
    """The window as the model's sample (resampled by ``scale``), or None when it is all nodata."""
    shape = (int(win.height), int(win.width))
    out_shape = None if scale == 1.0 else (max(1, round(shape[0] / scale)), max(1, round(shape[1] / scale)))
    pixels, valid = read_tile(ds, win, bands, limits, out_shape)
    if not valid.any():
        return None
    return Sample(f"{stem}_{win.row_off}_{win.col_off}", np.ascontiguousarray(pixels), valid)


def _back_to_window(ds: Any, win: Window, bands: tuple[int, ...], limits: np.ndarray | None, pred: Any,
                    valid: np.ndarray, scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities, valid) of a prediction in the window's own pixels (``valid``: the sample's)."""
    probs = pred.probabilities
    shape = (int(win.height), int(win.width))
    if scale == 1.0:
        return probs, valid
    import torch
    import torch.nn.functional as F

    probs = F.interpolate(torch.from_numpy(probs)[None], shape, mode="bilinear", align_corners=False)[0].numpy()
    _, valid = read_tile(ds, win, bands[:1], limits[:1] if limits is not None else None)
    return probs, valid


def _predict_window(adapter: Any, ds: Any, win: Window, bands: tuple[int, ...], limits: np.ndarray | None,
                    stem: str, scale: float = 1.0) -> tuple[np.ndarray, np.ndarray] | None:
    sample = _read_window(ds, win, bands, limits, stem, scale)
    if sample is None:
        return None
    return _back_to_window(ds, win, bands, limits, adapter.predict_sample(sample), sample.valid, scale)


_WORKER_ADAPTERS: dict[tuple[str, str | None, str], Any] = {}


def _worker_tile(spec: tuple, window: tuple[int, int, int, int]) -> tuple[np.ndarray, np.ndarray] | None:
    """Runs on a Dask worker: the adapter is loaded once per worker process and kept."""
    from samadapt.train.adapter import load_adapter

    adapter_path, base_ref, raster, bands, limits, scale, runtime = spec
    key = (adapter_path, base_ref, repr(runtime))
    if key not in _WORKER_ADAPTERS:
        import torch

        from samadapt.models.accel.speed import threads_for

        # OMP_NUM_THREADS is the worker's share of the cores (set by dask_client for a local
        # cluster); torch may have sized its pool before the variable was seen, so set it here.
        torch.set_num_threads(threads_for(1))
        adapter = load_adapter(adapter_path, base=base_ref, runtime=runtime)
        _use_memory_cache(adapter.method, 1)  # for the worker's life: tiles are seen once
        _WORKER_ADAPTERS[key] = adapter
    with rasterio.open(raster) as ds:
        return _predict_window(_WORKER_ADAPTERS[key], ds, Window(*window), bands, limits, Path(raster).stem, scale)


#: Seconds to wait for a Dask scheduler to answer.
SCHEDULER_TIMEOUT_S = 10


def _reach_scheduler(address: str) -> None:
    """Fail at once, with one sentence, when nothing listens at a tcp:// scheduler address
    (Dask itself retries for 30 s and then raises a bare OSError)."""
    import socket
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(address)
        host, port = parts.hostname, parts.port
    except ValueError:
        host = port = None
    if not host or not port:
        raise InputError(f"--scheduler tcp://host:port needs a host and a port, got {address!r}")
    try:
        socket.create_connection((host, port), timeout=SCHEDULER_TIMEOUT_S).close()
    except OSError as e:
        reason = e.strerror or str(e) or type(e).__name__
        raise InputError(f"cannot reach the Dask scheduler at {address} ({reason.lower()}); start it with "
                         "`dask scheduler` or map in this process with --scheduler local") from None


def dask_client(scheduler: str) -> Any:
    """A Dask client for ``processes:N`` (a LocalCluster of N single-threaded workers) or ``tcp://host:port``.

    Returns None for ``local`` (in-process). Torch threads are shared out so N workers do not
    oversubscribe the cores.
    """
    if scheduler in ("local", "", None):
        return None
    try:
        from dask.distributed import Client, LocalCluster
    except ImportError:
        from samadapt.errors import MissingDependencyError

        raise MissingDependencyError("--scheduler needs dask: pip install 'samadapt[dask]'") from None
    if scheduler.startswith("processes:"):
        try:
            n = int(scheduler.split(":", 1)[1])
        except ValueError:
            raise InputError(f"--scheduler processes:N needs a whole number of workers, got {scheduler!r}") from None
        if n < 1:
            raise InputError(f"--scheduler processes:N needs at least one worker, got {scheduler!r}")
        from samadapt.models.accel.speed import threads_for

        threads = threads_for(n)
        cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None,
                               host="127.0.0.1", env={"OMP_NUM_THREADS": str(threads)})
        return Client(cluster)
    if scheduler.startswith("tcp://"):
        _reach_scheduler(scheduler)
        try:
            return Client(scheduler, timeout=SCHEDULER_TIMEOUT_S)
        except (OSError, TimeoutError) as e:
            raise InputError(f"the Dask scheduler at {scheduler} did not answer ({e}); is `dask scheduler` "
                             "running there?") from None
    raise InputError(f"--scheduler must be local, processes:N or tcp://host:port, got {scheduler!r}")


def _write_outputs(ds: Any, acc: Scratch, num_classes: int, out_dir: Path, stem: str,
                   options: MapOptions) -> dict[str, Path]:
    profile = {
        "driver": "GTiff", "width": ds.width, "height": ds.height, "count": 1, "dtype": "uint8",
        "crs": ds.crs, "transform": ds.transform, "nodata": NODATA, "compress": "deflate",
        "tiled": ds.width >= 256 and ds.height >= 256, "blockxsize": 256, "blockysize": 256,
    }
    outputs: dict[str, Path] = {}
    classes_path = out_dir / f"{stem}_classes.tif"
    probs_path = out_dir / f"{stem}_probabilities.tif"
    # Written in the scratch folder, which goes whatever happens, then renamed into place.
    tmp_c = acc.path.parent / f"{stem}_classes.tif"
    tmp_p = acc.path.parent / f"{stem}_probabilities.tif"
    prob_profile = {**profile, "count": num_classes, "nodata": None}
    dst_p = rasterio.open(tmp_p, "w", **prob_profile) if options.probabilities else None
    with rasterio.open(tmp_c, "w", **profile) as dst:
        for _, win in dst.block_windows(1) if profile["tiled"] else [(None, Window(0, 0, ds.width, ds.height))]:
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
    for tmp, final, key in ((tmp_c, classes_path, "classes"), (tmp_p, probs_path, "probabilities")):
        if not tmp.exists():
            continue
        if options.cog:
            cog_tmp = tmp.with_name(tmp.stem + ".cog.tif")
            with rasterio.open(tmp) as src:
                cog_profile = {**src.profile, "driver": "COG"}
                for k in ("tiled", "blockxsize", "blockysize", "interleave"):
                    cog_profile.pop(k, None)
                with rasterio.open(cog_tmp, "w", **cog_profile) as cog:
                    cog.write(src.read())
            os.replace(cog_tmp, tmp)
        os.replace(tmp, final)
        outputs[key] = final
    if options.polygons:
        outputs["polygons"] = _write_polygons(classes_path, probs_path if options.probabilities else None,
                                              out_dir / f"{stem}_polygons.{options.polygons}", options)
    return outputs


def _write_polygons(classes: Path, probs: Path | None, path: Path, options: MapOptions) -> Path:
    """Vectorise the class raster by row bands, then merge pieces that touch across band edges."""
    import geopandas as gpd
    import shapely
    from rasterio.features import shapes
    from shapely.geometry import shape

    from samadapt.mapping.outputs import write_polygons

    pieces: dict[int, list[Any]] = {}
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
        for poly in getattr(merged, "geoms", [merged]):
            if options.simplify > 0:
                poly = poly.simplify(options.simplify)
            if poly.is_empty or poly.area < options.min_area:
                continue
            rows.append({"class": cls, "area": float(poly.area), "geometry": poly})
    frame = gpd.GeoDataFrame(rows, columns=["class", "area", "geometry"], geometry="geometry", crs=crs)
    if probs is not None and len(frame):
        frame["mean_probability"] = _mean_probability(frame, probs)
    return write_polygons(path, frame, overwrite=True)


def _mean_probability(frame: Any, probs: Path) -> list[float]:
    from rasterio.mask import mask as mask_raster

    out = []
    with rasterio.open(probs) as ds:
        for cls, geom in zip(frame["class"], frame.geometry, strict=False):
            data, _ = mask_raster(ds, [geom], crop=True, indexes=int(cls) + 1, filled=False)
            out.append(float(data.mean()) / 255.0 if data.count() else float("nan"))
    return out


#: Failures that belong to the output folder, not to one raster: mapping stops at the first.
OUTPUT_FOLDER_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)


def predict_rasters(
    adapter: Any, rasters: Sequence[Path], out_dir: Path, options: MapOptions | None = None,
    *, progress: Callable[[str, int, int], None] | None = None, client: Any = None,
) -> list[MapResult]:
    """Map many rasters; a failure on one is recorded and the rest go on, unless the output folder
    is full or read-only (then the error is raised: no later raster could be written either)."""
    with new_folder(out_dir):
        return _predict_each(adapter, rasters, out_dir, options, progress, client)


def _predict_each(adapter: Any, rasters: Sequence[Path], out_dir: Path, options: MapOptions | None,
                  progress: Callable[[str, int, int], None] | None, client: Any) -> list[MapResult]:
    results = []
    for raster in rasters:
        try:
            cb = (lambda n, t, _r=raster: progress(_r.name, n, t)) if progress else None
            results.append(predict_raster(adapter, raster, out_dir, options, progress=cb, client=client))
        except (SamadaptError, rasterio.errors.RasterioError, OSError, ValueError) as e:
            if isinstance(e, OSError) and e.errno in OUTPUT_FOLDER_ERRNOS or isinstance(e, DiskFullError):
                raise  # the output folder cannot take more: every raster after this one would fail too
            reason = describe_os_error(e) if isinstance(e, OSError) and not isinstance(e, SamadaptError) else str(e)
            results.append(MapResult(Path(raster), status="failed", error=reason))
    return results


def expand_inputs(items: Sequence[str]) -> list[Path]:
    """Rasters from paths, globs and text files of paths (one per line; ``#`` comments)."""
    import glob

    out: list[Path] = []
    for item in items:
        p = Path(item)
        if p.suffix.lower() == ".txt" and p.is_file():
            for line in p.read_text().splitlines():
                line = line.split("#", 1)[0].strip()
                if line:
                    out.append((p.parent / line) if not Path(line).is_absolute() else Path(line))
        elif any(ch in item for ch in "*?["):
            matches = sorted(glob.glob(item, recursive=True))
            if not matches:
                raise InputError(f"no raster matches {item!r}")
            out.extend(Path(m) for m in matches)
        else:
            out.append(p)
    return out
