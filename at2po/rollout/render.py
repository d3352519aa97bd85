"""Look at what exploration did: a turn tree as rich text in the terminal, or as a picture (matplotlib).

Each turn shows its depth, its entropy H(n) (mean −log-prob of its sampled tokens, the quantity the entropy-guided
expansion ranks on), its length, how it ended, its tool call, whether it was forked from another node (and in which
round), and the reward on leaves. Branch points are nodes with more than one child.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.markup import escape
from rich.tree import Tree as RichTree

from at2po.core.tree import TurnEnd, TurnTree

_END_STYLE = {
    TurnEnd.TOOL_CALL: "cyan",
    TurnEnd.ANSWER: "green",
    TurnEnd.TRUNCATED: "yellow",
    TurnEnd.ERROR: "red",
    TurnEnd.NONE: "white",
}


def _snippet(text: str, n: int) -> str:
    text = " ".join("".join(c if c.isprintable() else " " for c in text).split())
    return text if len(text) <= n else "…" + text[-(n - 1):]


def _label(tree: TurnTree, i: int, max_text: int) -> str:
    node = tree.nodes[i]
    if i == 0:
        ex = tree.meta.get("example")
        q = getattr(ex, "question", "") if ex is not None else ""
        return f"[bold]root[/] prompt {len(tree.prompt_ids)} tok {escape(_snippet(q, max_text))}"
    parts = [f"[dim]#{i}[/]", f"H={node.entropy:.2f}", f"{len(node.gen_ids)} tok"]
    if node.obs_ids:
        parts.append(f"[dim]obs {len(node.obs_ids)}[/]")
    parts.append(f"[{_END_STYLE[node.end]}]{node.end.value}[/]")
    if node.tool_call:
        tool = node.info.get("tool", {})
        flag = "" if tool.get("ok", True) else f" [red]✗ {escape(str(tool.get('error')))}[/]"
        parts.append(f"🔎 [cyan]{escape(_snippet(node.tool_call, 40))}[/]{flag}")
    if "forked_from" in node.info:
        src = node.info["forked_from"]
        parts.append(f"[magenta]⑂ {'new chain' if src == 0 else f'fork of #{src}'} (round {node.info.get('round')})[/]")
    if len(node.children) > 1:
        parts.append(f"[magenta]branch ×{len(node.children)}[/]")
    if not node.children:
        r = node.reward
        style = "green" if r > 0 else ("red" if r < 0 else "white")
        parts.append(f"[bold {style}]r={r:+.2f}[/]")
    if max_text > 0:
        parts.append(f"[dim]{escape(_snippet(node.text, max_text))}[/]")
    return " ".join(parts)


def render_text(tree: TurnTree, max_text: int = 50) -> RichTree:
    """A ``rich.tree.Tree`` of the turn tree (print it with ``rich.print`` or :func:`print_tree`)."""
    out = RichTree(_label(tree, 0, max_text))
    stack: list[tuple[int, RichTree]] = [(c, out) for c in reversed(tree.root.children)]
    while stack:
        i, parent = stack.pop()
        branch = parent.add(_label(tree, i, max_text))
        stack.extend((c, branch) for c in reversed(tree.nodes[i].children))
    return out


def print_tree(tree: TurnTree, console: Console | None = None, max_text: int = 50) -> None:
    (console or Console()).print(render_text(tree, max_text))


def layout(tree: TurnTree) -> tuple[np.ndarray, np.ndarray]:
    """Node positions: leaves at consecutive x in depth-first order, parents centred over their children,
    y = −depth.  Returns (x [N], y [N])."""
    n = len(tree.nodes)
    x, y = np.zeros(n), np.zeros(n)
    nxt = 0
    order: list[int] = []
    stack = [0]
    while stack:  # pre-order DFS
        i = stack.pop()
        order.append(i)
        stack.extend(reversed(tree.nodes[i].children))
    for i in order:
        y[i] = -tree.depth(i)
        if not tree.nodes[i].children:
            x[i] = nxt
            nxt += 1
    for i in reversed(order):  # children before parents
        if tree.nodes[i].children:
            x[i] = np.mean([x[c] for c in tree.nodes[i].children])
    return x, y


def render_png(tree: TurnTree, path: str | Path, title: str | None = None, dpi: int = 120) -> Path:
    """Draw the tree to ``path`` (PNG/SVG/PDF by suffix): node colour and label = entropy H(n), ■ = tool call,
    ● = answer, ▲ = truncated, ✕ = ended by the env; dashed magenta edges = forked branches; leaves labelled with
    their reward; branch points ringed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    x, y = layout(tree)
    h = np.array([0.0] + [nd.entropy for nd in tree.nodes[1:]])
    n_leaves = max(1, len(tree.leaves()))
    depth = int(-y.min()) if len(y) else 1
    fig, ax = plt.subplots(figsize=(min(4 + 0.45 * n_leaves, 40), 2.5 + 1.1 * depth))
    for i, nd in enumerate(tree.nodes[1:], 1):
        forked = "forked_from" in nd.info
        ax.plot([x[nd.parent], x[i]], [y[nd.parent], y[i]], ls="--" if forked else "-",
                color="magenta" if forked else "0.6", lw=1.4 if forked else 1.0, zorder=1)
        if nd.obs_ids:
            ax.text((x[nd.parent] + x[i]) / 2, (y[nd.parent] + y[i]) / 2, f"obs {len(nd.obs_ids)}",
                    fontsize=6, color="0.4", ha="center", va="center")
    markers = {
        TurnEnd.TOOL_CALL: "s", TurnEnd.ANSWER: "o", TurnEnd.TRUNCATED: "^", TurnEnd.ERROR: "X", TurnEnd.NONE: "o"
    }
    nonroot = np.arange(1, len(tree.nodes))
    vmin, vmax = (float(h[1:].min()), float(h[1:].max())) if len(nonroot) else (0.0, 1.0)
    sc: Any = None
    for end, mk in markers.items():
        idx = [i for i in nonroot if tree.nodes[i].end == end]
        if idx:
            sc = ax.scatter(x[idx], y[idx], c=h[idx], cmap="viridis", vmin=vmin, vmax=max(vmax, vmin + 1e-6),
                            marker=mk, s=90, edgecolors="k", linewidths=0.5, zorder=3)
    ax.scatter([x[0]], [y[0]], marker="*", s=220, c="gold", edgecolors="k", zorder=3)
    branch = [i for i in range(len(tree.nodes)) if len(tree.nodes[i].children) > 1]
    ax.scatter(x[branch], y[branch], s=260, facecolors="none", edgecolors="magenta", linewidths=1.2, zorder=2)
    for i in nonroot:
        nd = tree.nodes[i]
        ax.annotate(f"H {nd.entropy:.2f}", (x[i], y[i]), xytext=(0, 9), textcoords="offset points", ha="center",
                    fontsize=6, color="0.25")
        if nd.tool_call:
            bad = not nd.info.get("tool", {}).get("ok", True)
            ax.annotate(_snippet(nd.tool_call, 18) + (" ✗" if bad else ""), (x[i], y[i]), xytext=(8, -3),
                        textcoords="offset points", fontsize=6, color="red" if bad else "teal")
        if not nd.children:
            r = nd.reward
            ax.annotate(f"r={r:+.0f}" if float(r).is_integer() else f"r={r:+.2f}", (x[i], y[i]), xytext=(0, -14),
                        textcoords="offset points", ha="center", fontsize=7,
                        color="green" if r > 0 else ("red" if r < 0 else "0.3"))
    if len(x):  # room for the right-most node's query label before the colour bar
        ax.set_xlim(float(x.min()) - 0.6, float(x.max()) + 1.2)
    if sc is not None:
        fig.colorbar(sc, ax=ax, label="turn entropy H(n)", fraction=0.03, pad=0.02)
    handles = [
        Line2D([], [], marker=m, ls="", color="0.5", label=e.value) for e, m in markers.items() if e != TurnEnd.NONE
    ]
    handles.append(Line2D([], [], ls="--", color="magenta", label="forked branch"))
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.01), fontsize=7, ncol=5, frameon=False)
    ex = tree.meta.get("example")
    ax.set_title(title or (getattr(ex, "question", "") if ex is not None else "turn tree"), fontsize=9)
    ax.set_yticks(range(0, -depth - 1, -1), [f"turn {d}" if d else "prompt" for d in range(depth + 1)])
    ax.set_xticks([])
    for s in ("top", "right", "bottom"):
        ax.spines[s].set_visible(False)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi)
    plt.close(fig)
    return out
