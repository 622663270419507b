"""Peak memory of one benchmark configuration.

Host: on Linux the kernel tracks the peak resident set (``VmHWM`` in ``/proc/self/status``) and lets a
process reset it (writing ``5`` to ``/proc/self/clear_refs``), so the peak covers exactly one
configuration's load + warm-up + timing. Elsewhere RSS is sampled with psutil at the phase boundaries and
the largest sample reported (``rss_peak_is_exact`` is then false).

CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats`` (torch's caching allocator);
ONNX Runtime and TensorRT allocate outside it, so the device-wide change of used memory
(``cudaMemGetInfo``) is recorded as well.

Example:
    >>> probe = MemoryProbe("cpu"); probe.start(); ...; probe.sample(); info = probe.finish()
"""

from __future__ import annotations

from pathlib import Path

from edgekd.bench._schema import MemoryInfo

__all__ = ["MemoryProbe"]

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _rss() -> int:
    import psutil

    return int(psutil.Process().memory_info().rss)


def _reset_hwm() -> bool:
    try:
        _CLEAR_REFS.write_text("5")
        return True
    except OSError:  # not Linux, or a kernel/sandbox that forbids it: fall back to sampling
        return False


def _read_hwm() -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024  # the kernel reports kB
    except (OSError, ValueError, IndexError):
        return None
    return None


class MemoryProbe:
    """Tracks host and CUDA peak memory around one configuration."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.exact = False
        self.before = 0
        self.samples: list[int] = []
        self.cuda_used_before: int | None = None

    def start(self) -> None:
        """Reset the peaks; call before loading the model."""
        self.before = _rss()
        self.samples = [self.before]
        self.exact = _reset_hwm() and _read_hwm() is not None
        if self.device == "cuda":
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            free, total = torch.cuda.mem_get_info()
            self.cuda_used_before = total - free

    def sample(self) -> None:
        """Record the current RSS (used when the kernel peak is not available)."""
        self.samples.append(_rss())

    def finish(self, *, cuda_allocator: bool = True) -> MemoryInfo:
        """The peaks since :meth:`start` (``cuda_allocator``: report torch's allocator peak)."""
        self.sample()
        hwm = _read_hwm() if self.exact else None
        info = MemoryInfo(
            rss_peak_bytes=hwm if hwm is not None else max(self.samples),
            rss_before_bytes=self.before,
            rss_peak_is_exact=hwm is not None,
        )
        if self.device == "cuda":
            import torch

            torch.cuda.synchronize()
            free, total = torch.cuda.mem_get_info()
            info.cuda_used_delta_bytes = (total - free) - (self.cuda_used_before or 0)
            if cuda_allocator:
                info.cuda_peak_allocated_bytes = int(torch.cuda.max_memory_allocated())
        return info
