"""A seeded synthetic multi-hop world: fictional countries, cities, people and companies, one short document per
entity, and 1- to 4-hop questions whose answers need chained searches.

``make_world(out_dir, seed, **knobs)`` writes (see ``WorldFiles``)::

    corpus.jsonl   {id, title, text}                         one document per entity (+ distractors)
    train.jsonl    {id, question, golden_answers, data_source, hops}
    test.jsonl     same shape; no test answer chain appears inside any train chain
    sft.jsonl      the scripted expert's demonstrations (``expert.py``) on ``n_sft`` further questions, disjoint
                   from train and test (so RL on train.jsonl does not start from memorised trajectories)
    index/         the BM25 index of corpus.jsonl (``at2po.agent.retrievers.build_index``)
    world.json     the knobs and statistics (entity counts, hop mix, expert solve rate, ...)

Everything is drawn from ``random.Random(seed)`` in a fixed order, so one seed gives byte-identical files.
"""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from at2po.agent.datasets import write_jsonl
from at2po.agent.world_names import NameGenerator
from at2po.agent.world_schema import FACTS, MAX_HOPS, QUESTIONS, RELATIONS

DATA_SOURCE = "world"


class WorldConfig(BaseModel):
    """Size and difficulty knobs of the world (defaults: 276 entities, 500 train / 100 test questions, 500 demos)."""

    model_config = ConfigDict(extra="forbid")

    seed: int = 0
    n_countries: int = Field(6, ge=1)
    n_cities: int = Field(30, ge=1)
    n_people: int = Field(200, ge=1)
    n_companies: int = Field(40, ge=1)
    n_train: int = Field(500, ge=0)
    n_test: int = Field(100, ge=0)
    n_sft: int = Field(500, ge=0, description="expert demonstrations, on questions outside train and test")
    # Weights of 1-, 2-, 3- (and, with a 4th weight, 4-) hop questions (normalised), the same in train and test.
    # Three weights keep the default worlds byte-identical to the worlds made before 4-hop questions existed.
    hops: tuple[float, ...] = (0.3, 0.4, 0.3)
    distractors: int = Field(0, ge=0, description="extra documents that mention entities but state no relation")
    name_similarity: float = Field(0.0, ge=0.0, le=1.0, description="prob. a name reuses/varies an earlier one")
    # Expert demonstrations (sft.jsonl): the fraction of demos with a deliberate mistake.
    expert_noise: float = Field(0.1, ge=0.0, le=1.0)
    topk: int = Field(3, ge=1, description="passages per search in the demonstrations (EnvConfig.topk)")
    max_obs_tokens: int = Field(512, ge=16, description="observation budget used for the demos (EnvConfig)")

    @model_validator(mode="after")
    def _check(self) -> WorldConfig:
        if self.n_cities < self.n_countries:
            raise ValueError(f"n_cities ({self.n_cities}) must be >= n_countries ({self.n_countries}): "
                             "every country needs a capital")
        if self.n_people < self.n_companies + 1:
            raise ValueError(f"n_people ({self.n_people}) must exceed n_companies ({self.n_companies}): "
                             "every company has its own founder")
        if not 1 <= len(self.hops) <= MAX_HOPS or any(h < 0 for h in self.hops) or sum(self.hops) <= 0:
            raise ValueError(f"hops must be 1 to {MAX_HOPS} non-negative weights (for 1-, 2-, ... hop questions) "
                             f"with a positive sum, got {self.hops}")
        return self


@dataclass
class Entity:
    id: str
    kind: str  # country | city | person | company
    name: str
    facts: dict[str, str] = field(default_factory=dict)  # relation -> object entity id


@dataclass(frozen=True)
class Question:
    id: str
    question: str
    answer: str
    hops: int
    path: tuple[str, ...]
    chain: tuple[str, ...]  # entity ids head → answer (len = hops + 1)

    def row(self) -> dict[str, Any]:
        """The QA row written to train/test.jsonl (FlashRAG shape + hops)."""
        return {"id": self.id, "question": self.question, "golden_answers": [self.answer],
                "data_source": DATA_SOURCE, "hops": self.hops}


@dataclass
class World:
    config: WorldConfig
    entities: dict[str, Entity]
    documents: list[dict[str, str]]  # {id, title, text}
    train: list[Question]
    test: list[Question]
    sft: list[Question]  # the questions the expert demonstrates (disjoint from train and test)


