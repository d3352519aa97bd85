"""Run logging: ``metrics.jsonl`` and TensorBoard always, Weights & Biases when asked, one console line per step.

Only the main process writes. On resume, :class:`RunLogger` drops JSONL lines and TensorBoard events after the
checkpoint's step (``purge_step``) so a resumed run has no repeated steps.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from rich.console import Console

# (metric key, short label, format) shown in the one-line summary.
_SUMMARY = (
    ("rollout/reward_mean", "reward", "{:+.3f}"),
    ("rollout/em", "em", "{:.3f}"),
    ("actor/pg_loss", "loss", "{:+.4f}"),
    ("actor/entropy", "H", "{:.3f}"),
    ("actor/grad_norm", "gnorm", "{:.3f}"),
    ("rollout/generated_tokens", "gen_tok", "{:.0f}"),
    ("rollout/tool_calls_mean", "calls", "{:.2f}"),
    ("time/step_s", "s", "{:.1f}"),
)


LOG_WIDTH = 160  # columns when the output is not a terminal (a log file, CI): rich would otherwise use 80


def make_console(**kwargs: Any) -> Console:
    """A rich console for a terminal (wraps at its width) or a file or pipe (a log, CI): there rich would wrap
    at 80 columns, so the console is ``LOG_WIDTH`` wide (rules, tables) and does not wrap printed text at all
    (``soft_wrap``): one step line stays one line however long it is."""
    probe = Console(**kwargs)
    if probe.is_terminal or "width" in kwargs:
        return probe
    kwargs.setdefault("soft_wrap", True)
    return Console(width=LOG_WIDTH, **kwargs)


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """All JSONL records of a run (``<run_dir>/metrics.jsonl``), in order."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no metrics.jsonl (is {run_dir} an at2po run directory?)")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class RunLogger:
    """Per-step metrics sink. ``log(step, metrics)`` appends ``{"step": step, **metrics}`` to ``metrics.jsonl``."""

    def __init__(
        self,
        run_dir: str | Path,
        *,
        enabled: bool = True,
        tensorboard: bool = True,
        wandb: bool = False,
        wandb_project: str = "at2po",
        wandb_run_name: str | None = None,
        config: dict[str, Any] | None = None,
        resume_step: int | None = None,
        console: Console | None = None,
    ) -> None:
        self.enabled = enabled
        self.run_dir = Path(run_dir)
        self.console = console or make_console()
        self.path = self.run_dir / "metrics.jsonl"
        self._tb = None
        self._wandb = None
        self._progress: Any = None
        self._task: Any = None
        if not enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if resume_step is not None:
            self._truncate_after(resume_step)
        elif self.path.exists():
            self.path.unlink()  # a fresh run in an old directory starts a fresh log
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            kw = {"purge_step": resume_step + 1} if resume_step is not None else {}
            self._tb = SummaryWriter(str(self.run_dir / "tb"), **kw)
        if wandb:
            try:
                import wandb as wb
            except ImportError as exc:
                raise RuntimeError(
                    "logging.wandb=true needs `pip install wandb` (or `pip install at2po[wandb]`)"
                ) from exc
            self._wandb = wb.init(project=wandb_project, name=wandb_run_name, config=config, dir=str(self.run_dir),
                                  resume="allow")

    def _truncate_after(self, step: int) -> None:
        if not self.path.exists():
            return
        keep = [ln for ln in self.path.read_text().splitlines() if ln.strip() and json.loads(ln).get("step", 0) <= step]
        self.path.write_text("".join(ln + "\n" for ln in keep))

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        values = {k: (v if _finite(v) or not isinstance(v, float) else None) for k, v in metrics.items()}
        record = {"step": step, **values}
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        scalars = {k: float(v) for k, v in metrics.items() if _finite(v)}
        if self._tb is not None:
            for k, v in scalars.items():
                self._tb.add_scalar(k, v, step)
            self._tb.flush()
        if self._wandb is not None:
            self._wandb.log(scalars, step=step)

    def summary_line(self, step: int, total: int, metrics: dict[str, Any]) -> str:
        parts = [f"step {step}/{total}"]
        for key, label, fmt in _SUMMARY:
            if _finite(metrics.get(key)):
                parts.append(f"{label} {fmt.format(metrics[key])}")
        if metrics.get("actor/skipped_updates"):
            parts.append(f"[red]skipped {int(metrics['actor/skipped_updates'])} (NaN/inf)[/red]")
        if metrics.get("rollout/all_equal_reward"):
            parts.append("[yellow]all rewards equal[/yellow]")
        return " | ".join(parts)

    def start_progress(self, total: int, completed: int = 0, description: str = "training") -> None:
        """A rich progress bar over steps (lines printed meanwhile appear above it)."""
        if not self.enabled:
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TimeRemainingColumn(), console=self.console, transient=True,
        )
        self._progress.start()
        self._task = self._progress.add_task(description, total=total, completed=completed)

    def advance(self) -> None:
        if self._progress is not None:
            self._progress.advance(self._task)

    def print(self, text: str) -> None:
        """Print a line (rich markup); on a file or pipe it is never wrapped, whatever console was passed in."""
        if self.enabled:
            self.console.print(text, soft_wrap=True if not self.console.is_terminal else None)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()
