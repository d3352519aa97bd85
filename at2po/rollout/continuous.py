"""Continuous batching for the rollout driver: no phase barriers.

In phase mode (:class:`~at2po.rollout.phase.PhaseRunner`) every open branch samples its next turn in one engine
call, so each phase lasts as long as its longest turn and a turn's tool result waits for the whole phase. Here
the runner is the engine's :class:`~at2po.rollout.engine.Scheduler`: the turns that end at a decode step are
recorded at once and their tool calls are sent together (``env.run_tools``, concurrent) to a pool of
``rollout.tool_workers`` threads, so decoding goes on while tools run and batches of different steps overlap;
each next turn joins the running batch at the first decode step after its tool returned. Expansion rounds keep
their barrier per tree (selection reads the whole tree after round r−1, spec
Component 1), through ``on_idle`` (per-tree schedule) or one ``run`` per round (lockstep).

Every turn's random stream comes from its place in the tree (``turn_seed``), so continuous and phase batching
build the same trees; node order (turns are added as they end), wall time and decode steps differ.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from at2po.agent.env import ToolResult
from at2po.rollout.engine import Generation, Request, cut
from at2po.rollout.phase import Branch, PhaseRunner, _Call


class ContinuousRunner(PhaseRunner):
    """Runs branches to completion with ``engine.run`` (continuous batching); same trees as ``PhaseRunner``."""

    def run(self, branches: list[Branch], on_idle: Callable[[int], list[Branch]] | None = None) -> None:
        """Advance ``branches`` and every branch their tool calls open until all end in leaves. ``on_idle(t)`` is
        called when tree t has no open branch left; the branches it returns start at once."""
        self._queue = list(branches)
        self._open = Counter(b.tree for b in branches)
        self._on_idle = on_idle
        # tool batches in flight, in the order their turns ended: (future, the calls, every branch of that step)
        self._inflight: list[tuple[Future[list[ToolResult]], list[_Call], list[Branch]]] = []
        cfg = self.cfg
        params = self._params(cfg.max_turn_tokens)  # each request carries its own budget
        t0, wait0 = time.perf_counter(), self.tool_wait_s
        self._tool_lock = threading.Lock()
        # batches of different steps run concurrently (a remote retriever's latency overlaps), each batch's calls
        # concurrently inside env.run_tools
        with ThreadPoolExecutor(cfg.tool_workers, thread_name_prefix="at2po-tools") as self._tools:
            self.engine.run(self, params)
        if self._queue or self._inflight or any(self._open.values()):  # an engine that stopped early loses turns
            raise RuntimeError(f"ContinuousRunner: {type(self.engine).__name__}.run returned with "
                               f"{sum(self._open.values())} branches still open ({len(self._queue)} turns never "
                               f"requested, {len(self._inflight)} tool batches in flight)")
        self.gen_s += time.perf_counter() - t0 - (self.tool_wait_s - wait0)

    # --- Scheduler ----------------------------------------------------------------------------------
    def next_requests(self, idle: bool) -> list[Request]:
        while True:
            # collect finished tool batches in the order their turns ended (a later one may finish first)
            while self._inflight and self._inflight[0][0].done():
                fut, calls, branches = self._inflight.pop(0)
                self._continue(branches, self._open_after_tools(calls, fut.result()))
            # idle engine: [] would end the run, so wait until a batch opens new turns or none is left in flight
            if self._queue or not idle or not self._inflight:
                break
            t0 = time.perf_counter()
            self._inflight[0][0].result()
            self.tool_wait_s += time.perf_counter() - t0  # time the engine stood still for tools
        reqs = [Request(b.context, b.seed, self._budget(b), b) for b in self._queue]
        self._queue = []
        return reqs

    def finished(self, done: list[tuple[Request, Generation]]) -> None:
        branches: list[Branch] = [req.tag for req, _ in done]
        gens = [cut(g, self._budget(b)) for b, (_, g) in zip(branches, done, strict=True)]
        calls = self._record(branches, gens, phase=None)
        if not self.cfg.async_tools:  # wait for this step's tools: a reproducible batch layout
            t0 = time.perf_counter()
            results = self._timed_tools([c[3] for c in calls]) if calls else []
            self.tool_wait_s += time.perf_counter() - t0
            self._continue(branches, self._open_after_tools(calls, results))
        elif calls or self._inflight:  # keep the order: a step's branches continue after earlier steps' tools
            self._inflight.append((self._tools.submit(self._timed_tools, [c[3] for c in calls]), calls, branches))
        else:
            self._continue(branches, [])

    def _timed_tools(self, calls: list) -> list[ToolResult]:
        t0 = time.perf_counter()
        try:
            return self._run_tools(calls)
        finally:
            with self._tool_lock:
                self.tool_s += time.perf_counter() - t0  # summed over batches (they may overlap)

    def _continue(self, ended: list[Branch], new: list[Branch]) -> None:
        """Account for ``ended`` branches and the ``new`` ones their tool calls opened; idle trees expand."""
        self._open.subtract(b.tree for b in ended)
        self._open.update(b.tree for b in new)
        if self._on_idle is not None:
            for t in sorted({b.tree for b in ended if self._open[b.tree] == 0}):
                more = self._on_idle(t)
                self._open.update(b.tree for b in more)
                new = new + more
        self._queue += new
