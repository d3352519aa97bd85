"""Question builders for the real-text benchmark (``wiki.py``): every question's answer is checked to appear in
the text of its evidence article in the offline Wikipedia corpus.

Sources (``data_source`` of the rows):

- ``fanoutqa``: FanOutQA dev sub-questions (human-written, with the Wikipedia article the annotator used) whose
  evidence article is in the corpus and whose single-value answer appears in that article's lead section.
- ``wiki_desc``: one-hop questions generated from the articles' short Wikipedia descriptions with a few fixed
  patterns ("1960 film by Alfred Hitchcock" → "Who made the 1960 film Psycho?"; "Capital and largest city of
  Namibia" → "What is the capital of Namibia?"; "American inventor (1847–1931)" → "What nationality was Thomas
  Edison?"; "City in Marrakesh–Safi, Morocco" → "In which country is Marrakesh?"; "Country in North Africa" →
  "In which region of the world is Algeria?").
- ``wiki_2hop``: two of those facts chained through a second article ("What nationality was the creator of the
  1960 film Psycho?" needs Psycho's article, then Alfred Hitchcock's; "What is the capital of the country where
  Marrakesh is?" needs Marrakesh's, then Morocco's or Rabat's).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path

from at2po.agent.rewards import normalize_answer


@dataclass(frozen=True)
class WikiQuestion:
    question: str
    answer: str
    data_source: str
    hops: int
    evidence: tuple[str, ...]  # corpus titles (ids) that support the answer, in reading order
    kind: str = ""  # the template / pattern that produced it (caps are per kind)
    bridge: str | None = None  # two-hop: the entity that links the hops (the creator, the city's country)


def package_file(package: str, relative: str) -> Path:
    """A data file shipped inside an installed package, located without importing it (fanoutqa's __init__
    imports optional dependencies we do not need)."""
    spec = find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {package!r} is not installed (needed for {relative})")
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing from the installed {package!r} package")
    return path


def appears_in(answer: str, text: str) -> bool:
    """SQuAD-normalised answer occurs as whole words in the normalised text."""
    a = normalize_answer(answer)
    return bool(a) and f" {a} " in f" {normalize_answer(text)} "


def _clean_title(title: str) -> str:
    return re.sub(r"\s*\([^)]*\)$", "", title)  # "Psycho (1960 film)" -> "Psycho"


def _lower_first(s: str) -> str:
    return s[:1].lower() + s[1:] if s[:1].isupper() and not s[1:2].isupper() else s


# ---- FanOutQA ---------------------------------------------------------------------------------------------------
def fanoutqa_questions(summaries: dict[str, dict], dev_path: Path | None = None) -> Iterator[WikiQuestion]:
    """FanOutQA dev sub-questions (any depth) answerable from their evidence article's lead section."""
    data = json.loads((dev_path or package_file("fanoutqa", "data/fanout-final-dev.json")).read_text("utf-8"))

    def walk(qs: list[dict]) -> Iterator[dict]:
        for q in qs:
            yield q
            yield from walk(q.get("decomposition") or [])

    for top in data:
        for sq in walk(top["decomposition"]):
            ev, ans = sq.get("evidence"), sq.get("answer")
            if not ev or ev["title"] not in summaries or isinstance(ans, (bool, list, dict)) or ans is None:
                continue
            ans = str(ans)
            if appears_in(ans, summaries[ev["title"]]["extract"]) and not appears_in(ans, sq["question"]):
                yield WikiQuestion(sq["question"].strip(), ans, "fanoutqa", 1, (ev["title"],), "fanoutqa")


# ---- descriptions -----------------------------------------------------------------------------------------------
_PERSON = re.compile(r"^(?P<nat>[A-Z][a-z]+(?:-[A-Z][a-z]+)?) (?P<role>[a-z][^()]*?) \([^()]*\d{3,4}[^()]*\)$")
_WORK = re.compile(
    r"^(?P<what>[\dA-Za-z][^()]*?) (?:(?P<verb>directed|written|composed|painted|designed|sculpted|developed) )?"
    r"by (?P<who>[A-Z][^,()]+)$"
)
_CAPITAL = re.compile(r"^Capital(?: city)?(?: and (?:largest|most populous) city)? of (?P<country>[^(),]+)$")
_CITY = re.compile(r"^(?:City|Capital city|Town|Port city|Municipality)\b[^()]* (?:in|of) (?P<loc>[^()]+)$")
_COUNTRY = re.compile(r"^(?:Country|Sovereign state|Island country|Landlocked country) in (?P<region>[^(),]+)$")


