"""The segmentation engine behind ``POST /segment``: embeddings reused before anything is fetched.

A request names a source, a zoom, a lat/lng bbox and prompts. The engine maps everything to
the source's frame (its pixel grid at that zoom), decides which *windows* of the frame the
objects are decoded in, and gets each window's embedding:

1. from an in-memory LRU keyed by (source, zoom, window, model) — checked before any tile
   is fetched, so a repeated or nearby request costs only the decoder;
2. else from a computation already under way for the same key (single flight: concurrent
   requests await one task; its error reaches all of them and nothing is cached);
3. else by fetching the window (``Source.read``) and encoding it in a bounded thread pool
   through ``Segmenter.embed``, which also consults the disk cache by pixel hash.

Window choice (``mode``):

- ``view`` (SamGIS): one window, the bbox's pixel extent; a pan changes the key.
- ``grid``: windows of side S (the model's input size) at multiples of S in frame pixels, so
  on XYZ sources they align with the tile grid. An object is decoded in the cell holding
  its prompts; when its prompts cross cells, or its mask touches an inner edge of the cell
  (not the frame's boundary), it is decoded again in a window of side S re-centred on it
  (origin quantised to S/4 so nearby requests share it); an object wider than S falls
  back to the view window. A small pan keeps hitting the same cells.

Pixel conventions: frame pixel (c, r) covers [c, c+1) x [r, r+1); a lng/lat maps to
continuous frame coordinates; SAM's point prompts put pixel centres on integers, so a point
is passed as (continuous - 0.5); boxes are on pixel edges and are not shifted.

Text prompts (see :mod:`samadapt.service.text`) search the view window whatever the mode: its
pixels are fetched and searched in the encoder pool (``timings_ms.encode`` then covers the
detector, the encoder and the mask decoder), and the masks are vectorised as for other prompts.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
from cachetools import LRUCache

from samadapt.errors import InputError
from samadapt.imagery.read import GeoImage, from_array
from samadapt.service.geometry import (
    FrameObject,
    bbox_extent,
    build_objects,
    cell_of,
    check_prompts,
    inner_edges_touched,
    recentred,
    view_window,
)
from samadapt.service.schemas import SegmentRequest
from samadapt.service.sources import FetchError, Frame, Source, lookup_source
from samadapt.service.text import TextPrompts, text_features
from samadapt.service.vector import Window, mask_geometry

if TYPE_CHECKING:
    import httpx

    from samadapt.predict.segmenter import Embedded, Segmenter
    from samadapt.service.settings import ServiceSettings

_T = TypeVar("_T")

#: Decode rounds per object in grid mode: cell, re-centred window, view window.
MAX_ROUNDS = 3


@dataclass
class Stats:
    """Milliseconds per step and whether this request fetched or encoded anything."""

    fetch: float = 0.0
    encode: float = 0.0
    decode: float = 0.0
    vectorise: float = 0.0
    computed: bool = False

    def as_dict(self, total: float) -> dict[str, float]:
        return {"fetch": round(self.fetch, 2), "encode": round(self.encode, 2), "decode": round(self.decode, 2),
                "vectorise": round(self.vectorise, 2), "total": round(total, 2)}


@dataclass
class _Job:
    """An object under decoding in grid mode: its current window and how it got there."""

    index: int
    obj: FrameObject
    window: Window
    kind: str  # "cell", "recentred" or "view"
    view: Window
    result: tuple[dict[str, Any] | None, float] = field(default=(None, 0.0))


def display_name(name: str) -> str:
    """A registry model name as is; a model path by its last part only (no server paths in responses)."""
    from pathlib import Path

    from samadapt.models.registry import REGISTRY

    return name if name in REGISTRY else Path(name).name


class SegmentEngine:
    """Turns ``/segment`` requests into GeoJSON, reusing embeddings (see the module docstring).

    Args:
        segmenter: the loaded model (``segmenter.loaded`` is touched here, so it loads now).
        sources: configured sources by name; nothing else can be fetched.
        settings: the service settings (``max_view_pixels``, ``max_prompts``, ``embedding_mode``,
            ``memory_embeddings``, ``encoder_workers``, ``fetch_timeout_s``).
        client: the HTTP client sources fetch with (one per app lifetime).
        text: how text prompts are answered (the detector, if any); default: only a SAM 3 model answers them.
    """

    def __init__(self, segmenter: Segmenter, sources: dict[str, Source], settings: ServiceSettings,
                 client: httpx.AsyncClient | None = None, text: TextPrompts | None = None) -> None:
        self.segmenter = segmenter
        self.loaded = segmenter.loaded
        self.model_name = display_name(self.loaded.name)
        self.size = self.loaded.preprocessing.size
        self.sources = sources
        self.settings = settings
        self.client = client
        self.text = text if text is not None else TextPrompts(self.loaded.family)
        # Read and written on the event loop's thread only, so it needs no lock.
        self._memory: LRUCache[Hashable, Embedded] = LRUCache(maxsize=max(1, int(settings.memory_embeddings)))
        self._inflight: dict[Hashable, asyncio.Task[tuple[Embedded, float, float]]] = {}
        self._encode_pool = ThreadPoolExecutor(max(1, int(settings.encoder_workers)),
                                               thread_name_prefix="samadapt-encode")
        self._decode_pool = ThreadPoolExecutor(2, thread_name_prefix="samadapt-decode")

    def close(self) -> None:
        """Stop the worker pools (running work finishes)."""
        self._encode_pool.shutdown(wait=False, cancel_futures=True)
        self._decode_pool.shutdown(wait=False, cancel_futures=True)

    def source(self, name: str) -> Source:
        """The configured source of that name, or a 400 error listing the configured ones."""
        return lookup_source(self.sources, name)

    async def run_in_pool(self, fn: Callable[..., _T], *args: Any) -> _T:
        """Run CPU work (decoding, vectorising, adapters) off the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self._decode_pool, fn, *args)

    # -- embeddings --------------------------------------------------------------------

    async def embedding(self, source: Source, frame: Frame, window: Window, stats: Stats) -> Embedded:
        """The embedding of one window: memory first, then a running computation, then fetch + encode."""
        key = (source.name, frame.zoom, window, self.loaded.model_id)
        found = self._memory.get(key)  # a hit refreshes the entry
        if found is not None:
            return found
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.ensure_future(self._compute(key, source, frame, window))
            self._inflight[key] = task
            task.add_done_callback(functools.partial(self._finished, key))
        emb, fetch_ms, encode_ms = await asyncio.shield(task)
        stats.fetch += fetch_ms
        stats.encode += encode_ms
        stats.computed = True
        return emb

    def _finished(self, key: Hashable, task: asyncio.Task[Any]) -> None:
        self._inflight.pop(key, None)
        if not task.cancelled():
            task.exception()  # retrieved here, so an error nobody waits for is not logged as lost

    async def fetch(self, source: Source, frame: Frame, window: Window) -> np.ndarray:
        """Read a window of imagery, bounded by an overall deadline besides the client's own timeouts."""
        timeout = float(self.settings.fetch_timeout_s)
        try:
            return await asyncio.wait_for(source.read(frame, window, self.client), timeout=2 * timeout + 1)
        except TimeoutError:
            raise FetchError(f"fetching imagery from {source.name!r} took longer than {2 * timeout + 1:g} s") from None

    async def _compute(self, key: Hashable, source: Source, frame: Frame,
                       window: Window) -> tuple[Embedded, float, float]:
        t0 = time.perf_counter()
        pixels = await self.fetch(source, frame, window)
        t1 = time.perf_counter()
        # Sources return (h, w, 3); saying so spares from_array a guess it cannot make for thin windows.
        image = from_array(pixels, valid=self._valid(frame, window), channel_axis="last")
        loop = asyncio.get_running_loop()
        emb = await loop.run_in_executor(self._encode_pool, self.segmenter.embed, image)
        t2 = time.perf_counter()
        emb = self._light(emb)
        self._memory[key] = emb  # evicts the least recently used beyond settings.memory_embeddings
        return emb, (t1 - t0) * 1000, (t2 - t1) * 1000

    @staticmethod
    def _light(emb: Embedded) -> Embedded:
        """The embedding without its pixels, which decoding never reads (a view can be 4096 px a side)."""
        from samadapt.predict.segmenter import Embedded

        h, w = emb.geometry.original_hw
        valid = emb.image.valid
        pixels = np.broadcast_to(np.zeros((1, 1, 3), np.uint8), (h, w, 3))  # no memory behind it
        light = GeoImage(pixels=pixels, valid=np.broadcast_to(True, (h, w)) if valid.all() else valid)
        return Embedded(light, emb.embedding, emb.geometry, emb.from_cache)

    @staticmethod
    def _valid(frame: Frame, window: Window) -> np.ndarray | None:
        """(h, w) bool, False where the window leaves the frame's imagery; None when it is all inside."""
        x0, y0, x1, y1 = window
        b = frame.bounds
        if x0 >= b[0] and y0 >= b[1] and x1 <= b[2] and y1 <= b[3]:
            return None
        valid = np.zeros((y1 - y0, x1 - x0), dtype=bool)
        valid[max(b[1] - y0, 0) : max(b[3] - y0, 0), max(b[0] - x0, 0) : max(b[2] - x0, 0)] = True
        return valid

    # -- decoding ----------------------------------------------------------------------

    def _decode(self, emb: Embedded, window: Window, objects: list[FrameObject],
                frame: Frame) -> tuple[list[tuple[np.ndarray, float]], float]:
        """Masks (in window pixels) and scores of objects decoded together in one window; decode ms."""
        t0 = time.perf_counter()
        prompts = [o.in_window(window) for o in objects]
        # SAM's advice: three candidate masks for a lone point (ambiguous), one otherwise.
        single = [i for i, p in enumerate(prompts) if len(p.points) == 1 and p.box is None]
        chosen = set(single)
        rest = [i for i in range(len(prompts)) if i not in chosen]
        out: list[tuple[np.ndarray, float]] = [(np.zeros(0), 0.0)] * len(prompts)
        for idx, multimask in ((single, True), (rest, False)):
            if idx:
                res = self.segmenter.segment(emb, [prompts[i] for i in idx], multimask=multimask)
                for j, i in enumerate(idx):
                    out[i] = (res.masks[j], float(res.scores[j]))
        return out, (time.perf_counter() - t0) * 1000

    def _decode_and_trace(self, emb: Embedded, window: Window, jobs: list[_Job], frame: Frame,
                          final: bool) -> tuple[list[bool], float, float]:
        """Decode jobs in one window, trace the masks that are final; returns which jobs must move on."""
        masks, decode_ms = self._decode(emb, window, [j.obj for j in jobs], frame)
        t0 = time.perf_counter()
        move: list[bool] = []
        for job, (mask, score) in zip(jobs, masks, strict=False):
            again = (not final and job.kind != "view" and bool(mask.any())
                     and inner_edges_touched(mask, window, frame.bounds))
            if again:
                self._next_window(job, mask)
                again = job.window != window
            if not again:
                job.result = (mask_geometry(mask, window, frame), score)
            move.append(again)
        return move, decode_ms, (time.perf_counter() - t0) * 1000

    def _next_window(self, job: _Job, mask: np.ndarray) -> None:
        """Move a job whose mask was cut by its window: re-centre it, or fall back to the view window."""
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        x0, y0 = job.window[0], job.window[1]
        e = job.obj.extent()
        ext = (min(e[0], x0 + cols[0]), min(e[1], y0 + rows[0]), max(e[2], x0 + cols[-1] + 1),
               max(e[3], y0 + rows[-1] + 1))
        wide = ext[2] - ext[0] >= self.size or ext[3] - ext[1] >= self.size
        if job.kind == "cell" and not wide:
            job.window, job.kind = recentred(ext, self.size), "recentred"
        else:
            job.window, job.kind = job.view, "view"

    async def segment(self, request: SegmentRequest) -> dict[str, Any]:
        """Answer one ``/segment`` request with a GeoJSON FeatureCollection (see the contract)."""
        t_start = time.perf_counter()
        source = self.source(request.source_type)
        frame = source.frame(request.zoom)
        view = view_window(frame, bbox_extent(frame, request.bbox), request.zoom, int(self.settings.max_view_pixels))
        if request.phrases:
            return await self.segment_text(request, source, frame, view, t_start)
        check_prompts(request, int(self.settings.max_prompts))
        objects = build_objects(request, frame, view)
        mode = request.mode or self.settings.embedding_mode
        stats = Stats()
        jobs = []
        for i, obj in enumerate(objects):
            if mode == "view":
                jobs.append(_Job(i, obj, view, "view", view))
                continue
            ext = obj.extent()
            cell = cell_of(ext, self.size)
            if ext[2] - ext[0] > self.size or ext[3] - ext[1] > self.size:
                jobs.append(_Job(i, obj, view, "view", view))
            elif cell is not None:
                jobs.append(_Job(i, obj, cell, "cell", view))
            else:
                jobs.append(_Job(i, obj, recentred(ext, self.size), "recentred", view))
        pending = jobs
        for round_ in range(MAX_ROUNDS):
            by_window: dict[Window, list[_Job]] = {}
            for job in pending:
                by_window.setdefault(job.window, []).append(job)
            embs = await asyncio.gather(*(self.embedding(source, frame, w, stats) for w in by_window))
            moved = []
            for (window, group), emb in zip(by_window.items(), embs, strict=False):
                move, dec, vec = await self.run_in_pool(self._decode_and_trace, emb, window, group, frame,
                                                        round_ == MAX_ROUNDS - 1)
                stats.decode += dec
                stats.vectorise += vec
                moved += [job for job, m in zip(group, move, strict=False) if m]
            if not moved:
                break
            pending = moved
        features = [{"type": "Feature", "geometry": geom, "properties": {"score": round(score, 4), "object": job.index}}
                    for job in jobs for geom, score in [job.result] if geom is not None]
        total = (time.perf_counter() - t_start) * 1000
        return {
            "type": "FeatureCollection", "features": features, "body": frame.body, "crs": frame.crs,
            "source": source.name, "zoom": request.zoom, "mode": mode, "model": self.model_name,
            "trusted": self.loaded.trusted, "cache_hit": not stats.computed, "timings_ms": stats.as_dict(total),
        }

    async def segment_text(self, request: SegmentRequest, source: Source, frame: Frame, view: Window,
                           t_start: float) -> dict[str, Any]:
        """Answer a request of text prompts: every match of its phrases in the view window."""
        if len(request.prompt) > int(self.settings.max_prompts):
            raise InputError(f"too many prompts: {len(request.prompt)}, at most {self.settings.max_prompts} "
                             "per request")
        self.text.check()  # before anything is fetched
        stats = Stats(computed=True)
        t0 = time.perf_counter()
        pixels = await self.fetch(source, frame, view)
        stats.fetch = (time.perf_counter() - t0) * 1000
        # The same image an embedding of the view is made from: nodata outside the frame, channels last.
        image = from_array(pixels, valid=self._valid(frame, view), channel_axis="last")
        loop = asyncio.get_running_loop()
        result, stats.encode = await loop.run_in_executor(self._encode_pool, self.text.search, self.segmenter,
                                                          image, request.phrases)
        t1 = time.perf_counter()
        features = await self.run_in_pool(text_features, result, view, frame)
        stats.vectorise = (time.perf_counter() - t1) * 1000
        total = (time.perf_counter() - t_start) * 1000
        return {
            "type": "FeatureCollection", "features": features, "body": frame.body, "crs": frame.crs,
            "source": source.name, "zoom": request.zoom, "mode": "view", "model": self.model_name,
            "trusted": bool(result.trusted), "detector": self.text.detector_name, "cache_hit": False,
            "timings_ms": stats.as_dict(total),
        }
