"""StopChecker: checking only candidate tokens finds exactly the stop strings that checking every row finds."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from at2po.rollout.engine import SamplingParams
from at2po.rollout.stops import StopChecker, stop_candidates

STOPS = ("</search>", "</answer>", "ö>", "日本")  # ASCII, straddling, and multi-byte last characters


def brute(tok, stops, gen, t) -> str | None:
    """The reference: decode the row's tail with its newest token and look for every stop string."""
    window = max(len(s.encode()) for s in stops) + 1
    text = tok.decode(list(gen[-(window - 1):]) + [t])
    return next((s for s in stops if s in text), None)


@pytest.fixture(scope="module")
def checker(tiny):
    _, tok = tiny
    return StopChecker(tok, STOPS, len(tok))


def pieces(tok) -> list[list[int]]:
    """Token runs that build stop strings when concatenated: each stop string, its halves, and its bytes."""
    out = []
    for s in STOPS:
        for cut in range(1, len(s)):
            out += [tok.encode(s[:cut], add_special_tokens=False), tok.encode(s[cut:], add_special_tokens=False)]
        out.append(tok.encode(s, add_special_tokens=False))
    return [p for p in out if p]


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_candidates_only_give_the_same_stops_as_every_row(tiny, checker, data):
    _, tok = tiny
    runs = pieces(tok)
    seq: list[int] = []
    for _ in range(data.draw(st.integers(1, 8))):  # random tokens and stop-string fragments, interleaved
        if data.draw(st.booleans()):
            seq += data.draw(st.sampled_from(runs))
        else:
            seq += data.draw(st.lists(st.integers(0, len(tok) - 1), min_size=1, max_size=4))
    gens = [seq[:i] for i in range(len(seq))]  # every step of the sequence as one row of a batch
    got = checker.check(gens, torch.tensor(seq))
    ref = [brute(tok, STOPS, g, t) for g, t in zip(gens, seq, strict=True)]
    end = next((i + 1 for i, s in enumerate(ref) if s is not None), len(seq))  # a real row stops at its first match
    assert got[:end] == ref[:end]


def test_every_stop_string_is_found_where_it_completes(tiny, checker):
    _, tok = tiny
    for s in STOPS:
        seq = tok.encode("some words " + s, add_special_tokens=False)
        gens = [seq[:i] for i in range(len(seq))]
        got = checker.check(gens, torch.tensor(seq))
        assert got[-1] == s and all(g is None for g in got[:-1])


def test_candidates_skip_most_tokens(tiny):
    _, tok = tiny
    mask = stop_candidates(tok, ("</search>", "</answer>"), len(tok))
    assert mask is not None and 0 < int(mask.sum()) < len(tok) // 2  # the fast path does skip work
    assert bool(mask[tok.encode(">", add_special_tokens=False)[-1]])
    assert bool(mask[tok.convert_tokens_to_ids("<|im_end|>")])  # a special token that decodes to text with ">"


def test_ids_beyond_the_tokenizer_are_candidates(tiny):
    _, tok = tiny
    mask = stop_candidates(tok, ("</search>",), len(tok) + 5)  # a model whose embedding is padded
    assert mask is not None and bool(mask[len(tok):].all())


def test_whitespace_ending_stop_checks_every_token(tiny):
    _, tok = tiny
    assert stop_candidates(tok, ("</search>", "\n\n"), len(tok)) is None
    seq = tok.encode("a b\n\nc", add_special_tokens=False)
    gens = [seq[:i] for i in range(len(seq))]
    got = StopChecker(tok, ("\n\n",), len(tok)).check(gens, torch.tensor(seq))
    ref = [brute(tok, ("\n\n",), g, t) for g, t in zip(gens, seq, strict=True)]
    assert got == ref and "\n\n" in got


def test_empty_stop_string_is_rejected():
    with pytest.raises(ValueError, match="empty stop string"):
        SamplingParams(stop=("</search>", ""))
