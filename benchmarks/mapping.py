"""Peak memory and time per tile of mapping square rasters, Dask throughput, and real-size throughput.

    .venv/bin/python benchmarks/mapping.py [--sizes 2048,8192,16384] [--workers 1,2] [--batches 4]
    .venv/bin/python benchmarks/mapping.py --throughput 8192     # sam-vit-base architecture, random weights

``--throughput SIZE`` maps a SIZE x SIZE raster with a domain-decoder adapter on the sam-vit-base
architecture (random weights, 1024 px tiles, the encoder runtime ``auto`` picks), and prints tiles
per second and seconds per megapixel next to the time the encoder and the adapter's head took
for those same tiles (measured inside the run), so the overhead of reading, blending and writing
the class raster is the rest: target at most 10 % of the total. Polygons are not written: the
random head's class map is speckle, and polygonising it would time nothing a real map has.

Each size runs in its own process (so its peak RSS is its own) with the tiny random
domain-decoder model (tile 256). Printed as ratios to the smallest raster, measured in the
same run: memory ratio (target about 1.0: memory must not grow with the raster) and time
per tile ratio (about 1.0), and where the time per tile goes (read, predict, accumulate into
the scratch file, flush it, write the outputs). Then tiles per second with a batch of tiles
per model pass, and with 1 and 2 Dask workers, on the smallest size, as ratios to the
in-process run.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _raster(path: Path, size: int) -> None:
    import rasterio
    from rasterio.transform import from_origin

    with rasterio.open(path, "w", driver="GTiff", width=size, height=size, count=3, dtype="uint8",
                       crs="EPSG:32616", transform=from_origin(500000, 4000000, 0.5, 0.5), tiled=True,
                       compress="deflate") as dst:
        rng = np.random.default_rng(0)
        for _, win in dst.block_windows(1):
            dst.write(rng.integers(0, 255, (3, win.height, win.width), dtype=np.uint8), window=win)


def _setup(root: Path) -> Path:
    from samadapt.methods import build_method
    from samadapt.models.loading import load_model
    from samadapt.models.tiny import save_tiny_model
    from samadapt.train.adapter import save_adapter

    model = save_tiny_model(root / "tiny", "sam", overwrite=True)
    return save_adapter(build_method("domain-decoder", load_model(model), width=16), root / "adapter", overwrite=True)


#: Mapping phases: the functions (module file, name) whose cumulative time the profile of a run reports.
PHASES = {"read": ("imagery/windows.py", "read_tile"), "predict": ("mapping/tiled.py", "_predict_samples"),
          "accumulate": ("mapping/runner.py", "at"), "scratch flush": ("mapping/runner.py", "release"),
          "outputs": ("mapping/runner.py", "write_class_rasters")}


def child(size: int, root: Path, scheduler: str, batch_size: int = 1) -> None:
    import cProfile
    import pstats

    from samadapt.mapping.tiled import MapOptions, dask_client, predict_raster
    from samadapt.train.adapter import load_adapter

    raster = root / f"r{size}.tif"
    if not raster.exists():
        _raster(raster, size)
    adapter = load_adapter(root / "adapter")
    adapter.predict(np.zeros((64, 64, 3), np.uint8))  # warm-up: lazy initialisation is not a per-tile cost
    client = dask_client(scheduler)
    profile = cProfile.Profile()
    t = time.perf_counter()
    profile.enable()
    result = predict_raster(adapter, raster, root / f"out_{size}_{scheduler.replace(':', '')}",
                            MapOptions(polygons=None, overwrite=True, batch_size=batch_size), client=client)
    profile.disable()
    seconds = time.perf_counter() - t
    if client is not None:
        client.close()
    stats = pstats.Stats(profile).stats  # type: ignore[attr-defined]
    phases = {name: sum(v[3] for k, v in stats.items() if k[2] == fn and k[0].endswith(module))
              for name, (module, fn) in PHASES.items()}
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"size": size, "tiles": result.tiles, "seconds": seconds, "peak_mb": peak_mb, "phases": phases}))


def throughput_child(size: int, root: Path) -> None:
    """One mapping run with the ViT-B adapter; prints JSON: tiles, seconds, and the encoder's and model's seconds."""
    import cProfile
    import pstats

    import torch

    from samadapt.mapping.tiled import MapOptions, predict_raster
    from samadapt.models.accel.speed import cpu_info
    from samadapt.train.adapter import load_adapter

    raster = root / f"r{size}.tif"
    if not raster.exists():
        _raster(raster, size)
    adapter = load_adapter(root / "vitb-adapter")
    adapter.predict(np.zeros((1024, 1024, 3), np.uint8))  # warm-up: packed weights, buffers
    profile = cProfile.Profile()
    t = time.perf_counter()
    profile.enable()
    # no polygons: a random head's map is speckle, whose millions of polygons would measure nothing real
    result = predict_raster(adapter, raster, root / f"vitb_out_{size}", MapOptions(polygons=None, overwrite=True))
    profile.disable()
    seconds = time.perf_counter() - t
    stats = pstats.Stats(profile).stats  # type: ignore[attr-defined]

    def cumulative(module: str, fn: str) -> float:
        return sum(v[3] for k, v in stats.items() if k[2] == fn and k[0].endswith(module))

    print(json.dumps({"size": size, "tiles": result.tiles, "seconds": seconds,
                      "encoder": cumulative("models/sam.py", "encode"),
                      "model": cumulative("mapping/tiled.py", "_predict_samples"),
                      "runtime": getattr(adapter.method.base.runtime, "tag", "?"), "cpu": cpu_info().describe(),
                      "threads": torch.get_num_threads()}))


def throughput(size: int) -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    from encoder import build

    from samadapt.methods import build_method
    from samadapt.models.loading import load_model
    from samadapt.train.adapter import save_adapter

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        base = build("sam-vit-base", root)
        save_adapter(build_method("domain-decoder", load_model(base)), root / "vitb-adapter", overwrite=True)
        out = subprocess.run([sys.executable, __file__, "--throughput-child", str(size), "--root", str(root)],
                             capture_output=True, text=True, check=True)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    mpix = size * size / 1e6
    overhead = r["seconds"] - r["model"]
    print(f"CPU {r['cpu']}, {r['threads']} threads, encoder runtime {r['runtime']}")
    print(f"{size}x{size} raster, {r['tiles']} tiles of 1024 px: {r['seconds']:.1f} s, "
          f"{r['tiles'] / r['seconds']:.3f} tiles/s, {r['seconds'] / mpix:.2f} s per megapixel")
    print(f"encoder alone on those tiles: {r['encoder']:.1f} s ({r['encoder'] / r['tiles']:.2f} s/tile); "
          f"encoder + adapter head: {r['model']:.1f} s")
    print(f"overhead (read, blend, write the class raster): {overhead:.1f} s = "
          f"{overhead / r['seconds']:.1%} of the total (target <= 10%)")


def run(size: int, root: Path, scheduler: str = "local", batch_size: int = 1) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", str(size), "--root", str(root), "--scheduler", scheduler,
                          "--batch-size", str(batch_size)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="2048,8192,16384")
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--child", type=int)
    parser.add_argument("--root", type=Path)
    parser.add_argument("--scheduler", default="local")
    parser.add_argument("--batch-size", type=int, default=1, help="tiles per model pass (child runs)")
    parser.add_argument("--batches", default="4", help="batch sizes compared with 1 on the smallest raster")
    parser.add_argument("--throughput", type=int, help="map a SIZE^2 raster with a sam-vit-base adapter instead")
    parser.add_argument("--throughput-child", type=int)
    args = parser.parse_args()
    if args.throughput_child:
        throughput_child(args.throughput_child, args.root)
        return
    if args.throughput:
        throughput(args.throughput)
        return
    if args.child:
        child(args.child, args.root, args.scheduler, args.batch_size)
        return
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        _setup(root)
        sizes = [int(s) for s in args.sizes.split(",")]
        rows = [run(s, root) for s in sizes]
        base = rows[0]
        print(f"{'size':>6s} {'tiles':>6s} {'seconds':>8s} {'peak MB':>8s} {'memory ratio':>12s} "
              f"{'time/tile ratio':>15s}")
        for r in rows:
            print(f"{r['size']:6d} {r['tiles']:6d} {r['seconds']:8.1f} {r['peak_mb']:8.0f} "
                  f"{r['peak_mb'] / base['peak_mb']:12.2f} "
                  f"{(r['seconds'] / r['tiles']) / (base['seconds'] / base['tiles']):15.2f}")
        print("ms per tile by phase (cumulative profile; phases overlap: predict includes the encoder)")
        print(f"{'size':>6s} " + " ".join(f"{p:>13s}" for p in PHASES))
        for r in rows:
            print(f"{r['size']:6d} " + " ".join(f"{1000 * r['phases'][p] / r['tiles']:13.2f}" for p in PHASES))
        local_tps = base["tiles"] / base["seconds"]
        for b in [int(x) for x in args.batches.split(",") if x]:
            r = run(sizes[0], root, batch_size=b)
            tps = r["tiles"] / r["seconds"]
            print(f"batch {b} tiles per model pass: {tps:.1f} tiles/s (ratio to batch 1 {tps / local_tps:.2f})")
        for n in [int(w) for w in args.workers.split(",") if w]:
            r = run(sizes[0], root, f"processes:{n}")
            tps = r["tiles"] / r["seconds"]
            print(f"dask {n} worker(s): {tps:.1f} tiles/s (ratio to in-process {tps / local_tps:.2f})")


if __name__ == "__main__":
    main()
