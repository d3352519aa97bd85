"""Per-phase peak memory: a phase's peak sees a large short-lived allocation, the next phase's does not, and the
process's own peak counter (ru_maxrss, what /usr/bin/time and benchmarks read) is never reset."""

from __future__ import annotations

import resource
import sys
import time

import pytest
import torch

from at2po.train.memory import PhaseMemory, rss_bytes


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="samples /proc/self/statm")
def test_phase_peaks_are_sampled_without_resetting_the_process_peak() -> None:
    mem = PhaseMemory(interval_s=0.005)
    try:
        mem.start()
        big = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
        time.sleep(0.05)
        base = rss_bytes()
        del big
        time.sleep(0.05)
        first = mem.metrics("a")["memory/a_rss_gb"]
        maxrss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        mem.start()
        time.sleep(0.05)
        second = mem.metrics("b")["memory/b_rss_gb"]
        assert first * 2**30 >= base  # the phase saw the allocation
        assert second < first - 0.03  # 64 MiB freed: the next phase's peak does not carry it
        assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss >= maxrss_before
    finally:
        mem.close()
