"""The language of the synthetic world: relations, the sentences that state them, and the question templates.

Both the generator (``world.py``) and the scripted expert (``expert.py``) use these tables — the generator to
write documents and questions, the expert to *read* them (parse a question into head entity + relation path,
read a relation's object out of a retrieved sentence). Keeping one regular template per relation / path is
deliberate: a tiny model can learn it by SFT in a minute.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from itertools import pairwise

KINDS: tuple[str, ...] = ("country", "city", "person", "company")

# relation -> (subject kind, object kind); every relation is functional (exactly one object per subject).
RELATIONS: dict[str, tuple[str, str]] = {
    "born_in": ("person", "city"),
    "works_for": ("person", "company"),
    "founded_by": ("company", "person"),
    "based_in": ("company", "city"),
    "in_country": ("city", "country"),
    "capital": ("country", "city"),
}

# The sentence stating a fact; documents are made of these, and the expert reads them back.
FACTS: dict[str, str] = {
    "born_in": "{s} was born in {o}.",
    "works_for": "{s} works for {o}.",
    "founded_by": "{s} was founded by {o}.",
    "based_in": "{s} is based in {o}.",
    "in_country": "{s} is a city in {o}.",
    "capital": "The capital of {s} is {o}.",
}

# What the expert says it is looking for before searching {s} (its <think> text).
PLANS: dict[str, str] = {
    "born_in": "the birth city of {s}",
    "works_for": "the company {s} works for",
    "founded_by": "the founder of {s}",
    "based_in": "the city where {s} is based",
    "in_country": "the country of {s}",
    "capital": "the capital of {s}",
}

# Question templates per relation path ({x} = the head entity's name); hops = len(path).
QUESTIONS: dict[tuple[str, ...], str] = {
    ("in_country",): "Which country is the city {x} in?",
    ("born_in",): "In which city was {x} born?",
    ("works_for",): "Which company does {x} work for?",
    ("founded_by",): "Who founded {x}?",
    ("based_in",): "In which city is {x} based?",
    ("capital",): "What is the capital of {x}?",
    ("born_in", "in_country"): "In which country was {x} born?",
    ("works_for", "founded_by"): "Who founded the company that {x} works for?",
    ("works_for", "based_in"): "In which city is the company that {x} works for based?",
    ("founded_by", "born_in"): "In which city was the founder of {x} born?",
    ("based_in", "in_country"): "In which country is {x} based?",
    ("in_country", "capital"): "What is the capital of the country where {x} is?",
    ("founded_by", "born_in", "in_country"): "In which country was the founder of {x} born?",
    ("works_for", "based_in", "in_country"): "In which country is the company that {x} works for based?",
    ("works_for", "founded_by", "born_in"): "In which city was the founder of the company that {x} works for born?",
    ("born_in", "in_country", "capital"): "What is the capital of the country where {x} was born?",
    ("works_for", "founded_by", "born_in", "in_country"):
        "In which country was the founder of the company that {x} works for born?",
    ("works_for", "based_in", "in_country", "capital"):
        "What is the capital of the country where the company that {x} works for is based?",
    ("founded_by", "born_in", "in_country", "capital"):
        "What is the capital of the country where the founder of {x} was born?",
}

MAX_HOPS: int = max(len(path) for path in QUESTIONS)


def _check_tables() -> None:
    for path in QUESTIONS:
        for a, b in pairwise(path):
            if RELATIONS[a][1] != RELATIONS[b][0]:
                raise AssertionError(f"question path {path}: {a} does not chain into {b}")


_check_tables()


def _template_regex(template: str) -> re.Pattern[str]:
    literal = [re.escape(p) for p in template.split("{x}")]
    return re.compile("^" + "(?P<x>.+?)".join(literal) + "$")


# Most specific template first: "In which city was the founder of {x} born?" must win over
# "In which city was {x} born?" (whose {x} would otherwise swallow "the founder of ...").
_QUESTION_PARSERS: list[tuple[re.Pattern[str], tuple[str, ...]]] = [
    (_template_regex(t), path)
    for path, t in sorted(QUESTIONS.items(), key=lambda kv: -len(kv[1].replace("{x}", "")))
]


@dataclass(frozen=True)
class ParsedQuestion:
    head: str  # the named entity the chain starts from
    path: tuple[str, ...]  # relations to follow, in order


def parse_question(question: str) -> ParsedQuestion | None:
    """Head entity and relation path of a world question (None when no template matches)."""
    q = " ".join(question.split())
    for regex, path in _QUESTION_PARSERS:
        m = regex.match(q)
        if m:
            return ParsedQuestion(head=m.group("x"), path=path)
    return None


def read_fact(relation: str, subject: str, text: str) -> str | None:
    """The object of ``relation`` for ``subject`` stated in ``text`` (a document), or None if not stated."""
    s_pat = re.escape(subject)
    pattern = re.escape(FACTS[relation]).replace(r"\{s\}", s_pat).replace(r"\{o\}", r"([^.]+?)")
    m = re.search(r"(?:^|(?<=\s))" + pattern, text)
    return m.group(1).strip() if m else None
