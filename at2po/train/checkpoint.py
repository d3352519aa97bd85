"""Checkpoints: HF-format policy (+ tokenizer), optimizer, scheduler, per-process RNG states, data position, step.

Layout of ``<output_dir>/checkpoints/step-00000012/``::

    model/            save_pretrained of the policy (LoRA: the adapter) and the tokenizer
    optimizer.pt      optimizer.state_dict()
    scheduler.pt      scheduler.state_dict()
    rng-<rank>.pt     python / numpy / torch (/ cuda) RNG states of each process
    state.json        {"step", "data": {...sampler position...}, ...}

Writes are atomic: everything goes into ``step-00000012.tmp`` and the directory is renamed when complete, so a
``kill -9`` at any moment leaves either the previous checkpoint or the new one, never a half-written one.
Leftover ``*.tmp`` directories are ignored (and removed by the next save). A write that fails (disk full,
quota, permissions) removes its ``.tmp`` directory and raises :class:`CheckpointWriteError`, which names the
checkpoint that is still intact; old checkpoints are pruned only after the new one is in place.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError

from at2po.errors import UserError

_STEP_DIR = re.compile(r"^step-(\d{8})$")
# what a failed write raises: plain writes OSError (ENOSPC, EFBIG, EDQUOT), torch.save's C++ writer RuntimeError
# ("PytorchStreamWriter failed writing file", "unexpected pos"), safetensors its SafetensorError
_WRITE_ERRORS: tuple[type[BaseException], ...] = (OSError, RuntimeError, SafetensorError)


class CheckpointWriteError(UserError, OSError):
    """A checkpoint (or the final export) could not be written; the previous checkpoint is intact."""


def checkpoint_root(output_dir: str | Path) -> Path:
    return Path(output_dir) / "checkpoints"


def has_checkpoint(output_dir: str | Path, step: int) -> bool:
    return (checkpoint_root(output_dir) / f"step-{step:08d}").is_dir()


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = checkpoint_root(output_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    ckpts = list_checkpoints(output_dir)
    return ckpts[-1] if ckpts else None


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    output_dir: str | Path,
    step: int,
    accelerator: Any,
    model: torch.nn.Module,
    tokenizer: Any,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    state: dict[str, Any],
    keep_last: int = 2,
    rng: dict[str, Any] | None = None,
) -> Path:
    """Write checkpoint ``step`` atomically (all processes call this; rank 0 writes the shared parts).

    ``rng``: this process's RNG states to store (default: the current ones; the trainer passes the states from the
    start of a step when it saves the previous step after that step had begun)."""
    root = checkpoint_root(output_dir)
    final = root / f"step-{step:08d}"
    tmp = root / f"step-{step:08d}.tmp"
    try:
        if accelerator.is_main_process:
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir(parents=True)
        accelerator.wait_for_everyone()
        torch.save(rng if rng is not None else rng_state(), tmp / f"rng-{accelerator.process_index}.pt")
        if accelerator.is_main_process:
            accelerator.unwrap_model(model).save_pretrained(tmp / "model", safe_serialization=True)
            tokenizer.save_pretrained(tmp / "model")
            torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
            torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
            (tmp / "state.json").write_text(json.dumps({"step": step, **state}, indent=2))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            _fsync_dir(tmp)
            if final.exists():  # re-saving the same step (e.g. final save right after a periodic one)
                shutil.rmtree(final)
            os.replace(tmp, final)
            _fsync_dir(root)
    except _WRITE_ERRORS as exc:  # a full disk / quota / file-size limit: torch.save raises RuntimeError, safetensors
        shutil.rmtree(tmp, ignore_errors=True)  # SafetensorError, plain writes OSError
        prev = latest_checkpoint(output_dir)
        kept = f"the previous checkpoint {prev} is intact" if prev is not None else "no earlier checkpoint exists"
        raise CheckpointWriteError(
            f"checkpoint step {step} could not be written to {root} ({_free(root)} free): {type(exc).__name__}: "
            f"{exc}; {kept} (free space, then continue with --resume)"
        ) from exc
    if accelerator.is_main_process:  # prune only once the new checkpoint is in place
        for old in list_checkpoints(output_dir)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
        for stale in root.glob("step-*.tmp"):
            shutil.rmtree(stale, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(
    path: str | Path, accelerator: Any, optimizer: torch.optim.Optimizer, scheduler: Any
) -> dict[str, Any]:
    """Restore optimizer, scheduler and this process's RNG; returns ``state.json``. (The model weights are
    loaded from ``path/model`` by the caller, as any HF model directory.)"""
    p = Path(path)
    optimizer.load_state_dict(torch.load(p / "optimizer.pt", map_location="cpu", weights_only=False))
    scheduler.load_state_dict(torch.load(p / "scheduler.pt", map_location="cpu", weights_only=False))
    rng_file = p / f"rng-{accelerator.process_index}.pt"
    if rng_file.exists():
        set_rng_state(torch.load(rng_file, weights_only=False))
    return json.loads((p / "state.json").read_text())


def export_final(accelerator: Any, model: torch.nn.Module, tokenizer: Any, out_dir: str | Path) -> Path | None:
    """``save_pretrained`` of the final policy (LoRA merged into the base weights) + tokenizer, atomically."""
    out = Path(out_dir)
    if accelerator.is_main_process:
        tmp = out.with_name(out.name + ".tmp")
        try:
            if tmp.exists():
                shutil.rmtree(tmp)
            m = accelerator.unwrap_model(model)
            if hasattr(m, "merge_and_unload"):  # peft: ship a plain HF model
                import copy

                m = copy.deepcopy(m).merge_and_unload()
            m.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
            if out.exists():
                shutil.rmtree(out)
            os.replace(tmp, out)
        except _WRITE_ERRORS as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise CheckpointWriteError(
                f"the final model could not be written to {out} ({_free(out.parent)} free): {type(exc).__name__}: "
                f"{exc}; the last checkpoint in {out.parent / 'checkpoints'} holds the same weights"
            ) from exc
    accelerator.wait_for_everyone()
    return out


def _free(path: Path) -> str:
    try:
        return f"{shutil.disk_usage(path).free / 2**20:.0f} MiB"
    except OSError:
        return "unknown space"


def _fsync_dir(path: Path) -> None:
    """Flush a directory entry so a rename survives power loss, not just kill -9 (best effort)."""
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass
