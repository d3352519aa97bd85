"""Console output written to a file or pipe (a log, CI) keeps each step line on one line: rich's console would
otherwise wrap it at 80 columns when stdout is not a terminal."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

from rich.console import Console

from at2po.train.logging import LOG_WIDTH, RunLogger, make_console

METRICS = {
    "rollout/reward_mean": 0.125, "rollout/em": 0.125, "actor/pg_loss": -0.0962, "actor/entropy": 0.043,
    "actor/grad_norm": 0.26, "rollout/generated_tokens": 1234567, "rollout/tool_calls_mean": 1.0,
    "time/step_s": 0.7, "actor/skipped_updates": 2, "rollout/all_equal_reward": 1,
}


def _step_line(log: RunLogger) -> str:
    line = log.summary_line(10000, 10000, METRICS)
    return line + " | " + "padding " * 20  # longer than LOG_WIDTH too


def test_step_line_is_one_line_in_a_file(tmp_path: Path) -> None:
    buf = io.StringIO()
    console = make_console(file=buf)
    assert not console.is_terminal and console.width == LOG_WIDTH
    log = RunLogger(tmp_path, tensorboard=False, console=console)
    log.print(_step_line(log))
    out = buf.getvalue()
    assert out.count("\n") == 1, out
    assert len(out.rstrip("\n")) > LOG_WIDTH
    assert out.startswith("step 10000/10000 | reward +0.125") and "all rewards equal" in out


def test_step_line_is_one_line_with_an_80_column_console(tmp_path: Path) -> None:
    buf = io.StringIO()
    log = RunLogger(tmp_path, tensorboard=False, console=Console(file=buf, width=80))
    log.print(_step_line(log))
    assert buf.getvalue().count("\n") == 1


def test_default_console_piped_to_a_file(tmp_path: Path) -> None:
    """The trainer's own console (``RunLogger`` without one) with stdout redirected to a file."""
    log_file = tmp_path / "train.log"
    code = (
        "from at2po.train.logging import RunLogger\n"
        f"log = RunLogger({str(tmp_path / 'run')!r}, tensorboard=False)\n"
        "log.print('step 1/1 | ' + ' | '.join(f'metric_{i} {i:.3f}' for i in range(20)))\n"
    )
    rich_env = {"COLUMNS", "LINES", "FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "JUPYTER_COLUMNS"}
    env = {k: v for k, v in os.environ.items() if k not in rich_env}
    with log_file.open("w") as f:
        subprocess.run([sys.executable, "-c", code], stdout=f, check=True, env=env, timeout=60)
    lines = log_file.read_text().splitlines()
    assert len(lines) == 1 and lines[0].endswith("metric_19 19.000") and len(lines[0]) > 200
