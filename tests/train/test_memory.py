"""Per-phase peak memory: a phase's peak sees a large short-lived allocation, the next phase's does not, and the
process's own peak counter (ru_maxrss, what /usr/bin/time and benchmarks read) is never reset.

Run in a fresh interpreter: in a long-lived process (the test session) a freed heap can serve the allocation
without the resident set moving at all."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

PROBE = textwrap.dedent('''
    import resource, time, torch
    from at2po.train.memory import PhaseMemory, rss_bytes
    mem = PhaseMemory(interval_s=0.005)
    mem.start()
    big = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
    time.sleep(0.05)
    base = rss_bytes()
    del big
    time.sleep(0.05)
    first = mem.metrics("a")["memory/a_rss_gb"]
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    mem.start()
    time.sleep(0.05)
    second = mem.metrics("b")["memory/b_rss_gb"]
    mem.close()
    assert first * 2**30 >= base, (first, base)  # the phase saw the allocation
    assert second < first - 0.03, (first, second)  # freed: the next phase's peak does not carry it
    # never reset: still at least the 64 MiB peak (ru_maxrss lags VmHWM by a few pages)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss >= maxrss >= 0.95 * base / 1024
    print("ok")
''')


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="samples /proc/self/statm")
def test_phase_peaks_are_sampled_without_resetting_the_process_peak() -> None:
    proc = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]
