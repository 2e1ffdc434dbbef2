"""Latency of the map service: the uncached first /segment request against cached ones, under load.

Starts the app in-process with uvicorn on 127.0.0.1 and a local tile server (generated PNG
tiles), with the sam-vit-base architecture (or ``--model``) and random weights (timing does not depend on the
weights' values; no hub needed). Measures, in one run:

- the first /segment request on a view: tiles fetched, image encoded, prompt decoded;
- p50 / p95 of cached /segment requests (new prompts on the same view: no fetch, no encode)
  with 1 client and with 8 concurrent clients, each as a ratio to the uncached request;
- the number of failed requests under load (must be 0; the script exits 1 otherwise).

Random weights give masks no real model gives: noise over most of the view, tens of
thousands of polygon vertices, so tracing and JSON dominate the cached path. The cached
requests are therefore measured twice: with the model's own masks, and with ``object``
masks, where the decoder still runs in full but its logits are then replaced by a disc of
about 1/8 of the view around the prompt (the size of a field or a crater), so the time is
what a real object costs to trace and send.

    .venv/bin/python benchmarks/service.py            # sam-vit-base, about 1-2 minutes on 2 cores
    .venv/bin/python benchmarks/service.py --model sam-hq-vit-base   # or sam2.1-hiera-tiny
    .venv/bin/python benchmarks/service.py --quick    # tiny model, a few seconds

The view is SamGIS's test request (seed 004): zoom 13, about 1290 x 1100 pixels.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))

from encoder import CONFIGS, config  # noqa: E402 - the architectures the benchmarks build

from samadapt.predict.cache import EmbeddingCache
from samadapt.predict.segmenter import Segmenter
from samadapt.service.app import create_app
from samadapt.service.settings import ServiceSettings

ROOT = Path(__file__).resolve().parents[1]


def _tileserver() -> Any:
    """The local tile server the tests use (tests/helpers/tileserver.py)."""
    import importlib

    sys.path.insert(0, str(ROOT / "tests"))
    return importlib.import_module("helpers.tileserver")

# SamGIS's published test request (seed 004), on our local tiles.
BBOX = {"ne": {"lat": 46.236615111857255, "lng": 9.519996643066408},
        "sw": {"lat": 46.13405108959001, "lng": 9.29821014404297}}
FIRST_POINT = (9.418864745562386, 46.18483299780137)  # lng, lat
ZOOM = 13


def build_model(root: Path, quick: bool, name: str = "sam-vit-base") -> Path:
    """A model folder: the tiny test model, or the architecture ``name`` with random weights."""
    if quick:
        from samadapt.models.tiny import save_tiny_model

        return save_tiny_model(root / "tiny", "sam")
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    torch.manual_seed(0)
    AutoModel.from_config(config(name)).eval().save_pretrained(root / name)
    return root / name


def start_server(app: Any) -> tuple[Any, threading.Thread, str]:
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise SystemExit("the server did not start")
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    return server, thread, f"http://127.0.0.1:{port}"


def body(lng: float, lat: float, mode: str) -> dict[str, Any]:
    return {"bbox": BBOX, "prompt": [{"type": "point", "data": {"lat": lat, "lng": lng}, "label": 1}],
            "zoom": ZOOM, "source_type": "tiles", "mode": mode}


def random_points(n: int, seed: int) -> list[tuple[float, float]]:
    """Points in the middle half of the view, so every one is a new prompt on the same view."""
    rng = np.random.default_rng(seed)
    sw, ne = BBOX["sw"], BBOX["ne"]
    lng = sw["lng"] + (ne["lng"] - sw["lng"]) * rng.uniform(0.25, 0.75, n)
    lat = sw["lat"] + (ne["lat"] - sw["lat"]) * rng.uniform(0.25, 0.75, n)
    return list(zip(lng.tolist(), lat.tolist(), strict=False))


async def client_loop(base: str, points: list[tuple[float, float]], mode: str,
                      latencies: list[float], errors: list[str], cached: list[bool]) -> None:
    async with httpx.AsyncClient(base_url=base, timeout=120) as client:
        for lng, lat in points:
            t = time.perf_counter()
            try:
                r = await client.post("/segment", json=body(lng, lat, mode))
                latencies.append(time.perf_counter() - t)
                if r.status_code != 200:
                    errors.append(f"HTTP {r.status_code}: {r.text[:200]}")
                else:
                    cached.append(r.json()["cache_hit"])
            except httpx.HTTPError as exc:
                errors.append(f"{type(exc).__name__}: {exc}")


def load(base: str, clients: int, per_client: int, mode: str, seed: int) -> tuple[list[float], list[str], list[bool]]:
    latencies: list[float] = []
    errors: list[str] = []
    cached: list[bool] = []

    async def main() -> None:
        await asyncio.gather(*(client_loop(base, random_points(per_client, seed + i), mode, latencies, errors, cached)
                               for i in range(clients)))

    asyncio.run(main())
    return latencies, errors, cached


def object_masks() -> Any:
    """Wrap the decoder so every object's mask is a disc around its first point (see the docstring)."""
    import samadapt.predict.segmenter as segment_module

    real = segment_module.decode

    def decode(loaded: Any, embedding: Any, prompts: Any, *, multimask: bool = True) -> Any:
        logits, scores = real(loaded, embedding, prompts, multimask=multimask)  # the decoder's full cost
        side = logits.shape[-1]
        yy, xx = torch.meshgrid(torch.arange(side) + 0.5, torch.arange(side) + 0.5, indexing="ij")
        centre = torch.as_tensor(prompts.points[:, 0], dtype=torch.float32) / 4  # model px -> low-res px
        d2 = (xx[None] - centre[:, 0, None, None]) ** 2 + (yy[None] - centre[:, 1, None, None]) ** 2
        disc = torch.where(d2 < (side / 8) ** 2, 8.0, -8.0)
        return disc[:, None].expand_as(logits).contiguous(), scores

    segment_module.decode = decode
    return lambda: setattr(segment_module, "decode", real)


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny model instead of --model")
    parser.add_argument("--model", choices=sorted(CONFIGS), default="sam-vit-base", help="architecture to serve")
    parser.add_argument("--requests", type=int, default=40, help="cached requests per load level")
    parser.add_argument("--mode", choices=["view", "grid"], default="view",
                        help="embedding reuse mode (view: one embedding for the view, as SamGIS)")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; mode {args.mode}")
    with tempfile.TemporaryDirectory() as tmp, _tileserver().serve_tiles(lng=FIRST_POINT[0], lat=FIRST_POINT[1],
                                                           radius_deg=0.01) as tiles:
        root = Path(tmp)
        t = time.perf_counter()
        model = build_model(root, args.quick, args.model)
        segmenter = Segmenter(model, cache=EmbeddingCache(root / "cache"))
        segmenter.loaded  # noqa: B018 - load before timing
        print(f"model {model.name} (input {segmenter.loaded.preprocessing.size} px) ready in "
              f"{time.perf_counter() - t:.1f} s")
        settings = ServiceSettings(sources={"tiles": {"type": "xyz", "url": tiles.url_template}},
                                   default_source="tiles", embedding_mode=args.mode)
        server, thread, base = start_server(create_app(settings, segmenter))
        try:
            t = time.perf_counter()
            with httpx.Client(base_url=base, timeout=300) as client:
                first = client.post("/segment", json=body(*FIRST_POINT, args.mode))
            uncached = time.perf_counter() - t
            if first.status_code != 200:
                raise SystemExit(f"the first request failed: {first.status_code} {first.text}")
            timings = first.json()["timings_ms"]
            print(f"uncached first request: {uncached:.3f} s  (server: "
                  + ", ".join(f"{k} {v:.0f} ms" for k, v in timings.items()) + f"); {len(tiles.requests)} tiles")
            rows = []
            all_errors: list[str] = []
            for masks in ("model", "object"):
                restore = object_masks() if masks == "object" else None
                try:
                    for clients in (1, 8):
                        per_client = max(1, args.requests // clients)
                        t = time.perf_counter()
                        lat, errors, cached = load(base, clients, per_client, args.mode, seed=clients * 100)
                        wall = time.perf_counter() - t
                        all_errors += errors
                        rows.append((masks, clients, len(lat), pct(lat, 50), pct(lat, 95), len(lat) / wall,
                                     sum(cached), len(errors)))
                finally:
                    if restore:
                        restore()
        finally:
            server.should_exit = True
            thread.join(30)
    print(f"\n{'masks':>6s} {'clients':>7s} {'requests':>8s} {'p50 ms':>8s} {'p95 ms':>8s} {'p50/uncached':>12s} "
          f"{'p95/uncached':>12s} {'req/s':>7s} {'cache hits':>10s} {'errors':>6s}")
    for masks, clients, n, p50, p95, rate, hits, errs in rows:
        print(f"{masks:>6s} {clients:7d} {n:8d} {p50 * 1000:8.1f} {p95 * 1000:8.1f} {p50 / uncached:12.4f} "
              f"{p95 / uncached:12.4f} {rate:7.1f} {hits:10d} {errs:6d}")
    print(f"\nSamGIS (seed 004) reported 5.42 s uncached and ~0.34 s cached (ratio ~{0.34 / 5.42:.3f}).")
    if all_errors:
        print(f"{len(all_errors)} errors, first: {all_errors[0]}")
        raise SystemExit(1)
    print("errors: 0")


if __name__ == "__main__":
    main()