# ---- entities and documents -------------------------------------------------------------------------------------
def _make_entities(cfg: WorldConfig, rng: random.Random, names: NameGenerator) -> dict[str, Entity]:
    ents: dict[str, Entity] = {}

    def add(kind: str, i: int, name: str) -> Entity:
        e = Entity(f"{kind}-{i}", kind, name)
        ents[e.id] = e
        return e

    countries = [add("country", i, names.place()) for i in range(cfg.n_countries)]
    cities = [add("city", i, names.place()) for i in range(cfg.n_cities)]
    people = [add("person", i, names.person()) for i in range(cfg.n_people)]
    companies = [add("company", i, names.company()) for i in range(cfg.n_companies)]
    # Cities go round-robin over a shuffled country order so every country has a city; its first is the capital.
    order = countries[:]
    rng.shuffle(order)
    for i, city in enumerate(cities):
        country = order[i % len(order)]
        city.facts["in_country"] = country.id
        country.facts.setdefault("capital", city.id)
    for p in people:
        p.facts["born_in"] = rng.choice(cities).id
    founders = rng.sample(people, len(companies))
    for c, f in zip(companies, founders, strict=True):
        c.facts["founded_by"] = f.id
        c.facts["based_in"] = rng.choice(cities).id
    founded = {f.id: c.id for c, f in zip(companies, founders, strict=True)}
    for p in people:
        # A founder works elsewhere, so "who founded the company that X works for?" never answers X itself.
        choices = [c for c in companies if c.id != founded.get(p.id)]
        p.facts["works_for"] = rng.choice(choices).id
    return ents


# One document per entity kind: the fact sentences of its relations (1–2 sentences; the country adds a lead-in so
# its name appears often enough to win BM25 rank 1 against the cities that mention it).
_DOC_RELATIONS: dict[str, tuple[str, ...]] = {
    "country": ("capital",),
    "city": ("in_country",),
    "person": ("born_in", "works_for"),
    "company": ("founded_by", "based_in"),
}


def _document(e: Entity, ents: dict[str, Entity]) -> dict[str, str]:
    sentences = [f"{e.name} is a country."] if e.kind == "country" else []
    sentences += [FACTS[r].format(s=e.name, o=ents[e.facts[r]].name) for r in _DOC_RELATIONS[e.kind]]
    return {"id": e.id, "title": e.name, "text": " ".join(sentences)}


def _distractors(n: int, ents: dict[str, Entity], rng: random.Random, names: NameGenerator) -> list[dict[str, str]]:
    """Documents about events that mention a person and a place without stating any relation: they compete in
    retrieval and offer a wrong-but-plausible entity to a reader that does not check which document it reads."""
    people = [e for e in ents.values() if e.kind == "person"]
    cities = [e for e in ents.values() if e.kind == "city"]
    countries = [e for e in ents.values() if e.kind == "country"]
    docs = []
    for i in range(n):
        w, p = names.word(), rng.choice(people).name
        if i % 2 == 0:
            title, text = f"{w} Festival", f"The {w} Festival is held in {rng.choice(cities).name}. {p} opened it."
        else:
            title, text = f"{w} Prize", f"The {w} Prize was won by {p}. It is given in {rng.choice(countries).name}."
        docs.append({"id": f"misc-{i}", "title": title, "text": text})
    return docs


# ---- questions --------------------------------------------------------------------------------------------------
def _all_questions(ents: dict[str, Entity]) -> list[Question]:
    """Every (path, head) question with a cycle-free chain, in a fixed order."""
    out = []
    for path, template in QUESTIONS.items():
        head_kind = RELATIONS[path[0]][0]
        for e in ents.values():
            if e.kind != head_kind:
                continue
            chain = [e.id]
            for r in path:
                chain.append(ents[chain[-1]].facts[r])
            if len(set(chain)) < len(chain):  # e.g. the capital of the country a capital city is in
                continue
            name = "-".join(path)
            out.append(Question(id=f"{name}:{e.id}", question=template.format(x=e.name),
                                answer=ents[chain[-1]].name, hops=len(path), path=path, chain=tuple(chain)))
    return out


def _segments(q: Question) -> set[tuple[str, ...]]:
    """Every contiguous sub-chain (with its relations) of a question: ('a', 'born_in', 'b', 'in_country', 'c')."""
    full = [q.chain[0]]
    for r, e in zip(q.path, q.chain[1:], strict=True):
        full += [r, e]
    return {tuple(full[2 * i : 2 * j + 1]) for i in range(q.hops + 1) for j in range(i + 1, q.hops + 1)}


def _quotas(n: int, weights: tuple[float, ...]) -> list[int]:
    """Largest-remainder split of n into len(weights) integer parts."""
    total = sum(weights)
    raw = [n * w / total for w in weights]
    q = [int(x) for x in raw]
    for i in sorted(range(len(raw)), key=lambda i: (q[i] - raw[i], i))[: n - sum(q)]:
        q[i] += 1
    return q


