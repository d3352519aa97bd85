"""``at2po make-world`` (the synthetic multi-hop world) and ``at2po make-wiki`` (the real-text benchmark)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer

from at2po.agent.world_schema import MAX_HOPS


def _parse_hops(hops: str) -> tuple[float, ...]:
    try:
        parts = tuple(float(x) for x in hops.split(","))
    except ValueError:
        parts = ()
    if not 1 <= len(parts) <= MAX_HOPS:
        raise typer.BadParameter(f"--hops must be 1 to {MAX_HOPS} comma-separated weights for 1-, 2-, ... hop "
                                 f"questions (e.g. 0.3,0.4,0.3 or 0.1,0.2,0.3,0.4), got {hops!r}")
    return parts


def make_world_cmd(
    out: Path = typer.Option(..., "--out", help="directory to write corpus/train/test/sft .jsonl, index/, world.json"),
    seed: int = typer.Option(0, "--seed", help="random seed (same seed -> byte-identical files)"),
    n_countries: int | None = typer.Option(None, "--countries", help="number of countries [6]"),
    n_cities: int | None = typer.Option(None, "--cities", help="number of cities, >= countries [30]"),
    n_people: int | None = typer.Option(None, "--people", help="number of people, > companies [200]"),
    n_companies: int | None = typer.Option(None, "--companies", help="number of companies [40]"),
    n_train: int | None = typer.Option(None, "--train", help="train questions [500]"),
    n_test: int | None = typer.Option(None, "--test", help="test questions [100]"),
    n_sft: int | None = typer.Option(None, "--sft", help="expert demonstrations, on other questions [500]"),
    hops: str | None = typer.Option(
        None, "--hops", help="weights of 1-,2-,3-hop (and 4-hop, with a 4th weight) questions [0.3,0.4,0.3]"
    ),
    distractors: int | None = typer.Option(
        None, "--distractors", help="extra documents that mention entities but state no relation [0]"
    ),
    name_similarity: float | None = typer.Option(
        None, "--name-similarity", help="0..1: how often names share/vary parts [0]"
    ),
    expert_noise: float | None = typer.Option(
        None, "--expert-noise", help="0..1: fraction of demos with a deliberate mistake [0.1]"
    ),
    tokenizer: str | None = typer.Option(
        None, "--tokenizer", help="tokenizer dir the demo observations are truncated with (default: byte-level bound)"
    ),
    no_sft: bool = typer.Option(False, "--no-sft", help="skip the expert demonstrations"),
) -> None:
    """Generate the synthetic multi-hop world (fictional entities, 1-3 hop questions, BM25 index, expert demos).

    Options left out take the ``WorldConfig`` defaults shown in brackets."""
    from pydantic import ValidationError

    from at2po.agent.world import make_world

    knobs = dict(
        n_countries=n_countries, n_cities=n_cities, n_people=n_people, n_companies=n_companies, n_train=n_train,
        n_test=n_test, n_sft=n_sft, hops=_parse_hops(hops) if hops is not None else None, distractors=distractors,
        name_similarity=name_similarity, expert_noise=expert_noise,
    )
    t0 = time.perf_counter()
    try:
        files = make_world(
            out, seed, tokenizer=tokenizer, with_sft=not no_sft, **{k: v for k, v in knobs.items() if v is not None}
        )
    except (ValidationError, ValueError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    typer.echo(json.dumps(files.stats, indent=2))
    typer.echo(f"wrote world to {out} in {time.perf_counter() - t0:.1f}s")


def make_wiki_cmd(
    out: Path = typer.Option(..., "--out", help="directory to write corpus/train/test .jsonl, index/, wiki.json"),
    seed: int = typer.Option(0, "--seed", help="seed of the per-kind sampling and the train/test split"),
    test_fraction: float = typer.Option(0.25, "--test-fraction", help="share of each question kind held out"),
    max_per_kind: int = typer.Option(150, "--max-per-kind", help="cap on questions of one kind"),
    no_index: bool = typer.Option(False, "--no-index", help="skip building the BM25 index"),
) -> None:
    """Build the real-text benchmark: offline Wikipedia lead sections + a QA set they support."""
    from at2po.agent.wiki import make_wiki

    t0 = time.perf_counter()
    try:
        files = make_wiki(out, seed, test_fraction=test_fraction, max_per_kind=max_per_kind, with_index=not no_index)
    except (ValueError, FileNotFoundError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    typer.echo(json.dumps(files.stats, indent=2))
    typer.echo(f"wrote wiki benchmark to {out} in {time.perf_counter() - t0:.1f}s")


def register(app: typer.Typer) -> None:
    app.command("make-world")(make_world_cmd)
    app.command("make-wiki")(make_wiki_cmd)
