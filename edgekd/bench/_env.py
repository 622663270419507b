"""The environment recorded with every benchmark: a latency means nothing without the machine it ran on.

Captured: CPU model and the instruction-set flags that change inference speed (AVX2, AVX-512, AVX-512 VNNI
for INT8 dot products, AMX tiles for BF16/INT8 matrix units), physical/logical cores and the threads used,
GPUs with driver and CUDA versions, library versions and ONNX Runtime providers, the git revision of the
working directory, and a UTC timestamp. Every probe tolerates its tool being absent.

Example:
    >>> env = capture_environment(threads=4)
    >>> env.cpu.model, env.cpu.flags["avx512_vnni"], env.versions["onnxruntime"]
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import platform
import shutil
import socket
import subprocess

from edgekd._cpu import cpu_isa, isa_class, parse_cpuinfo, proc_cpuinfo
from edgekd.bench._artifacts import cwd_git_revision
from edgekd.bench._schema import CpuInfo, Environment, GpuInfo
from edgekd.modeldir import package_versions

__all__ = ["capture_environment", "cpu_info", "gpu_info", "CPU_FLAGS"]

CPU_FLAGS = (
    "avx2",
    "fma",
    "avx512f",
    "avx512_vnni",
    "avx512_bf16",
    "avx_vnni",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
    "asimd",
    "sve",
)


def cpu_info(threads: int | None = None, cpuinfo: str | None = None) -> CpuInfo:
    """CPU model, flags of interest, core counts and the threads a benchmark used.

    Args:
        threads: threads used by the runners (recorded as is).
        cpuinfo: text of ``/proc/cpuinfo`` (default: read it; tests pass a fixed text).
    """
    import psutil

    model, flags = parse_cpuinfo(proc_cpuinfo() if cpuinfo is None else cpuinfo)
    return CpuInfo(
        model=model or platform.processor() or platform.machine(),
        flags={f: f in flags for f in CPU_FLAGS},
        # CPUID's class for this CPU (an emulator's /proc/cpuinfo describes its host); from the text when given
        isa=cpu_isa().isa if cpuinfo is None else isa_class(platform.machine(), flags),
        physical_cores=psutil.cpu_count(logical=False),
        logical_cores=psutil.cpu_count(logical=True),
        threads_used=threads,
    )


def _nvidia_driver() -> str | None:
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    lines = out.stdout.strip().splitlines()
    return lines[0].strip() if out.returncode == 0 and lines else None


def gpu_info() -> list[GpuInfo]:
    """Visible CUDA GPUs (via torch), or an empty list."""
    try:
        import torch
    except ImportError:
        return []
    if torch.version.cuda is None or not torch.cuda.is_available():
        return []
    driver = _nvidia_driver()
    out = []
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        out.append(
            GpuInfo(
                name=props.name,
                driver=driver,
                cuda=torch.version.cuda,
                capability=f"{props.major}.{props.minor}",
                memory_bytes=int(props.total_memory),
            )
        )
    return out


def _versions() -> tuple[dict[str, str], list[str]]:

    versions = package_versions()
    for pkg in ("onnxruntime-gpu", "tensorrt", "psutil"):
        try:
            versions[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            continue
    try:
        import torch

        versions["torch_cuda"] = str(torch.version.cuda)
        if torch.version.cuda and torch.backends.cudnn.is_available():
            versions["cudnn"] = str(torch.backends.cudnn.version())
    except ImportError:
        pass
    try:
        import onnxruntime

        providers = list(onnxruntime.get_available_providers())
    except ImportError:
        providers = []
    return versions, providers


def capture_environment(*, threads: int | None = None, include_hostname: bool = True) -> Environment:
    """Describe this machine and its software for a benchmark record.

    Args:
        threads: CPU threads the runners use.
        include_hostname: record the host name (leave it out for reports shared outside).
    """
    versions, providers = _versions()
    return Environment(
        timestamp=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        hostname=socket.gethostname() if include_hostname else None,
        platform=platform.platform(),
        python=platform.python_version(),
        cpu=cpu_info(threads),
        gpus=gpu_info(),
        versions=versions,
        ort_providers=providers,
        git_revision=cwd_git_revision(),
    )
