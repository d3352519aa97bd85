"""Retriever faults: the server killed (kill -9) and restarted, a slow server, a dead server at start-up, and the
training loop through an outage — every failed call counted, none unseen, the batch never stalled."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer

from at2po.agent.env import ParsedTurn, TurnKind
from at2po.agent.retrievers import Retriever, load_retriever
from at2po.agent.retrievers.server import RetrievalServer
from at2po.agent.search_env import EnvConfig, SearchEnv
from at2po.config import load_config
from at2po.rollout.tool_stats import ToolEvent, tool_metrics
from at2po.train.faults import ToolFailureError, ToolHealth
from at2po.train.logging import RunLogger
from at2po.train.trainer import train
from tests.faults.conftest import free_port, small_overrides


def _calls(*queries: str) -> list[ParsedTurn]:
    return [ParsedTurn(kind=TurnKind.TOOL_CALL, query=q) for q in queries]


def _env(tiny_world, url: str, **cfg) -> SearchEnv:
    from at2po.agent.retrievers.http import HTTPRetriever

    ecfg = EnvConfig(**{"tool_timeout_s": 30.0, **cfg})
    retriever = HTTPRetriever(url, timeout_s=ecfg.tool_timeout_s, max_retries=ecfg.retriever_retries,
                              timeout_retries=ecfg.retriever_timeout_retries, backoff_s=ecfg.retriever_backoff_s)
    return SearchEnv(AutoTokenizer.from_pretrained(str(tiny_world["model"])), retriever, ecfg)


def test_server_killed_then_restarted(tiny_world, server_process) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = server_process(tiny_world["index"], port)
    env = _env(tiny_world, url, retriever_retries=0)
    try:
        ok = env.run_tools(_calls("mayor of Alba", "Bren Hollow"))
        assert [r.status for r in ok] == ["ok", "ok"]
        proc.kill()  # SIGKILL: no goodbye
        proc.wait()
        t0 = time.monotonic()
        down = env.run_tools(_calls("mayor of Dorn", "Esk Miller", "mayor of Galt"))
        down_s = time.monotonic() - t0
        assert down_s < 5  # refused connections fail at once, nothing waits for a timeout
        assert [r.status for r in down] == ["error"] * 3
        assert all("Search failed" in r.observation and "Connection refused" in (r.error or "") for r in down)
        assert env.counters["tool_errors"] == 3

        # the server comes back 1 s into the next batch; backoff retries (0.25, 0.5, 1, 2 s) carry the calls over
        env.retriever.max_retries = 6
        restart = threading.Timer(1.0, lambda: server_process(tiny_world["index"], port))
        restart.start()
        t0 = time.monotonic()
        back = env.run_tools(_calls("mayor of Dorn", "Hana Roe"))
        restart.join()
        assert [r.status for r in back] == ["ok", "ok"], [r.error for r in back]
        assert env.retriever.stats.retries > 0 and time.monotonic() - t0 < 30
        print(f"\n[fault] server killed: 3 calls failed in {down_s:.2f} s; restarted after 1 s: calls ok after "
              f"{env.retriever.stats.retries} retries, {time.monotonic() - t0:.1f} s")
    finally:
        env.close()


class _Slow(Retriever):
    def __init__(self, inner: Retriever, delay_s: float) -> None:
        self.inner, self.delay_s = inner, delay_s

    def batch_search(self, queries, k):
        time.sleep(self.delay_s)
        return self.inner.batch_search(queries, k)


def test_slow_server_times_out_without_stalling_the_batch(tiny_world) -> None:
    slow = _Slow(load_retriever(tiny_world["index"]), delay_s=3.0)
    with RetrievalServer(slow, port=0) as server:
        env = _env(tiny_world, server.url, tool_timeout_s=0.5, retriever_retries=0)
        try:
            t0 = time.monotonic()
            res = env.run_tools(_calls("mayor of Alba", "mayor of Dorn", "mayor of Galt", "Bren Hollow"))
            wall = time.monotonic() - t0
            assert [r.status for r in res] == ["timeout"] * 4
            assert wall < 0.5 + 1.0, wall  # the batch waits one timeout, not the server's 3 s
            print(f"\n[fault] slow server (3 s per search), env.tool_timeout_s=0.5: 4 calls timed out, "
                  f"batch {wall:.2f} s")
            events = [ToolEvent(r.tool, r.status, r.latency_s, r.error) for r in res]
            m = tool_metrics(events)
            assert m["tool/timeout_rate"] == 1.0 and m["tool/timeouts"] == 4 and m["tool/errors"] == 0
            assert env.counters["tool_timeouts"] == 4

            slow.delay_s = 0.0  # the server recovers: the next batch is not stuck behind the hung requests
            t0 = time.monotonic()
            again = env.run_tools(_calls("mayor of Alba"))
            assert again[0].status == "ok" and time.monotonic() - t0 < 1.5
            print(f"[fault] server fast again: next batch ok in {time.monotonic() - t0:.2f} s")
        finally:
            env.close()


class _Switch:
    """An in-process retrieval server that the training loop's logger shuts down and restarts at given steps."""

    def __init__(self, index: Path) -> None:
        self.retriever = load_retriever(index)
        self.port = free_port()
        self.server: RetrievalServer | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.server = RetrievalServer(self.retriever, port=self.port).start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server = None


