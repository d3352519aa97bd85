"""Guards that make faults loud: a failing tool warns, then stops the run with the tool's name and last error.

``ToolHealth`` reads each step's tool calls (``at2po.rollout.tool_stats``): above ``faults.tool_failure_warn``
(errors + timeouts over calls) it returns a warning; after ``faults.tool_failure_patience`` consecutive steps
at or above ``faults.tool_failure_stop`` it raises :class:`ToolFailureError` before that step's update (the
``patience − 1`` failing steps before it were trained on, as any step is; the stop ends the damage).
"""

from __future__ import annotations

from dataclasses import dataclass

from at2po.errors import RunStopped
from at2po.rollout.tool_stats import ToolEvent, last_failure, tool_metrics, worst_tool


class ToolFailureError(RunStopped):
    """Too many consecutive steps in which the tool calls failed."""


@dataclass
class ToolHealth:
    warn_rate: float
    stop_rate: float
    patience: int
    hint: str = ""  # appended to the stop message (e.g. how to start the retriever)
    consecutive: int = 0

    def warning(self, events: list[ToolEvent], where: str) -> str | None:
        """A one-line warning when the failure rate of ``events`` exceeds ``warn_rate`` (None otherwise)."""
        m = tool_metrics(events)
        if not m or m["tool/failure_rate"] <= self.warn_rate:
            return None
        last = last_failure(events)
        return (f"{where}: {m['tool/failure_rate']:.0%} of {int(m['tool/calls'])} tool calls failed "
                f"({int(m['tool/errors'])} errors, {int(m['tool/timeouts'])} timeouts); "
                f"last: {last.tool}: {_short(last.error)}")

    def step(self, events: list[ToolEvent], step: int) -> str | None:
        """Account one training step; returns its warning (or None), raises after ``patience`` bad steps."""
        m = tool_metrics(events)
        rate = m.get("tool/failure_rate", 0.0)
        self.consecutive = self.consecutive + 1 if m and rate >= self.stop_rate else 0
        if self.consecutive >= self.patience:
            last = last_failure(events)
            tool = worst_tool(events) or (last.tool if last else "tool")
            raise ToolFailureError(
                f"stopping at step {step} before its update: {self.consecutive} consecutive steps with at least "
                f"{self.stop_rate:.0%} of tool calls failing (this step {rate:.0%} of {int(m['tool/calls'])}); "
                f"tool {tool!r}, last error: {_short(last.error if last else None)}. {self.hint}".rstrip()
            )
        return self.warning(events, f"step {step}")


def _short(msg: str | None, n: int = 300) -> str:
    msg = " ".join((msg or "unknown").split())
    return msg if len(msg) <= n else msg[: n - 1] + "…"


def tool_hint(cfg: object) -> str:
    """What to check when the search tool keeps failing (names data.index)."""
    index = str(getattr(getattr(cfg, "data", None), "index", None))
    if index.startswith(("http://", "https://")):
        return f"Is the retriever at data.index={index!r} running (`at2po serve-retriever --index INDEX_DIR`)?"
    return f"Check the index at data.index={index!r}."


def eval_tool_warning(report: dict, warn_rate: float, where: str) -> str | None:
    """A warning line when an eval report's tool failure rate exceeds ``warn_rate`` (None otherwise)."""
    tools = report.get("tools") or {}
    rate = tools.get("failure_rate", 0.0)
    if not tools or rate <= warn_rate:
        return None
    last = report.get("tool_last_error") or {}
    return (f"{where}: {rate:.0%} of {int(tools['calls'])} tool calls failed ({int(tools['errors'])} errors, "
            f"{int(tools['timeouts'])} timeouts); last: {last.get('tool', '?')}: {_short(last.get('error'))} — "
            "the scores measure a broken tool, not the model")
