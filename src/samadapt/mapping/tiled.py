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
area in map units and mean probability, polygons cut by tile edges merged;
resume, scratch and outputs are :mod:`samadapt.mapping.runner`'s.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import rasterio
from rasterio.io import DatasetReader
from rasterio.windows import Window

from samadapt.errors import InputError
from samadapt.imagery.sources import RasterSource, is_remote_or_virtual, open_source, resolve_source
from samadapt.imagery.tiling import covering_offsets
from samadapt.imagery.windows import bands_for, raster_limits, read_tile
from samadapt.mapping.runner import Fill, MapOptions, MapResult, RasterRun, run_each, run_raster
from samadapt.methods.base import Sample

if TYPE_CHECKING:
    from distributed import Client

    from samadapt.methods.base import AdaptationMethod
    from samadapt.train.adapter import Adapter, Prediction


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


#: GDAL's block cache (default: 5 % of the machine's memory) would otherwise grow with the raster.
GDAL_CACHE_MB = 64


def predict_raster(
    adapter: Adapter | str | os.PathLike[str],
    raster: Path | RasterSource,
    out_dir: Path,
    options: MapOptions | None = None,
    *,
    progress: Callable[[int, int], None] | None = None,
    client: Client | None = None,
) -> MapResult:
    """Map one raster with an adapter (see the module docstring); returns the output paths.

    Args:
        adapter: a loaded adapter (``samadapt.load_adapter``) or the path of an adapter folder.
        raster: the raster to map: a local file or a source from :func:`expand_inputs` (URL, STAC item, ...).
        out_dir: folder for the outputs.
        options: tiling and output settings.
        progress: called with (tiles done, tiles in all).
        client: a ``dask.distributed.Client``: tiles are predicted on its workers (each loads
            the adapter once) and blended here; results equal the in-process run.
    """
    if isinstance(adapter, (str, os.PathLike)):
        from samadapt.train.adapter import load_adapter

        adapter = load_adapter(adapter)
    with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB):
        return _predict_raster(adapter, raster, out_dir, options or MapOptions(), progress, client)


def _predict_raster(adapter: Adapter, raster: Path | RasterSource, out_dir: Path, options: MapOptions,
                    progress: Callable[[int, int], None] | None, client: Client | None) -> MapResult:
    method = adapter.method
    num_classes = method.num_classes

    def prepare() -> Fill:
        tile = options.tile or method.preprocessing.size
        overlap = options.overlap if options.overlap is not None else tile // 8
        if not 0 <= overlap < tile:
            raise InputError(f"overlap must be at least 0 and smaller than the tile ({tile}), got {overlap}")
        if options.batch_size < 1:
            raise InputError(f"--batch-size must be at least 1, got {options.batch_size}")
        if options.tile_gsd is not None and not options.tile_gsd > 0:
            raise InputError(f"--tile-gsd must be a positive ground distance per pixel, got {options.tile_gsd}")
        return lambda run: _fill_tiles(adapter, run, tile, overlap, options, progress, client)

    return run_raster(raster, out_dir, options, classes=num_classes, prepare=prepare)


def _fill_tiles(adapter: Adapter, run: RasterRun, tile: int, overlap: int, options: MapOptions,
                progress: Callable[[int, int], None] | None, client: Client | None) -> dict[str, int]:
    """Accumulate the blended class probabilities of every tile of the run's raster."""
    ds, result, num_classes = run.ds, run.result, run.classes
    with tile_embeddings_in_memory(adapter, options.batch_size):
        bands = bands_for(ds, adapter.bands)
        limits = raster_limits(ds, bands)
        h, w = ds.height, ds.width
        scale = 1.0
        if options.tile_gsd is not None:
            res = (abs(ds.transform.a) + abs(ds.transform.e)) / 2
            scale = options.tile_gsd / res  # source pixels per model pixel
            tile, overlap = max(1, round(tile * scale)), round(overlap * scale)
        acc = run.accumulator()
        weights = blend_window(tile, overlap)
        rows, cols = covering_offsets(h, tile, overlap), covering_offsets(w, tile, overlap)
        windows = [Window(c0, r0, min(tile, w - c0), min(tile, h - r0)) for r0 in rows for c0 in cols]
        raster = result.raster
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
    return {"skipped_tiles": result.skipped_tiles}


@contextmanager
def tile_embeddings_in_memory(adapter: Adapter, batch_size: int = 1) -> Iterator[None]:
    """Keep the tiles' embeddings in memory while mapping, instead of the disk cache.

    Each tile is seen once, and a ViT-B embedding is about 4 MB: a 16384² raster would write
    some 20 GB to ``$SAMADAPT_HOME/embeddings`` for nothing. The adapter's own cache comes
    back afterwards.
    """
    method = adapter.method
    saved = getattr(method, "_embedder", None)
    _use_memory_cache(method, batch_size)
    try:
        yield
    finally:
        object.__setattr__(method, "_embedder", saved)


def _use_memory_cache(method: AdaptationMethod, batch_size: int) -> None:
    """Give a method's frozen encoder an in-memory embedding cache (see tile_embeddings_in_memory)."""
    from samadapt.predict.cache import EmbeddingCache
    from samadapt.predict.embed import Embedder

    if getattr(method, "base", None) is None:  # a stand-in without a SAM encoder
        return
    memory = EmbeddingCache(persist=False, memory_items=max(4, batch_size))
    object.__setattr__(method, "_embedder", Embedder(method.base, cache=memory))


