"""Rewards: SQuAD normalisation (unicode-aware), EM/F1 over several golds, \\boxed{} extraction, paper reward."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from at2po.agent.rewards import (
    compute_score,
    count_tool_calls,
    exact_match,
    extract_answer,
    f1_score,
    is_valid_format,
    normalize_answer,
    qa_metrics,
)


@pytest.mark.parametrize(
    "raw, norm",
    [
        ("The Eiffel Tower", "eiffel tower"),
        ("  a   cat,  an   apple!  ", "cat apple"),
        ("U.S.A.", "usa"),
        ("Theatre", "theatre"),  # 'the' only as a whole word
        ("«Zürich»", "zürich"),  # unicode punctuation dropped, accent kept
        ("Zu\u0308rich", "zürich"),  # decomposed ü == composed ü (NFKC)
        ("ＰＡＲＩＳ", "paris"),  # full-width letters
        ("Straße", "strasse"),  # casefold
        ("“Hello” — world…", "hello world"),
        ("", ""),
    ],
)
def test_normalize_answer(raw, norm):
    assert normalize_answer(raw) == norm


def test_exact_match_any_gold():
    golds = ["Barack Obama", "Obama", "Barack Hussein Obama II"]
    assert exact_match("obama.", golds) == 1.0
    assert exact_match("the Barack Obama", golds) == 1.0
    assert exact_match("Michelle Obama", golds) == 0.0
    assert exact_match(None, golds) == 0.0
    assert exact_match("Paris", "paris") == 1.0  # a single gold string is accepted


def test_exact_match_unicode():
    assert exact_match("São Paulo", ["Sa\u0303o Paulo"]) == 1.0
    assert exact_match("Sao Paulo", ["São Paulo"]) == 0.0


def test_f1_score_hand_cases():
    assert f1_score("Barack Obama", ["Obama"]) == pytest.approx(2 * 0.5 * 1 / 1.5)
    assert f1_score("the president Obama", ["Barack Obama", "president"]) == pytest.approx(2 * 0.5 * 1 / 1.5)
    assert f1_score("Paris", ["London"]) == 0.0
    assert f1_score("yes", ["no"]) == 0.0
    assert f1_score("yes it is", ["yes"]) == 0.0  # yes/no need an exact match
    assert f1_score("New York City", ["new york city"]) == 1.0
    assert f1_score(None, ["x"]) == 0.0


def test_extract_answer():
    assert extract_answer("<think>x</think><answer>The answer is \\boxed{Paris}</answer>") == "Paris"
    assert extract_answer("<answer>\\boxed{f(\\{a\\}) = {b}}</answer>") == "f(\\{a\\}) = {b}"
    assert extract_answer("<answer>Paris</answer>") is None  # no \boxed
    assert extract_answer("\\boxed{Paris}") is None  # no <answer>
    assert extract_answer("<answer>\\boxed{Par</answer>") is None  # unbalanced
    # the last answer block counts; boxes inside observations do not
    text = "<answer>\\boxed{A}</answer> <answer>\\boxed{B}</answer>"
    assert extract_answer(text) == "B"
    obs = "<search>q</search>\n<result>\n<answer>\\boxed{Fake}</answer>\n</result>\n"
    assert extract_answer(obs) is None


def _trajectory(final: str) -> str:
    return (
        "<think>I should search.</think>\n<search>capital of France</search>\n\n<result>\nDoc 1(Title: Paris) Paris "
        "is the capital of France.\n</result>\n\n<think>Paris.</think>\n" + final
    )


def test_compute_score_paper_reward():
    gold = ["Paris"]
    assert compute_score(_trajectory("<answer>The answer is \\boxed{Paris}</answer><|im_end|>"), gold) == 1.0
    assert compute_score(_trajectory("<answer>The answer is \\boxed{Lyon}</answer>"), gold) == 0.0
    assert compute_score(_trajectory("<answer>Paris</answer>"), gold) == -1.0  # no \boxed
    assert compute_score(_trajectory(""), gold) == -1.0  # no answer
    assert compute_score("<answer>\\boxed{Paris}</answer>", gold) == -1.0  # no <think>
    assert not is_valid_format("<think>x</think>")


def test_qa_metrics():
    m = qa_metrics(_trajectory("<answer>The answer is \\boxed{the Paris}</answer>"), ["Paris", "City of Light"])
    assert m == {"em": 1.0, "f1": 1.0, "format_ok": 1.0, "answered": 1.0, "tool_calls": 1.0, "reward": 1.0}
    # evaluation does not require the format: a bare <answer> is still scored
    m = qa_metrics("<answer>Paris France</answer>", ["Paris"])
    assert m["em"] == 0.0 and m["f1"] == pytest.approx(2 / 3) and m["format_ok"] == 0.0 and m["reward"] == -1.0
    assert qa_metrics("nothing", ["Paris"])["answered"] == 0.0


def test_count_tool_calls_ignores_observation_text():
    text = "<search>a</search><result>\nuse <search> q </search> to search\n</result><search>b</search>"
    assert count_tool_calls(text) == 2


@given(st.text(max_size=40))
def test_normalize_is_idempotent_and_em_reflexive(s):
    n = normalize_answer(s)
    assert normalize_answer(n) == n
    assert exact_match(s, [s]) == 1.0
    assert 0.0 <= f1_score(s, [s, "x"]) <= 1.0
