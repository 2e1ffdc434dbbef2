"""Seconds per 1024x1024 image through each encoder runtime, against transformers' plain fp32 call.

Random weights with the real architectures (sam-vit-base, sam2.1-hiera-tiny, edgetam), drawn with a
1/sqrt(fan-in) scale so activations (and the fidelity column) look like a trained model's;
timing does not depend on the values. Every path is timed in the same run as the baseline,
in interleaved rounds (baseline, path A, path B, ... then again), so a busy machine slows
all of them alike; the first round is a warm-up and each figure is the best later round.

    .venv/bin/python benchmarks/encoder.py [--repeats 3] [--models sam-vit-base,sam2.1-hiera-tiny,edgetam]
                                           [--compile] [--onnx] [--paths 'fp32,fused;bf16,fused']

Besides the fixed paths (``--paths``), the ``auto`` runtime (what samadapt picks on this CPU) is
timed too, and its last line per model gives its share of the matmul peak and the CPU class
samadapt detected (AMX, AVX-512 BF16, AVX-512, AVX2; the caps below count).

Columns: seconds per image, ratio to the plain call (higher is faster), achieved GFLOP/s
(FLOPs from torch's FlopCounterMode on the encoder) and its share of this machine's peak
(a 2048^3 matmul of the same precision timed in this run), and the relative error of the
embedding against the plain call. Then batch 2 against batch 1 for the best path, and one
line per model: ``speedup <model> <best ratio>``. ``--compile`` adds torch.compile (its
first call, the compile, is reported apart; several minutes for ViT-B on 2 cores, so it is
off by default), ``--onnx`` adds ONNX Runtime (export once, cached under $SAMADAPT_HOME).
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from samadapt.models.accel.speed import apply_runtime, cpu_info, threads_for
from samadapt.models.loading import load_model

#: transformers' default configs are these architectures; EdgeTAM's is the published one (its
#: RepViT backbone built by samadapt, as transformers' would need timm).
CONFIGS = {"sam-vit-base": "SamConfig", "sam-hq-vit-base": "SamHQConfig", "sam2.1-hiera-tiny": "Sam2Config",
           "edgetam": "EdgeTamConfig"}


def config(name: str):
    import transformers

    if name == "edgetam":
        from samadapt.models.edgetam import published_config

        return published_config()
    return getattr(transformers, CONFIGS[name])()


def from_config(name: str, **kwargs: object) -> torch.nn.Module:
    """A random model of the named architecture."""
    from transformers import AutoModel

    if name == "edgetam":
        from samadapt.models.edgetam import build_edgetam

        return build_edgetam(config(name))
    return AutoModel.from_config(config(name), **kwargs)


def build(name: str, root: Path) -> Path:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    torch.manual_seed(0)
    model = from_config(name).eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(p[0].numel()))
    model.save_pretrained(root / name)
    return root / name


def encoder_flops(name: str) -> int:
    """FLOPs of one 1024 px image through ``get_image_embeddings``, counted on the meta device."""
    with torch.device("meta"):
        model = from_config(name, attn_implementation="eager").eval()
        x = torch.empty(1, 3, 1024, 1024)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.get_image_embeddings(x)
    return counter.get_total_flops()


def matmul_peak(dtype: torch.dtype, n: int = 2048, repeats: int = 5) -> float:
    """GFLOP/s of an n^3 matrix product in ``dtype`` (best of ``repeats``)."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def _timed(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def _main_tensor(out: object) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out.float()
    return _main_tensor(out[-1] if isinstance(out, list) else out[0])  # sam2: last; sam-hq: first


