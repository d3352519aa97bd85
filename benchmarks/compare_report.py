"""Tables and plots of a ``benchmarks/compare.py`` grid: ``results.csv`` (one row per run), ``summary.md``
(per row: mean ± std, every seed, bootstrap and paired-by-seed CIs; the warm start; the lr selection) and PNGs
(held-out EM vs generated tokens with 95 % bands, entropy and H_turn vs steps, turn counts of the final policies,
EM by hop count; efficiency: cost per leaf and per step).

Each finished run is kept as one small *record* (``run_record``): its spec and result, its CSV row, the curves the
plots need and the final policy's turn counts. Records are committed under ``<results>/runs/`` (and
``<results>/select/`` for the lr selection), so a report can be rebuilt from them alone (``--report-only``)."""

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

    def col(k: str) -> list[float]:
        return [float(r[k]) for r in steps if isinstance(r.get(k), (int, float))]

    timed = steps[1:] if len(steps) > 1 else steps  # step 1 includes warm-up (first allocations, caches)
    gen, leaves = sum(col("rollout/generated_tokens")), sum(col("rollout/leaves"))
    row: dict[str, Any] = {
        "table": run["table"], "label": run["label"], "preset": run["preset"], "seed": run["seed"], "size": run["size"],
        "world_seed": run.get("world_seed", 0), "lr": run.get("lr"), "split": run.get("split", "test"),
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
        "turns_rollout_first3": _mean(col("rollout/turns_mean")[:3]),
        "equal_reward_first3": _mean(col("rollout/equal_reward_prompt_frac")[:3]),
        "equal_reward_prompt_frac": _mean(col("rollout/equal_reward_prompt_frac")),
        "adv_zero_frac": _mean(col("adv/zero_frac")),
        "fork_root_frac": _mean(col("rollout/fork_root_frac")),
        "fork_depth_mean": _mean(col("rollout/fork_depth_mean")),
        "fork_entropy_rank": _mean(col("rollout/fork_entropy_rank")),
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
            row[f"em_before_{h}hop"] = _mean([r["em"] for r in first["records"] if hops.get(r["id"]) == h])
    return row, recs, final


CURVES = {"eval/em": "tokens", "rollout/em": "tokens", "actor/entropy": "step", "actor/turn_entropy": "step"}


def run_record(run: dict[str, Any]) -> dict[str, Any]:
    """The small, self-contained result of one finished run (what ``--report-only`` needs; no run directory)."""
    row, recs, final = run_row(run)
    series = {}
    for key, x in CURVES.items():
        xs, ys = metric_series(recs, key, x)
        series[key] = {"x": xs, "y": ys}
    keep = {k: v for k, v in run.items() if k != "run_dir"}
    return {**keep, "row": row, "series": series, "final_turns": [round(float(r["turns"])) for r in final]}


def save_record(record: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1, default=float))
    tmp.replace(path)  # atomic: a half-written record never looks finished


