"""Tables and plots of a ``benchmarks/compare.py`` grid: ``results.csv`` (one row per run), ``summary.md``
(mean ± std over seeds per row label) and PNGs (held-out EM vs generated tokens, entropy and H_turn vs steps,
turn counts of the final policies, EM by hop count; efficiency: cost per leaf and per step)."""

from __future__ import annotations

import csv
import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from at2po.train.logging import read_metrics
from at2po.train.plot import metric_series


def _override(spec: dict[str, Any], key: str) -> str | None:
    vals = [o.split("=", 1)[1] for o in spec["overrides"] if o.startswith(key + "=")]
    return vals[-1] if vals else None


def _mean(xs: list[float]) -> float:
    xs = [x for x in xs if isinstance(x, (int, float)) and math.isfinite(x)]
    return float(np.mean(xs)) if xs else math.nan


def _hops(test_path: str | None) -> dict[str, int]:
    if not test_path or test_path == "null" or not Path(test_path).is_file():
        return {}
    rows = [json.loads(line) for line in Path(test_path).read_text().splitlines() if line.strip()]
    return {r["id"]: int(r.get("hops", 0)) for r in rows}


def run_row(run: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]:
    """One CSV row for a finished run, plus its per-step records and its final eval records."""
    run_dir = Path(run["run_dir"])
    recs = read_metrics(run_dir)
    steps = [r for r in recs if "rollout/generated_tokens" in r]
    col = lambda k: [float(r[k]) for r in steps if isinstance(r.get(k), (int, float))]
    timed = steps[1:] if len(steps) > 1 else steps  # step 1 includes warm-up (first allocations, caches)
    gen, leaves = sum(col("rollout/generated_tokens")), sum(col("rollout/leaves"))
    row: dict[str, Any] = {
        "table": run["table"], "label": run["label"], "preset": run["preset"], "seed": run["seed"], "size": run["size"],
        "budget": run["budget"], "steps": run["steps_done"], "generated_tokens": gen,
        "prefill_tokens": sum(col("rollout/prefill_tokens")), "leaves": leaves,
        "gen_tokens_per_leaf": gen / leaves if leaves else math.nan,
        "prefill_tokens_per_leaf": sum(col("rollout/prefill_tokens")) / leaves if leaves else math.nan,
        "rollout_s_per_step": _mean([float(r["time/rollout_s"]) for r in timed if "time/rollout_s" in r]),
        "update_s_per_step": _mean([float(r["time/update_s"]) + float(r.get("time/old_logprob_s", 0)) for r in timed
                                    if "time/update_s" in r]),
        "rollout_em_first3": _mean(col("rollout/em")[:3]), "rollout_em_last3": _mean(col("rollout/em")[-3:]),
        "entropy_first3": _mean(col("actor/entropy")[:3]), "entropy_last3": _mean(col("actor/entropy")[-3:]),
        "h_turn_mean": _mean(col("actor/turn_entropy")), "h_turn_last3": _mean(col("actor/turn_entropy")[-3:]),
        "clipfrac_mean": _mean(col("actor/pg_clipfrac")), "clipfrac_turn_mean": _mean(col("actor/pg_clipfrac_turn")),
        "turns_rollout_mean": _mean(col("rollout/turns_mean")),
        "equal_reward_prompt_frac": _mean(col("rollout/equal_reward_prompt_frac")),
        "adv_zero_frac": _mean(col("adv/zero_frac")),
        "wall_s": run["wall_s"], "peak_rss_mb": run["peak_rss_mb"], "peak_cuda_mb": run.get("peak_cuda_mb"),
    }
    final: list[dict[str, Any]] = []
    evals = sorted((run_dir / "eval").glob("step-*.json")) if (run_dir / "eval").is_dir() else []
    if evals:
        first, last = (json.loads(p.read_text()) for p in (evals[0], evals[-1]))
        final = last["records"]
        hops = _hops(_override(run, "data.test"))
        row.update({"em_before": first["overall"]["em"], "em_after": last["overall"]["em"],
                    "f1_after": last["overall"]["f1"], "format_after": last["overall"]["format_ok"],
                    "turns_after": last["overall"]["turns"], "tool_calls_after": last["overall"]["tool_calls"]})
        for h in (1, 2, 3, 4):
            row[f"em_{h}hop"] = _mean([r["em"] for r in final if hops.get(r["id"]) == h])
    return row, recs, final


def _fmt(xs: list[float], digits: int = 3) -> str:
    xs = [x for x in xs if isinstance(x, (int, float)) and math.isfinite(x)]
    if not xs:
        return "–"
    return f"{np.mean(xs):.{digits}f} ± {np.std(xs):.{digits}f}" if len(xs) > 1 else f"{xs[0]:.{digits}f}"


SUMMARY_COLS = {
    "efficiency": [("gen_tokens_per_leaf", 1), ("prefill_tokens_per_leaf", 1), ("leaves", 0), ("rollout_s_per_step", 2),
                   ("update_s_per_step", 2), ("peak_rss_mb", 0), ("peak_cuda_mb", 0)],
    "default": [("em_after", 3), ("em_before", 3), ("em_1hop", 3), ("em_2hop", 3), ("em_3hop", 3), ("em_4hop", 3),
                ("turns_after", 2),
                ("rollout_em_last3", 3), ("entropy_last3", 3), ("h_turn_mean", 3), ("clipfrac_mean", 4),
                ("equal_reward_prompt_frac", 2),
                ("steps", 0), ("generated_tokens", 0)],
}


