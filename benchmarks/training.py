"""Seconds per epoch of domain-decoder training on cached embeddings vs computing them.

    .venv/bin/python benchmarks/training.py [--images 50] [--epochs 3]

Random weights with the sam-vit-base architecture (timing does not depend on the values).
The baseline, measured in the same run, is the one-off cost of embedding the images; the
ratio shows what the embedding cache saves: without it every epoch would pay that cost again.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=50)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--size", type=int, default=512, help="side of the generated images")
    args = parser.parse_args()
    import os

    from transformers import AutoModel, SamConfig
    from transformers.utils import logging as hf_logging

    from helpers.training import shapes_samples
    from samadapt.methods import build_method
    from samadapt.models.loading import load_model
    from samadapt.predict.cache import EmbeddingCache
    from samadapt.train.loop import TrainConfig, train

    hf_logging.disable_progress_bar()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        os.environ["SAMADAPT_HOME"] = str(root / "home")
        torch.manual_seed(0)
        AutoModel.from_config(SamConfig()).save_pretrained(root / "sam-vit-base")
        base = load_model(root / "sam-vit-base")
        samples = shapes_samples(args.images, size=args.size, seed=0)
        method = build_method("domain-decoder", base)
        method.cache = EmbeddingCache(root / "cache")
        t = time.perf_counter()
        for s in samples:
            method.embedding(s)
        embed_s = time.perf_counter() - t
        t = time.perf_counter()
        result = train(method, samples, [], root / "run", TrainConfig(epochs=args.epochs, batch_size=4),
                       progress=False)
        epoch_s = (time.perf_counter() - t) / args.epochs
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.images} images of {args.size} px")
        print(f"embedding {args.images} images once: {embed_s:8.2f} s ({embed_s / args.images:.2f} s per image)")
        print(f"domain-decoder epoch on cached embeddings: {epoch_s:8.2f} s "
              f"(ratio to embedding once: {epoch_s / embed_s:.3f})")
        print(f"final train loss {result.history[-1]['train_loss']:.4f}")
        _ = np


if __name__ == "__main__":
    main()
