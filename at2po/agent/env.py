"""The environment interface the rollout driver talks to (the task side of one trajectory step).

The driver owns token ids; the env owns text: it builds the prompt ids, parses a generated turn's text into
a tool call / final answer / malformed output (its tags are the env's business, not the driver's), runs tool
calls (concurrently, with timeouts, never raising), formats every observation — failures included — and scores
finished trajectories. Examples are whatever the env takes: ``SearchEnv`` (``search_env.py``, the paper's search
agent) takes :class:`QAExample`; ``ToolEnv`` (``tool_env.py``, any text tools as Python functions) takes mappings
such as ``{"question": ..., "answer": ...}``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from enum import Enum
from typing import Any


@dataclass
class QAExample:
    question: str
    golden_answers: list[str]
    id: str = ""
    data_source: str = "default"
    meta: dict[str, Any] = field(default_factory=dict)  # e.g. hops for the synthetic world


class TurnKind(str, Enum):
    TOOL_CALL = "tool_call"  # a well-formed search call: run it, append its observation
    ANSWER = "answer"  # a final answer: the trajectory ends
    INVALID = "invalid"  # malformed output that gets a corrective observation; counts against the call limit
    NO_ACTION = "no_action"  # neither call nor answer (e.g. stopped at eos without <answer>): the trajectory ends


@dataclass
class ParsedTurn:
    kind: TurnKind
    query: str | None = None  # TOOL_CALL: the call's argument (a search query, an expression, a key)
    answer: str | None = None  # ANSWER: the \\boxed{} content, if any
    error: str | None = None  # classification of malformed output: unclosed_tag, empty_query, multiple_calls, ...
    message: str | None = None  # INVALID: the observation text telling the model what was wrong
    tool: str | None = None  # TOOL_CALL: which tool, for envs with several (None: the env's only tool)


TOOL_STATUSES = ("ok", "empty", "error", "timeout")


@dataclass
class ToolResult:
    """The outcome of one tool call. ``status`` (see ``TOOL_STATUSES``) is what gets counted: ok, empty (the tool
    answered with nothing, e.g. no passage matched), error (it failed) or timeout; ``flags`` name repairs the env
    made to the call before running it (e.g. ``query_truncated``), counted too."""

    observation: str  # the text inserted after the turn, e.g. "\n<result>\n...\n</result>\n"
    ok: bool = True  # False: the call failed (error or timeout); its observation says so
    error: str | None = None  # "timeout", "retriever_error: ...", ...
    latency_s: float = 0.0
    tool: str = "tool"  # the tool's name (SearchEnv: "search"), the key of the per-tool metrics
    empty: bool = False  # the call succeeded with an empty answer
    flags: tuple[str, ...] = ()
    detail: str | None = None  # a failure's message when ``error`` is only its class (e.g. what timed out)

    @property
    def status(self) -> str:
        if not self.ok:
            return "timeout" if self.error == "timeout" else "error"
        return "empty" if self.empty else "ok"


class AgentEnv(ABC):
    """What a task must provide. Seven methods are required; the rest have defaults a task may override.

    The example type is the env's choice (``example_from_row`` turns a dataset row into one); the driver only
    passes examples back to the env."""

    tool_name: str = "tool"  # the name tool calls are counted under (``tool/<name>/...`` metrics)
    stop_strings: tuple[str, ...] = ()  # a turn stops at any of these (kept in the turn), e.g. ("</search>",)
    stop_token_ids: tuple[int, ...] = ()  # eos / end-of-turn ids
    max_tool_calls: int = 6
    limit_mode: str = "end"  # at the call limit: "end" the trajectory, or insert a masked "notice" and continue

    @abstractmethod
    def prompt_ids(self, example: Any) -> list[int]:
        """Token ids of the prompt (chat template when the tokenizer has one)."""

    @abstractmethod
    def parse_turn(self, text: str) -> ParsedTurn:
        """Classify one generated turn. Never raises."""

    @abstractmethod
    def run_tools(self, calls: list[ParsedTurn]) -> list[ToolResult]:
        """Execute tool calls concurrently with per-call timeouts; failures become observations, never raise.
        ``calls`` may hold INVALID turns too: their result is the corrective ``message`` (no tool runs)."""

    @abstractmethod
    def observation_ids(self, text: str) -> list[int]:
        """Tokenise one observation by itself (no special tokens), to append to a context."""

    @abstractmethod
    def limit_notice(self) -> str:
        """Observation text used when the call limit is reached and ``limit_mode == "notice"``."""

    @abstractmethod
    def reward(self, response_text: str, example: Any) -> float:
        """Training reward of a finished trajectory (paper: −1 on format failure, else EM)."""

    @abstractmethod
    def metrics(self, response_text: str, example: Any) -> dict[str, float]:
        """Evaluation metrics of a finished trajectory: em, f1, format_ok, ..."""

    # --- defaults ------------------------------------------------------------------------------------------
    def failure_observation(self, call: ParsedTurn, reason: str) -> str:
        """The observation after a call whose tool failed outside the env (the driver's fallback: ``run_tools``
        raised, or a call timed out there); ``reason`` is "timeout" or "error". Override to speak your tags."""
        tool = call.tool or self.tool_name
        return f"\n{tool} failed: " + ("it timed out." if reason == "timeout" else "the tool raised an error.") + "\n"

    def example_from_row(self, row: Any, where: str = "row") -> Any:
        """A dataset row (a JSONL line's object, an HF ``datasets`` row) → the example this env takes; ``where``
        names the row in error messages (``file:line``). Default: the row itself."""
        return row

    def load_examples(self, path: str, limit: int | None = None) -> list[Any]:
        """The examples of a JSONL or Parquet file: each row through :meth:`example_from_row`."""
        from at2po.agent.datasets import read_rows

        return [self.example_from_row(row, where) for where, row in read_rows(path, limit)]

    def describe(self, example: Any) -> str:
        """A short name of an example for messages and reports (its id, else the start of its question)."""
        for key in ("id", "question"):
            v = example.get(key) if isinstance(example, dict) else getattr(example, key, None)
            if v:
                return str(v)[:60]
        return repr(example)[:60]

    def close(self) -> None:
        """Release tool resources (thread pools, connections). Called once when a run ends."""
