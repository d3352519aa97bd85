"""Fictional names for the synthetic world: short pronounceable words built from syllables.

Retrieval constraint (why the checks below exist): the scripted expert queries an entity by its name and must get
that entity's own document at BM25 rank 1. BM25 sees lower-cased, stop-worded, stemmed tokens, so

- every name word must survive tokenisation (not an English stopword, ≥ 3 letters) and must not stem to a token
  the document templates use ("born", "work", "citi", ...);
- a one-word name (city, country) must be a token no other name uses, otherwise a person called "Tarok Velk"
  would outrank the city "Tarok" (their document repeats the token more often);
- two multi-word names must not have the same set of stemmed tokens.

The ``similarity`` knob makes names deliberately confusable *within* these rules: people share surnames,
companies share a stem with a different suffix, and places get one-letter variants of existing place names.
"""

from __future__ import annotations

import random

import Stemmer
from bm25s.stopwords import STOPWORDS_EN_PLUS

_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "kr", "st", "dr", "tr")
_VOWELS = ("a", "e", "i", "o", "u")
_CODAS = ("", "", "", "k", "l", "m", "n", "r", "s", "t")
COMPANY_SUFFIXES: tuple[str, ...] = ("Labs", "Group", "Motors", "Foods", "Bank", "Media", "Energy", "Games")
# Tokens the document / question templates use; a name word stemming to one of these would collide in BM25.
TEMPLATE_WORDS: tuple[str, ...] = (
    "born", "works", "work", "founded", "based", "city", "country", "capital", "company", "festival", "prize",
    "held", "opened", "won", "founder", "which", "who", "what",
)  # fmt: skip

_STEM = Stemmer.Stemmer("english")


def stem(word: str) -> str:
    """The BM25 index's view of one word (lower-case + Snowball English stem)."""
    return _STEM.stemWord(word.lower())


class NameGenerator:
    """Draws unique names under the retrieval constraints above; deterministic for a given ``rng``."""

    def __init__(self, rng: random.Random, similarity: float = 0.0) -> None:
        if not 0.0 <= similarity <= 1.0:
            raise ValueError(f"name_similarity must be in [0, 1], got {similarity}")
        self.rng = rng
        self.similarity = similarity
        reserved = {stem(w) for w in TEMPLATE_WORDS + COMPANY_SUFFIXES} | set(STOPWORDS_EN_PLUS)
        self._used_stems: set[str] = set(reserved)  # every stem any name word (or template) uses
        self._single_words: list[str] = []  # one-word place names (variants are drawn from these)
        self._surnames: list[str] = []
        self._company_stems: list[str] = []
        self._names: set[str] = set()
        self._token_sets: set[frozenset[str]] = set()

    def _syllable(self) -> str:
        return self.rng.choice(_ONSETS) + self.rng.choice(_VOWELS) + self.rng.choice(_CODAS)

    def _fresh_word(self) -> str:
        """A new capitalised 2-syllable word whose stem no name or template has used."""
        for _ in range(10_000):
            w = (self._syllable() + self._syllable()).capitalize()
            if 4 <= len(w) <= 7 and stem(w) not in self._used_stems:
                self._used_stems.add(stem(w))
                return w
        raise RuntimeError("name space exhausted; make the world smaller")

    def _variant(self, word: str) -> str | None:
        """``word`` with one vowel changed (e.g. Tarok -> Tarek), if that yields an unused stem."""
        spots = [i for i, c in enumerate(word.lower()) if c in _VOWELS]
        for _ in range(20):
            i = self.rng.choice(spots)
            v = self.rng.choice([x for x in _VOWELS if x != word[i].lower()])
            w = (word[:i] + v + word[i + 1 :]).capitalize()
            if stem(w) not in self._used_stems:
                self._used_stems.add(stem(w))
                return w
        return None

    def _register(self, name: str) -> str:
        tokens = frozenset(stem(w) for w in name.split())
        if name in self._names or tokens in self._token_sets:
            raise RuntimeError(f"duplicate name {name!r}")  # cannot happen: words are fresh or combined uniquely
        self._names.add(name)
        self._token_sets.add(tokens)
        return name

    def _similar(self) -> bool:
        return self.similarity > 0 and self.rng.random() < self.similarity

    def place(self) -> str:
        """A one-word city / country name (a one-letter variant of an earlier place with prob. ``similarity``)."""
        word = None
        if self._single_words and self._similar():
            word = self._variant(self.rng.choice(self._single_words))
        word = word or self._fresh_word()
        self._single_words.append(word)
        return self._register(word)

    def person(self) -> str:
        """'First Last'; the surname is an earlier person's with prob. ``similarity`` (a shared BM25 token)."""
        first = self._fresh_word()
        last = self.rng.choice(self._surnames) if self._surnames and self._similar() else None
        if last is None:
            last = self._fresh_word()
            self._surnames.append(last)
        return self._register(f"{first} {last}")

    def company(self) -> str:
        """'Stem Suffix'; the stem is an earlier company's (with another suffix) with prob. ``similarity``."""
        if self._company_stems and self._similar():
            base = self.rng.choice(self._company_stems)
            taken = {n.split()[1] for n in self._names if n.split()[0] == base and len(n.split()) == 2}
            free = [s for s in COMPANY_SUFFIXES if s not in taken]
            if free:
                return self._register(f"{base} {self.rng.choice(free)}")
        base = self._fresh_word()
        self._company_stems.append(base)
        return self._register(f"{base} {self.rng.choice(COMPANY_SUFFIXES)}")

    def word(self) -> str:
        """A fresh word (distractor document titles)."""
        return self._fresh_word()
