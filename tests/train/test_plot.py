"""``at2po plot`` draws learning curves of several runs to a PNG."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from at2po.cli import app
from at2po.train.logging import RunLogger, read_metrics


def _fake_run(path: Path, slope: float) -> Path:
    # Written through the real logger, as the trainer writes them.
    log = RunLogger(path, tensorboard=False)
    for step in range(1, 6):
        log.log(step, {"rollout/reward_mean": slope * step, "rollout/em": 0.1 * step, "actor/entropy": 1.0 / step,
                       "rollout/generated_tokens": 100.0 * step, "actor/grad_norm": float("nan")})
    log.close()
    return path


def test_plot_command_writes_png(tmp_path: Path) -> None:
    a, b = _fake_run(tmp_path / "at2po", 0.2), _fake_run(tmp_path / "grpo", 0.1)
    assert read_metrics(a)[0]["actor/grad_norm"] is None  # NaN is stored as null, never as invalid JSON
    out = tmp_path / "curves.png"
    res = CliRunner().invoke(app, ["plot", str(a), str(b), "--out", str(out), "--x", "tokens"])
    assert res.exit_code == 0, res.output
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_plot_errors(tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["plot", str(tmp_path / "nope")])
    assert res.exit_code == 2 and "no metrics.jsonl" in res.output
    run = _fake_run(tmp_path / "r", 0.1)
    res = CliRunner().invoke(app, ["plot", str(run), "--metric", "no/such", "--out", str(tmp_path / "x.png")])
    assert res.exit_code == 2 and "none of the metrics" in res.output


def test_resume_truncates_log_after_checkpoint(tmp_path: Path) -> None:
    _fake_run(tmp_path / "r", 0.1)
    RunLogger(tmp_path / "r", tensorboard=False, resume_step=3).close()
    assert [r["step"] for r in read_metrics(tmp_path / "r")] == [1, 2, 3]
    assert json.loads((tmp_path / "r" / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 3
