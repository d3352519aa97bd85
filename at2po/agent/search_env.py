"""``SearchEnv``: the paper's search-agent environment (prompt, parsing, search tool, observations, reward).

The rollout driver keeps token ids; this class turns text into actions and observations:
prompt ids (chat template or plain), ``parse_turn`` (tool call / answer / classified malformed output with a
corrective observation), ``run_tools`` (queries cleaned — control characters and lone surrogates replaced, cut to
``max_query_chars`` — then concurrent searches in a thread pool with per-call timeouts; each call's outcome is
ok / empty / error / timeout, and a failure becomes a "search failed" observation), ``observe`` (the one place
passages are formatted as ``<result>`` ... ``</result>`` — protocol tags inside passages are defused — and
truncated to ``max_obs_tokens``), ``reward`` (−1 on format failure else EM) and ``metrics`` (em, f1, format_ok).
"""

from __future__ import annotations

import re
import threading
import time
import unicodedata
from collections import OrderedDict
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any

from at2po.agent.env import AgentEnv, ParsedTurn, QAExample, ToolResult, TurnKind
from at2po.agent.prompts import build_prompt_ids, stop_token_ids
from at2po.agent.protocol import (
    TURN_STOP_STRINGS,
    error_message,
    format_observation,
    format_passages,
    parse_turn,
)
from at2po.agent.retrievers.base import Passage, Retriever, RetrieverTimeout
from at2po.agent.rewards import compute_score, qa_metrics
from at2po.config.env import EnvConfig

NO_RESULTS = "No results found."


_OBS_MEMO = 4096  # observations whose token ids SearchEnv remembers
_PROTOCOL_TAG = re.compile(r"<(/?)(think|search|answer|result)>", re.IGNORECASE)


def clean_query(query: str, max_chars: int) -> tuple[str, tuple[str, ...]]:
    """The query a retriever can take: control characters (Unicode category C*, e.g. NUL, and lone surrogates
    left by invalid UTF-8) become spaces, whitespace runs collapse, and the result is cut to ``max_chars``.
    Returns (query, flags) with flags ⊆ {"query_sanitized", "query_truncated"}."""
    flags: list[str] = []
    if any(unicodedata.category(c)[0] == "C" and c not in "\t\n\r" for c in query):
        query = "".join(" " if unicodedata.category(c)[0] == "C" else c for c in query)
        flags.append("query_sanitized")
    query = " ".join(query.split())
    if len(query) > max_chars:
        query = query[:max_chars].rstrip()
        flags.append("query_truncated")
    return query, tuple(flags)


def defuse_tags(text: str) -> str:
    """Protocol tags inside retrieved text (``</result>``, ``<answer>`` ...) become ``[/result]``, ``[answer]``:
    a passage cannot close the observation early or plant an answer the reward would read."""
    return _PROTOCOL_TAG.sub(lambda m: f"[{m.group(1)}{m.group(2)}]", text)