def _outage_run(tiny_world, model: Path, tmp_path, monkeypatch, down_after: int, up_after: int | None,
                extra: list[str], name: str = "run"):
    """Train with data.index on a live server that goes down after step ``down_after`` is logged and comes back
    after step ``up_after``; returns (switch, metrics per step, what the run raised)."""
    sw = _Switch(tiny_world["index"])
    real_log = RunLogger.log

    def log(self, step, metrics):
        real_log(self, step, metrics)
        if "eval/em" in metrics:
            return
        if step == down_after:
            sw.stop()
        if up_after is not None and step == up_after:
            sw.start()

    monkeypatch.setattr(RunLogger, "log", log)
    over = small_overrides(tiny_world, tmp_path / name) + [  # the SFT'd tiny model: it searches
        f"model.path={model}", f"data.index={sw.url}", "data.test=null", "env.retriever_retries=0",
        "env.retriever_cache_size=0", "rollout.max_turn_tokens=40", "rollout.max_response_tokens=200",
        "logging.tensorboard=false", *extra]
    error = None
    try:
        train(load_config(preset="at2po", overrides=over))
    except ToolFailureError as exc:
        error = exc
    finally:
        sw.stop()
    rows = [json.loads(x) for x in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
    monkeypatch.undo()
    return sw, {r["step"]: r for r in rows}, error


def test_training_survives_an_outage_and_counts_it(tiny_world, sft_model, tmp_path, monkeypatch, capsys) -> None:
    _, by_step, error = _outage_run(tiny_world, sft_model, tmp_path, monkeypatch, down_after=1, up_after=2,
                                    extra=["train.steps=3"])
    assert error is None and sorted(by_step) == [1, 2, 3]
    assert by_step[1]["tool/failure_rate"] == 0.0 and by_step[3]["tool/failure_rate"] == 0.0
    assert by_step[2]["tool/errors"] == by_step[2]["tool/calls"] > 0  # every call of step 2 failed (no cache)
    assert by_step[2]["tool/error_rate"] == by_step[2]["tool/errors"] / by_step[2]["tool/calls"]
    out = " ".join(capsys.readouterr().out.split())
    pct = round(100 * by_step[2]["tool/failure_rate"])
    assert f"warning: step 2: {pct}% of {int(by_step[2]['tool/calls'])} tool calls failed" in out  # ... said so


def test_persistent_tool_failure_stops_before_the_update_and_resumes(tiny_world, sft_model, tmp_path,
                                                                     monkeypatch) -> None:
    sw, by_step, error = _outage_run(tiny_world, sft_model, tmp_path, monkeypatch, down_after=1, up_after=None,
                                     extra=["train.steps=5", "faults.tool_failure_patience=2"])
    assert error is not None
    msg = str(error)
    assert msg.startswith("stopping at step 3 before its update: 2 consecutive steps")
    assert "tool 'search'" in msg and "Connection refused" in msg and f"data.index={sw.url!r}" in msg
    assert sorted(by_step) == [1, 2]  # step 3 stopped before it was logged: no update from its failed rollout
    from at2po.train.checkpoint import list_checkpoints

    assert [p.name for p in list_checkpoints(tmp_path / "run")] == ["step-00000002"]  # the last completed step
    assert "Checkpoint step 2 holds the last completed step; fix the tool and continue with --resume." in msg

    # that checkpoint, written at the start of step 3, is the one a periodic save at the end of step 2 writes
    _outage_run(tiny_world, sft_model, tmp_path, monkeypatch, down_after=1, up_after=2, name="periodic",
                extra=["train.steps=2", "checkpoint.every=1", "checkpoint.export_final=false"])
    a, b = tmp_path / "run" / "checkpoints" / "step-00000002", tmp_path / "periodic" / "checkpoints" / "step-00000002"
    wa, wb = load_file(str(a / "model" / "model.safetensors")), load_file(str(b / "model" / "model.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    sa, sb = json.loads((a / "state.json").read_text()), json.loads((b / "state.json").read_text())
    assert sa == sb  # step, data position, generated tokens
    ra, rb = (torch.load(d / "rng-0.pt", weights_only=False) for d in (a, b))
    assert ra["python"] == rb["python"] and torch.equal(ra["torch"], rb["torch"])
    assert all(np.array_equal(x, y) for x, y in zip(ra["numpy"], rb["numpy"], strict=True))
    oa, ob = (torch.load(d / "optimizer.pt", weights_only=False)["state"] for d in (a, b))
    assert oa.keys() == ob.keys() and all(torch.equal(oa[i]["exp_avg"], ob[i]["exp_avg"]) for i in oa)

    sw.start()  # fix the tool, continue
    over = small_overrides(tiny_world, tmp_path / "run") + [
        f"model.path={sft_model}", f"data.index={sw.url}", "data.test=null", "logging.tensorboard=false",
        "rollout.max_turn_tokens=40", "rollout.max_response_tokens=200", "train.steps=5"]
    try:
        res = train(load_config(preset="at2po", overrides=over), resume=True)
    finally:
        sw.stop()
    assert res.steps_done == 5


def test_tool_health_thresholds() -> None:
    ok = [ToolEvent("search", "ok", 0.01)] * 8
    bad = [ToolEvent("search", "error", 0.01, "HTTP 503: down")] * 2
    h = ToolHealth(warn_rate=0.1, stop_rate=0.5, patience=2)
    assert h.step(ok, 1) is None
    assert "20% of 10 tool calls failed" in h.step(ok + bad, 2)  # above warn, below stop: warn only
    assert h.consecutive == 0
    h.step(bad, 3)
    assert h.consecutive == 1
    h.step(ok, 4)  # a healthy step resets the count
    h.step(bad + [ToolEvent("search", "timeout", 30.0, "timed out")], 5)
    with pytest.raises(ToolFailureError, match=r"tool .search., last error: HTTP 503: down"):
        h.step(bad, 6)
