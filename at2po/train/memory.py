"""Peak memory per phase of a step (rollout, old log-probs, update): host RSS and, on CUDA, allocated memory.

A daemon thread samples the process's resident set (``/proc/self/statm``) and CUDA's allocated bytes every
``interval_s`` (10 ms) and keeps the maximum since the phase started. Sampling leaves the kernel's and CUDA's own
peak counters alone, so whole-run peaks (``ru_maxrss``, ``/usr/bin/time``, ``torch.cuda.max_memory_allocated``)
stay true; a spike shorter than the interval can be missed (activations live for a whole forward/backward, far
longer). Where ``/proc`` is not there (macOS, Windows) the host figure is the process peak so far
(``ru_maxrss``), and its metric name says so (``memory/<phase>_rss_gb_process``).

:func:`reset_peak_rss` / :func:`peak_rss_kb` use Linux's resettable high-water mark (``VmHWM``); writing
``/proc/self/clear_refs`` resets ``ru_maxrss`` too, so only a process that measures one section of itself (a
benchmark child) should use them.
"""

from __future__ import annotations

import os
import resource
import sys
import threading
from pathlib import Path

import torch

_CLEAR_REFS = Path("/proc/self/clear_refs")
_STATUS = Path("/proc/self/status")
_STATM = Path("/proc/self/statm")
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


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
    """Reset the peak resident set to the current one (also resets ``ru_maxrss``); False where not allowed."""
    try:
        _CLEAR_REFS.write_text("5")
        return True
    except OSError:
        return False


def rss_bytes() -> int | None:
    """The current resident set in bytes (Linux), or None."""
    try:
        return int(_STATM.read_text().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return None


class PhaseMemory:
    """``start()`` before a phase, ``metrics(name)`` after it: peak host RSS (GB) and peak CUDA memory (GB) of the
    phase, from a sampling thread; ``close()`` stops the thread."""

    def __init__(self, interval_s: float = 0.01) -> None:
        self._proc = rss_bytes() is not None
        self._cuda = torch.cuda.is_available()
        self._lock = threading.Lock()
        self._rss = self._gpu = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if self._proc or self._cuda:
            self._thread = threading.Thread(target=self._run, args=(interval_s,), name="at2po-memory", daemon=True)
            self._thread.start()

    def _sample(self) -> None:
        rss = (rss_bytes() or 0) if self._proc else 0
        gpu = torch.cuda.memory_allocated() if self._cuda else 0
        with self._lock:
            self._rss, self._gpu = max(self._rss, rss), max(self._gpu, gpu)

    def _run(self, interval_s: float) -> None:
        while not self._stop.wait(interval_s):
            self._sample()

    def start(self) -> None:
        with self._lock:
            self._rss = self._gpu = 0
        self._sample()

    def metrics(self, phase: str) -> dict[str, float]:
        self._sample()
        out: dict[str, float] = {}
        with self._lock:
            rss, gpu = self._rss, self._gpu
        if self._proc:
            out[f"memory/{phase}_rss_gb"] = rss / 2**30
        else:
            unit = 2**30 if sys.platform == "darwin" else 2**20  # ru_maxrss: bytes on macOS, KiB elsewhere
            out[f"memory/{phase}_rss_gb_process"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / unit
        if self._cuda:
            out[f"memory/{phase}_cuda_gb"] = gpu / 2**30
        return out

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1.0)