def _tile_predictions(adapter: Adapter, ds: DatasetReader, raster: Path | RasterSource, windows: list[Window],
                      bands: tuple[int, ...], limits: np.ndarray | None, client: Client | None, scale: float = 1.0,
                      batch_size: int = 1) -> Iterator[tuple[Window, tuple[np.ndarray, np.ndarray] | None]]:
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
    source = raster if isinstance(raster, RasterSource) else resolve_source(raster)
    spec = (str(adapter.path), adapter.base_ref, source, bands, limits, scale,
            runtime.options if runtime is not None else "auto")  # workers run the encoder as asked here
    futures = [client.submit(_worker_tile, spec, (w.col_off, w.row_off, w.width, w.height), pure=False)
               for w in windows]
    for win, fut in zip(windows, futures, strict=False):
        yield win, fut.result()
        fut.release()


def _predict_samples(adapter: Adapter, samples: list[Sample]) -> list[Prediction]:
    """Predictions of several tiles, in one pass when the adapter can batch them."""
    if len(samples) > 1 and hasattr(adapter, "predict_samples"):
        return adapter.predict_samples(samples)
    return [adapter.predict_sample(s) for s in samples]


def _read_window(ds: DatasetReader, win: Window, bands: tuple[int, ...], limits: np.ndarray | None, stem: str,
                 scale: float = 1.0) -> Sample | None:
    """The window as the model's sample (resampled by ``scale``), or None when it is all nodata."""
    shape = (int(win.height), int(win.width))
    out_shape = None if scale == 1.0 else (max(1, round(shape[0] / scale)), max(1, round(shape[1] / scale)))
    pixels, valid = read_tile(ds, win, bands, limits, out_shape)
    if not valid.any():
        return None
    return Sample(f"{stem}_{win.row_off}_{win.col_off}", np.ascontiguousarray(pixels), valid)


def _back_to_window(ds: DatasetReader, win: Window, bands: tuple[int, ...], limits: np.ndarray | None,
                    pred: Prediction, valid: np.ndarray, scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
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


def _predict_window(adapter: Adapter, ds: DatasetReader, win: Window, bands: tuple[int, ...], limits: np.ndarray | None,
                    stem: str, scale: float = 1.0) -> tuple[np.ndarray, np.ndarray] | None:
    sample = _read_window(ds, win, bands, limits, stem, scale)
    if sample is None:
        return None
    return _back_to_window(ds, win, bands, limits, adapter.predict_sample(sample), sample.valid, scale)


_WORKER_ADAPTERS: dict[tuple[str, str | None, str], Adapter] = {}


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
    source = resolve_source(raster)
    with open_source(source) as ds:
        return _predict_window(_WORKER_ADAPTERS[key], ds, Window(*window), bands, limits, source.stem, scale)


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


def dask_client(scheduler: str) -> Client | None:
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


def predict_rasters(
    adapter: Adapter | str | os.PathLike[str], rasters: Sequence[Path | RasterSource], out_dir: Path,
    options: MapOptions | None = None, *, progress: Callable[[str, int, int], None] | None = None,
    client: Client | None = None,
) -> list[MapResult]:
    """Map many rasters; a failure on one is recorded and the rest go on, unless the output folder
    is full or read-only (see :func:`samadapt.mapping.runner.run_each`)."""

    def map_one(raster: Path | RasterSource) -> MapResult:
        cb = (lambda n, t: progress(raster.name, n, t)) if progress else None
        return predict_raster(adapter, raster, out_dir, options, progress=cb, client=client)

    return run_each(rasters, out_dir, map_one)


def expand_inputs(items: Sequence[str], asset: str | None = None) -> list[Path | RasterSource]:
    """Rasters from paths, globs, text files of paths (one per line; ``#`` comments), URLs, ``/vsi*`` paths and
    STAC items; URLs and virtual paths are never globbed.

    Local files stay paths (mapping checks them as it reaches them); URLs, virtual paths and STAC
    items (``.json``) are resolved to :class:`~samadapt.imagery.sources.RasterSource` with ``asset``.

    Raises:
        InputError: a glob that matches nothing, or ``asset`` with no STAC item among the inputs.
    """
    import glob

    out: list[Path | RasterSource] = []

    def add(text: str) -> None:
        if is_remote_or_virtual(text) or text.lower().endswith(".json"):
            out.append(resolve_source(text, asset))
        else:
            out.append(Path(text))

    for item in items:
        p = Path(item)
        if is_remote_or_virtual(item):
            add(item)
        elif p.suffix.lower() == ".txt" and p.is_file():
            for line in p.read_text().splitlines():
                line = line.split("#", 1)[0].strip()
                if line:
                    add(line if is_remote_or_virtual(line) or Path(line).is_absolute() else str(p.parent / line))
        elif any(ch in item for ch in "*?["):
            matches = sorted(glob.glob(item, recursive=True))
            if not matches:
                raise InputError(f"no raster matches {item!r}")
            for m in matches:
                add(m)
        else:
            add(item)
    if asset is not None and not any(isinstance(r, RasterSource) and r.text.lower().endswith(".json") for r in out):
        raise InputError("--asset picks an asset of a STAC item, but no input is a STAC item (.json); drop --asset "
                         "or give the item")
    return out
