"""ToolEnv: the generic tag protocol, tools run with timeouts and failures as observations, EM reward."""

from __future__ import annotations

import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from at2po.agent.datasets import DatasetError
from at2po.agent.env import ParsedTurn, TurnKind
from at2po.agent.tool_env import ToolEnv


def lookup(key: str) -> str:
    return {"paris": "France", "rome": "Italy"}.get(key.strip().lower(), "")


def boom(arg: str) -> str:
    raise RuntimeError(f"cannot handle {arg}")


@pytest.fixture
def env(calc_tok):
    e = ToolEnv(calc_tok, {"lookup": lookup, "boom": boom, "sleep": lambda a: time.sleep(float(a)) or "woke"},
                "Use <lookup> key </lookup>.", tool_timeout_s=0.5)
    yield e
    e.close()


def test_a_call_an_answer_and_no_action(env):
    call = env.parse_turn("<think>look it up</think>\n<lookup> Paris </lookup>")
    assert (call.kind, call.tool, call.query) == (TurnKind.TOOL_CALL, "lookup", "Paris")
    ans = env.parse_turn("<think>done</think><answer> France </answer><|im_end|>")
    assert (ans.kind, ans.answer) == (TurnKind.ANSWER, "France")
    none = env.parse_turn("<think>hmm</think> I am not sure.")
    assert none.kind == TurnKind.NO_ACTION
    assert env.stop_strings == ("</lookup>", "</boom>", "</sleep>")


@pytest.mark.parametrize("text, error", [
    ("<result> France </result>", "self_result"),
    ("<lookup> a <answer> b </answer> </lookup>", "nested_tags"),
    ("</lookup>", "stray_close"),
    ("<think> x </answer>", "stray_close"),
    ("<lookup> paris", "unclosed_tag"),
    ("<lookup> paris </lookup> <lookup> rome </lookup>", "multiple_actions"),
    ("<lookup> paris </lookup> <answer> France </answer>", "multiple_actions"),
])
def test_malformed_turns_get_a_corrective_observation(env, text, error):
    p = env.parse_turn(text)
    assert (p.kind, p.error) == (TurnKind.INVALID, error)
    assert p.message.strip().startswith("<result> Invalid turn:") and p.message.strip().endswith("</result>")


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(["<lookup>", "</lookup>", "<answer>", "</answer>", "<think>", "</think>",
                                 "<result>", "</result>", "<boom>", "x", " ", "<", ">", "<|im_end|>"]), max_size=12))
def test_parse_never_raises_and_calls_only_known_tools(calc_tok, parts):
    e = ToolEnv(calc_tok, {"lookup": lookup, "boom": boom}, "")
    p = e.parse_turn("".join(parts))
    assert isinstance(p, ParsedTurn)
    assert p.kind != TurnKind.TOOL_CALL or p.tool in ("lookup", "boom")


def test_tools_run_and_failures_are_observations(env):
    calls = [env.parse_turn(t) for t in ("<lookup> rome </lookup>", "<lookup> atlantis </lookup>",
                                         "<boom> x </boom>", "<sleep> 5 </sleep>", "<result> 1 </result>")]
    t0 = time.monotonic()
    res = env.run_tools(calls)
    assert time.monotonic() - t0 < 3  # the hanging call costs its timeout, not its 5 s
    assert [r.status for r in res] == ["ok", "empty", "error", "timeout", "ok"]
    assert "<result> Italy </result>" in res[0].observation
    assert "(no output)" in res[1].observation
    assert "Tool boom failed" in res[2].observation and "RuntimeError: cannot handle x" in res[2].error
    assert "Tool sleep failed: it timed out" in res[3].observation and res[3].tool == "sleep"
    assert res[4].observation == calls[4].message  # an invalid turn's corrective message, no tool ran
    assert [r.tool for r in res[:3]] == ["lookup", "lookup", "boom"]


def test_tools_run_concurrently(calc_tok):
    barrier = threading.Barrier(3, timeout=2)
    e = ToolEnv(calc_tok, {"wait": lambda a: str(barrier.wait())}, "", tool_timeout_s=3)
    res = e.run_tools([e.parse_turn("<wait> x </wait>")] * 3)  # only passes if the three calls overlap
    e.close()
    assert [r.status for r in res] == ["ok"] * 3


