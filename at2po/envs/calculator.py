"""A calculator agent: arithmetic questions, a ``<calc>`` tool, exact-match reward — a complete example env on
``at2po.ToolEnv`` that trains on a CPU in minutes.

The warm start is imperfect on purpose: half of the demonstrations (``make_demos``) call the calculator and copy
its result, the other half answer "in their head" with noisy mental arithmetic (wrong by a few units). A small
model cannot compute, so after SFT its head answers are mostly wrong while its calculator answers are right:
RL has something to learn — call the tool — and the reward says so. Tags are written with spaces around their
content (``<calc> 47 * 23 </calc>``) so that the numbers tokenise as in the question: copying them is then easy.
"""

from __future__ import annotations

import ast
import operator
import random
from pathlib import Path
from typing import Any

from at2po.agent.tool_env import ToolEnv

INSTRUCTION = (
    "Answer the arithmetic question. Think inside <think> and </think>. You can use a calculator by writing "
    "<calc> expression </calc>; its result comes back between <result> and </result>. Give the final answer "
    "inside <answer> and </answer>."
)
_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.FloorDiv: operator.floordiv,
        ast.Mod: operator.mod, ast.USub: operator.neg, ast.UAdd: operator.pos}


def calculate(expression: str) -> str:
    """Integer arithmetic (+ − × // %, parentheses) of ``expression``, safely (an AST walk, no ``eval``);
    a bad expression raises ``ValueError`` (the env turns it into an error observation)."""
    def ev(node: ast.AST) -> int:
        if isinstance(node, ast.Constant) and isinstance(node.value, int) and not isinstance(node.value, bool):
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            left, right = ev(node.left), ev(node.right)
            if isinstance(node.op, ast.Mult) and abs(left) * abs(right) > 10**12:
                raise ValueError("result too large")
            if right == 0 and isinstance(node.op, (ast.FloorDiv, ast.Mod)):
                raise ValueError("division by zero")
            return _OPS[type(node.op)](left, right)
        if isinstance(node, ast.UnaryOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](ev(node.operand))
        raise ValueError(f"unsupported expression: {ast.dump(node)[:40]}")

    if len(expression) > 200:
        raise ValueError("expression too long")
    try:
        tree = ast.parse(expression.replace("×", "*").strip(), mode="eval")
    except SyntaxError as exc:
        raise ValueError(f"not an expression: {expression!r}") from exc
    return str(ev(tree.body))


class CalculatorEnv(ToolEnv):
    """``ToolEnv`` with one tool, ``calc`` (:func:`calculate`); examples ``{"question": ..., "answer": ...}``."""

    def __init__(self, tokenizer: Any, **kwargs: Any) -> None:
        kwargs.setdefault("max_tool_calls", 3)
        kwargs.setdefault("max_obs_tokens", 16)
        super().__init__(tokenizer, {"calc": calculate}, INSTRUCTION, **kwargs)


def make_dataset(n: int, seed: int = 0, max_operand: int = 49, ops: str = "+-") -> list[dict[str, Any]]:
    """``n`` questions "What is a + b?" (one of ``ops`` ⊆ "+-*") with operands in [2, max_operand]."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        a, b = rng.randint(2, max_operand), rng.randint(2, max_operand)
        op = rng.choice(ops)
        rows.append({"id": f"calc-{seed}-{i}", "question": f"What is {a} {op} {b}?",
                     "answer": calculate(f"{a} {op} {b}"), "expression": f"{a} {op} {b}"})
    return rows


def make_demos(rows: list[dict[str, Any]], seed: int = 0, tool_frac: float = 0.5) -> list[dict[str, Any]]:
    """SFT demonstrations (``at2po.sft`` format): a ``tool_frac`` share call the calculator and copy its result;
    the others answer directly, off by 1–9 (the warm start's weakness that RL can fix)."""
    rng = random.Random(seed)
    demos = []
    for r in rows:
        if rng.random() < tool_frac:
            turns = [
                {"text": f"<think>I will use the calculator.</think>\n<calc> {r['expression']} </calc>",
                 "observation": f"\n<result> {r['answer']} </result>\n"},
                {"text": f"<think>The result is {r['answer']}.</think>\n<answer> {r['answer']} </answer>",
                 "observation": None},
            ]
        else:
            guess = int(r["answer"]) + rng.choice([-1, 1]) * rng.randint(1, 9)
            turns = [{"text": f"<think>I can do this in my head.</think>\n<answer> {guess} </answer>",
                      "observation": None}]
        demos.append({"question": r["question"], "answer": r["answer"], "turns": turns})
    return demos


def tiny_model(out_dir: str | Path, seed: int = 0, vocab_size: int = 1024, **arch: Any) -> Path:
    """A fresh tiny model for this task (byte-level BPE tokenizer trained on its text + a random 2-layer Llama)."""
    from at2po.models.tiny import build_tiny_model

    rows = make_dataset(2000, seed=10_000 + seed)
    texts = [INSTRUCTION] + [t["text"] + (t["observation"] or "") for d in make_demos(rows, seed) for t in d["turns"]]
    texts += [r["question"] for r in rows]
    arch = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 2, **arch}
    return build_tiny_model(texts, Path(out_dir), vocab_size=vocab_size, seed=seed, **arch)
