"""``at2po prepare``: convert a local FlashRAG-layout directory into our QA files."""

from __future__ import annotations

from pathlib import Path

import typer


def _names(value: str | None) -> list[str] | None:
    return [n.strip() for n in value.split(",") if n.strip()] if value else None


def prepare(
    src: Path = typer.Option(
        ..., "--src", help="FlashRAG layout: <src>/<dataset>/{train,dev,test}.jsonl (or .parquet)"
    ),
    out: Path = typer.Option(..., "--out", help="output directory: train.jsonl, test.jsonl, manifest.json"),
    train_sources: str | None = typer.Option(
        None, "--train-sources", help="comma-separated datasets whose train split is used (default: all that have one)"
    ),
    test_sources: str | None = typer.Option(
        None, "--test-sources", help="comma-separated datasets whose test (else dev) split is used (default: all)"
    ),
    max_test_per_source: int | None = typer.Option(
        None, "--max-test-per-source", min=1, help="keep a seeded sample of at most N test rows per dataset"
    ),
    seed: int = typer.Option(0, "--seed", help="seed of the train shuffle and the test sample"),
) -> None:
    """Convert FlashRAG-layout QA data into at2po's train.jsonl / test.jsonl (each row labelled with its dataset)."""
    from at2po.agent.datasets import DatasetError
    from at2po.agent.datasets import prepare as run_prepare

    try:
        res = run_prepare(
            src,
            out,
            train_sources=_names(train_sources),
            test_sources=_names(test_sources),
            max_test_per_source=max_test_per_source,
            seed=seed,
        )
    except DatasetError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    for split, path in (("train", res.train), ("test", res.test)):
        per = ", ".join(f"{k}={v}" for k, v in res.counts[split].items()) or "none"
        typer.echo(f"{split}: {sum(res.counts[split].values())} rows ({per}) → {path}")


def register(app: typer.Typer) -> None:
    app.command("prepare")(prepare)