class SearchEnv(AgentEnv):
    """The search agent's environment over any ``Retriever`` (bm25, dense, http)."""

    stop_strings = TURN_STOP_STRINGS
    tool_name = "search"

    def __init__(self, tokenizer: Any, retriever: Retriever | None, cfg: EnvConfig | None = None) -> None:
        """``retriever`` may be None when the env only formats prompts/observations (SFT); searches then fail
        with a "search failed" observation like any other retriever error."""
        self.tokenizer = tokenizer
        self.retriever = retriever
        self.cfg = cfg or EnvConfig()
        self.max_tool_calls = self.cfg.max_tool_calls
        self.limit_mode = self.cfg.limit_mode
        self.stop_token_ids = stop_token_ids(tokenizer)
        # Special-token strings that may trail a decoded turn (eos, <|im_end|>); removed before parsing.
        self._trailing_specials = tuple(
            t for t in (tokenizer.convert_ids_to_tokens(i) for i in self.stop_token_ids) if isinstance(t, str) and t
        )
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self.counters: dict[str, int] = {"tool_calls": 0, "tool_errors": 0, "tool_timeouts": 0}
        # observe() tokenises each observation to fit its budget; observation_ids() reuses those ids (LRU)
        self._obs_ids: OrderedDict[str, tuple[int, ...]] = OrderedDict()

    # ---- prompt / parsing -------------------------------------------------------------------------------------
    def prompt_ids(self, example: QAExample) -> list[int]:
        return build_prompt_ids(
            self.tokenizer,
            example.question,
            use_chat_template=self.cfg.use_chat_template,
            chat_template_kwargs=self.cfg.chat_template_kwargs,
        )

    def parse_turn(self, text: str) -> ParsedTurn:
        """``protocol.parse_turn`` after removing trailing eos/end-of-turn strings. Never raises."""
        text = text.rstrip()
        stripped = True
        while stripped:
            stripped = False
            for tok in self._trailing_specials:
                if text.endswith(tok):
                    text, stripped = text[: -len(tok)].rstrip(), True
        return parse_turn(text, no_action=self.cfg.no_action)

    # ---- tools -----------------------------------------------------------------------------------------------
    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.cfg.tool_workers, thread_name_prefix="at2po-search")
        return self._pool

    def _search(self, query: str, started: dict[int, float], key: int) -> list[Passage]:
        started[key] = time.monotonic()
        if self.retriever is None:
            raise RuntimeError("no retriever configured (data.index)")
        return self.retriever.search(query, self.cfg.topk)

    def run_tools(self, calls: list[ParsedTurn]) -> list[ToolResult]:
        """Run the TOOL_CALL entries concurrently (``tool_workers`` threads); an INVALID entry gets its corrective
        message without touching the retriever. Each search has ``tool_timeout_s`` from the moment it starts (a
        queued call that never starts is abandoned after ``tool_timeout_s · (1 + ⌈n / workers⌉)``). Any exception
        or timeout becomes a "search failed" observation with ``ok=False`` (status error or timeout; no passage:
        status empty); this method never raises."""
        results: list[ToolResult | None] = [None] * len(calls)
        pool = self._executor()
        started: dict[int, float] = {}
        futures: dict[Future[list[Passage]], int] = {}
        flags: dict[int, tuple[str, ...]] = {}
        t0 = time.monotonic()
        for i, call in enumerate(calls):
            query, flags[i] = clean_query(call.query or "", self.cfg.max_query_chars)
            if call.kind == TurnKind.TOOL_CALL and query:
                futures[pool.submit(self._search, query, started, i)] = i
            elif call.kind == TurnKind.TOOL_CALL:  # nothing left after cleaning (e.g. only control characters)
                results[i] = ToolResult(observation=format_observation(error_message("empty_query")),
                                        tool=self.tool_name, empty=True, flags=flags[i])
            else:
                results[i] = ToolResult(observation=call.message or format_observation(NO_RESULTS), tool=self.tool_name)
        timeout = self.cfg.tool_timeout_s
        queue_limit = timeout * (1 + -(-len(futures) // self.cfg.tool_workers))
        pending = set(futures)
        timed_out = False
        while pending:
            done, pending = wait(pending, timeout=min(0.05, timeout), return_when=FIRST_COMPLETED)
            now = time.monotonic()
            for fut in done:
                i = futures[fut]
                latency = now - started.get(i, now)
                try:
                    passages = fut.result()
                    results[i] = ToolResult(observation=self.observe(passages), latency_s=latency, tool=self.tool_name,
                                            empty=not passages, flags=flags[i])
                except RetrieverTimeout as exc:  # the retriever's own (HTTP) timeout fired first
                    results[i] = self._failure("timeout", latency, detail=str(exc), flags=flags[i])
                except Exception as exc:  # a retriever failure is an observation, not a crash
                    results[i] = self._failure(f"retriever_error: {type(exc).__name__}: {exc}", latency, flags=flags[i])
            for fut in list(pending):
                i = futures[fut]
                start = started.get(i)
                if (start is not None and now - start > timeout) or (start is None and now - t0 > queue_limit):
                    fut.cancel()
                    pending.discard(fut)
                    timed_out = True
                    results[i] = self._failure("timeout", now - (start or now), flags=flags[i])
        if timed_out:
            # A hung search keeps its worker thread; start the next batch on a fresh pool so it cannot clog.
            self._pool = None
            pool.shutdown(wait=False, cancel_futures=True)
        searched = [results[i] for i in futures.values()]
        with self._lock:
            self.counters["tool_calls"] += len(searched)
            self.counters["tool_errors"] += sum(1 for r in searched if r is not None and not r.ok)
            self.counters["tool_timeouts"] += sum(1 for r in searched if r is not None and r.error == "timeout")
        return [r if r is not None else self._failure("lost", 0.0) for r in results]

    def _failure(self, error: str, latency: float, detail: str = "", flags: tuple[str, ...] = ()) -> ToolResult:
        reason = "it timed out" if error == "timeout" else "the search engine returned an error"
        text = format_observation(f"Search failed: {reason}. Try again, or answer with what you know.")
        return ToolResult(observation=text, ok=False, error=error, latency_s=latency, tool=self.tool_name, flags=flags,
                          detail=detail or None)

    # ---- observations ----------------------------------------------------------------------------------------
    def _n_tokens(self, text: str) -> int:
        return len(self._tokenize(text))

    def _tokenize(self, text: str) -> tuple[int, ...]:
        """``text``'s ids (no special tokens), remembered for the last ``_OBS_MEMO`` texts (thread-safe)."""
        with self._lock:
            ids = self._obs_ids.get(text)
            if ids is not None:
                self._obs_ids.move_to_end(text)
                return ids
        ids = tuple(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        with self._lock:
            self._obs_ids[text] = ids
            while len(self._obs_ids) > _OBS_MEMO:
                self._obs_ids.popitem(last=False)
        return ids

    def observe(self, passages: list[Passage]) -> str:
        """``\\n\\n<result>\\nDoc 1(Title: t) text\\n...\\n</result>\\n\\n`` with the passage list cut so the whole
        observation is at most ``max_obs_tokens`` tokens (the cut drops whole tokens from the end of the body). The
        tags are always kept, so a budget smaller than the empty ``<result>`` block yields just that block."""
        if passages:
            body = format_passages([(defuse_tags(p.title), defuse_tags(p.text)) for p in passages])
        else:
            body = NO_RESULTS
        text = format_observation(body)
        budget = self.cfg.max_obs_tokens
        if self._n_tokens(text) <= budget:
            return text
        body_ids = self.tokenizer(body.strip(), add_special_tokens=False)["input_ids"]
        keep = max(0, budget - self._n_tokens(format_observation("")))
        while keep > 0:
            # Decoding a prefix can end in half a multi-byte character: drop the replacement char it leaves.
            cut = self.tokenizer.decode(body_ids[:keep], skip_special_tokens=True).rstrip("\ufffd")
            text = format_observation(cut)
            if self._n_tokens(text) <= budget:  # re-tokenising can merge differently: check the real count
                return text
            keep -= max(1, (self._n_tokens(text) - budget))
        return format_observation("")

    def observation_ids(self, text: str) -> list[int]:
        return list(self._tokenize(text))  # usually tokenised already by observe()

    def limit_notice(self) -> str:
        return format_observation(
            f"You have used the maximum of {self.cfg.max_tool_calls} searches. No more searches are possible; "
            "give your final answer now in <answer> ... \\boxed{answer} </answer>."
        )

    # ---- scoring ---------------------------------------------------------------------------------------------
    def reward(self, response_text: str, example: QAExample) -> float:
        """Paper reward: −1 on format failure (no <think>, no <answer>, no \\boxed{}), else EM ∈ {0, 1}."""
        return compute_score(response_text, example.golden_answers)

    def metrics(self, response_text: str, example: QAExample) -> dict[str, float]:
        return qa_metrics(response_text, example.golden_answers)

    def failure_observation(self, call: ParsedTurn, reason: str) -> str:
        return self._failure("timeout" if reason == "timeout" else "error", 0.0).observation

    def example_from_row(self, row: Any, where: str = "row") -> QAExample:
        """A QA row ({question, golden_answers (or answers / answer), id?, data_source?}) → ``QAExample``;
        a ``QAExample`` passes through."""
        from at2po.agent.datasets import row_to_example

        return row if isinstance(row, QAExample) else row_to_example(row, where, source=None, default_id=where)

    def load_examples(self, path: str, limit: int | None = None) -> list[QAExample]:
        """A QA file (JSONL or Parquet, FlashRAG / Search-R1 layouts): ``at2po.agent.datasets.load_qa``."""
        from at2po.agent.datasets import load_qa

        return load_qa(path, limit=limit)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
        if self.retriever is not None:  # SFT builds a SearchEnv only to format prompts/observations
            self.retriever.close()