def load_record(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


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


def write_report(table: str, records: list[dict[str, Any]], out: Path, command: str,
                 selection: list[dict[str, Any]] | None = None, chosen: dict[str, float] | None = None,
                 seeds: list[int] | None = None) -> None:
    """``results.csv``, ``summary.md`` and the PNGs of one grid, from its run records."""
    out.mkdir(parents=True, exist_ok=True)
    if not records:
        print("[compare] no finished test runs to report")
        if selection:  # the lr selection alone (the test runs wait for it or have not finished)
            lines = [f"`{command}`", "", "No test run has finished yet.", "", *selection_lines(selection, chosen or {})]
            (out / "summary.md").write_text("\n".join(lines) + "\n")
            print("\n".join(lines))
        return
    rows = [r["row"] for r in records]
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
    versions = sorted({str(r.get("code_version", "unknown")) for r in records})
    planned = f" of {len(seeds) * len(by)} planned" if seeds else ""
    lines = [f"`{command}`", "", (f"Code version(s): {', '.join(versions)}. {warm_start_note(records)} "
                                  f"Runs: {len(records)}{planned}."), ""]
    if table != "efficiency":
        by_sha = _by_warm_start(records)
        for sha, group in by_sha.items():
            lines += [*warm_start_lines([r["row"] for r in group], sha if len(by_sha) > 1 else None), ""]
    if selection:
        lines += [*selection_lines(selection, chosen or {}), ""]
    lines += ["| row | seeds | " + " | ".join(c for c, _ in cols) + " |", "|---|---|" + "---|" * len(cols)]
    for label, rs in by.items():
        lines.append(f"| {label} | {','.join(str(r['seed']) for r in rs)} | "
                     + " | ".join(_fmt([r.get(c) for r in rs], d) for c, d in cols) + " |")
    if table != "efficiency":
        lines += ["", *comparison_lines(table, by)]
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    _plots(table, records, out)


def _by_warm_start(records: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        out[str(r.get("warm_start_sha", "unknown"))].append(r)
    return dict(sorted(out.items(), key=lambda kv: min(int(r["seed"]) for r in kv[1])))


def warm_start_note(records: list[dict[str, Any]]) -> str:
    """Which warm start (weights sha256) each seed's runs used, and whether the by-seed pairing holds: the paired
    differences need every run of one seed to start from the same checkpoint (different seeds may differ, e.g.
    when a grid is continued on a machine whose CPU builds other bits)."""
    groups = _by_warm_start(records)
    per_seed: dict[int, set[str]] = defaultdict(set)
    for r in records:
        per_seed[int(r["seed"])].add(str(r.get("warm_start_sha", "unknown")))
    broken = sorted(s for s, shas in per_seed.items() if len(shas) > 1)
    if len(groups) == 1:
        return f"Warm start (weights sha256): {next(iter(groups))}."
    parts = []
    for sha, group in groups.items():
        seeds = sorted({int(r["seed"]) for r in group})
        isa = sorted({str(r.get("cpu_capability")) for r in group if r.get("cpu_capability")})
        parts.append(f"{sha} (seeds {','.join(map(str, seeds))}" + (f"; built on {'/'.join(isa)}" if isa else "") + ")")
    pairing = (f"NOT PAIRED for seeds {','.join(map(str, broken))}: their runs started from different checkpoints"
               if broken else "each seed's runs share one warm start, so the by-seed pairing holds")
    return f"Warm starts (weights sha256): {'; '.join(parts)} — {pairing}."


def warm_start_lines(rows: list[dict[str, Any]], sha: str | None = None) -> list[str]:
    """The shared warm start as the runs saw it: held-out EM (overall and by hop) before RL, the sampled-token
    entropy and the share of all-equal-reward prompts in the first three RL steps (averaged over every run)."""
    hops = [h for h in (1, 2, 3, 4) if math.isfinite(_mean([r.get(f"em_before_{h}hop") for r in rows]))]
    by_hop = ", ".join(f"{h}-hop {_mean([r.get(f'em_before_{h}hop') for r in rows]):.3f}" for h in hops)
    which = f" {sha}" if sha else ""
    text = (f"**Warm start{which}** (before RL, the same checkpoint for every run of a seed): held-out EM "
            f"{_mean([r.get('em_before') for r in rows]):.3f} ({by_hop}); sampled-token entropy "
            f"{_mean([r.get('entropy_first3') for r in rows]):.3f} nats/token and all-equal-reward prompts "
            f"{_mean([r.get('equal_reward_first3') for r in rows]):.2f} over the first 3 steps; "
            f"{_mean([r.get('turns_rollout_first3') for r in rows]):.2f} turns per training trajectory.")
    return [text]


def selection_lines(selection: list[dict[str, Any]], chosen: dict[str, float]) -> list[str]:
    """Validation EM of every (row, lr) of the selection grid and the lr each row was run with."""
    lrs = sorted({float(r["lr"]) for r in selection})
    cell: dict[str, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in selection:
        cell[r["label"]][float(r["lr"])].append(r["row"].get("em_after", math.nan))
    rule = ("**lr selection** (validation split of the training questions; rule: the highest final validation EM, "
            "mean over the selection seeds, a tie to the smaller lr; the same grid and rule for every row)")
    out = [rule, "",
           "| row | " + " | ".join(f"lr {lr:g}" for lr in lrs) + " | chosen |", "|---|" + "---|" * (len(lrs) + 1)]
    for lab, per in cell.items():
        pick = f"{chosen[lab]:g}" if lab in chosen else "(incomplete)"
        out.append(f"| {lab} | " + " | ".join(_fmt(per.get(lr, []), 3) for lr in lrs) + f" | {pick} |")
    return out


def comparison_lines(table: str, by: dict[str, list[dict[str, Any]]], metric: str = "em_after") -> list[str]:
    """Per row: each seed's ``metric``, the mean with its bootstrap 95 % interval, and the paired-by-seed 95 %
    interval of the difference to the reference row — GRPO in the methods and wiki tables, the previous row in the
    ablation, the first row (the paper's default) otherwise."""
    from at2po.core.stats import bootstrap_ci, paired_difference_ci

    labels = list(by)
    vals = {lab: {int(r["seed"]): float(r[metric]) for r in by[lab] if isinstance(r.get(metric), (int, float))}
            for lab in labels}
    ref_name = {"methods": "grpo", "wiki": "grpo"}.get(table)
    against = f"`{ref_name}`" if ref_name else ("the previous row" if table == "ablation" else "the first row")
    head = f"**{metric}: per seed, mean [95 % bootstrap CI], and the paired-by-seed difference to {against} [95 % CI]**"
    out = [head, "", "| row | per seed | mean [CI] | difference [CI] |", "|---|---|---|---|"]
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


def _band_on_grid(records: list[dict[str, Any]], key: str, n: int = 30) -> tuple[np.ndarray, list[np.ndarray]]:
    """Each run's curve interpolated on one shared x grid (the range every run covers), for a seed band."""
    curves = [(np.asarray(r["series"][key]["x"]), np.asarray(r["series"][key]["y"])) for r in records
              if r["series"].get(key, {}).get("x")]
    if not curves:
        return np.zeros(0), []
    hi = min(x[-1] for x, _ in curves)
    grid = np.linspace(0.0, hi, n) if hi > 0 else np.zeros(1)
    return grid, [np.interp(grid, x, y) for x, y in curves]


def _plots(table: str, records: list[dict[str, Any]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from at2po.core.stats import curve_band

    rows = [r["row"] for r in records]
    labels = list(dict.fromkeys(r["label"] for r in rows))
    colors = {lab: plt.cm.tab10(i % 10) for i, lab in enumerate(labels)}
    if table == "efficiency":
        keys = ["gen_tokens_per_leaf", "prefill_tokens_per_leaf", "rollout_s_per_step", "update_s_per_step",
                "peak_rss_mb"]
        fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 3.2))
        for ax, k in zip(axes, keys, strict=True):
            vals = [_mean([r.get(k) for r in rows if r["label"] == lab]) for lab in labels]
            ax.bar(range(len(labels)), vals, color=[colors[lab] for lab in labels])
            ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=8)
            ax.set_title(k, fontsize=9)
        fig.tight_layout()
        fig.savefig(out / "efficiency.png", dpi=100)
        plt.close(fig)
        return

    for name, key, title in [
        ("em_vs_tokens.png", "eval/em", "held-out EM (greedy) vs generated tokens, mean and 95 % band over seeds"),
        ("rollout_em_vs_tokens.png", "rollout/em", "training-rollout EM vs generated tokens"),
        ("entropy_vs_steps.png", "actor/entropy", "policy entropy (MC, sampled tokens) vs step"),
        ("hturn_vs_steps.png", "actor/turn_entropy", "H_turn vs step"),
    ]:
        fig, ax = plt.subplots(figsize=(6.5, 4))
        for lab in labels:
            runs = [r for r in records if r["row"]["label"] == lab]
            grid, curves = _band_on_grid(runs, key)
            if not curves:
                continue
            mean, lo, hi = curve_band(curves)
            ax.plot(grid, mean, lw=1.5, color=colors[lab], label=f"{lab} (n={len(curves)})")
            ax.fill_between(grid, lo, hi, color=colors[lab], alpha=0.15, lw=0)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("generated tokens" if CURVES[key] == "tokens" else "step")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / name, dpi=100)
        plt.close(fig)

    # turn counts of the final (greedy) policies, pooled over seeds; EM by hop count, mean ± std over seeds
    hops = [h for h in (1, 2, 3, 4) if math.isfinite(_mean([r.get(f"em_{h}hop") for r in rows]))]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    width = 0.8 / max(1, len(labels))
    for i, lab in enumerate(labels):
        turns = [t for r in records if r["row"]["label"] == lab for t in r.get("final_turns", [])]
        if turns:
            bins = np.arange(1, max(turns) + 2)
            hist = np.array([np.mean(np.array(turns) == b) for b in bins[:-1]])
            ax1.bar(bins[:-1] + i * width, hist, width, color=colors[lab], label=lab)
        per = [[r.get(f"em_{h}hop", math.nan) for r in rows if r["label"] == lab] for h in hops]
        ax2.bar(np.arange(len(hops)) + i * width, [_mean(v) for v in per], width, color=colors[lab], label=lab,
                yerr=[float(np.nanstd(v)) for v in per], capsize=2)
    ax1.set_title("turns per question, final policy (greedy, held-out)", fontsize=10)
    ax1.set_xlabel("turns")
    ax2.set_xticks(np.arange(len(hops)) + 0.4 - width / 2, [str(h) for h in hops])
    ax2.set_title("held-out EM by hop count (final policy), mean ± std over seeds", fontsize=10)
    ax2.set_xlabel("hops")
    for ax in (ax1, ax2):
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(out / "turns_and_hops.png", dpi=100)
    plt.close(fig)
