"""The turn parser: well-formed calls/answers, every class of malformed output, and never raising."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from at2po.agent.env import TurnKind
from at2po.agent.protocol import (
    RESULT_CLOSE,
    RESULT_OPEN,
    find_boxed,
    format_answer_turn,
    format_search_turn,
    parse_turn,
    strip_results,
)


def test_search_turn_roundtrip():
    p = parse_turn(format_search_turn("I need the capital.", "  capital of   France "))
    assert p.kind == TurnKind.TOOL_CALL
    assert p.query == "capital of France"  # whitespace collapsed
    assert p.error is None and p.message is None


def test_answer_turn_roundtrip():
    p = parse_turn(format_answer_turn("Found it.", "Paris"))
    assert p.kind == TurnKind.ANSWER and p.answer == "Paris"


def test_answer_without_boxed_is_still_an_answer():
    # The trajectory ends; the reward (not the parser) scores the missing \boxed{} as a format failure.
    p = parse_turn("<think>x</think><answer>Paris</answer>")
    assert p.kind == TurnKind.ANSWER and p.answer is None


def test_answer_with_nested_braces():
    p = parse_turn(r"<think>x</think><answer>The answer is \boxed{\{1, 2\} \cup {3}}</answer>")
    assert p.kind == TurnKind.ANSWER and p.answer == r"\{1, 2\} \cup {3}"


@pytest.mark.parametrize(
    "text, error, needle",
    [
        ("<think>still thinking", "unclosed_tag", "<think>"),
        ("<think>x</think><search>capital of fr", "unclosed_tag", "<search>"),
        ("<think>x</think><answer>\\boxed{Paris}", "unclosed_tag", "<answer>"),
        ("<think>x</think><search>   </search>", "empty_query", "empty"),
        ("<search>a</search><search>b</search>", "multiple_calls", "2 search calls"),
        ("<search>a <search>b</search>", "nested_tags", "<search> inside <search>"),
        ("<think>I will <search>q</search></think>", "nested_tags", "<search> inside <think>"),
        ("<think>x</think><search>q</search>\n<result>Doc 1 fake</result>", "self_result", "<result>"),
        ("<think>x</think> the answer is Paris", "no_action", "no action"),
        ("", "no_action", "no action"),
        ("x</think><search>q</search>", "stray_close", "</think>"),
        ("<answer>\\boxed{a}</answer><answer>\\boxed{b}</answer>", "multiple_answers", "2 answers"),
        ("<answer>\\boxed{a}</answer><search>q</search>", "search_and_answer", "Either search or answer"),
    ],
)
def test_malformed_turns_are_classified(text, error, needle):
    p = parse_turn(text)
    assert p.kind == TurnKind.INVALID
    assert p.error == error
    # the corrective observation is a <result> block that names what was wrong
    assert p.message is not None and p.message.strip().startswith(RESULT_OPEN)
    assert p.message.strip().endswith(RESULT_CLOSE)
    assert needle in p.message
    assert len(p.message) < 300  # short


def test_no_action_can_end_the_trajectory():
    p = parse_turn("I think it is Paris.", no_action="end")
    assert p.kind == TurnKind.NO_ACTION and p.message is None


def test_find_boxed():
    assert find_boxed(r"\boxed{a{b}c}") == "a{b}c"
    assert find_boxed(r"\boxed {spaced}") == "spaced"
    assert find_boxed(r"\boxed{first} then \boxed{last}") == "last"
    assert find_boxed(r"\boxed{unbalanced") is None
    assert find_boxed("no box") is None
    assert find_boxed(r"\boxed{}") == ""


def test_strip_results_removes_observations_only():
    text = "<think>a</think><search>q</search>\n<result>\n<answer>\\boxed{fake}</answer>\n</result>\n<think>b</think>"
    assert "fake" not in strip_results(text)
    assert "<think>b</think>" in strip_results(text)


_tags = st.sampled_from(
    ["<think>", "</think>", "<search>", "</search>", "<answer>", "</answer>", "<result>", "</result>"]
    + ["\\boxed{", "}", "{"]
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(_tags, st.text(max_size=8)), max_size=12))
def test_parser_never_raises_and_is_consistent(parts):
    p = parse_turn("".join(parts))
    assert p.kind in set(TurnKind)
    if p.kind == TurnKind.TOOL_CALL:
        assert p.query and p.query == " ".join(p.query.split())
    if p.kind == TurnKind.INVALID:
        assert p.error and p.message and RESULT_OPEN in p.message
