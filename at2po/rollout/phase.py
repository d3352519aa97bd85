"""One batched phase of the rollout: generate the next turn of every open branch, classify, run tools.

Used by :func:`at2po.rollout.driver.rollout`; see there for the chain/tree logic.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import TYPE_CHECKING

from at2po.agent.env import AgentEnv, ParsedTurn, ToolResult, TurnKind
from at2po.core.tree import TurnEnd, TurnTree
from at2po.rollout.engine import Engine, Generation, SamplingParams, cut
from at2po.rollout.seeds import turn_seed
from at2po.rollout.tool_stats import tool_info

if TYPE_CHECKING:
    from at2po.config.rollout import RolloutConfig

log = logging.getLogger(__name__)


@dataclass
class Branch:
    """An open trajectory: its next turn becomes a child of ``parent`` in tree ``tree``."""

    tree: int
    parent: int
    obs_ids: list[int]  # the observation that precedes the next turn (masked from the loss)
    obs_text: str
    group: int
    context: list[int]  # prompt + every earlier (obs + gen) + obs_ids: exactly what the model sees
    seed: int  # the random stream of the next turn (``turn_seed``)
    forked_from: int | None = None  # the node whose state this branch forks (tree mode), 0 for a new chain
    round: int = 0  # expansion round that opened it (0: the initial chains)


_Call = tuple[Branch, int, list[int], ParsedTurn]  # (branch, node index, context after the turn, parsed turn)


class PhaseRunner:
    """Runs branches to completion phase by phase and records per-phase timings and counts."""

    def __init__(self, engine: Engine, env: AgentEnv, trees: list[TurnTree], cfg: RolloutConfig) -> None:
        self.engine, self.env, self.trees, self.cfg = engine, env, trees, cfg
        self.phases: list[dict[str, float]] = []
        self.counts = {"tool_calls": 0, "tool_errors": 0, "invalid_turns": 0, "limit_hits": 0, "tool_fallbacks": 0}
        # gen_s: engine time; tool_s: time tools ran; tool_wait_s: time generation stood still for tools
        self.gen_s = self.tool_s = self.tool_wait_s = 0.0
        self.tokenizer = engine.tokenizer

    # --- phases -------------------------------------------------------------------------------------
    def run(
        self, branches: list[Branch], on_idle: Callable[[int], list[Branch]] | None = None,
        on_phase: Callable[[list[Branch]], list[Branch]] | None = None,
    ) -> None:
        """Advance ``branches`` (and the branches their tool calls open) until every one ends in a leaf.

        ``on_phase(opened)`` is called after each phase with the branches its tool calls opened (the continuations
        after an observation); the branches it returns join them (AEPO's branching). ``on_idle(t)`` is called for
        each tree whose last open branch ended in the phase just run; the branches it returns join the next phase
        (per-tree expansion rounds: a tree does not wait for the other trees)."""
        while branches:
            active = {b.tree for b in branches}
            branches = self._phase(branches)
            if on_phase is not None:
                branches += on_phase(branches)
            if on_idle is not None:
                still = {b.tree for b in branches}
                for t in sorted(active - still):
                    branches += on_idle(t)

    def _budget(self, b: Branch) -> int:
        used = len(b.context) - len(self.trees[b.tree].prompt_ids)
        return min(
            self.cfg.max_turn_tokens, self.cfg.max_response_tokens - used, self.engine.max_model_len - len(b.context)
        )

    def _params(self, max_new_tokens: int) -> SamplingParams:
        """The rollout's sampling settings (temperature, top-k/p, the env's stops) with this token budget."""
        cfg, env = self.cfg, self.env
        topk = cfg.mode == "aepo" and cfg.aepo.step_entropy == "topk"  # AEPO's step entropy needs top-k log-probs
        return SamplingParams(
            max_new_tokens=max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k,
            stop=tuple(env.stop_strings), stop_token_ids=tuple(env.stop_token_ids),
            entropy_topk=cfg.aepo.entropy_topk if topk else 0, entropy_tokens=cfg.aepo.entropy_tokens,
        )

    def _generate(self, branches: list[Branch]) -> list[Generation]:
        cfg = self.cfg
        gens: list[Generation] = []
        seeds = [b.seed for b in branches]
        for lo in range(0, len(branches), cfg.max_concurrent_sequences):
            chunk = branches[lo : lo + cfg.max_concurrent_sequences]
            params = self._params(max(self._budget(b) for b in chunk))
            gens.extend(self.engine.generate([b.context for b in chunk], params, seeds[lo : lo + len(chunk)]))
        # One call serves branches with different remaining budgets: cut each to its own (sampling is causal,
        # so the kept tokens and log-probs are exactly those a shorter call would have produced).
        return [cut(g, self._budget(b)) for b, g in zip(branches, gens, strict=True)]

    def _phase(self, branches: list[Branch]) -> list[Branch]:
        t0 = time.perf_counter()
        gen_before = self.engine.stats().generated_tokens
        gens = self._generate(branches)
        t_gen = time.perf_counter() - t0
        calls = self._record(branches, gens, phase=len(self.phases))
        t1 = time.perf_counter()
        results = self._run_tools([c[3] for c in calls])
        t_tool = time.perf_counter() - t1
        out = self._open_after_tools(calls, results)
        self.gen_s += t_gen
        self.tool_s += t_tool
        self.tool_wait_s += t_tool  # a phase waits for all of its tools
        self.phases.append(
            {
                "round": float(max(b.round for b in branches)),  # rounds mix when trees expand on their own
                "sequences": float(len(branches)),
                "generated_tokens": float(self.engine.stats().generated_tokens - gen_before),
                "tool_calls": float(sum(c[3].kind == TurnKind.TOOL_CALL for c in calls)),
                "gen_s": t_gen,
                "tool_s": t_tool,
                "wall_s": time.perf_counter() - t0,
            }
        )
        return out

    def _record(self, branches: list[Branch], gens: list[Generation], phase: int | None) -> list[_Call]:
        """Add each sampled turn to its tree and classify it; returns the turns that continue after a tool step."""
        calls: list[_Call] = []
        for b, g in zip(branches, gens, strict=True):
            tree = self.trees[b.tree]
            text = self.tokenizer.decode(g.token_ids, skip_special_tokens=False)
            n = tree.add_node(
                b.parent, obs_ids=list(b.obs_ids), obs_text=b.obs_text, gen_ids=list(g.token_ids),
                gen_logprobs=list(g.logprobs), text=text, group=b.group,
            )
            node = tree.nodes[n]
            node.info["finish_reason"] = g.finish_reason
            node.info["round"] = b.round
            node.info["seed"] = b.seed
            if g.topk_entropy is not None:  # Σ over the early tokens of the top-k entropy (un-normalised)
                node.info["topk_entropy"] = float(sum(g.topk_entropy))
            if phase is not None:
                node.info["phase"] = phase  # index of the batched phase that generated it
            if b.forked_from is not None:
                node.info["forked_from"] = b.forked_from
            ctx = b.context + list(g.token_ids)
            if g.finish_reason == "length":  # cut by max_turn_tokens / max_response_tokens / model length
                node.end = TurnEnd.TRUNCATED
                continue
            parsed = self.env.parse_turn(text)
            node.info["parse"] = parsed.kind.value if parsed.error is None else f"{parsed.kind.value}:{parsed.error}"
            if parsed.kind in (TurnKind.ANSWER, TurnKind.NO_ACTION):
                node.end = TurnEnd.ANSWER
                continue
            if tree.num_tool_calls(b.parent) >= self.env.max_tool_calls:  # this call would exceed the limit
                self.counts["limit_hits"] += 1
                node.info["limit"] = True
                if self.env.limit_mode == "end":
                    node.end = TurnEnd.ERROR
                    continue
                parsed = ParsedTurn(kind=TurnKind.INVALID, error="limit", message=self.env.limit_notice())
            node.end = TurnEnd.TOOL_CALL
            node.tool_call = parsed.query if parsed.kind == TurnKind.TOOL_CALL else None
            self.counts["invalid_turns"] += parsed.kind == TurnKind.INVALID and parsed.error != "limit"
            calls.append((b, n, ctx, parsed))
        return calls

    def _open_after_tools(self, calls: list[_Call], results: list[ToolResult]) -> list[Branch]:
        """Append each observation and open the next turn (or end the path when no room is left)."""
        out: list[Branch] = []
        for (b, n, ctx, parsed), res in zip(calls, results, strict=True):
            tree = self.trees[b.tree]
            node = tree.nodes[n]
            if parsed.kind == TurnKind.TOOL_CALL:
                self.counts["tool_calls"] += 1
                self.counts["tool_errors"] += not res.ok
                node.info["tool"] = tool_info(res)
            obs_ids = list(self.env.observation_ids(res.observation))
            nxt = ctx + obs_ids
            if len(nxt) - len(tree.prompt_ids) >= self.cfg.max_response_tokens or len(nxt) >= self.engine.max_model_len:
                node.end = TurnEnd.TRUNCATED  # no room left for another turn after this observation
                node.info["truncated"] = "after_observation"
                continue
            out.append(
                Branch(b.tree, n, obs_ids, res.observation, node.group, nxt, turn_seed(b.seed, 0), round=b.round)
            )
        return out

    # --- tools --------------------------------------------------------------------------------------
    def _run_tools(self, calls: list[ParsedTurn]) -> list[ToolResult]:
        """``env.run_tools`` on the whole phase; should the env break its never-raise contract, fall back to one
        call per thread with ``cfg.tool_timeout_s`` each, so one bad tool cannot stop the batch."""
        if not calls:
            return []
        try:
            results = list(self.env.run_tools(calls))
            if len(results) != len(calls):
                raise RuntimeError(f"env.run_tools returned {len(results)} results for {len(calls)} calls")
            return results
        except Exception as exc:  # counted (rollout/tool_fallbacks) and logged: a broken env is never silent
            self.counts["tool_fallbacks"] += 1
            log.warning("env.run_tools raised %s: %s; running this phase's %d calls one by one", type(exc).__name__,
                        exc, len(calls))
        pool = ThreadPoolExecutor(self.cfg.tool_workers, thread_name_prefix="at2po-tool")
        futures = [pool.submit(self.env.run_tools, [c]) if c.kind == TurnKind.TOOL_CALL else None for c in calls]
        out: list[ToolResult] = []
        for c, fut in zip(calls, futures, strict=True):
            if fut is None:  # corrective observations need no tool
                out.append(ToolResult(observation=c.message or self.env.failure_observation(c, "error"), ok=True))
                continue
            tool = c.tool or self.env.tool_name
            try:
                out.append(fut.result(timeout=self.cfg.tool_timeout_s)[0])
            except FutureTimeout:
                out.append(ToolResult(self.env.failure_observation(c, "timeout"), ok=False, error="timeout",
                                      detail=f"no answer within rollout.tool_timeout_s={self.cfg.tool_timeout_s}",
                                      tool=tool))
            except Exception as exc:
                out.append(ToolResult(self.env.failure_observation(c, "error"), ok=False,
                                      error=f"tool_error: {type(exc).__name__}: {exc}", tool=tool))
        pool.shutdown(wait=False, cancel_futures=True)
        return out
