"""The batched decoder against its code at an earlier commit, interleaved in one process.

This machine's speed drifts by more than the effect of most single changes between one run and the
next, so comparing two runs of ``benchmarks/decoder.py`` says little. Here both versions decode the
same prompts on the same embedding, alternating round by round, and the medians and minimums are
compared:

    .venv/bin/python benchmarks/decoder_ab.py --against HEAD~1 [--model sam-vit-base] [--runtime bf16]
                                              [--prompts 16] [--rounds 9]

The earlier version is ``src/samadapt/models/accel/`` at ``--against`` (read with ``git show``), loaded
as a package of its own; everything else (prompt encoding, the model) is the current code. Random
weights with the real architecture, as in ``decoder.py``.
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))

from decoder import build, embedding, prompts

from samadapt.imagery.preprocess import Geometry
from samadapt.models.accel import sam_decoder
from samadapt.models.loading import load_model
from samadapt.predict.segmenter import Embedded, Segmenter

ACCEL = "src/samadapt/models/accel"


def earlier_decoder(rev: str, into: Path):
    """``decode_sam`` of ``rev``'s accel package, imported as the package ``accel_at_rev``."""
    root = Path(__file__).resolve().parent.parent
    names = subprocess.run(["git", "ls-tree", "--name-only", f"{rev}:{ACCEL}"], cwd=root, check=True,
                           capture_output=True, text=True).stdout.split()
    package = into / "accel_at_rev"
    package.mkdir()
    for name in names:
        if name.endswith(".py"):
            text = subprocess.run(["git", "show", f"{rev}:{ACCEL}/{name}"], cwd=root, check=True,
                                  capture_output=True, text=True).stdout
            (package / name).write_text(text.replace("samadapt.models.accel.", "accel_at_rev."))
    sys.path.insert(0, str(into))
    return importlib.import_module("accel_at_rev.sam_decoder").decode_sam


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", required=True, help="the commit to compare with, e.g. HEAD~1")
    parser.add_argument("--model", default="sam-vit-base", choices=["sam-vit-base", "sam-hq-vit-base",
                                                                      "sam2.1-hiera-tiny"])
    parser.add_argument("--runtime", default="bf16", choices=["bf16", "fp32"])
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    for name in ("prompts", "rounds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    with tempfile.TemporaryDirectory() as tmp:
        try:
            earlier = earlier_decoder(args.against, Path(tmp))
        except subprocess.CalledProcessError:
            parser.error(f"--against {args.against}: not a commit of this repository with {ACCEL}")
        current = sam_decoder.decode_sam
        loaded = load_model(build(args.model, Path(tmp)), runtime=args.runtime)
        geometry = Geometry(original_hw=(1024, 1024), resized_hw=(1024, 1024))
        embedded = Embedded(image=None, embedding=embedding(loaded), geometry=geometry,  # type: ignore[arg-type]
                            from_cache=True)
        seg = Segmenter(loaded, cache=False)
        batch = prompts(args.prompts, np.random.default_rng(0))
        versions = {args.against: earlier, "working tree": current}
        times: dict[str, list[float]] = {label: [] for label in versions}
        for _ in range(args.rounds):
            for label, decode in versions.items():
                sam_decoder.decode_sam = decode  # what models.sam calls
                seg.decode(embedded, batch)  # warm: caches, allocator
                start = time.perf_counter()
                seg.decode(embedded, batch)
                times[label].append((time.perf_counter() - start) / args.prompts * 1000)
        sam_decoder.decode_sam = current
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.model} {args.runtime}, "
          f"{args.prompts} prompts, {args.rounds} rounds")
    base = statistics.median(times[args.against])
    for label, values in times.items():
        median = statistics.median(values)
        print(f"{label:>14s}  median {median:6.2f}  min {min(values):6.2f} ms/prompt  ratio {median / base:5.2f}")


if __name__ == "__main__":
    main()
