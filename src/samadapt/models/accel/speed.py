"""How the image encoder runs on this machine: precision, fused attention, compilation, threads.

A :class:`RuntimeOptions` says what the user asked for ("auto" by default); :func:`apply_runtime`
resolves it once for a :class:`LoadedModel` and the CPU it runs on, and records the result,
an :class:`EncoderRuntime`, on the model. :func:`samadapt.models.sam.encode` then calls the
encoder through it. The weights of the model are never changed, so training code that shares
the LoadedModel still sees the fp32 model.

What "auto" chooses, and why (timings on a 2-core Xeon with AVX-512 BF16, see
``benchmarks/encoder.py``):

* bf16 autocast when the CPU computes bf16 natively (``avx512_bf16`` or ``amx_bf16``): matrix
  products run at 2-3x the fp32 rate. Autocast measured faster than a bf16 copy of the
  weights (layer norms and the residual stream stay fp32). Tiny test models (input under
  512 px) stay fp32: they are too small to gain and tests compare them to fp32 references.
* fused encoder blocks for every family (see :mod:`samadapt.models.accel.fast_encoder` and
  :mod:`samadapt.models.accel.fast_attention`): pre-packed oneDNN linears, no materialised position
  bias, no needless casts or copies; in fp32 they give the same numbers as transformers.
* no ``torch.compile``: it must compile on the first call of every process (tens of seconds
  on two cores); ask for it with ``compile`` for long runs.

Embeddings computed at another precision are not the fp32 embeddings: the runtime's
:attr:`EncoderRuntime.cache_tag` goes into ``LoadedModel.model_id`` and so into every
embedding-cache key.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal

import torch

from samadapt._home import samadapt_home
from samadapt.errors import InputError
from samadapt.models.accel.cpu import CpuInfo, cpu_info
from samadapt.models.families import image_encoder_call

if TYPE_CHECKING:
    from samadapt.models.loading import LoadedModel

#: The precision an encoder (and, following it, the prompt decoder) runs at.
Precision = Literal["fp32", "bf16"]
Backend = Literal["torch", "onnx"]

#: Smallest model input side for which "auto" picks bf16.
AUTO_BF16_MIN_SIZE = 512

_TOKENS = (
    "auto, fp32, bf16, fused, no-fused, compile, no-compile, torch, onnx, threads=N"
)


@dataclass(frozen=True)
class RuntimeOptions:
    """What the user asks of the encoder runtime; None means "choose for this machine".

    Attributes:
        precision: "fp32", "bf16" (autocast on the CPU, outputs returned as float32) or "auto".
        fused_attention: samadapt's inference forwards of the encoder blocks (the "fused" token).
        compile: wrap the encoder in ``torch.compile`` (first call compiles).
        backend: "torch", or "onnx" for ONNX Runtime with the encoder exported once and cached.
        threads: torch intra-op threads; None leaves torch's count (OMP_NUM_THREADS, else the cores).
    """

    precision: Precision | Literal["auto"] = "auto"
    fused_attention: bool | None = None
    compile: bool = False
    backend: Backend = "torch"
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.precision not in ("auto", "fp32", "bf16"):
            raise InputError(f"precision must be auto, fp32 or bf16, got {self.precision!r}")
        if self.backend not in ("torch", "onnx"):
            raise InputError(f"runtime backend must be torch or onnx, got {self.backend!r}")
        if self.threads is not None and self.threads < 1:
            raise InputError(f"threads must be at least 1, got {self.threads}")

    @classmethod
    def parse(cls, text: str) -> RuntimeOptions:
        """Parse a comma-separated runtime spec such as ``"bf16,fused,threads=2"`` or ``"auto"``.

        Raises:
            InputError: naming the unknown token and the accepted ones.
        """
        opts = cls()
        for raw in text.split(","):
            token = raw.strip().lower().replace("_", "-")
            if token in ("", "auto"):
                continue
            if token in ("fp32", "bf16"):
                opts = replace(opts, precision=token)  # type: ignore[arg-type]
            elif token in ("fused", "sdpa", "no-fused", "no-sdpa"):
                opts = replace(opts, fused_attention=not token.startswith("no-"))
            elif token in ("compile", "no-compile"):
                opts = replace(opts, compile=token == "compile")
            elif token in ("torch", "onnx"):
                opts = replace(opts, backend=token)  # type: ignore[arg-type]
            elif token.startswith("threads="):
                value = token.split("=", 1)[1]
                if not value.isdigit() or int(value) < 1:
                    raise InputError(f"runtime token {raw.strip()!r} needs a positive whole number of threads")
                opts = replace(opts, threads=int(value))
            else:
                raise InputError(f"unknown runtime option {raw.strip()!r}; use a comma-separated list of {_TOKENS}")
        return opts


def threads_for(workers: int = 1) -> int:
    """Torch threads per process when ``workers`` processes share this machine.

    ``OMP_NUM_THREADS``, when set, is taken as the per-process count; otherwise the usable
    physical cores are split evenly (at least one thread each).
    """
    if workers < 1:
        raise InputError(f"workers must be at least 1, got {workers}")
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    return max(1, cpu_info().physical_cores // workers)


@dataclass
class EncoderRuntime:
    """The resolved runtime of one LoadedModel's encoder.

    Attributes:
        precision: "fp32" or "bf16".
        fused_attention: whether the encoder blocks use samadapt's fused forwards.
        compile: whether the encoder call is compiled.
        backend: "torch" or "onnx".
        threads: torch threads set for this process.
        reasons: why each choice was made, for ``samadapt info``.
        options: what was asked, to set the runtime up again in another process.

    A runtime pickles without its compiled or exported callable; ``encode`` sets it up again
    on first use after unpickling (e.g. in a Dask worker).
    """

    precision: Precision
    fused_attention: bool
    compile: bool
    backend: Backend
    threads: int
    reasons: list[str] = field(default_factory=list)
    options: RuntimeOptions = field(default_factory=RuntimeOptions)
    call: Callable[[torch.Tensor], Any] | None = field(default=None, repr=False)

    @property
    def tag(self) -> str:
        """Short name of the runtime, e.g. ``torch-bf16+fused``."""
        parts = [f"{self.backend}-{self.precision}"]
        parts += [name for name, on in (("fused", self.fused_attention), ("compile", self.compile)) if on]
        return "+".join(parts)

    @property
    def cache_tag(self) -> str:
        """"" when embeddings match plain fp32 (relative error under 1e-5), else what differs."""
        return "" if self.precision == "fp32" else self.precision

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "call": None}

    def __call__(self, batch: torch.Tensor) -> Any:
        """Run ``get_image_embeddings`` on a (B, 3, S, S) float32 batch through this runtime."""
        if self.call is None:
            raise RuntimeError("an EncoderRuntime runs only once apply_runtime has set it up")
        if self.precision == "bf16" and self.backend == "torch":
            with torch.autocast(batch.device.type, dtype=torch.bfloat16):
                return self.call(batch)
        return self.call(batch)


#: Families whose encoder the ONNX export (samadapt.models.accel.onnx_encoder) takes.
ONNX_FAMILIES = ("sam", "sam-hq", "sam2")


def resolve(options: RuntimeOptions, family: str, size: int, device: torch.device | str = "cpu",
            cpu: CpuInfo | None = None) -> EncoderRuntime:
    """Decide every "auto" choice for a model on this machine, with the reasons; no side effects.

    Args:
        options: what was asked.
        family: the model family, "sam", "sam2", "sam-hq" or "edgetam".
        size: the model input side in pixels (1024 for public checkpoints).
        device: where the model runs.
        cpu: the CPU to decide for (default: this one).
    """
    cpu = cpu or cpu_info()
    reasons: list[str] = []
    device = torch.device(device)
    on_cpu = device.type == "cpu"
    precision = options.precision
    if precision == "auto":
        if not on_cpu:
            precision, why = "fp32", f"fp32: the model is on {device}, not the CPU"
        elif not cpu.native_bf16:
            precision, why = "fp32", (f"fp32: {cpu.cpu_class} CPU without native bf16 (avx512_bf16 / amx_bf16), "
                                      "where bf16 is emulated and slower")
        elif family == "edgetam":  # benchmarks/encoder.py: bf16 1.4-1.8x faster, relative error 2.5e-2
            precision, why = "fp32", ("fp32: EdgeTAM's convolutional encoder drifts further from fp32 in bf16 "
                                      "than the ViTs do; ask for bf16 to trade that for speed")
        elif size < AUTO_BF16_MIN_SIZE:
            precision, why = "fp32", f"fp32: input {size} px is too small for bf16 to pay"
        else:
            precision, why = "bf16", "bf16: the CPU has native bf16 matrix units"
        reasons.append(why)
    elif precision == "bf16" and on_cpu and not cpu.native_bf16:
        reasons.append("bf16 as asked, though this CPU emulates bf16 (slower than fp32)")
    fused = options.backend == "torch" and options.fused_attention is not False
    if fused and family == "edgetam":
        fused = False
        reasons.append("no fused encoder blocks: EdgeTAM's RepViT encoder has no attention to fuse")
    if fused and family == "sam3":
        fused = False
        reasons.append("no fused encoder blocks: they are written for SAM's and SAM 2's blocks; SAM 3's ViT "
                       "(rotary attention) runs transformers' own")
    if options.backend == "onnx" and family not in ONNX_FAMILIES:
        raise InputError(f"--runtime onnx exports SAM, SAM-HQ and SAM 2 encoders; for {family} use the torch "
                         "runtime (drop onnx)")
    if fused and options.fused_attention is None:
        reasons.append("fused encoder blocks: pre-packed linear layers, no materialised position bias, "
                       "no needless casts (same numbers in fp32)")
    if fused and family in ("sam", "sam-hq") and precision == "bf16":
        reasons.append("global attention layers: flash attention with the position terms folded in (AMX)"
                       if cpu.amx else "global attention layers: scores by image rows with oneDNN bf16 matrix "
                       "products (no AMX: faster than flash attention here)")
    if options.backend == "onnx" and precision == "bf16":
        reasons.append("onnx runs fp32: ONNX Runtime's CPU kernels have no fast bf16 path")
        precision = "fp32"
    threads = options.threads or torch.get_num_threads()
    return EncoderRuntime(precision=precision, fused_attention=fused, compile=options.compile,
                          backend=options.backend, threads=threads, reasons=reasons, options=options)


def apply_runtime(loaded: LoadedModel, options: RuntimeOptions | str | None = None) -> EncoderRuntime:
    """Resolve ``options`` for ``loaded`` and make :func:`encode` use it; returns the runtime.

    Sets torch's thread count for the process when ``options`` names one (torch's own default
    is already the physical cores, or OMP_NUM_THREADS). Applying again replaces the previous runtime.

    Raises:
        InputError: a bad option, or onnx for a model the exporter cannot take.
    """
    if options is None:
        options = RuntimeOptions()
    elif isinstance(options, str):
        options = RuntimeOptions.parse(options)
    rt = resolve(options, loaded.family, loaded.preprocessing.size, loaded.device)
    if options.threads is not None and torch.get_num_threads() != rt.threads:
        torch.set_num_threads(rt.threads)  # only when asked: a library must not undo the caller's setting
    model = loaded.model
    if rt.fused_attention:
        from samadapt.models.accel.fast_attention import install_fused_attention
        from samadapt.models.accel.fast_encoder import install_fast_encoder

        install_fused_attention(model)
        install_fast_encoder(model)
    call = image_encoder_call(model)
    if rt.backend == "onnx":
        from samadapt.models.accel.onnx_encoder import onnx_encoder_call

        call = onnx_encoder_call(loaded, rt.threads)
    elif rt.compile:
        # Inductor's compiled kernels are cached across processes; keep them with samadapt's files.
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(samadapt_home() / "compile"))
        call = torch.compile(call, dynamic=False)
    rt.call = call
    loaded.runtime = rt
    return rt