def write_report(table: str, runs: list[dict[str, Any]], out: Path, command: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    if not runs:
        print("[compare] no finished runs to report")
        return
    parsed = [run_row(r) for r in runs]
    rows = [p[0] for p in parsed]
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    cols = SUMMARY_COLS["efficiency" if table == "efficiency" else "default"]
    by: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by[r["label"]].append(r)
    lines = [f"`{command}`", "", "| row | seeds | " + " | ".join(c for c, _ in cols) + " |",
             "|---|---|" + "---|" * len(cols)]
    for label, rs in by.items():
        lines.append(f"| {label} | {','.join(str(r['seed']) for r in rs)} | "
                     + " | ".join(_fmt([r.get(c) for r in rs], d) for c, d in cols) + " |")
    if table != "efficiency":
        lines += ["", *comparison_lines(table, by)]
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    _plots(table, parsed, out)


def comparison_lines(table: str, by: dict[str, list[dict[str, Any]]], metric: str = "em_after") -> list[str]:
    """Per row: each seed's ``metric``, the mean with its bootstrap 95 % interval, and the paired-by-seed 95 %
    interval of the difference to the reference row — GRPO in the methods and wiki tables, the previous row in the
    ablation, the first row (the paper's default) otherwise."""
    from at2po.core.stats import bootstrap_ci, paired_difference_ci

    labels = list(by)
    vals = {lab: {int(r["seed"]): float(r[metric]) for r in by[lab] if isinstance(r.get(metric), (int, float))}
            for lab in labels}
    ref_name = {"methods": "grpo", "wiki": "grpo"}.get(table)
    out = [f"**{metric}: per seed, mean [95 % bootstrap CI], and the paired-by-seed difference to "
           f"{'`' + ref_name + '`' if ref_name else ('the previous row' if table == 'ablation' else 'the first row')} "
           f"[95 % CI]**", "", "| row | per seed | mean [CI] | difference [CI] |", "|---|---|---|---|"]
    for i, lab in enumerate(labels):
        if ref_name:
            ref = ref_name if ref_name in vals and lab != ref_name else None
        else:
            ref = labels[i - 1] if table == "ablation" and i > 0 else (labels[0] if i > 0 else None)
        per_seed = ", ".join(f"{s}: {v:.3f}" for s, v in sorted(vals[lab].items()))
        m = bootstrap_ci(list(vals[lab].values()))
        diff = f"{paired_difference_ci(vals[lab], vals[ref])} vs {ref}" if ref else "–"
        out.append(f"| {lab} | {per_seed} | {m.mean:.3f} [{m.low:.3f}, {m.high:.3f}] | {diff} |")
    return out


def _plots(table: str, parsed: list[tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(dict.fromkeys(p[0]["label"] for p in parsed))
    colors = {lab: plt.cm.tab10(i % 10) for i, lab in enumerate(labels)}
    if table == "efficiency":
        keys = ["gen_tokens_per_leaf", "prefill_tokens_per_leaf", "rollout_s_per_step", "update_s_per_step", "peak_rss_mb"]
        fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 3.2))
        for ax, k in zip(axes, keys):
            vals = [_mean([p[0].get(k) for p in parsed if p[0]["label"] == lab]) for lab in labels]
            ax.bar(range(len(labels)), vals, color=[colors[lab] for lab in labels])
            ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=8)
            ax.set_title(k, fontsize=9)
        fig.tight_layout()
        fig.savefig(out / "efficiency.png", dpi=100)
        plt.close(fig)
        return

    for name, key, x, title in [
        ("em_vs_tokens.png", "eval/em", "tokens", "held-out EM (greedy) vs generated tokens"),
        ("rollout_em_vs_tokens.png", "rollout/em", "tokens", "training-rollout EM vs generated tokens"),
        ("entropy_vs_steps.png", "actor/entropy", "step", "policy entropy (MC, sampled tokens) vs step"),
        ("hturn_vs_steps.png", "actor/turn_entropy", "step", "H_turn vs step"),
    ]:
        fig, ax = plt.subplots(figsize=(6.5, 4))
        seen: set[str] = set()
        for row, recs, _ in parsed:
            xs, ys = metric_series(recs, key, x)
            if xs:
                lab = row["label"]
                ax.plot(xs, ys, marker="o" if len(xs) < 15 else None, ms=3, lw=1, alpha=0.75, color=colors[lab],
                        label=None if lab in seen else lab)
                seen.add(lab)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("generated tokens" if x == "tokens" else "step")
        ax.grid(alpha=0.3)
        if seen:
            ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / name, dpi=100)
        plt.close(fig)

    # turn counts of the final (greedy) policies, pooled over seeds; EM by hop count, mean ± std over seeds
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    width = 0.8 / max(1, len(labels))
    for i, lab in enumerate(labels):
        turns = [round(r["turns"]) for row, _, fin in parsed if row["label"] == lab for r in fin]
        if turns:
            bins = np.arange(1, max(turns) + 2)
            hist = np.array([np.mean(np.array(turns) == b) for b in bins[:-1]])
            ax1.bar(bins[:-1] + i * width, hist, width, color=colors[lab], label=lab)
        means = [_mean([row.get(f"em_{h}hop") for row, _, _ in parsed if row["label"] == lab]) for h in (1, 2, 3)]
        stds = [float(np.nanstd([row.get(f"em_{h}hop", math.nan) for row, _, _ in parsed if row["label"] == lab]))
                for h in (1, 2, 3)]
        ax2.bar(np.arange(1, 4) + i * width, means, width, yerr=stds, color=colors[lab], label=lab, capsize=2)
    ax1.set_title("turns per question, final policy (greedy, held-out)", fontsize=10)
    ax1.set_xlabel("turns")
    ax2.set_title("held-out EM by hop count (final policy)", fontsize=10)
    ax2.set_xlabel("hops")
    for ax in (ax1, ax2):
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(out / "turns_and_hops.png", dpi=100)
    plt.close(fig)