def test_time_queued_for_a_worker_does_not_count_against_the_timeout(calc_tok):
    # 6 calls of 0.3 s on 2 workers take 0.9 s; each runs 0.3 s < its 0.5 s timeout: none may time out
    e = ToolEnv(calc_tok, {"nap": lambda a: time.sleep(0.3) or "ok"}, "", tool_workers=2, tool_timeout_s=0.5)
    res = e.run_tools([e.parse_turn("<nap> x </nap>")] * 6)
    assert [r.status for r in res] == ["ok"] * 6
    e.close()


def test_hung_tools_cannot_clog_later_batches(calc_tok):
    release = threading.Event()
    e = ToolEnv(calc_tok, {"hang": lambda a: release.wait(10) and "late", "ok": lambda a: "fine"}, "",
                tool_workers=2, tool_timeout_s=0.2)
    first = e.run_tools([e.parse_turn("<hang> x </hang>")] * 3)  # 2 hang on the workers, 1 never starts
    assert [r.status for r in first] == ["timeout"] * 3
    t0 = time.monotonic()
    assert e.run_tools([e.parse_turn("<ok> y </ok>")])[0].status == "ok"  # a fresh pool, not the hung one
    assert time.monotonic() - t0 < 0.2
    release.set()
    e.close()


def test_long_observations_are_cut_to_max_obs_tokens(calc_tok):
    e = ToolEnv(calc_tok, {"echo": lambda a: a * 50}, "", max_obs_tokens=8)
    obs = e.run_tools([e.parse_turn("<echo> 12 + 34 </echo>")])[0].observation
    body = obs.strip().removeprefix("<result>").removesuffix("</result>")
    assert 0 < len(calc_tok(body, add_special_tokens=False)["input_ids"]) <= 9  # 8, ±1 for re-tokenising the cut


def test_reward_is_normalised_exact_match_of_the_last_answer(env):
    ex = {"question": "Where is Paris?", "answer": "France"}
    text = "<lookup> paris </lookup>\n<result> The Answer is here </result>\n<answer> the france. </answer>"
    assert env.reward(text, ex) == 1.0
    assert env.reward("<answer> Italy </answer>", ex) == 0.0
    assert env.reward("no answer at all", ex) == 0.0
    assert env.reward("<answer>x</answer>", {"question": "q", "answer": ["y", "x"]}) == 1.0  # any gold answer
    assert env.metrics(text, ex) == {"em": 1.0, "format_ok": 1.0, "tool_calls": 1.0}
    # an answer inside an observation is the tool's, not the model's; one in a rejected turn does not count
    assert env.final_answer("<result> <answer> France </answer> </result>") is None
    nested = "<think> it is <answer> France </answer> </think>"
    assert env.parse_turn(nested).kind == TurnKind.INVALID
    assert env.reward(nested, ex) == 0.0 and env.metrics(nested, ex)["format_ok"] == 0.0


def test_a_user_reward_replaces_exact_match(calc_tok):
    e = ToolEnv(calc_tok, {"lookup": lookup}, "", reward_fn=lambda answer, ex: len(answer or "") / 10)
    assert e.reward("<answer> abcde </answer>", {"question": "q"}) == 0.5
    assert e.example_from_row({"question": "q"}) == {"question": "q"}  # no answer key needed with a reward_fn


def test_rows_are_checked_with_their_place(env, tmp_path):
    with pytest.raises(DatasetError, match=r"data\.jsonl:2: missing or empty 'question'"):
        p = tmp_path / "data.jsonl"
        p.write_text('{"question": "Where is Rome?", "answer": "Italy"}\n{"answer": "x"}\n')
        env.load_examples(str(p))
    assert env.load_examples(str(p), limit=1) == [{"question": "Where is Rome?", "answer": "Italy"}]
    with pytest.raises(DatasetError, match="missing 'answer'"):
        env.example_from_row({"question": "q"}, "row 3")


def test_tool_names_are_checked(calc_tok):
    with pytest.raises(ValueError, match="at least one tool"):
        ToolEnv(calc_tok, {}, "")
    for bad in ("answer", "my tool", "<x>"):
        with pytest.raises(ValueError, match="must be an identifier"):
            ToolEnv(calc_tok, {bad: lookup}, "")