# Descriptions like "Composer (1756–1791)", "Sufi poet (…)" or "King of … (…)" start with a capitalised word that
# is not a nationality: keep only demonyms (by their endings, "Greek"/"Thai"-style exceptions listed) and drop
# religions, which share the endings.
_DEMONYM_END = ("an", "ish", "ese", "ch", "i", "ss", "ic")
_DEMONYM_EXTRA = {"Greek", "Thai", "Swiss", "Dutch", "French", "Scots", "Inuit", "Welsh", "Soviet", "Argentine",
                  "Florentine", "Mongol", "Breton", "Anglo", "Austro", "Franco", "Sino", "Afro"}
_NOT_DEMONYM = {"Sufi", "Confucian", "Christian", "Lutheran", "Anglican", "Buddhist", "Hindu", "Catholic",
                "Muslim", "Islamic", "Victorian", "Renaissance", "Republican", "Vedic", "Benedictine", "Shi"}


def is_demonym(word: str) -> bool:
    """``"Canadian-American"`` → True, ``"Composer"`` / ``"Sufi"`` → False (each hyphen part must be one)."""
    parts = word.split("-")
    return all(
        (p in _DEMONYM_EXTRA or p.endswith(_DEMONYM_END)) and p not in _NOT_DEMONYM for p in parts
    )


def _strip_the(s: str) -> str:
    return s[4:] if s.startswith("the ") else s


def description_questions(summaries: dict[str, dict]) -> Iterator[WikiQuestion]:
    """One-hop (``wiki_desc``) and two-hop (``wiki_2hop``) questions from article descriptions, in title order."""
    text = {t: v["extract"] for t, v in summaries.items()}
    desc = {t: (v.get("description") or "").strip() for t, v in summaries.items()}
    countries = {t for t, d in desc.items() if _COUNTRY.match(d)}
    nationality: dict[str, str] = {}
    capital_of: dict[str, str] = {}  # country title -> capital title
    for t in sorted(summaries):
        d = desc[t]
        is_person = summaries[t].get("topic") in ("People", "Uncategorized")
        if (m := _PERSON.match(d)) and is_person and is_demonym(m["nat"]):
            if appears_in(m["nat"], text[t]):
                nationality[t] = m["nat"]
                q = f"What nationality was {_clean_title(t)}?"
                yield WikiQuestion(q, m["nat"], "wiki_desc", 1, (t,), "nationality")
        elif (m := _CAPITAL.match(d)) and (c := _strip_the(m["country"].strip())) in countries:
            if not (appears_in(c, text[t]) and appears_in(_clean_title(t), text[t])):
                continue
            capital_of[c] = t
            yield WikiQuestion(f"What is the capital of {c}?", _clean_title(t), "wiki_desc", 1, (t,), "capital")
        elif (m := _COUNTRY.match(d)) and len(m["region"].split()) <= 3 and appears_in(m["region"], text[t]):
            q = f"In which region of the world is {_clean_title(t)}?"
            yield WikiQuestion(q, m["region"], "wiki_desc", 1, (t,), "region")
    city_country: dict[str, str] = {}
    for t in sorted(summaries):
        d = desc[t]
        if (m := _CITY.match(d)) and (c := _strip_the(m["loc"].split(",")[-1].strip())) in countries:
            if appears_in(c, text[t]) and c != t:
                city_country[t] = c
                yield WikiQuestion(f"In which country is {_clean_title(t)}?", c, "wiki_desc", 1, (t,), "city_country")
        elif (m := _WORK.match(d)) and appears_in(m["who"], text[t]):
            what, who = _lower_first(m["what"]), m["who"].strip()
            verb = m["verb"] or "made"
            yield WikiQuestion(f"Who {verb} the {what} {_clean_title(t)}?", who, "wiki_desc", 1, (t,), "creator")
            if who in nationality:
                q = f"What nationality was the creator of the {what} {_clean_title(t)}?"
                yield WikiQuestion(q, nationality[who], "wiki_2hop", 2, (t, who), "creator_nationality", bridge=who)
    for city, country in sorted(city_country.items()):
        cap = capital_of.get(country)
        if cap and cap != city:
            q = f"What is the capital of the country where {_clean_title(city)} is?"
            yield WikiQuestion(q, _clean_title(cap), "wiki_2hop", 2, (city, cap), "city_capital", bridge=country)
