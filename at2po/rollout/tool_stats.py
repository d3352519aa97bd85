"""Tool-call accounting: every call's outcome (ok / empty / error / timeout), latency and repair flags, read from
the trees a rollout built (``node.info["tool"]``), reduced to rates and per-tool latency percentiles.

The trainer logs these per step (``tool/...``) and checks them with :class:`at2po.train.faults.ToolHealth`;
``evaluate`` puts them in the eval report. One place computes them, so step metrics and eval agree.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from at2po.agent.env import TOOL_STATUSES, ToolResult
from at2po.core.tree import TurnTree

PERCENTILES = (50, 90, 99)


@dataclass(frozen=True)
class ToolEvent:
    tool: str
    status: str  # one of TOOL_STATUSES
    latency_s: float
    error: str | None = None  # the failure's message (None when ok/empty)
    flags: tuple[str, ...] = ()


def tool_info(res: ToolResult) -> dict:
    """What a tree node keeps of its tool call (``node.info["tool"]``)."""
    return {
        "name": res.tool, "status": res.status, "ok": res.ok, "error": res.error, "detail": res.detail,
        "latency_s": res.latency_s, "flags": list(res.flags),
    }


def tool_events(trees: Iterable[TurnTree]) -> list[ToolEvent]:
    """The tool calls of ``trees``, in node order (nodes whose turn ran a tool)."""
    out: list[ToolEvent] = []
    for tree in trees:
        for node in tree.nodes:
            t = node.info.get("tool")
            if t is None:
                continue
            msg = None if t.get("ok", True) else (t.get("detail") or t.get("error"))
            out.append(ToolEvent(t.get("name", "tool"), t.get("status", "ok" if t.get("ok", True) else "error"),
                                 float(t.get("latency_s", 0.0)), msg, tuple(t.get("flags", ()))))
    return out


def tool_metrics(events: list[ToolEvent], prefix: str = "tool/") -> dict[str, float]:
    """Counts and rates over all calls and per tool: ``calls``, ``<status>s`` (oks, emptys, errors, timeouts),
    ``error_rate`` = errors / calls, ``timeout_rate``, ``empty_rate``, ``failure_rate`` = (errors + timeouts) /
    calls; per tool ``<tool>/calls``, ``<tool>/failure_rate``, ``<tool>/latency_p{50,90,99}_s`` and
    ``<tool>/latency_max_s``; each repair flag's count (``query_truncated``, ...). Empty dict without calls."""
    if not events:
        return {}
    status = np.array([e.status for e in events])
    tools = np.array([e.tool for e in events])
    lat = np.array([e.latency_s for e in events], dtype=np.float64)
    n = len(events)
    out: dict[str, float] = {f"{prefix}calls": float(n)}
    counts = {s: int((status == s).sum()) for s in TOOL_STATUSES}
    for s in TOOL_STATUSES:
        out[f"{prefix}{s}s"] = float(counts[s])
    out[f"{prefix}error_rate"] = counts["error"] / n
    out[f"{prefix}timeout_rate"] = counts["timeout"] / n
    out[f"{prefix}empty_rate"] = counts["empty"] / n
    out[f"{prefix}failure_rate"] = (counts["error"] + counts["timeout"]) / n
    for name in sorted(set(tools.tolist())):
        sel = tools == name
        out[f"{prefix}{name}/calls"] = float(sel.sum())
        out[f"{prefix}{name}/failure_rate"] = float(np.isin(status[sel], ("error", "timeout")).mean())
        q = np.percentile(lat[sel], PERCENTILES)
        for p, v in zip(PERCENTILES, q, strict=True):
            out[f"{prefix}{name}/latency_p{p}_s"] = float(v)
        out[f"{prefix}{name}/latency_max_s"] = float(lat[sel].max())
    for flag in sorted({f for e in events for f in e.flags}):
        out[f"{prefix}{flag}"] = float(sum(flag in e.flags for e in events))
    return out


def last_failure(events: list[ToolEvent]) -> ToolEvent | None:
    """The last failed call (error or timeout), for messages that name the tool and what went wrong."""
    for e in reversed(events):
        if e.status in ("error", "timeout"):
            return e
    return None


def worst_tool(events: list[ToolEvent]) -> str | None:
    """The tool with the highest failure rate (ties: the most calls), or None without failures."""
    fails: dict[str, list[int]] = {}
    for e in events:
        f = fails.setdefault(e.tool, [0, 0])
        f[0] += e.status in ("error", "timeout")
        f[1] += 1
    bad = [(f[0] / f[1], f[1], t) for t, f in fails.items() if f[0]]
    return max(bad)[2] if bad else None
