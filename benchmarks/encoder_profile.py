"""Where an encoder's time goes: torch's profiler over one 1024 px image, grouped by kind of work.

    .venv/bin/python benchmarks/encoder_profile.py [--model sam-vit-base] [--runtime bf16,fused] [--rows 25]

Random weights with the real architecture (as ``benchmarks/encoder.py``). After two warm-up
calls, one call is profiled; every operator's own CPU time goes into one group: linear layers,
attention (the kernels and the relative-position terms), norms, elementwise work, layout copies
(copies, casts, ``contiguous``, concatenations), convolutions, other. Printed: ms and share per
group, the whole call's time against the matmul peak of this run (share of peak), and the
operators that took the most time.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).parent))

from encoder import build, encoder_flops, matmul_peak

from samadapt.models.accel.speed import apply_runtime, cpu_info, threads_for
from samadapt.models.loading import load_model

#: Operator-name fragments of each group, tried in this order.
GROUPS = [
    ("linear", ("linear", "addmm", "aten::mm", "matmul", "_linear_pointwise", "mkldnn_linear")),
    ("attention", ("scaled_dot_product", "flash_attention", "attention", "bmm", "softmax", "einsum", "baddbmm")),
    ("norms", ("layer_norm", "native_layer_norm")),
    ("convolution", ("conv", "mkldnn_convolution")),
    ("layout copies", ("copy_", "contiguous", "clone", "cat", "_to_copy", "to", "reshape", "permute", "transpose",
                       "view", "unbind", "select", "slice", "expand", "as_strided", "empty", "repeat", "pad",
                       "constant_pad", "index", "stack", "max_pool")),
    ("elementwise", ("add", "mul", "gelu", "div", "sub", "sigmoid", "fill_", "zero_")),
]


def group_of(name: str) -> str:
    lowered = name.lower()
    for group, fragments in GROUPS:
        if any(f in lowered for f in fragments):
            return group
    return "other"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="sam-vit-base")
    parser.add_argument("--runtime", default="bf16,fused")
    parser.add_argument("--rows", type=int, default=25, help="top operators listed")
    args = parser.parse_args()
    torch.set_num_threads(threads_for(1))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU {cpu_info().describe()}")
    with tempfile.TemporaryDirectory() as tmp:
        rt = apply_runtime(load_model(build(args.model, Path(tmp)), runtime=None), args.runtime)
        x = torch.randn(1, 3, 1024, 1024)
        with torch.inference_mode():
            for _ in range(2):
                rt(x)
            t = time.perf_counter()
            rt(x)
            wall = time.perf_counter() - t
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                rt(x)
    peak = matmul_peak(torch.bfloat16 if rt.precision == "bf16" else torch.float32)
    flops = encoder_flops(args.model)
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total_us = sum(e.self_cpu_time_total for e in events)
    groups: dict[str, float] = defaultdict(float)
    for e in events:
        groups[group_of(e.key)] += e.self_cpu_time_total
    print(f"{args.model} {rt.tag}: {wall:.2f} s per image unprofiled, {flops / wall / 1e9:.0f} GFLOP/s, "
          f"{flops / wall / 1e9 / peak:.0%} of the {rt.precision} matmul peak ({peak:.0f} GFLOP/s)")
    print(f"{'group':16s} {'ms':>8s} {'share':>6s}")
    for name, us in sorted(groups.items(), key=lambda kv: -kv[1]):
        print(f"{name:16s} {us / 1e3:8.0f} {us / total_us:6.0%}")
    print(f"\ntop {args.rows} operators by own time")
    print(f"{'operator':52s} {'calls':>6s} {'ms':>8s} {'group':>14s}")
    for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[: args.rows]:
        print(f"{e.key[:52]:52s} {e.count:6d} {e.self_cpu_time_total / 1e3:8.1f} {group_of(e.key):>14s}")


if __name__ == "__main__":
    main()
