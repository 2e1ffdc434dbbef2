"""Seconds per 1024x1024 image through the encoder, against transformers' plain fp32 call.

Random weights with the real architectures (sam-vit-base, sam2.1-hiera-tiny); timing does
not depend on the weights' values. Each row is timed in the same run as its baseline:

    .venv/bin/python benchmarks/encoder.py [--repeats 2] [--models sam-vit-base,sam2.1-hiera-tiny]

Columns: the plain ``model.get_image_embeddings`` call (baseline), samadapt's ``Segmenter.embed``
on a new image (preprocess + encode + cache write), a disk cache hit (new process: nothing in
memory) and a memory cache hit; each with its ratio to the baseline (lower is faster).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from samadapt.cache import EmbeddingCache
from samadapt.models.loading import load_model
from samadapt.segment import Segmenter


def build(name: str, root: Path) -> Path:
    from transformers import AutoModel, Sam2Config, SamConfig

    config = {"sam-vit-base": SamConfig, "sam2.1-hiera-tiny": Sam2Config}[name]()  # defaults = these architectures
    torch.manual_seed(0)
    model = AutoModel.from_config(config).eval()
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    model.save_pretrained(root / name)
    return root / name


def best_of(fn, repeats: int) -> float:  # noqa: ANN001
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--models", default="sam-vit-base,sam2.1-hiera-tiny")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        print(f"{'model':20s} {'plain fp32 s':>12s} {'embed s':>9s} {'ratio':>6s} {'disk hit s':>10s} {'ratio':>7s} "
              f"{'mem hit s':>9s} {'ratio':>8s}")
        for name in args.models.split(","):
            loaded = load_model(build(name, root))
            x = torch.randn(1, 3, 1024, 1024)
            with torch.inference_mode():
                loaded.model.get_image_embeddings(x)  # warm-up
                base = best_of(lambda: loaded.model.get_image_embeddings(x), args.repeats)
            images = [rng.integers(0, 255, (1024, 1024, 3), dtype=np.uint8) for _ in range(args.repeats)]
            seg = Segmenter(loaded, cache=EmbeddingCache(root / "cache"))
            it = iter(images)
            embed = best_of(lambda: seg.embed(next(it)), args.repeats)
            disk_cache = EmbeddingCache(root / "cache", memory_items=0)
            seg_disk = Segmenter(loaded, cache=disk_cache)
            disk = best_of(lambda: seg_disk.embed(images[0]), max(args.repeats, 3))
            mem = best_of(lambda: seg.embed(images[0]), max(args.repeats, 3))
            print(f"{name:20s} {base:12.3f} {embed:9.3f} {embed / base:6.2f} {disk:10.4f} {disk / base:7.4f} "
                  f"{mem:9.4f} {mem / base:8.5f}")


if __name__ == "__main__":
    main()