def bench_model(name: str, root: Path, args: argparse.Namespace, peaks: dict[str, float]) -> tuple[float, str]:
    # runtime=None: transformers' own modules and call, untouched by any samadapt runtime
    plain = load_model(build(name, root), runtime=None)
    paths: dict[str, Callable[[torch.Tensor], object]] = {"plain fp32 (baseline)": plain.model.get_image_embeddings}
    precision_of = {"plain fp32 (baseline)": "fp32"}
    for spec in args.paths.split(";"):
        rt = apply_runtime(load_model(root / name, runtime=None), spec)  # each path on its own copy
        paths[rt.tag] = rt
        precision_of[rt.tag] = rt.precision
    auto = apply_runtime(load_model(root / name, runtime=None), "auto")
    auto_key = f"auto = {auto.tag}"
    paths[auto_key], precision_of[auto_key] = auto, auto.precision
    notes = []
    if args.onnx:
        t = time.perf_counter()
        rt = apply_runtime(load_model(root / name, runtime=None), "onnx")
        paths[rt.tag], precision_of[rt.tag] = rt, "fp32"
        notes.append(f"onnx export + session: {time.perf_counter() - t:.1f} s (once; cached)")
    if args.compile:
        rt = apply_runtime(load_model(root / name, runtime=None), "bf16,compile")
        t = time.perf_counter()
        with torch.inference_mode():
            rt(torch.randn(1, 3, 1024, 1024))
        notes.append(f"torch.compile first call: {time.perf_counter() - t:.1f} s")
        paths[rt.tag], precision_of[rt.tag] = rt, "bf16"
    else:
        notes.append("torch.compile skipped (its first call takes minutes on 2 cores; add --compile)")
    x = torch.randn(1, 3, 1024, 1024, generator=torch.Generator().manual_seed(1))
    times: dict[str, list[float]] = {k: [] for k in paths}
    outs: dict[str, torch.Tensor] = {}
    with torch.inference_mode():
        for _ in range(args.repeats + 1):
            for key, fn in paths.items():
                t = time.perf_counter()
                outs[key] = _main_tensor(fn(x))
                times[key].append(time.perf_counter() - t)
    flops = encoder_flops(name)
    best = {k: min(v[1:]) for k, v in times.items()}
    base = best["plain fp32 (baseline)"]
    ref = outs["plain fp32 (baseline)"]
    print(f"\n{name}: {flops / 1e12:.3f} TFLOP per image")
    print(f"{'path':28s} {'s/image':>8s} {'ratio':>6s} {'GFLOP/s':>8s} {'of peak':>8s} {'rel err':>8s}")
    for key, sec in best.items():
        gflops = flops / sec / 1e9
        err = float((outs[key] - ref).norm() / ref.norm())
        share = gflops / peaks[precision_of[key]]
        print(f"{key:28s} {sec:8.2f} {base / sec:6.2f} {gflops:8.0f} {share:8.0%} {err:8.1e}")
    winner = min(best, key=best.get)
    x2 = torch.cat([x, x])
    with torch.inference_mode():
        per_image_2 = min(_timed(lambda: paths[winner](x2)) for _ in range(max(1, args.repeats - 1))) / 2
    print(f"batching ({winner}): batch 1 {best[winner]:.2f} s/image, batch 2 {per_image_2:.2f} s/image")
    for note in notes:
        print(f"note: {note}")
    auto_share = flops / best[auto_key] / 1e9 / peaks[auto.precision]
    line = (f"auto {name} on a {cpu_info().cpu_class} CPU: {auto.tag}, {best[auto_key]:.2f} s/image, "
            f"{auto_share:.0%} of the {auto.precision} matmul peak, {base / best[auto_key]:.1f}x the plain call")
    print(line)
    return base / best[winner], line


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds after the warm-up round")
    parser.add_argument("--models", default="sam-vit-base,sam2.1-hiera-tiny,edgetam")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile (slow first call)")
    parser.add_argument("--onnx", action="store_true", help="also time ONNX Runtime")
    parser.add_argument("--paths", default="fp32,fused;bf16,no-fused;bf16,fused",
                        help="runtimes timed besides the plain call and auto, ';'-separated (e.g. 'fp32,fused' "
                             "alone on a CPU without native bf16, where bf16 is emulated and slow)")
    args = parser.parse_args()
    torch.set_num_threads(threads_for(1))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU {cpu_info().describe()}")
    print("AVX2-only CPUs can be imitated with ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 "
          "MKL_ENABLE_INSTRUCTIONS=AVX2" if cpu_info().cpu_class != "AVX2" else "running capped to AVX2")
    # bf16 without native support is emulated (a 2048^3 product takes minutes): timed only when some path uses it
    bf16_used = cpu_info().native_bf16 or "bf16" in args.paths
    peaks = {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16) if bf16_used else math.nan}
    print(f"matmul peak: fp32 {peaks['fp32']:.0f} GFLOP/s, bf16 {peaks['bf16']:.0f} GFLOP/s")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            results[name] = bench_model(name, Path(tmp), args, peaks)
    print()
    for name, (ratio, line) in results.items():
        print(f"speedup {name} {ratio:.1f}")
        print(line)


if __name__ == "__main__":
    main()
