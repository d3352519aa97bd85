"""A scripted expert for the synthetic world: it answers questions by *using the search tool* — never by looking
up the answer — and records what it did as demonstrations in the exact rollout protocol (SFT warm start).

For a question it (1) parses the template into a head entity and a relation path (``world_schema``), then per hop
(2) writes a search turn ``<think>I need the founder of X.</think>\\n<search>X</search>``, (3) sends that text
through the env's own parser and tool path (``SearchEnv.parse_turn`` → ``SearchEnv.run_tools``, whose
observation is ``SearchEnv.observe(passages)``, the same formatting RL rollouts get), (4) reads the returned
text: finds the passage titled X and the sentence stating the relation, and continues with its object. The last
turn is ``format_answer_turn``. If the passage is missing, it answers "unknown" (an unsolved question).

Noise (``noise`` = fraction of demonstrations with one deliberate mistake, so a warm-started policy is imperfect):
``wrong_query`` (a garbled query first, then a retry), ``early_answer`` (answers an intermediate entity of a
multi-hop chain), ``wrong_answer`` (finishes the chain but answers another entity it saw).
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from at2po.agent.env import AgentEnv, TurnKind
from at2po.agent.protocol import RESULT_CLOSE, RESULT_OPEN, format_answer_turn, format_search_turn
from at2po.agent.rewards import exact_match
from at2po.agent.world_schema import FACTS, PLANS, RELATIONS, parse_question, read_fact

NOISE_KINDS: tuple[str, ...] = ("wrong_query", "early_answer", "wrong_answer")
UNKNOWN = "unknown"
_DOC_RE = re.compile(r"^Doc \d+\(Title: (?P<title>.*?)\) (?P<text>.*)$", re.MULTILINE)


@dataclass
class Demo:
    """One demonstration: the sft.jsonl row (``row()``) plus what the expert concluded."""

    id: str
    question: str
    golden_answers: list[str]
    turns: list[dict[str, str | None]] = field(default_factory=list)  # {"text", "observation"}
    noise: str | None = None
    prediction: str | None = None
    obs_bytes_max: int = 0

    def row(self) -> dict[str, Any]:
        return {"id": self.id, "question": self.question, "golden_answers": self.golden_answers,
                "turns": self.turns, "noise": self.noise}

    @property
    def correct(self) -> bool:
        return self.prediction is not None and exact_match(self.prediction, self.golden_answers) == 1.0


def read_passages(observation: str) -> list[tuple[str, str]]:
    """(title, text) of each passage in an observation ``<result> Doc 1(Title: t) text ... </result>``."""
    body = observation.split(RESULT_OPEN, 1)[-1].split(RESULT_CLOSE, 1)[0]
    return [(m.group("title"), m.group("text")) for m in _DOC_RE.finditer(body)]


def _garble(name: str, rng: random.Random) -> str:
    """A plausible typo query: one interior letter dropped from every word (usually retrieves nothing useful)."""
    words = []
    for w in name.split():
        i = rng.randrange(1, len(w) - 1) if len(w) > 2 else 0
        words.append(w[:i] + w[i + 1 :] if len(w) > 2 else w)
    return " ".join(words)


class ScriptedExpert:
    """Solves world questions with an ``AgentEnv``'s real tool (``parse_turn`` + ``run_tools``)."""

    def __init__(self, env: AgentEnv, noise: float = 0.0, noise_kinds: tuple[str, ...] = NOISE_KINDS) -> None:
        if not 0.0 <= noise <= 1.0:
            raise ValueError(f"noise must be in [0, 1], got {noise}")
        bad = [k for k in noise_kinds if k not in NOISE_KINDS]
        if bad or not noise_kinds:
            raise ValueError(f"noise_kinds must be a non-empty subset of {NOISE_KINDS}, got {noise_kinds}")
        self.env = env
        self.noise = noise
        self.noise_kinds = tuple(noise_kinds)

    # ---- one search turn through the env ------------------------------------------------------------------------
    def _search(self, demo: Demo, think: str, query: str) -> list[tuple[str, str]]:
        text = format_search_turn(think, query)
        parsed = self.env.parse_turn(text)
        if parsed.kind != TurnKind.TOOL_CALL:  # the protocol helpers and the parser disagree: a real bug
            raise RuntimeError(f"expert turn not parsed as a tool call ({parsed.kind}, {parsed.error}): {text!r}")
        obs = self.env.run_tools([parsed])[0].observation
        demo.turns.append({"text": text, "observation": obs})
        demo.obs_bytes_max = max(demo.obs_bytes_max, len(obs.encode("utf-8")))
        return read_passages(obs)

    def _answer(self, demo: Demo, think: str, answer: str) -> Demo:
        demo.turns.append({"text": format_answer_turn(think, answer), "observation": None})
        demo.prediction = answer
        return demo

    @staticmethod
    def _lookup(passages: list[tuple[str, str]], relation: str, entity: str) -> str | None:
        for title, text in passages:
            if title == entity:
                obj = read_fact(relation, entity, text)
                if obj:
                    return obj
        return None

    # ---- a whole question ---------------------------------------------------------------------------------------
    def solve(self, question: str, golden_answers: list[str], qid: str = "", rng: random.Random | None = None) -> Demo:
        """Demonstration for one question (noise drawn from ``rng``; none when ``self.noise == 0``)."""
        rng = rng or random.Random(qid)
        demo = Demo(qid, question, list(golden_answers))
        pq = parse_question(question)
        if pq is None:
            return self._answer(demo, "I do not know how to answer this.", UNKNOWN)
        hops = len(pq.path)
        if self.noise > 0 and rng.random() < self.noise:
            demo.noise = rng.choice(self.noise_kinds)
            if demo.noise == "early_answer" and hops == 1:
                demo.noise = "wrong_answer"  # a 1-hop chain has no intermediate entity to stop at
        bad_hop = rng.randrange(hops)  # where a wrong query happens
        stop_hop = rng.randrange(1, hops) if hops > 1 else hops  # after how many hops an early answer comes
        budget = self.env.max_tool_calls

        entity, think, fact = pq.head, f"I need {PLANS[pq.path[0]].format(s=pq.head)}.", ""
        for i, rel in enumerate(pq.path):
            obj = None
            if demo.noise == "wrong_query" and i == bad_hop and len(demo.turns) + hops - i < budget:
                passages = self._search(demo, think, _garble(entity, rng))
                obj = self._lookup(passages, rel, entity)
                if obj is None:  # the usual case: the garbled query missed; say so and retry
                    think = f"The results do not mention {entity}. I will search for {entity} again."
            if obj is None:
                if len(demo.turns) >= budget:
                    return self._answer(demo, "I am out of searches.", UNKNOWN)
                passages = self._search(demo, think, entity)
                obj = self._lookup(passages, rel, entity)
            if obj is None:
                return self._answer(demo, f"The results do not say {PLANS[rel].format(s=entity)}.", UNKNOWN)
            if demo.noise == "wrong_answer" and i == hops - 1:
                obj = self._distractor(passages, rel, entity, obj, pq.head, rng)
            fact = FACTS[rel].format(s=entity, o=obj)
            entity = obj
            if demo.noise == "early_answer" and i + 1 == stop_hop:
                return self._answer(demo, fact, entity)
            if i + 1 < hops:
                think = f"{fact} Now I need {PLANS[pq.path[i + 1]].format(s=entity)}."
        return self._answer(demo, fact, entity)

    @staticmethod
    def _distractor(passages: list[tuple[str, str]], rel: str, entity: str, right: str, head: str,
                    rng: random.Random) -> str:
        """A wrong answer the expert could have misread from what it saw: another passage's title or the object of
        another relation of the same entity (the head entity's name as the last resort)."""
        seen = [t for t, _ in passages if t not in (entity, right)]
        for title, text in passages:
            if title == entity:
                seen += [o for r in RELATIONS if r != rel and (o := read_fact(r, entity, text)) and o != right]
        return rng.choice(sorted(set(seen))) if seen else head


