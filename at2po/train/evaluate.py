"""Evaluation: greedy (or sampled, pass@k) chain rollouts over an eval set → per-source means of the reward,
the env's metrics (search env: EM / F1 / format rate / tool calls) and turns, as a JSON report and a rich table.
Used by ``at2po eval`` and every ``eval.every`` steps.

Metrics per trajectory come from the env (``env.metrics``: em, f1, format_ok, tool_calls — EM does not require
the format, as in the paper); ``reward`` is the training reward. With ``eval.n = k > 1`` samples per question,
``em`` is the mean over samples (pass@1 estimate) and ``pass@k`` the fraction of questions with at least one exact
match.

Every tool call is accounted (``at2po.rollout.tool_stats``): ``tool_error_rate`` / ``tool_timeout_rate`` per
source and overall (table and JSON), and ``report["tools"]`` with counts, rates and per-tool latency percentiles,
``report["tool_last_error"]`` the last failure — so a run against a dead retriever reads as a broken tool, not as
a bad model.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from at2po.config import RunConfig
from at2po.rollout.scoring import RewardFn, score_trees
from at2po.rollout.tool_stats import ToolEvent, last_failure, tool_events, tool_metrics

_QA_KEYS = ("em", "f1", "format_ok", "tool_calls")  # columns shown first when the env reports them


def _field(ex: Any, key: str, default: str) -> str:
    v = ex.get(key) if isinstance(ex, dict) else getattr(ex, key, None)
    return str(v) if v not in (None, "") else default


def _records(trees: list[Any], env: Any) -> list[dict[str, Any]]:
    """One record per question: its id and source, the mean reward and turns over its samples, the mean of every
    env metric, and ``pass`` (some sample has em ≥ 1; with no em metric, some sample has reward ≥ 1)."""
    out = []
    for tree in trees:
        ex = tree.meta["example"]
        leaves = tree.leaves()
        per = [tree.nodes[i].info.get("metrics", {}) for i in leaves]
        rewards = [float(tree.nodes[i].reward) for i in leaves]
        rec: dict[str, Any] = {"id": _field(ex, "id", env.describe(ex)), "source": _field(ex, "data_source", "default"),
                               "samples": len(leaves)}
        present = {k for m in per for k in m}
        for key in [k for k in _QA_KEYS if k in present] + sorted(present - set(_QA_KEYS)):
            rec[key] = float(np.mean([m[key] for m in per if key in m]))  # as leaf_metrics: absent ≠ 0
        rec["reward"] = float(np.mean(rewards)) if rewards else 0.0
        rec["turns"] = float(np.mean([tree.depth(i) for i in leaves])) if leaves else 0.0
        hit = [m["em"] >= 1.0 for m in per] if per and all("em" in m for m in per) else [r >= 1.0 for r in rewards]
        rec["pass"] = float(any(hit))
        out.append(rec)
    return out


def metric_keys(records: list[dict[str, Any]]) -> list[str]:
    """The per-question metrics of ``records``, in record order (QA metrics first when present)."""
    keys: list[str] = []
    for r in records:
        keys += [k for k in r if k not in ("id", "source", "samples", "pass") and k not in keys]
    return keys


def summarize(records: list[dict[str, Any]], n: int) -> dict[str, Any]:
    """Overall and per-source means of the per-question records."""
    keys = metric_keys(records)

    def agg(rs: list[dict[str, Any]]) -> dict[str, float]:
        # a record without a metric (no sample reported it) does not count towards that metric's mean
        d = {k: float(np.mean(v)) if (v := [r[k] for r in rs if k in r]) else math.nan for k in keys}
        if n > 1:
            d[f"pass@{n}"] = float(np.mean([r["pass"] for r in rs]))
        d["count"] = float(len(rs))
        return d

    by_source: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        by_source[r["source"]].append(r)
    return {
        "overall": agg(records) if records else {},
        "per_source": {s: agg(rs) for s, rs in sorted(by_source.items())},
        "n": n,
        "metrics": keys,
        "records": records,
    }


def evaluate(
    engine: Any, env: Any, examples: list[Any], cfg: RunConfig, accelerator: Any = None, seed: int = 0,
    reward_fn: RewardFn | None = None,
) -> dict[str, Any]:
    """Roll out every example as ``eval.n`` chains at ``eval.temperature`` (0 = greedy) and score them (the
    ``reward`` column: ``reward_fn`` if given, else the env's reward; the other columns: the env's metrics).

    With several processes each evaluates its share and the records are gathered (every process gets the report).
    """
    from at2po.rollout.driver import rollout

    rank = accelerator.process_index if accelerator is not None else 0
    world = accelerator.num_processes if accelerator is not None else 1
    mine = examples[: cfg.eval.max_examples][rank::world] if cfg.eval.max_examples else examples[rank::world]
    rcfg = cfg.rollout.model_copy(
        update={"mode": "chain", "n": cfg.eval.n, "temperature": cfg.eval.temperature, "seed": seed}
    )
    was_training = getattr(engine.model, "training", False) if hasattr(engine, "model") else False
    if hasattr(engine, "model"):
        engine.model.eval()
    records: list[dict[str, Any]] = []
    calls: list[tuple[str, ToolEvent]] = []  # (source, event)
    bs = cfg.eval.batch_prompts
    for i in range(0, len(mine), bs):
        res = rollout(engine, env, mine[i : i + bs], rcfg.model_copy(update={"seed": seed + i}))
        score_trees(res.trees, env, engine.tokenizer, reward_fn)
        records.extend(_records(res.trees, env))
        calls.extend(
            (_field(t.meta["example"], "data_source", "default"), e) for t in res.trees for e in tool_events([t])
        )
    engine.clear_cache()
    if hasattr(engine, "model"):
        engine.model.train(was_training)
    if world > 1:
        from accelerate.utils import gather_object

        records = gather_object(records)
        calls = gather_object(calls)
    report = summarize(records, cfg.eval.n)
    add_tool_stats(report, calls)
    return report


def add_tool_stats(report: dict[str, Any], calls: list[tuple[str, ToolEvent]]) -> None:
    """Tool-call accounting into ``report``: ``tool_error_rate`` / ``tool_timeout_rate`` per source and overall,
    ``tools`` (all counts, rates, latency percentiles) and ``tool_last_error``."""
    events = [e for _, e in calls]
    sections = [("overall", report["overall"], events)] + [
        (s, d, [e for src, e in calls if src == s]) for s, d in report["per_source"].items()
    ]
    for _, d, evs in sections:
        if d:
            m = tool_metrics(evs, prefix="")
            d["tool_error_rate"] = m.get("error_rate", 0.0)
            d["tool_timeout_rate"] = m.get("timeout_rate", 0.0)
    report["tools"] = tool_metrics(events, prefix="")
    last = last_failure(events)
    report["tool_last_error"] = {"tool": last.tool, "status": last.status, "error": last.error} if last else None


def write_report(report: dict[str, Any], path: str | Path) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(report, indent=2))
    return p


def format_table(report: dict[str, Any], title: str = "evaluation") -> Any:
    """A rich Table: one row per source plus the overall row."""
    from rich.table import Table

    n = report.get("n", 1)
    cols = [k for k in report.get("metrics") or metric_keys(report.get("records", [])) if k != "turns"]
    cols = cols + ["turns"] + ([f"pass@{n}"] if n > 1 else [])
    tool_cols = [("tool_error_rate", "tool_err"), ("tool_timeout_rate", "tool_timeout")]
    table = Table(title=title)
    table.add_column("source")
    table.add_column("count", justify="right")
    for c in cols:
        table.add_column(c, justify="right")
    for _, label in tool_cols:
        table.add_column(label, justify="right")
    rows = list(report["per_source"].items()) + [("overall", report["overall"])]
    for name, d in rows:
        if not d:
            continue
        tool = [_rate(d.get(k)) for k, _ in tool_cols]
        table.add_row(name, f"{int(d['count'])}", *[f"{d.get(c, float('nan')):.3f}" for c in cols], *tool)
    table.caption = tool_caption(report.get("tools") or {})
    return table


def tool_caption(tools: dict[str, float]) -> str | None:
    """One line per tool: calls, outcomes and latency percentiles (from ``report["tools"]``)."""
    names = sorted({k.split("/")[0] for k in tools if k.endswith("/calls")})
    parts = []
    for n in names:
        fails = tools.get(f"{n}/failure_rate", 0.0) * tools[f"{n}/calls"]
        parts.append(f"{n}: {int(tools[f'{n}/calls'])} calls, {round(fails)} failed, latency p50 "
                     f"{1000 * tools[f'{n}/latency_p50_s']:.0f} ms, p99 {1000 * tools[f'{n}/latency_p99_s']:.0f} ms")
    return "; ".join(parts) or None


def _rate(v: float | None) -> str:
    if v is None:
        return "–"
    return f"[red]{v:.3f}[/red]" if v > 0 else f"{v:.3f}"
