"""Demonstrations for the real-text (Wikipedia) benchmark: a protocol warm start for instruction models that
answer in prose (SmolLM2-135M-Instruct ignores the <think>/<search>/<answer> tags untrained, so every RL reward
is −1 and nothing is learned).

The teacher uses the *real* search tool of the run's own env (``SearchEnv.parse_turn`` → ``run_tools`` →
``SearchEnv.observe`` with the run's tokenizer, ``topk`` and ``max_obs_tokens``), so the observations in the
demonstrations are byte-identical to those RL rollouts get. It is privileged in one way only: it knows the gold
answer and the row's ``evidence``/``bridge`` entities, and uses them to decide *when* it has found the answer
(the answer occurs in what it read) and *which* entity to search next. Per question:

- one hop: search the question text; if the answer is not in the results, search the evidence article's title;
- two hops (``bridge``): search the question text (then the first evidence title if the bridge entity was not
  found), then search for the bridge ("Gustave Flaubert"; "capital of France", then "France" if that missed);
- answer with ``<answer>The answer is \\boxed{gold}</answer>`` once the gold answer occurs in an observation.

Questions whose answer never shows up in what the teacher read are left out (``stats["unsolved"]``): a
demonstration never answers from knowledge it did not retrieve.
"""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path
from typing import Any

from at2po.agent.datasets import load_qa, write_jsonl
from at2po.agent.expert import Demo, ScriptedExpert
from at2po.agent.wiki_questions import _clean_title, appears_in


def _found(passages: list[tuple[str, str]], answer: str) -> str | None:
    """Title of the first passage whose title or text contains ``answer`` (whole words, SQuAD-normalised)."""
    return next((t for t, x in passages if appears_in(answer, f"{t} {x}")), None)


class WikiExpert(ScriptedExpert):
    """Solves wiki benchmark rows (``at2po make-wiki``) with the env's real search tool."""

    def solve_row(self, row: dict[str, Any]) -> Demo:
        """A demonstration for one QA row; ``demo.prediction`` is None when the answer was never retrieved."""
        q, gold = row["question"], str(row["golden_answers"][0])
        demo = Demo(str(row.get("id", "")), q, [str(a) for a in row["golden_answers"]])
        evidence = [_clean_title(t) for t in row.get("evidence") or []]
        bridge = row.get("bridge")
        budget = self.env.max_tool_calls

        passages = self._search(demo, f"I need to find out: {q}", q)
        if bridge:  # hop 1: find the bridge entity
            if _found(passages, bridge) is None and evidence and len(demo.turns) < budget:
                think = f"The results do not answer it. I will search for {evidence[0]}."
                passages = self._search(demo, think, evidence[0])
            if _found(passages, bridge) is None or len(demo.turns) >= budget:
                return demo
            if row.get("kind") == "city_capital":
                think, query = f"It is in {bridge}. Now I need the capital of {bridge}.", f"capital of {bridge}"
            else:
                think, query = f"The creator is {bridge}. Now I need the nationality of {bridge}.", bridge
            passages = self._search(demo, think, query)
            if _found(passages, gold) is None and query != bridge and len(demo.turns) < budget:
                passages = self._search(demo, f"The results do not say it. I will search for {bridge}.", bridge)
        elif _found(passages, gold) is None and evidence and len(demo.turns) < budget:
            think = f"The results do not answer it. I will search for {evidence[-1]}."
            passages = self._search(demo, think, evidence[-1])
        title = _found(passages, gold)
        if title is None:
            return demo
        return self._answer(demo, f"According to {title}, the answer is {gold}.", gold)


def qa_rows(path: str | Path) -> list[dict[str, Any]]:
    """QA rows of ``path`` as dicts for :meth:`WikiExpert.solve_row`, read with ``load_qa`` (JSONL or Parquet, bad
    rows raise ``DatasetError`` naming file:line); extra fields such as ``evidence``/``bridge`` come from ``meta``."""
    return [{**ex.meta, "id": ex.id, "question": ex.question, "golden_answers": ex.golden_answers,
             "data_source": ex.data_source} for ex in load_qa(path)]


def write_wiki_demonstrations(
    rows: list[dict[str, Any]], env: Any, out_path: str | Path, limit: int | None = None, seed: int = 0
) -> tuple[Path, dict[str, Any]]:
    """Run :class:`WikiExpert` over ``rows`` (in a ``seed``-shuffled order, so any prefix of the file mixes the
    question kinds) with ``env`` (a ``SearchEnv`` with a retriever) and write the solved demonstrations (the
    ``at2po sft`` format) to ``out_path``, stopping after ``limit`` of them. Returns the path and stats: ``demos``
    written, ``tried``, ``unsolved`` (left out), ``searches_mean`` and per-source counts."""
    expert = WikiExpert(env)
    rows = [rows[i] for i in random.Random(seed).sample(range(len(rows)), len(rows))]
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    solved: list[tuple[dict[str, Any], Demo]] = []
    tried = 0
    for row in rows:
        if limit is not None and len(solved) >= limit:
            break
        tried += 1
        demo = expert.solve_row(row)
        if demo.prediction is not None:
            solved.append((row, demo))
    tmp = write_jsonl(out.with_name(out.name + ".tmp"), [d.row() for _, d in solved])
    tmp.replace(out)  # a killed run never leaves a half-written file at out
    by_source = Counter(str(row.get("data_source", "")) for row, _ in solved)
    stats = {"demos": len(solved), "tried": tried, "unsolved": tried - len(solved),
             "searches_mean": round(sum(len(d.turns) - 1 for _, d in solved) / max(1, len(solved)), 3),
             "by_source": dict(sorted(by_source.items()))}
    return out, stats