def byte_tokenizer() -> Any:
    """A byte-level tokenizer with no merges (one token per UTF-8 byte): any byte-level BPE (GPT-2 style, the
    tiny models, SmolLM2) needs at most as many tokens, so a demo observation within budget under this tokenizer
    is exactly what ``SearchEnv.observe`` gives those models."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tok = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<pad>")


def _load_tokenizer(tokenizer: Any | None) -> Any:
    if tokenizer is None:
        return byte_tokenizer()
    if isinstance(tokenizer, (str, Path)):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(tokenizer))
    return tokenizer


def write_demonstrations(
    index_dir: str | Path,
    questions: list[Any],
    out_path: str | Path,
    *,
    noise: float = 0.0,
    seed: int = 0,
    tokenizer: Any | None = None,
    topk: int = 3,
    max_obs_tokens: int = 512,
    max_tool_calls: int = 6,
) -> tuple[Path, dict[str, Any]]:
    """Run the expert over ``questions`` (``world.Question`` objects or QA dicts) against the BM25 index in
    ``index_dir`` and write ``sft.jsonl``. Returns the path and stats: ``solve_rate`` (EM over the noise-free
    demos), ``noise`` counts, ``searches_mean``, ``obs_over_budget_bytes`` (demos whose observation exceeds the
    budget in bytes: 0 means they match ``SearchEnv.observe`` for every byte-level BPE tokenizer)."""
    from at2po.agent.retrievers import load_retriever
    from at2po.agent.search_env import EnvConfig, SearchEnv

    cfg = EnvConfig(topk=topk, max_obs_tokens=max_obs_tokens, max_tool_calls=max_tool_calls, tool_workers=1)
    env = SearchEnv(_load_tokenizer(tokenizer), load_retriever(index_dir), cfg)
    expert = ScriptedExpert(env, noise=noise)
    demos = []
    try:
        for q in questions:
            qd = q.row() if hasattr(q, "row") else q
            rng = random.Random(f"{seed}:{qd['id']}")  # per-question stream: a demo does not depend on the order
            demos.append(expert.solve(qd["question"], qd["golden_answers"], qid=str(qd["id"]), rng=rng))
    finally:
        env.close()
    out = Path(out_path)
    with open(out, "w", encoding="utf-8") as f:
        for d in demos:
            f.write(json.dumps(d.row(), ensure_ascii=False) + "\n")
    clean = [d for d in demos if d.noise is None]
    stats = {
        "demos": len(demos),
        "solve_rate": round(sum(d.correct for d in clean) / max(1, len(clean)), 4),
        "noisy_correct": sum(d.correct for d in demos if d.noise is not None),
        "noise": {k: sum(d.noise == k for d in demos) for k in NOISE_KINDS},
        "searches_mean": round(sum(len(d.turns) - 1 for d in demos) / max(1, len(demos)), 3),
        "obs_over_budget_bytes": sum(d.obs_bytes_max > max_obs_tokens for d in demos),
    }
    return out, stats
