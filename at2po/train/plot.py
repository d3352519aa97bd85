"""Learning curves of one or several runs (their ``metrics.jsonl``) to a PNG, against step and against the
cumulative generated-token budget, so methods can be compared at equal cost."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from at2po.train.logging import read_metrics

DEFAULT_METRICS: tuple[str, ...] = (
    "rollout/reward_mean", "rollout/em", "eval/em", "actor/entropy", "rollout/generated_tokens"
)


def metric_series(records: list[dict], key: str, x_key: str) -> tuple[list[float], list[float]]:
    """(x, y) of one metric over a run's step records; x = step, or cumulative generated tokens ("tokens")."""
    xs, ys = [], []
    budget = 0.0
    for r in records:
        budget += float(r.get("rollout/generated_tokens") or 0.0)
        v = r.get(key)
        if isinstance(v, (int, float)) and math.isfinite(v):
            xs.append(budget if x_key == "tokens" else float(r["step"]))
            ys.append(float(v))
    return xs, ys


def plot_runs(
    runs: Sequence[str | Path],
    out: str | Path,
    metrics: Sequence[str] = DEFAULT_METRICS,
    x: str = "step",
    labels: Sequence[str] | None = None,
) -> Path:
    """One panel per metric, one line per run. ``x`` is ``step`` or ``tokens`` (cumulative generated tokens)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if x not in ("step", "tokens"):
        raise ValueError(f"x must be 'step' or 'tokens', got {x!r}")
    if not runs:
        raise ValueError("plot_runs: no runs given")
    data = [(labels[i] if labels else Path(r).name, read_metrics(r)) for i, r in enumerate(runs)]
    shown = [m for m in metrics if any(metric_series(recs, m, x)[0] for _, recs in data)]
    if not shown:
        raise ValueError(f"none of the metrics {list(metrics)} was logged by {[str(r) for r in runs]}")
    cols = min(3, len(shown))
    rows = math.ceil(len(shown) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 3.2 * rows), squeeze=False)
    for ax, m in zip(axes.flat, shown, strict=False):
        for label, recs in data:
            xs, ys = metric_series(recs, m, x)
            if xs:
                ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, markersize=3, label=label)
        ax.set_title(m)
        ax.set_xlabel("step" if x == "step" else "generated tokens")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(shown) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8)
    fig.tight_layout()
    p = Path(out)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(p, dpi=110)
    plt.close(fig)
    return p
