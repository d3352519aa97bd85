"""The benchmark protocol of ``benchmarks/compare.py``: the validation split, the lr-selection rule, and a report
rebuilt from committed run records alone (``--report-only``)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


compare = _load("compare")
report = _load("compare_report")


def test_validation_split_is_stratified_disjoint_and_complete(tmp_path: Path) -> None:
    rows = [{"id": f"q{i}", "hops": 2 + i % 3} for i in range(60)]
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows))
    fit_path, val_path = compare.split_validation(train, tmp_path, every=5)
    fit = [json.loads(line) for line in fit_path.read_text().splitlines()]
    val = [json.loads(line) for line in val_path.read_text().splitlines()]
    assert {r["id"] for r in fit} | {r["id"] for r in val} == {r["id"] for r in rows}
    assert not {r["id"] for r in fit} & {r["id"] for r in val}
    assert sorted(r["hops"] for r in val) == [2] * 4 + [3] * 4 + [4] * 4  # 20 per hop count → 4 each


def _sel(label: str, lr: float, seed: int, em: float) -> dict:
    return {"label": label, "lr": lr, "seed": seed, "row": {"label": label, "em_after": em}}


def test_lr_selection_takes_the_best_mean_validation_em_and_the_smaller_lr_on_a_tie() -> None:
    grid = [1e-4, 2e-4, 4e-4]
    recs = [_sel("a", 1e-4, 0, 0.5), _sel("a", 2e-4, 0, 0.7), _sel("a", 2e-4, 1, 0.5), _sel("a", 4e-4, 0, 0.61),
            _sel("b", 1e-4, 0, 0.6), _sel("b", 2e-4, 0, 0.6), _sel("b", 4e-4, 0, 0.4),
            _sel("c", 1e-4, 0, 0.9), _sel("c", 2e-4, 0, 0.1)]  # c lacks 4e-4: not selected yet
    assert compare.select_lr(recs, grid) == {"a": 4e-4, "b": 1e-4}  # a: 0.5, 0.6, 0.61; b: a tie → 1e-4


def _record(label: str, seed: int, em_before: float, em_after: float) -> dict:
    xs = [0.0, 1000.0, 2000.0 + 10 * seed]
    row = {"table": "methods", "label": label, "preset": label, "seed": seed, "em_before": em_before,
           "em_after": em_after, "em_2hop": em_after, "em_3hop": em_after - 0.1, "em_before_2hop": em_before,
           "entropy_first3": 0.4, "equal_reward_first3": 0.2, "turns_rollout_first3": 4.1}
    series = {k: {"x": xs, "y": [em_before, (em_before + em_after) / 2, em_after]} for k in report.CURVES}
    return {"label": label, "seed": seed, "code_version": "abc123", "warm_start_sha": "feed", "row": row,
            "series": series, "final_turns": [3, 4, 4, 5]}


def test_report_is_rebuilt_from_records_alone(tmp_path: Path) -> None:
    recs = [_record("at2po", s, 0.4, 0.6 + 0.01 * s) for s in range(5)]
    recs += [_record("grpo", s, 0.4, 0.5 + 0.01 * s) for s in range(5)]
    for r in recs:  # what run_jobs commits, read back as --report-only does
        report.save_record(r, tmp_path / "runs" / f"{r['label']}-s{r['seed']}.json")
    loaded = [report.load_record(p) for p in sorted((tmp_path / "runs").glob("*.json"))]
    assert not list((tmp_path / "runs").glob("*.tmp"))
    sel = [_sel(lab, lr, 100, 0.5) for lab in ("at2po", "grpo") for lr in (1e-4, 2e-4)]
    report.write_report("methods", loaded, tmp_path, command="compare.py --table methods", selection=sel,
                        chosen={"at2po": 1e-4, "grpo": 1e-4}, seeds=[0, 1, 2, 3, 4])
    text = (tmp_path / "summary.md").read_text()
    assert "Code version(s): abc123. Warm start (weights sha256): feed. Runs: 10 of 10 planned." in text
    assert "held-out EM 0.400" in text and "| at2po | 0.500 | 0.500 | 0.0001 |" in text
    at2po = next(line for line in text.splitlines() if line.startswith("| at2po | 0: 0.600"))
    assert "+0.100 [+0.100, +0.100] vs grpo" in at2po  # paired by seed: every seed differs by exactly 0.1
    for png in ("em_vs_tokens.png", "turns_and_hops.png"):
        assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG"


def test_band_grid_stops_where_the_shortest_run_stops() -> None:
    recs = [_record("a", s, 0.0, 1.0) for s in range(3)]
    grid, curves = report._band_on_grid(recs, "eval/em", n=5)
    assert grid[-1] == pytest.approx(2000.0) and len(curves) == 3
    assert curves[0][-1] == pytest.approx(1.0)


def test_warm_start_note_checks_the_by_seed_pairing() -> None:
    """Seeds may come from different warm starts (a grid continued on a machine of another CPU ISA); the pairing
    is by seed, so it holds unless one seed's runs started from different checkpoints."""
    recs = [{**_record(lab, s, 0.4, 0.5), "warm_start_sha": "aaaa" if s < 2 else "bbbb",
             "cpu_capability": "AVX2" if s < 2 else "AVX512"} for lab in ("at2po", "grpo") for s in range(4)]
    note = report.warm_start_note(recs)
    assert "aaaa (seeds 0,1; built on AVX2); bbbb (seeds 2,3; built on AVX512)" in note
    assert "each seed's runs share one warm start" in note
    recs[0]["warm_start_sha"] = "cccc"  # at2po seed 0 from another checkpoint than grpo seed 0
    assert "NOT PAIRED for seeds 0" in report.warm_start_note(recs)
