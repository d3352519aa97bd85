"""``ToolEnv``: an agent environment for any text tools given as Python functions — the short way to train on a
task of your own (``at2po.envs.calculator`` is one, in a few lines).

Protocol (one action per turn)::

    <think> reasoning </think> <NAME> argument </NAME>      a call of tool NAME (the turn stops at </NAME>)
    <result> the tool's output </result>                     inserted by the env (masked from the loss)
    <think> ... </think> <answer> final answer </answer>     ends the trajectory

A turn with no action that ends at the end-of-turn token ends the trajectory (reward 0); a malformed turn (two
actions, a ``<result>`` written by the model, an unclosed tag) gets a corrective observation and counts against
``max_tool_calls``. Tools run concurrently in a thread pool with a per-call timeout; an exception or a timeout is
an observation (``Tool NAME failed: ...``) with status error / timeout, never a crash. Examples are mappings (a
JSONL line, an HF ``datasets`` row) or objects with ``question_key`` / ``answer_key`` fields.

Default reward: 1 when the normalised answer (lower case, no punctuation or articles: SQuAD normalisation) equals
a gold answer, else 0; metrics ``em``, ``format_ok`` (an answer was given) and ``tool_calls``. Pass
``reward_fn`` for anything else.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from at2po.agent.env import AgentEnv, ParsedTurn, ToolResult, TurnKind
from at2po.agent.prompts import has_chat_template, stop_token_ids
from at2po.agent.rewards import exact_match

RESULT_OPEN, RESULT_CLOSE = "<result>", "</result>"
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")


class ToolEnv(AgentEnv):
    """An env over ``tools`` (name → function of the call's argument string, returning the observation text)."""

    def __init__(
        self,
        tokenizer: Any,
        tools: Mapping[str, Callable[[str], Any]],
        instruction: str,
        *,
        question_key: str = "question",
        answer_key: str = "answer",
        max_tool_calls: int = 4,
        tool_timeout_s: float = 10.0,
        tool_workers: int = 8,
        max_obs_tokens: int = 256,
        limit_mode: str = "end",
        reward_fn: Callable[[str | None, Any], float] | None = None,
    ) -> None:
        """``instruction`` opens every prompt (say which tools exist and the tags above); ``reward_fn(answer,
        example)`` replaces the exact-match reward (``answer``: the text inside ``<answer>``, None if absent)."""
        if not tools:
            raise ValueError("ToolEnv: give at least one tool")
        for name in tools:
            if not _NAME.match(name) or name in ("think", "answer", "result"):
                raise ValueError(f"ToolEnv: tool name {name!r} must be an identifier other than think/answer/result")
        self.tokenizer, self.tools, self.instruction = tokenizer, dict(tools), instruction
        self.question_key, self.answer_key = question_key, answer_key
        self.max_tool_calls, self.limit_mode = max_tool_calls, limit_mode
        self.tool_timeout_s, self.tool_workers, self.max_obs_tokens = tool_timeout_s, tool_workers, max_obs_tokens
        self.answer_reward = reward_fn
        self.tool_name = next(iter(self.tools)) if len(self.tools) == 1 else "tool"
        self.stop_strings = tuple(f"</{n}>" for n in self.tools)
        self.stop_token_ids = stop_token_ids(tokenizer)
        self._specials = tuple(t for t in (tokenizer.eos_token, "<|im_end|>", "<|endoftext|>") if t)
        self._tags = re.compile(r"<(/?)(think|answer|result|" + "|".join(map(re.escape, self.tools)) + r")>")
        self._pool: ThreadPoolExecutor | None = None

    # --- examples and prompt ----------------------------------------------------------------------------------
    def field(self, example: Any, key: str) -> Any:
        return example.get(key) if isinstance(example, Mapping) else getattr(example, key, None)

    def example_from_row(self, row: Any, where: str = "row") -> Any:
        from at2po.agent.datasets import DatasetError

        q = self.field(row, self.question_key)
        if not isinstance(q, str) or not q.strip():
            raise DatasetError(f"{where}: missing or empty {self.question_key!r} (a non-empty string is required)")
        if self.field(row, self.answer_key) is None and self.answer_reward is None:
            raise DatasetError(f"{where}: missing {self.answer_key!r} (the default reward compares answers to it)")
        return row

    def prompt_text(self, example: Any) -> str:
        user = f"{self.instruction}\nQuestion: {str(self.field(example, self.question_key)).strip()}\n"
        if has_chat_template(self.tokenizer):
            return str(self.tokenizer.apply_chat_template([{"role": "user", "content": user}], tokenize=False,
                                                          add_generation_prompt=True))
        return user + "Assistant: "

    def prompt_ids(self, example: Any) -> list[int]:
        chat = has_chat_template(self.tokenizer)
        return list(self.tokenizer(self.prompt_text(example), add_special_tokens=not chat)["input_ids"])

    # --- parsing ---------------------------------------------------------------------------------------------------
    def _invalid(self, error: str, message: str) -> ParsedTurn:
        return ParsedTurn(kind=TurnKind.INVALID, error=error, message=self.observation(f"Invalid turn: {message}"))

    def parse_turn(self, text: str) -> ParsedTurn:
        """One call, one answer, or nothing (see the module docstring). Never raises."""
        for tok in self._specials:
            text = text.replace(tok, "")
        spans: dict[str, list[str]] = {}
        open_tag: tuple[str, int] | None = None
        for m in self._tags.finditer(text):
            closing, name = m.group(1) == "/", m.group(2)
            if name == "result":
                return self._invalid("self_result", "only tools write <result>; call a tool instead.")
            if not closing:
                if open_tag is not None:
                    return self._invalid("nested_tags", f"<{name}> inside <{open_tag[0]}>; close each tag first.")
                open_tag = (name, m.end())
            elif open_tag is None or open_tag[0] != name:
                return self._invalid("stray_close", f"</{name}> without a matching <{name}>.")
            else:
                spans.setdefault(name, []).append(text[open_tag[1]:m.start()].strip())
                open_tag = None
        if open_tag is not None:
            return self._invalid("unclosed_tag", f"<{open_tag[0]}> was never closed.")
        calls = [(n, a) for n in self.tools for a in spans.get(n, [])]
        answers = spans.get("answer", [])
        if len(calls) + len(answers) > 1:
            return self._invalid("multiple_actions", "one action per turn: one tool call or one answer.")
        if calls:
            name, arg = calls[0]
            return ParsedTurn(kind=TurnKind.TOOL_CALL, query=arg, tool=name)
        if answers:
            return ParsedTurn(kind=TurnKind.ANSWER, answer=answers[0])
        return ParsedTurn(kind=TurnKind.NO_ACTION, error="no_action")

    # --- tools ---------------------------------------------------------------------------------------------------
    def observation(self, body: str) -> str:
        """``body`` inside ``<result>`` tags, cut to ``max_obs_tokens`` tokens."""
        ids = self.tokenizer(body, add_special_tokens=False)["input_ids"]
        if len(ids) > self.max_obs_tokens:
            body = self.tokenizer.decode(ids[: self.max_obs_tokens])
        return f"\n{RESULT_OPEN} {body.strip()} {RESULT_CLOSE}\n"

    def observation_ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def failure_observation(self, call: ParsedTurn, reason: str) -> str:
        what = "it timed out" if reason == "timeout" else "it raised an error"
        return self.observation(f"Tool {call.tool or self.tool_name} failed: {what}.")

    def limit_notice(self) -> str:
        return self.observation("Tool call limit reached: give your answer now.")

    def _run(self, name: str, arg: str, started: list[float]) -> tuple[Any, float]:
        t0 = time.monotonic()
        started.append(t0)  # the call's timeout counts from here, not from when it was queued
        out = self.tools[name](arg)
        return out, time.monotonic() - t0

    def _wait(self, fut: Future[tuple[Any, float]], started: list[float], queue_deadline: float) -> tuple[Any, float]:
        """The call's result, or ``FutureTimeout`` once it has *run* for ``tool_timeout_s`` (time spent queued
        behind other calls for a worker does not count), or if it is still queued at ``queue_deadline`` (every
        worker hung)."""
        while True:
            if started:
                return fut.result(timeout=max(0.0, started[0] + self.tool_timeout_s - time.monotonic()))
            if time.monotonic() >= queue_deadline:
                raise FutureTimeout
            try:
                return fut.result(timeout=0.05)  # still queued: wait for it to start
            except FutureTimeout:
                continue

    def run_tools(self, calls: list[ParsedTurn]) -> list[ToolResult]:
        """TOOL_CALL entries run concurrently, each with ``tool_timeout_s`` from its start; others get their
        corrective message. Never raises. After a timeout the pool is replaced, so a hung tool keeps only its own
        thread and cannot clog later calls."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.tool_workers, thread_name_prefix="at2po-tool")
        starts: list[list[float]] = [[] for _ in calls]
        futures: list[Future[tuple[Any, float]] | None] = [
            self._pool.submit(self._run, c.tool or self.tool_name, c.query or "", st)
            if c.kind == TurnKind.TOOL_CALL and (c.tool or self.tool_name) in self.tools else None
            for c, st in zip(calls, starts, strict=True)
        ]
        # a queued call waits at most as long as the batch could take with every worker busy for a full timeout
        rounds = 1 + len(calls) // max(1, self.tool_workers)
        queue_deadline = time.monotonic() + self.tool_timeout_s * rounds
        out: list[ToolResult] = []
        timed_out = False
        for c, fut, st in zip(calls, futures, starts, strict=True):
            name = c.tool or self.tool_name
            if fut is None:
                message = c.message or self.observation(f"Invalid turn: unknown tool {name!r}.")
                out.append(ToolResult(message, ok=c.kind != TurnKind.TOOL_CALL, tool=name,
                                      error=None if c.kind != TurnKind.TOOL_CALL else f"unknown tool {name!r}"))
                continue
            try:
                value, latency = self._wait(fut, st, queue_deadline)
            except FutureTimeout:
                fut.cancel()
                timed_out = True
                out.append(ToolResult(self.failure_observation(c, "timeout"), ok=False, error="timeout", tool=name,
                                      latency_s=self.tool_timeout_s,
                                      detail=f"{name}({c.query!r}) gave no answer within {self.tool_timeout_s} s"))
                continue
            except Exception as exc:  # the tool's own failure is an observation, never a crash
                out.append(ToolResult(self.failure_observation(c, "error"), ok=False, tool=name,
                                      error=f"tool_error: {type(exc).__name__}: {exc}"))
                continue
            text = "" if value is None else str(value)
            out.append(ToolResult(self.observation(text or "(no output)"), latency_s=latency, tool=name,
                                  empty=not text))
        if timed_out:
            self.close()  # the hung calls keep their threads; the next batch gets a fresh pool
        return out

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    # --- scoring -------------------------------------------------------------------------------------------------
    def final_answer(self, response_text: str) -> str | None:
        """The answer of the trajectory's last turn (the text after the last observation), if that turn parses
        as an ANSWER under :meth:`parse_turn`; else None. An answer in an observation, or in a turn the env
        rejected, is not the model's answer."""
        last = response_text.rsplit(RESULT_CLOSE, 1)[-1]
        parsed = self.parse_turn(last)
        return parsed.answer if parsed.kind == TurnKind.ANSWER else None

    def golds(self, example: Any) -> list[str]:
        gold = self.field(example, self.answer_key)
        return [str(g) for g in gold] if isinstance(gold, Sequence) and not isinstance(gold, str) else [str(gold)]

    def reward(self, response_text: str, example: Any) -> float:
        answer = self.final_answer(response_text)
        if self.answer_reward is not None:
            return float(self.answer_reward(answer, example))
        return float(exact_match(answer, self.golds(example))) if answer is not None else 0.0

    def metrics(self, response_text: str, example: Any) -> dict[str, float]:
        answer = self.final_answer(response_text)
        em = float(exact_match(answer, self.golds(example))) if answer is not None and self.field(
            example, self.answer_key) is not None else 0.0
        calls = sum(len(re.findall(f"<{re.escape(n)}>", response_text)) for n in self.tools)
        return {"em": em, "format_ok": float(answer is not None), "tool_calls": float(calls)}
