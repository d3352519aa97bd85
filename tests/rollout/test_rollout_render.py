"""Rendering a rolled-out tree as text and as a picture."""

from __future__ import annotations

import io

from rich.console import Console
from rollout_fixtures import QUESTIONS

from at2po.rollout.driver import RolloutConfig, rollout
from at2po.rollout.hf_engine import HFEngine
from at2po.rollout.render import layout, print_tree, render_png


def test_render_text_and_png(tiny, scripted_env, tmp_path):
    model, tok = tiny
    cfg = RolloutConfig(mode="tree", m=3, l=1, k=2, max_turn_tokens=16, max_response_tokens=600)
    tree = rollout(HFEngine(model, tok), scripted_env, QUESTIONS[:1], cfg).trees[0]
    buf = io.StringIO()
    print_tree(tree, Console(file=buf, width=200, color_system=None))
    text = buf.getvalue()
    assert QUESTIONS[0].question[:20] in text
    assert text.count("H=") == len(tree.nodes) - 1  # every turn, with its entropy
    assert text.count("r=") == len(tree.leaves())
    assert "fork of #" in text or "new chain" in text
    if any(n.tool_call for n in tree.nodes):
        assert "🔎" in text
    x, y = layout(tree)
    for i, n in enumerate(tree.nodes[1:], 1):
        assert y[i] == y[n.parent] - 1
    assert sorted(x[tree.leaves()].tolist()) == list(range(len(tree.leaves())))
    png = render_png(tree, tmp_path / "tree.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
