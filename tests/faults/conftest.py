"""Fault-injection suite: each test breaks one thing on purpose (a process killed mid-write, a full disk, a dead or
slow retriever, NaN logits or rewards, malformed tool calls, a server under load) and checks what at2po does and
what is lost. The fault table of docs/guide/faults.md is this suite's summary."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.train.conftest import sft_model, small_overrides, tiny_world  # noqa: F401 - fixtures for this package

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server_process(index: Path, port: int) -> subprocess.Popen:
    """``at2po serve-retriever`` as a user starts it, in its own process; returns once it serves."""
    cmd = [sys.executable, "-m", "at2po.cli", "serve-retriever", "--index", str(index), "--port", str(port)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)})
    line = proc.stdout.readline()
    if not line.startswith("serving "):
        proc.kill()
        raise RuntimeError(f"serve-retriever did not start: {line}{proc.stdout.read()}")
    return proc


@pytest.fixture
def server_process():
    """Start/kill ``at2po serve-retriever`` processes; every one left running is killed at the end."""
    procs: list[subprocess.Popen] = []

    def start(index: Path, port: int) -> subprocess.Popen:
        procs.append(start_server_process(index, port))
        return procs[-1]

    yield start
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait(timeout=10)


def wait_for(pred, timeout: float = 60.0, every: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(every)
    return False
