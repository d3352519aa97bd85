"""Peak memory per phase of a step (rollout, old log-probs, update): host RSS and, on CUDA, allocated memory.

Linux keeps a process's peak RSS (``VmHWM``) and lets the process reset it to the current RSS by writing ``5`` to
``/proc/self/clear_refs``; a phase's peak is ``VmHWM`` read after it, reset before it. Where that is not available
(other systems, restricted /proc) the reported host peak is the process peak so far (``ru_maxrss``), and the metric
says so by its name (``memory/<phase>_rss_gb`` becomes ``memory/<phase>_rss_gb_process``).
"""

from __future__ import annotations

import resource
import sys
from pathlib import Path

import torch

_CLEAR_REFS = Path("/proc/self/clear_refs")
_STATUS = Path("/proc/self/status")


def peak_rss_kb() -> int | None:
    """The process's peak resident set since start or the last :func:`reset_peak_rss` (Linux ``VmHWM``), in KiB."""
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def reset_peak_rss() -> bool:
    """Reset the peak resident set to the current one; False where the system does not allow it."""
    try:
        _CLEAR_REFS.write_text("5")
        return True
    except OSError:
        return False


class PhaseMemory:
    """``start()`` before a phase, ``metrics(name)`` after it: peak host RSS (GB) and peak CUDA memory (GB)."""

    def __init__(self) -> None:
        self._resettable = sys.platform.startswith("linux") and reset_peak_rss() and peak_rss_kb() is not None

    def start(self) -> None:
        if self._resettable:
            reset_peak_rss()
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()

    def metrics(self, phase: str) -> dict[str, float]:
        out: dict[str, float] = {}
        if self._resettable:
            out[f"memory/{phase}_rss_gb"] = (peak_rss_kb() or 0) / 2**20
        else:
            unit = 2**30 if sys.platform == "darwin" else 2**20  # ru_maxrss: bytes on macOS, KiB on Linux
            out[f"memory/{phase}_rss_gb_process"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / unit
        if torch.cuda.is_available():
            out[f"memory/{phase}_cuda_gb"] = torch.cuda.max_memory_allocated() / 2**30
        return out
