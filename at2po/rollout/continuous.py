"""Continuous batching for the rollout driver: no phase barriers.

In phase mode (:class:`~at2po.rollout.phase.PhaseRunner`) every open branch samples its next turn in one engine
call, so each phase lasts as long as its longest turn and a turn's tool result waits for the whole phase. Here
the runner is the engine's :class:`~at2po.rollout.engine.Scheduler`: the turns that end at a decode step are
recorded, their tool calls run together (``env.run_tools``, concurrent), and each next turn joins the running
batch before the next decode step. Expansion rounds keep their barrier per tree (selection reads the whole tree
after round r−1, spec Component 1), through ``on_idle`` (per-tree schedule) or one ``run`` per round (lockstep).

Every turn's random stream comes from its place in the tree (``turn_seed``), so continuous and phase batching
build the same trees; only node order, wall time and the number of decode steps differ.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Callable

from at2po.rollout.engine import Generation, Request, SamplingParams, cut
from at2po.rollout.phase import Branch, PhaseRunner


class ContinuousRunner(PhaseRunner):
    """Runs branches to completion with ``engine.run`` (continuous batching); same results as ``PhaseRunner``."""

    def run(self, branches: list[Branch], on_idle: Callable[[int], list[Branch]] | None = None) -> None:
        """Advance ``branches`` and every branch their tool calls open until all end in leaves. ``on_idle(t)`` is
        called when tree t has no open branch left; the branches it returns start at once."""
        self._queue = list(branches)
        self._open = Counter(b.tree for b in branches)
        self._on_idle = on_idle
        cfg, env = self.cfg, self.env
        params = SamplingParams(
            max_new_tokens=cfg.max_turn_tokens, temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k,
            stop=tuple(env.stop_strings), stop_token_ids=tuple(env.stop_token_ids),
        )
        t0, tool0 = time.perf_counter(), self.tool_s
        self.engine.run(self, params)
        self.gen_s += time.perf_counter() - t0 - (self.tool_s - tool0)

    # --- Scheduler ----------------------------------------------------------------------------------
    def next_requests(self) -> list[Request]:
        reqs = [Request(b.context, b.seed, self._budget(b), b) for b in self._queue]
        self._queue = []
        return reqs

    def finished(self, done: list[tuple[Request, Generation]]) -> None:
        branches: list[Branch] = [req.tag for req, _ in done]
        calls = self._record(branches, [cut(g, self._budget(b)) for b, (_, g) in zip(branches, done)], phase=None)
        t0 = time.perf_counter()
        results = self._run_tools([c[3] for c in calls])
        self.tool_s += time.perf_counter() - t0
        new = self._open_after_tools(calls, results)
        self._open.subtract(b.tree for b in branches)
        self._open.update(b.tree for b in new)
        if self._on_idle is not None:
            for t in sorted({b.tree for b in branches if self._open[b.tree] == 0}):
                more = self._on_idle(t)
                self._open.update(b.tree for b in more)
                new += more
        self._queue += new
