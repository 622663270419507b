"""Bottom layer: which CPU this is, as far as INT8 kernels care (the instruction-set class).

ONNX Runtime's x86 INT8 kernels (MLAS) multiply uint8 activations by int8 weights. With AVX-512 VNNI or
AVX-VNNI (``vpdpbusd``) and AMX the products accumulate in int32 and the result is exact. Without VNNI
(AVX2, AVX-512F/BW alone, SSE4.1) they use ``vpmaddubsw``, which adds pairs of u8 x s8 products into a
*saturating int16*: 255 x 127 x 2 = 64 770 does not fit in 32 767, so a U8S8 model that is exact on a VNNI
CPU can be wrong on an AVX2 CPU (the ONNX Runtime quantization guide's "saturation issue", and the
reason for its ``reduce_range`` option: 7-bit weights keep 255 x 64 x 2 = 32 640 inside int16).
The same file therefore needs its parity checked on the class of CPU that will run it.

The classes (:data:`ISA_CLASSES`):

==================  ===================================================================================
class               meaning
==================  ===================================================================================
``x86-vnni``        x86-64 with AVX-512 VNNI, AVX-VNNI or AMX-INT8: exact U8S8 (Cascade Lake and later
                    Xeons, Ice Lake / Alder Lake and later cores, AMD Zen 4 and later)
``x86-avx2``        x86-64 with AVX2 (or AVX-512 without VNNI: Skylake-SP): U8S8 saturates
``x86-sse``         older x86-64 (SSE4.1 kernels, the same saturation)
``arm64-dotprod``   64-bit Arm with the dot-product extension (``sdot``/``udot``; Cortex-A55/A76 and later,
                    Graviton 2+, Apple M)
``arm64``           64-bit Arm without it
``other``           anything else
==================  ===================================================================================

Features are read with CPUID, through NumPy's own dispatcher (``numpy._core._multiarray_umath
.__cpu_features__``), not from ``/proc/cpuinfo``: under user-mode emulation (``qemu-x86_64 -cpu
Haswell``) ``/proc/cpuinfo`` describes the host, while CPUID (which ONNX Runtime also reads) describes the
emulated CPU. ``/proc/cpuinfo`` only adds the flags NumPy does not report (``avx_vnni``, ``amx_int8``)
when it agrees with CPUID on AVX-512.

Example:
    >>> cpu_isa().isa
    'x86-avx2'
    >>> cpu_isa().flags
    ['avx2', 'fma']
"""

from __future__ import annotations

import functools
import platform
from pathlib import Path

from pydantic import BaseModel, ConfigDict

__all__ = [
    "CpuIsa",
    "cpu_isa",
    "isa_class",
    "native_target",
    "parse_cpuinfo",
    "proc_cpuinfo",
    "ISA_CLASSES",
    "INT8_FLAGS",
]

ISA_CLASSES = ("x86-vnni", "x86-avx2", "x86-sse", "arm64-dotprod", "arm64", "other")
# The flags that decide the class, in the spelling of /proc/cpuinfo (reported with every figure).
INT8_FLAGS = ("sse4_1", "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8", "asimddp")
_NUMPY_NAMES = {
    "SSE41": "sse4_1",
    "AVX2": "avx2",
    "FMA3": "fma",
    "AVX512F": "avx512f",
    "AVX512BW": "avx512bw",
    "AVX512VNNI": "avx512_vnni",
    "ASIMDDP": "asimddp",
}


# The quantization target (edgekd.quantize) each class runs natively: what `cpu-x86` resolves to, and what a bundle
# refused on this CPU is rebuilt for.
_NATIVE_TARGETS = {
    "x86-vnni": "cpu-x86-vnni",
    "x86-avx2": "cpu-x86-avx2",
    "x86-sse": "cpu-x86-avx2",
    "arm64-dotprod": "cpu-arm",
    "arm64": "cpu-arm",
}


def native_target(isa: str) -> str | None:
    """The quantization target a CPU of class ``isa`` runs natively (None: no CPU target fits it)."""
    return _NATIVE_TARGETS.get(isa)


class CpuIsa(BaseModel):
    """The CPU as INT8 kernels see it.

    Attributes:
        arch: ``platform.machine()`` (``x86_64``, ``aarch64``).
        model: the model name (``/proc/cpuinfo``; empty when unknown).
        flags: the :data:`INT8_FLAGS` present, by CPUID.
        isa: the class (:data:`ISA_CLASSES`).
    """

    model_config = ConfigDict(frozen=True)

    arch: str
    model: str = ""
    flags: list[str]
    isa: str

    def describe(self) -> str:
        """``"AMD EPYC (x86-avx2: avx2 fma)"``, for logs and benchmark notes."""
        return f"{self.model or self.arch} ({self.isa}: {' '.join(self.flags) or 'no SIMD flags'})"


def parse_cpuinfo(text: str) -> tuple[str, set[str]]:
    """The model name and the flags of the first processor in a ``/proc/cpuinfo`` text (x86 or Arm spelling)."""
    model, flags = "", set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "hardware", "cpu model") and not model:
            model = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = set(value.split())
    return model, flags


def proc_cpuinfo() -> str:
    """The text of ``/proc/cpuinfo`` ("" where there is none: not Linux)."""
    try:
        return Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return ""


def _cpuid_flags() -> set[str] | None:
    """Flags by CPUID, as NumPy's dispatcher detected them (None: this NumPy does not expose them)."""
    try:
        from numpy._core._multiarray_umath import __cpu_features__ as features
    except ImportError:  # NumPy < 2.0
        try:
            from numpy.core._multiarray_umath import __cpu_features__ as features
        except ImportError:
            return None
    return {flag for name, flag in _NUMPY_NAMES.items() if features.get(name)}


def isa_class(arch: str, flags: set[str] | frozenset[str]) -> str:
    """The class of a CPU with ``flags`` (``/proc/cpuinfo`` spelling) on ``arch``."""
    arch = arch.lower()
    if arch in ("x86_64", "amd64", "x64"):
        if flags & {"avx512_vnni", "avx_vnni", "amx_int8"}:
            return "x86-vnni"
        if "avx2" in flags:
            return "x86-avx2"
        return "x86-sse"
    if arch in ("aarch64", "arm64"):
        return "arm64-dotprod" if "asimddp" in flags else "arm64"
    return "other"


@functools.lru_cache(maxsize=1)
def cpu_isa() -> CpuIsa:
    """This CPU's model, INT8-relevant flags and class (read once per process)."""
    arch = platform.machine()
    model, proc = parse_cpuinfo(proc_cpuinfo())
    cpuid = _cpuid_flags()
    if cpuid is None:
        flags = proc
    else:
        flags = set(cpuid)
        # /proc/cpuinfo adds what NumPy does not report, unless it disagrees with CPUID on AVX-512 (then it
        # describes another CPU than the one executing: an emulator's host).
        if ("avx512f" in proc) == ("avx512f" in cpuid) and ("avx2" in proc) == ("avx2" in cpuid):
            flags |= proc & {"avx_vnni", "amx_int8"}
    flags &= set(INT8_FLAGS)
    ordered = [f for f in INT8_FLAGS if f in flags]
    return CpuIsa(arch=arch, model=model, flags=ordered, isa=isa_class(arch, flags))
