"""``at2po train`` / ``at2po sft`` / ``at2po eval`` / ``at2po plot``.

Configuration: an optional YAML file, ``--preset NAME`` and dotted ``KEY=VALUE`` overrides, e.g.
``at2po train --preset at2po model.path=runs/sft data.train=data/train.jsonl rollout.m=10 loss.name=turn``.
``at2po train`` with no arguments runs the embedded synthetic-world quickstart.
"""

from __future__ import annotations

from pathlib import Path

import typer

_OVERRIDES_HELP = "dotted overrides KEY=VALUE (e.g. rollout.m=10 loss.name=turn); a leading *.yaml is the config file"


def _resolve(args: list[str], preset: str | None):
    from at2po.config import load_config

    path = None
    if args and "=" not in args[0] and args[0].endswith((".yaml", ".yml")):
        path, args = args[0], args[1:]
    return load_config(path, args, preset=preset)


def _fail(exc: Exception) -> None:
    typer.echo(f"error: {exc}", err=True)
    raise typer.Exit(2)


def train(
    args: list[str] | None = typer.Argument(None, help=_OVERRIDES_HELP),
    preset: str | None = typer.Option(None, "--preset", "-p", help="at2po, grpo, dapo, gspo, tree-grpo, ablation-*"),
    resume: bool = typer.Option(False, "--resume", help="continue from the latest checkpoint in train.output_dir"),
    quick: bool = typer.Option(False, "--quickstart", help="run the synthetic-world quickstart (default with no args)"),
    quick_out: Path = typer.Option(Path("runs/quickstart"), "--quickstart-dir", help="where the quickstart writes"),
) -> None:
    """RL-train a search agent (AT²PO or a baseline). With no arguments: the synthetic-world quickstart."""
    args = list(args or [])
    if quick or (not args and preset is None and not resume):
        from at2po.train.quickstart import run_quickstart

        run_quickstart(quick_out, overrides=args)
        return
    from at2po.api import Trainer  # the CLI is the Python API with every part read from the config

    res = Trainer(args=_resolve(args, preset)).train(resume=resume)
    final = f" (final model: {res.final_dir})" if res.final_dir else ""
    typer.echo(f"done: {res.steps_done} steps → {res.run_dir}{final}")


def sft(
    args: list[str] | None = typer.Argument(None, help=_OVERRIDES_HELP),
    preset: str | None = typer.Option(None, "--preset", "-p"),
    out: Path | None = typer.Option(None, "--out", help="model directory to write (default <train.output_dir>/sft)"),
) -> None:
    """Supervised warm start on demonstrations (data.sft), observation tokens masked."""
    from at2po.train.sft import sft as run_sft

    path = run_sft(_resolve(list(args or []), preset), out)
    typer.echo(f"SFT model → {path}")


def wiki_demos(
    args: list[str] | None = typer.Argument(None, help=_OVERRIDES_HELP),
    preset: str | None = typer.Option(None, "--preset", "-p"),
    out: Path | None = typer.Option(None, "--out", help="demonstrations JSONL to write (default: data.sft)"),
    limit: int | None = typer.Option(None, "--limit", help="stop after this many solved demonstrations"),
) -> None:
    """Protocol demonstrations for the Wikipedia benchmark (data.train), made with the run's own env and tokenizer."""
    import json

    from at2po.agent.wiki_expert import qa_rows, write_wiki_demonstrations
    from at2po.config import ConfigError
    from at2po.train.components import build_env, check_paths, load_tokenizer

    cfg = _resolve(list(args or []), preset)
    check_paths(cfg, ("model", "train", "index"))
    target = out or (Path(cfg.data.sft) if cfg.data.sft else None)
    if target is None:
        raise ConfigError("data.sft is not set and no --out given: where should the demonstrations go?")
    env = build_env(cfg, load_tokenizer(cfg.model.tokenizer or cfg.model.path))
    try:
        rows = qa_rows(str(cfg.data.train))
        path, stats = write_wiki_demonstrations(rows, env, target, limit=limit, seed=cfg.train.seed)
    finally:
        env.close()
    typer.echo(json.dumps(stats, indent=2))
    typer.echo(f"wrote {stats['demos']} demonstrations → {path}")


def eval_cmd(
    args: list[str] | None = typer.Argument(None, help=_OVERRIDES_HELP),
    preset: str | None = typer.Option(None, "--preset", "-p"),
    out: Path | None = typer.Option(None, "--out", help="JSON report path (default <train.output_dir>/eval.json)"),
) -> None:
    """Evaluate model.path on data.test: per-source EM / F1 / format / tool calls / turns (pass@k with eval.n=k)."""
    from at2po.train.components import (
        build_engine,
        build_env,
        check_paths,
        load_examples,
        load_policy,
        load_tokenizer,
    )
    from at2po.train.evaluate import evaluate, format_table, write_report
    from at2po.train.faults import eval_tool_warning
    from at2po.train.logging import make_console

    cfg = _resolve(list(args or []), preset)
    check_paths(cfg, ("model", "test", "index"))
    examples = load_examples(cfg.data.test, cfg.data.max_test_examples)  # a bad row fails here, before the model
    import torch

    tok = load_tokenizer(cfg.model.tokenizer or cfg.model.path)
    env = build_env(cfg, tok)  # checks the retriever answers (faults.check_retriever) before the model loads
    try:
        model = load_policy(cfg.model, trainable=False)
        if torch.cuda.is_available():
            model = model.to("cuda")
        report = evaluate(build_engine(model, tok, cfg), env, examples, cfg, seed=cfg.train.seed)
    finally:
        env.close()
    path = write_report(report, out or Path(cfg.train.output_dir) / "eval.json")
    console = make_console()
    console.print(format_table(report, title=f"eval of {cfg.model.path}"))
    if warning := eval_tool_warning(report, cfg.faults.tool_failure_warn, "eval"):
        console.print(f"[yellow]warning: {warning}[/yellow]")
    typer.echo(f"report → {path}")


def plot(
    runs: list[Path] = typer.Argument(..., help="run directories (each holds metrics.jsonl)"),
    out: Path = typer.Option(Path("curves.png"), "--out", "-o", help="PNG to write"),
    metric: list[str] | None = typer.Option(None, "--metric", "-m", help="metric key(s) to draw (repeatable)"),
    x: str = typer.Option("step", "--x", help="x axis: step or tokens (cumulative generated tokens)"),
) -> None:
    """Draw learning curves (reward, EM, entropy, tokens) of one or several runs to a PNG."""
    from at2po.train.plot import DEFAULT_METRICS, plot_runs

    try:
        path = plot_runs(runs, out, metric or DEFAULT_METRICS, x=x)
    except (FileNotFoundError, ValueError) as exc:
        _fail(exc)
        return
    typer.echo(f"wrote {path}")


def register(app: typer.Typer) -> None:
    ctx = {"allow_extra_args": False}
    app.command("train", context_settings=ctx)(train)
    app.command("sft")(sft)
    app.command("wiki-demos")(wiki_demos)
    app.command("eval")(eval_cmd)
    app.command("plot")(plot)
