"""Tool-call accounting on hand-made events with known counts, rates and percentiles."""

from __future__ import annotations

import numpy as np

from at2po.agent.env import ToolResult
from at2po.core.tree import TurnTree
from at2po.rollout.tool_stats import (
    ToolEvent,
    last_failure,
    tool_events,
    tool_info,
    tool_metrics,
    worst_tool,
)


def test_counts_rates_and_latency_percentiles() -> None:
    lat = [0.1, 0.2, 0.3, 0.4, 5.0, 0.05, 0.06]
    ev = [ToolEvent("search", "ok", lat[0]), ToolEvent("search", "empty", lat[1]),
          ToolEvent("search", "error", lat[2], "HTTP 503"),
          ToolEvent("search", "ok", lat[3], flags=("query_truncated",)),
          ToolEvent("search", "timeout", lat[4], "timed out"), ToolEvent("calc", "ok", lat[5]),
          ToolEvent("calc", "error", lat[6], "division by zero")]
    m = tool_metrics(ev)
    assert m["tool/calls"] == 7 and m["tool/oks"] == 3 and m["tool/emptys"] == 1
    assert m["tool/errors"] == 2 and m["tool/timeouts"] == 1
    assert m["tool/error_rate"] == 2 / 7 and m["tool/timeout_rate"] == 1 / 7 and m["tool/failure_rate"] == 3 / 7
    assert m["tool/search/calls"] == 5 and m["tool/search/failure_rate"] == 2 / 5
    assert m["tool/calc/failure_rate"] == 0.5
    assert m["tool/search/latency_p50_s"] == np.percentile(lat[:5], 50) == 0.3
    assert m["tool/search/latency_p99_s"] == np.percentile(lat[:5], 99)
    assert m["tool/search/latency_max_s"] == 5.0 and m["tool/query_truncated"] == 1
    assert last_failure(ev).error == "division by zero"
    assert worst_tool(ev) == "calc"  # 1/2 > 2/5
    assert tool_metrics([]) == {} and last_failure(ev[:2]) is None and worst_tool(ev[:2]) is None


def test_events_come_from_tree_nodes_in_order() -> None:
    tree = TurnTree(prompt_ids=[1, 2])
    a = tree.add_node(0, obs_ids=[], obs_text="", gen_ids=[3], gen_logprobs=[-0.1], text="x")
    b = tree.add_node(a, obs_ids=[4], obs_text="o", gen_ids=[5], gen_logprobs=[-0.2], text="y")
    tree.nodes[a].info["tool"] = tool_info(ToolResult("obs", ok=False, error="timeout", latency_s=2.0, tool="search",
                                                      detail="no answer in 2 s"))
    tree.nodes[b].info["tool"] = tool_info(ToolResult("obs", latency_s=0.1, tool="search", empty=True))
    ev = tool_events([tree])
    assert [(e.status, e.error) for e in ev] == [("timeout", "no answer in 2 s"), ("empty", None)]
    assert tool_info(ToolResult("o", ok=False, error="retriever_error: boom"))["status"] == "error"