def _split(
    questions: list[Question], cfg: WorldConfig, rng: random.Random
) -> tuple[list[Question], list[Question], list[Question]]:
    """Pick test questions first, then train and then SFT questions whose chain contains no test chain (so no test
    answer can be read off a train trajectory or a demonstration). Per-hop quotas follow ``cfg.hops``."""
    hop_counts = range(1, len(cfg.hops) + 1)
    pools: dict[int, list[Question]] = {h: [q for q in questions if q.hops == h] for h in hop_counts}
    for h in pools:
        rng.shuffle(pools[h])
    test: list[Question] = []
    for h, k in zip(hop_counts, _quotas(cfg.n_test, cfg.hops), strict=True):
        if k > len(pools[h]):
            raise ValueError(f"n_test asks for {k} {h}-hop questions but the world has {len(pools[h])}; "
                             "grow the world (n_people, n_companies, ...) or lower n_test")
        test += pools[h][:k]
        pools[h] = pools[h][k:]
    test_chains = {s for q in test for s in _segments(q) if len(s) == 2 * q.hops + 1}
    ok = {h: [q for q in pools[h] if not (_segments(q) & test_chains)] for h in pools}
    train: list[Question] = []
    sft: list[Question] = []
    for h, k, j in zip(hop_counts, _quotas(cfg.n_train, cfg.hops), _quotas(cfg.n_sft, cfg.hops), strict=True):
        if k + j > len(ok[h]):
            raise ValueError(f"n_train + n_sft ask for {k + j} {h}-hop questions but only {len(ok[h])} do not "
                             "overlap a test chain; grow the world (n_people, n_companies, ...) or lower n_train / "
                             "n_sft / n_test")
        train += ok[h][:k]
        sft += ok[h][k : k + j]
    return train, test, sft


def generate_world(cfg: WorldConfig) -> World:
    """Entities, documents and the train/test questions of a world (in memory; see ``make_world``)."""
    rng = random.Random(cfg.seed)
    names = NameGenerator(rng, cfg.name_similarity)
    ents = _make_entities(cfg, rng, names)
    docs = [_document(e, ents) for e in ents.values()]
    docs += _distractors(cfg.distractors, ents, rng, names)
    train, test, sft = _split(_all_questions(ents), cfg, rng)
    return World(cfg, ents, docs, train, test, sft)


# ---- files ------------------------------------------------------------------------------------------------------
@dataclass
class WorldFiles:
    out_dir: Path
    corpus: Path
    train: Path
    test: Path
    sft: Path | None
    index: Path | None
    meta: Path
    stats: dict[str, Any]


def make_world(
    out_dir: str | Path,
    seed: int = 0,
    *,
    tokenizer: Any | None = None,
    with_index: bool = True,
    with_sft: bool = True,
    overwrite: bool = True,
    **knobs: Any,
) -> WorldFiles:
    """Generate a world and write corpus/train/test (+ BM25 index, + expert demos) into ``out_dir``.

    ``knobs`` are ``WorldConfig`` fields (n_people, hops, distractors, name_similarity, expert_noise, ...).
    ``tokenizer`` (an HF tokenizer or a path) is the one the demos' observations are truncated with
    (``SearchEnv.observe``); by default a byte-level tokenizer, an upper bound on any byte-level BPE's count, so
    an observation that fits the budget in bytes is the exact text ``SearchEnv.observe`` gives any such model.
    ``with_sft`` needs ``with_index`` (the expert searches the real index).
    """
    cfg = WorldConfig(seed=seed, **knobs)
    t0 = time.perf_counter()
    world = generate_world(cfg)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    corpus = write_jsonl(out / "corpus.jsonl", world.documents)
    train = write_jsonl(out / "train.jsonl", [q.row() for q in world.train])
    test = write_jsonl(out / "test.jsonl", [q.row() for q in world.test])
    kinds = Counter(e.kind for e in world.entities.values())
    stats: dict[str, Any] = {
        "entities": dict(sorted(kinds.items())),
        "documents": len(world.documents),
        "train_hops": dict(sorted(Counter(q.hops for q in world.train).items())),
        "test_hops": dict(sorted(Counter(q.hops for q in world.test).items())),
        "sft_hops": dict(sorted(Counter(q.hops for q in world.sft).items())),
    }
    index = sft = None
    if with_index:
        from at2po.agent.retrievers import build_index

        index = build_index(corpus, out / "index", kind="bm25", overwrite=overwrite)
    if with_sft:
        if index is None:
            raise ValueError("with_sft=True needs with_index=True: the expert searches the BM25 index")
        from at2po.agent.expert import write_demonstrations

        sft, expert_stats = write_demonstrations(
            index, world.sft, out / "sft.jsonl", noise=cfg.expert_noise, seed=cfg.seed, tokenizer=tokenizer,
            topk=cfg.topk, max_obs_tokens=cfg.max_obs_tokens,
        )
        stats["expert"] = expert_stats
    stats["generation_s"] = round(time.perf_counter() - t0, 2)
    meta = out / "world.json"
    # generation_s is the only non-deterministic value; it is kept out of the file so a seed gives identical bytes
    record = {"config": cfg.model_dump(mode="json"), "stats": {k: v for k, v in stats.items() if k != "generation_s"}}
    meta.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return WorldFiles(out, corpus, train, test, sft, index, meta, stats)
