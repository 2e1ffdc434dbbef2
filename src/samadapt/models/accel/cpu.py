"""What the CPU can do for the encoder runtime: torch's dispatch level, its flags, the caps a user set, its cores.

Kept apart from :mod:`samadapt.models.accel.speed` (which chooses the runtime) so that the
encoder's kernels can ask about the CPU without importing the runtime choice.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

#: oneDNN ISA caps (ONEDNN_MAX_CPU_ISA) under which bf16 dot products still run in hardware, and AMX too.
_BF16_ISAS = frozenset({"AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX10_1_512", "AVX512_CORE_AMX", "AVX10_1_512_AMX",
                        "AVX512_CORE_AMX_FP16", "AVX10_1_512_AMX_FP16", "AVX10_2_512", "AVX10_2_512_AMX_2", "ALL"})
_AMX_ISAS = frozenset({"AVX512_CORE_AMX", "AVX10_1_512_AMX", "AVX512_CORE_AMX_FP16", "AVX10_1_512_AMX_FP16",
                       "AVX10_2_512_AMX_2", "ALL"})


@dataclass(frozen=True)
class CpuInfo:
    """What the encoder runtime needs to know about the CPU.

    Attributes:
        capability: torch's dispatch level, e.g. "AVX512" or "AVX2" (``ATEN_CPU_CAPABILITY`` lowers it).
        flags: the CPU flags of ``/proc/cpuinfo`` (empty where unavailable).
        physical_cores: cores this process may use, hyper-threads not counted.
        onednn_isa: ``ONEDNN_MAX_CPU_ISA`` (upper case) when set: oneDNN, which runs the bf16
            matrix products, uses no instructions above it.
    """

    capability: str
    flags: frozenset[str]
    physical_cores: int
    onednn_isa: str = ""

    def _isa_allows(self, isas: frozenset[str]) -> bool:
        return not self.onednn_isa or self.onednn_isa in isas

    @property
    def amx(self) -> bool:
        """True when bf16 matrix products can use AMX tiles (the CPU has them and no cap forbids them)."""
        return "amx_bf16" in self.flags and self.capability.startswith("AVX512") and self._isa_allows(_AMX_ISAS)

    @property
    def native_bf16(self) -> bool:
        """True when matrix products in bf16 run in hardware (AVX-512 BF16 or AMX), and neither torch's
        dispatch level nor a oneDNN cap holds the CPU below that."""
        return (bool(self.flags & {"avx512_bf16", "amx_bf16"}) and self.capability.startswith("AVX512")
                and self._isa_allows(_BF16_ISAS))

    @property
    def cpu_class(self) -> str:
        """The class the speed figures are reported by: AMX, AVX-512 BF16, AVX-512, AVX2 or torch's level."""
        if self.amx:
            return "AMX"
        if self.native_bf16:
            return "AVX-512 BF16"
        if self.capability.startswith("AVX512") and not (self.onednn_isa and self.onednn_isa.startswith("AVX2")):
            return "AVX-512"
        if self.capability.startswith("AVX") or self.onednn_isa.startswith("AVX2"):
            return "AVX2"
        return self.capability or "unknown"

    def describe(self) -> str:
        """One line for ``samadapt info``."""
        extras = [f for f in ("avx512_bf16", "amx_bf16", "avx512_vnni", "avx_vnni") if f in self.flags]
        capped = f", oneDNN capped at {self.onednn_isa}" if self.onednn_isa else ""
        return (f"{self.cpu_class} class: {self.capability}" + (f" ({', '.join(extras)})" if extras else "")
                + f"{capped}, {self.physical_cores} cores")


def _physical_cores(cpuinfo: str) -> int:
    pairs, phys, core = set(), None, None
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "physical id":
            phys = value.strip()
        elif key == "core id":
            core = value.strip()
        elif not line.strip():
            if phys is not None and core is not None:
                pairs.add((phys, core))
            phys = core = None
    if phys is not None and core is not None:
        pairs.add((phys, core))
    logical = os.cpu_count() or 1
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = logical
    cores = len(pairs) if pairs else logical
    if usable < logical:  # a container or taskset limits the CPUs; hyper-threads assumed spread evenly
        cores = max(1, usable * cores // logical)
    return max(1, min(usable, cores))


@lru_cache(maxsize=1)
def cpu_info() -> CpuInfo:
    """The CPU's capability, flags and usable physical cores (read once per process)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    flags: frozenset[str] = frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = frozenset(line.partition(":")[2].split())
            break
    isa = (os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or "").strip().upper()
    return CpuInfo(torch.backends.cpu.get_cpu_capability(), flags, _physical_cores(text), isa)




#: glibc's ``mallopt`` parameters (malloc.h) and the values :func:`keep_freed_memory` sets.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
#: Blocks below this come from the heap and are reused; glibc's default starts at 128 KB (and rises to at
#: most 32 MB as blocks are freed, a rise that setting any parameter turns off).
MMAP_THRESHOLD = 32 * 2**20
#: Free memory a heap keeps at its top instead of giving it back to the system.
TRIM_THRESHOLD = 256 * 2**20

@lru_cache(maxsize=1)
def keep_freed_memory() -> bool:
    """Have glibc keep freed memory for reuse instead of returning it to the system at once (process-wide,
    once; Linux with glibc only). Returns whether it is in effect.

    The batched decoder allocates and frees blocks of a few MB per prompt, and sets this on its first call. glibc
    gives the memory of a thread's heap back as soon as its free top passes the trim threshold, and maps blocks
    above its mmap threshold anew each time, so every block was new memory again: on 2 cores (AMD EPYC Zen 4) about
    14,000 page faults per 16 prompts, the LayerNorm of a prompt's image tokens at 1.4 ms instead of 0.6. Blocks up
    to :data:`MMAP_THRESHOLD` now come from the heaps and up to :data:`TRIM_THRESHOLD` of free memory stays with
    them: the process keeps its peak use of such blocks (a few hundred MB for the decoder) rather than returning it.
    ``SAMADAPT_KEEP_FREED_MEMORY=0`` leaves glibc's defaults.
    """
    applied = False
    if os.environ.get("SAMADAPT_KEEP_FREED_MEMORY", "1").strip() != "0":
        import ctypes
        import platform

        if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
            try:
                libc = ctypes.CDLL("libc.so.6")
                applied = bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
                    libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
            except (OSError, AttributeError):
                applied = False
    return applied
