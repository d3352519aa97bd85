"""The calculator example env: safe arithmetic, its data and demonstrations, and AT²PO training on it through the
public API (``examples/calculator_agent.py``) raising the held-out reward and the calculator calls."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest

from at2po.envs.calculator import CalculatorEnv, calculate, make_dataset, make_demos

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "calculator_agent.py"


@pytest.mark.parametrize("expr, value", [("2 + 3 * 4", "14"), ("(2 + 3) * 4", "20"), ("-7 // 2", "-4"),
                                         ("17 % 5", "2"), ("6 × 7", "42"), (" 49 - 50 ", "-1")])
def test_calculate(expr, value):
    assert calculate(expr) == value


@pytest.mark.parametrize("expr", ["__import__('os')", "x + 1", "2 ** 10", "1 / 2", "1.5 + 1", "5 // 0", "5 % 0",
                                  "10**6 * 10**7", "99999999 * 99999999", "1 +", "True + 1", "1" * 201, ""])
def test_calculate_rejects_what_it_does_not_support(expr):
    with pytest.raises(ValueError):
        calculate(expr)


def test_dataset_and_demos():
    rows = make_dataset(50, seed=3)
    assert rows == make_dataset(50, seed=3) != make_dataset(50, seed=4)
    assert all(calculate(r["expression"]) == r["answer"] for r in rows)
    demos = make_demos(rows, seed=0)
    tool = [d for d in demos if len(d["turns"]) == 2]
    head = [d for d in demos if len(d["turns"]) == 1]
    assert 10 < len(tool) < 40 and len(tool) + len(head) == 50
    for d in tool:  # the calculator's answer, copied
        assert f"<result> {d['answer']} </result>" in d["turns"][0]["observation"]
        assert d["turns"][1]["text"].endswith(f"<answer> {d['answer']} </answer>")
    for d in head:  # "mental arithmetic": off by 1-9
        guess = int(d["turns"][0]["text"].split("<answer>")[1].split("</answer>")[0])
        assert 1 <= abs(guess - int(d["answer"])) <= 9


def test_env_scores_the_demonstrations(calc_tok):
    env = CalculatorEnv(calc_tok)
    rows = make_dataset(20, seed=1)
    for d in make_demos(rows, seed=1):
        text = "".join(t["text"] + (t["observation"] or "") for t in d["turns"])
        assert env.reward(text, d) == float(len(d["turns"]) == 2)  # tool demos right, head demos wrong
    call = env.parse_turn("<think>I will use the calculator.</think>\n<calc> 12 + 30 </calc>")
    assert "<result> 42 </result>" in env.run_tools([call])[0].observation
    env.close()


@pytest.mark.slow
def test_training_through_the_public_api_improves_reward_and_tool_use(tmp_path, monkeypatch, capsys):
    """The example (the README's Python block) as a user runs it: SFT on imperfect demos, then 30 AT²PO steps."""
    monkeypatch.chdir(tmp_path)  # it writes runs/calculator/
    ns = runpy.run_path(str(EXAMPLE), run_name="__main__")
    first, last = ns["first"], ns["last"]
    assert ns["result"].steps_done == 30
    assert last["tool_calls"] >= first["tool_calls"] + 0.2  # it learnt to call the calculator ...
    assert last["reward"] > first["reward"]  # ... and that pays
    assert "held-out reward" in capsys.readouterr().out
