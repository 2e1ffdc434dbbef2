"""Peak memory of ``samadapt segment`` with many box prompts on a large raster.

    .venv/bin/python benchmarks/segment_memory.py [--size 6000] [--boxes 91] [--decoder box|model]

Generates a --size x --size three-band GeoTIFF (random texture, EPSG:32616), a GeoJSON of
--boxes box prompts in map coordinates and a tiny random SAM model, then runs ``samadapt segment``
writing a label GeoTIFF and a GeoPackage, each run in its own process so its peak RSS (from
``wait4``) is its own. The baseline is the same command with one box, measured in the same run:
the ratio shows how much memory the other objects add (target: close to 1, and under 2 GB for 91
boxes on 36 Mpx; with every mask kept at full size, 91 boxes took 16.8 GB, 20 boxes 4.3 GB).

Masks are what costs memory here, and a random decoder's mask covers most of the raster whatever
the box, unlike a trained SAM's. So by default (--decoder box) the child replaces the mask decoder
with a stand-in whose logits are +10 on the model cells inside each box and -10 elsewhere; the
encoder, the resize to the raster and the writers are the real ones. --decoder model keeps the
tiny model's own decoder (masks of about 80% of the raster each).
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PIXEL_M = 0.5
ORIGIN = (500000.0, 4000000.0)


def _raster(path: Path, size: int) -> None:
    import rasterio
    from rasterio.transform import from_origin

    rng = np.random.default_rng(0)
    with rasterio.open(path, "w", driver="GTiff", width=size, height=size, count=3, dtype="uint8",
                       crs="EPSG:32616", transform=from_origin(*ORIGIN, PIXEL_M, PIXEL_M), tiled=True) as dst:
        for _, win in dst.block_windows(1):
            dst.write(rng.integers(40, 200, (3, win.height, win.width), dtype=np.uint8), window=win)


def _prompts(path: Path, size: int, n: int) -> None:
    """n boxes of 60-400 px a side spread over the raster, as polygons in map coordinates."""
    import geopandas as gpd
    import shapely.geometry

    rng = np.random.default_rng(1)
    geoms = []
    for _ in range(n):
        w, h = rng.integers(60, 400, 2)
        x0, y0 = rng.integers(0, size - 400, 2)
        geoms.append(shapely.geometry.box(ORIGIN[0] + x0 * PIXEL_M, ORIGIN[1] - (y0 + h) * PIXEL_M,
                                          ORIGIN[0] + (x0 + w) * PIXEL_M, ORIGIN[1] - y0 * PIXEL_M))
    gpd.GeoDataFrame(geometry=geoms, crs="EPSG:32616").to_file(path, driver="GeoJSON")


def _box_decoder(loaded, embedding, prompts, *, multimask=True):  # noqa: ANN001, ANN202 - decode()'s signature
    """Logits +10 on the low-resolution cells whose centres lie in each box (model frame), -10 elsewhere."""
    import torch

    side = loaded.preprocessing.size // 4
    centres = (torch.arange(side) + 0.5) * 4
    boxes = torch.as_tensor(prompts.boxes, dtype=torch.float32)
    in_x = (centres[None] >= boxes[:, 0:1]) & (centres[None] <= boxes[:, 2:3])
    in_y = (centres[None] >= boxes[:, 1:2]) & (centres[None] <= boxes[:, 3:4])
    logits = torch.where(in_y[:, :, None] & in_x[:, None, :], 10.0, -10.0)[:, None]
    logits = logits.repeat(1, 3 if multimask else 1, 1, 1)
    return logits, torch.ones(logits.shape[:2])


def child(args: argparse.Namespace) -> None:
    """Run ``samadapt segment`` in this process (with the stand-in decoder unless --decoder model)."""
    if args.decoder == "box":
        import samadapt.predict.segmenter

        samadapt.predict.segmenter.decode = _box_decoder  # type: ignore[assignment]
    from samadapt.cli import main

    sys.argv = ["samadapt", "segment", str(args.raster), "--prompts", str(args.prompts), "--model", str(args.model),
                "-o", str(args.out / "labels.tif"), "-o", str(args.out / "polygons.gpkg"), "--overwrite"]
    main()


def run(root: Path, prompts: Path, decoder: str) -> tuple[float, float]:
    """Peak RSS (MB) and seconds of one ``segment`` run in a process of its own."""
    out = root / f"out_{prompts.stem}"
    out.mkdir(exist_ok=True)
    cmd = [sys.executable, __file__, "--child", "--raster", str(root / "raster.tif"), "--prompts", str(prompts),
           "--model", str(root / "tiny"), "--out", str(out), "--decoder", decoder]
    log = root / f"{prompts.stem}.log"
    t = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        sys.exit(f"segment failed ({proc.returncode}):\n{log.read_text()}")
    return usage.ru_maxrss / 1024, seconds  # ru_maxrss is in KiB on Linux


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=6000, help="raster side in pixels")
    parser.add_argument("--boxes", type=int, default=91)
    parser.add_argument("--decoder", choices=("box", "model"), default="box")
    parser.add_argument("--child", action="store_true")
    for name in ("--raster", "--prompts", "--model", "--out"):
        parser.add_argument(name, type=Path)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    import torch

    from samadapt.models.tiny import save_tiny_model

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t = time.perf_counter()
        _raster(root / "raster.tif", args.size)
        many, one = root / f"boxes{args.boxes}.geojson", root / "boxes1.geojson"
        _prompts(many, args.size, args.boxes)
        _prompts(one, args.size, 1)
        save_tiny_model(root / "tiny", "sam")
        print(f"CPU {_cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}; "
              f"inputs made in {time.perf_counter() - t:.0f} s")
        print(f"raster {args.size} x {args.size} ({args.size**2 / 1e6:.0f} Mpx), tiny random SAM, "
              f"{'stand-in box decoder' if args.decoder == 'box' else 'its own random decoder'}")
        base_mb, base_s = run(root, one, args.decoder)
        many_mb, many_s = run(root, many, args.decoder)
        print(f"{'boxes':>6s} {'peak RSS MB':>12s} {'seconds':>8s}")
        print(f"{1:6d} {base_mb:12.0f} {base_s:8.1f}")
        print(f"{args.boxes:6d} {many_mb:12.0f} {many_s:8.1f}")
        print(f"peak RSS ratio {args.boxes} boxes / 1 box: {many_mb / base_mb:.2f}; "
              f"added per box: {(many_mb - base_mb) / max(args.boxes - 1, 1):.1f} MB")


if __name__ == "__main__":
    main()
