"""Shared pieces of the rollout tests: the small corpus and questions, the tiny model's training texts, and a
SearchEnv whose turn parsing is scripted so a random model makes tool calls."""

from __future__ import annotations

from at2po.agent.env import ParsedTurn, QAExample, TurnKind
from at2po.agent.protocol import (
    INSTRUCTION,
    format_answer_turn,
    format_observation,
    format_passages,
    format_search_turn,
)
from at2po.agent.retrievers.corpus import Document
from at2po.agent.search_env import SearchEnv

DOCS = [
    Document("d1", "Paris", "Paris is the capital and largest city of France."),
    Document("d2", "Berlin", "Berlin is the capital of Germany and its largest city."),
    Document("d3", "Rome", "Rome is the capital city of Italy, founded in 753 BC."),
    Document("d4", "Madrid", "Madrid is the capital of Spain and lies on the Manzanares river."),
    Document("d5", "Lisbon", "Lisbon is the capital of Portugal, on the Tagus estuary."),
]
QUESTIONS = [
    QAExample("What is the capital of France?", ["Paris"], id="q1"),
    QAExample("What is the capital of Germany?", ["Berlin"], id="q2"),
    QAExample("Which city was founded in 753 BC?", ["Rome"], id="q3"),
]


def tiny_texts() -> list[str]:
    texts = [INSTRUCTION] + [q.question for q in QUESTIONS]
    for d in DOCS:
        texts.append(format_search_turn(f"I should look up {d.title}.", f"capital {d.title}"))
        texts.append(format_observation(format_passages([(d.title, d.text)])))
        texts.append(format_answer_turn("I know it now.", d.title))
    return texts * 3 + ["héllo wörld ✓ 日本"]


class ScriptedCallEnv(SearchEnv):
    """The real SearchEnv, except that a turn of the (random) tiny model is *read* as a search call with
    probability ~``p_call`` (decided by a hash of the turn text, so it is deterministic) and as an answer otherwise.

    A random model never writes well-formed tags; this lets the driver's tool-call path (real BM25 searches,
    observations, call limits, failures) run with it. Everything else is SearchEnv's.
    """

    stop_strings = ("e",)  # random text ends a turn after a few tokens (exercises stop strings across tokens)

    def __init__(self, *a, p_call: float = 0.75, **kw) -> None:
        super().__init__(*a, **kw)
        self.p_call = p_call

    def parse_turn(self, text: str) -> ParsedTurn:
        h = sum(ord(c) * (i + 1) for i, c in enumerate(text)) % 1000
        if h < 1000 * self.p_call:
            return ParsedTurn(kind=TurnKind.TOOL_CALL, query=f"capital {DOCS[h % len(DOCS)].title}")
        return ParsedTurn(kind=TurnKind.ANSWER, answer=None)
