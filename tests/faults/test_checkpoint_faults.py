"""Checkpoint faults: kill -9 in the middle of a checkpoint write, and a full disk (ENOSPC) while checkpointing."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from at2po.config import load_config
from at2po.train import checkpoint as ckpt
from at2po.train.checkpoint import (
    CheckpointWriteError,
    latest_checkpoint,
    list_checkpoints,
)
from at2po.train.trainer import train
from tests.faults.conftest import ROOT, small_overrides, wait_for


def _over(world: dict, out: Path) -> list[str]:
    return small_overrides(world, out) + ["train.steps=3", "checkpoint.every=1", "data.test=null",
                                          "logging.tensorboard=false"]


def _final_weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "final" / "model.safetensors"))


@pytest.fixture(scope="module")
def reference(tiny_world, tmp_path_factory) -> dict[str, torch.Tensor]:
    """The uninterrupted 3-step run every faulted run must end equal to."""
    out = tmp_path_factory.mktemp("ref") / "run"
    train(load_config(preset="at2po", overrides=_over(tiny_world, out)))
    return _final_weights(out)


# A run whose step-2 checkpoint write stalls half-way through optimizer.pt (a sentinel file says so), to be killed.
_STALL = """
import sys, time, torch
torch.set_num_threads(1)
from pathlib import Path
from at2po.config import load_config
from at2po.train import checkpoint
from at2po.train.trainer import train
real_save = torch.save
def stalling_save(obj, f, *a, **k):
    if "step-00000002.tmp" in str(f) and str(f).endswith("optimizer.pt"):
        Path(f).write_bytes(b"PK\\x03\\x04 half a file")
        Path(sys.argv[1]).write_text("stalled")
        time.sleep(600)
    return real_save(obj, f, *a, **k)
checkpoint.torch.save = stalling_save
train(load_config(preset="at2po", overrides=sys.argv[2:]))
"""


def test_kill_9_during_checkpoint_write_keeps_previous_and_resumes(tiny_world, tmp_path, reference) -> None:
    run, sentinel = tmp_path / "run", tmp_path / "stalled"
    over = _over(tiny_world, run)
    proc = subprocess.Popen([sys.executable, "-c", _STALL, str(sentinel), *over], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert wait_for(sentinel.exists, timeout=180), "the run never reached its step-2 checkpoint"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    root = ckpt.checkpoint_root(run)
    assert (root / "step-00000002.tmp" / "optimizer.pt").is_file()  # the half-written checkpoint is there ...
    assert [p.name for p in list_checkpoints(run)] == ["step-00000001"]  # ... and ignored
    res = train(load_config(preset="at2po", overrides=over), resume=True)
    assert res.steps_done == 3
    assert not list(root.glob("*.tmp"))  # the next save removed the leftover
    got = _final_weights(run)
    for k, v in reference.items():
        torch.testing.assert_close(got[k], v, rtol=0, atol=0)  # resumed == uninterrupted, bit for bit


@pytest.mark.parametrize("fault", ["optimizer_runtime", "weights_safetensors", "tokenizer_oserror"])
def test_disk_full_while_checkpointing(tiny_world, tmp_path, monkeypatch, reference, fault) -> None:
    """ENOSPC in the middle of the step-2 checkpoint, as each writer reports it (torch.save: RuntimeError from its
    C++ writer; safetensors: SafetensorError; plain Python writes: OSError): a one-line error naming the intact
    checkpoint, no partial directory left, and a resume from step 1 (disk freed) ends equal to the uninterrupted
    run."""
    run = tmp_path / "run"
    over = _over(tiny_world, run)
    real_save = torch.save

    def full_disk(obj, f, *a, **k):
        if "step-00000002.tmp" in str(f) and str(f).endswith("optimizer.pt"):
            raise RuntimeError("[enforce fail at inline_container.cc:778] . PytorchStreamWriter failed writing file "
                               "data/3: file write failed")
        return real_save(obj, f, *a, **k)

    if fault == "optimizer_runtime":
        monkeypatch.setattr(ckpt.torch, "save", full_disk)
    elif fault == "weights_safetensors":
        import transformers.modeling_utils as mu
        from safetensors import SafetensorError

        real_sf = mu.safe_save_file

        def no_space(tensors, filename, *a, **k):
            if "step-00000002.tmp" in str(filename):
                raise SafetensorError('Error while serializing: I/O error: No space left on device (os error 28)')
            return real_sf(tensors, filename, *a, **k)

        monkeypatch.setattr(mu, "safe_save_file", no_space)
    else:
        from transformers import PreTrainedTokenizerBase

        real_tok = PreTrainedTokenizerBase.save_pretrained

        def no_space_tok(self, d, *a, **k):
            if "step-00000002.tmp" in str(d):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return real_tok(self, d, *a, **k)

        monkeypatch.setattr(PreTrainedTokenizerBase, "save_pretrained", no_space_tok)
    with pytest.raises(CheckpointWriteError, match="checkpoint step 2 could not be written") as info:
        train(load_config(preset="at2po", overrides=over))
    assert "step-00000001 is intact" in str(info.value)
    assert [p.name for p in list_checkpoints(run)] == ["step-00000001"]
    assert latest_checkpoint(run).name == "step-00000001"
    assert not list(ckpt.checkpoint_root(run).glob("*.tmp"))  # nothing partial left behind
    monkeypatch.undo()  # the disk has space again
    res = train(load_config(preset="at2po", overrides=over), resume=True)
    assert res.steps_done == 3
    got = _final_weights(run)
    for k, v in reference.items():
        torch.testing.assert_close(got[k], v, rtol=0, atol=0)


def test_a_real_write_failure_in_a_subprocess(tiny_world, tmp_path) -> None:
    """No mock: the CLI run under a 40 kB file-size limit (RLIMIT_FSIZE; Python ignores SIGXFSZ, so the kernel's
    EFBIG reaches whichever writer hits it first). The first checkpoint cannot be written: one line, exit 2,
    nothing partial left."""
    import resource

    run = tmp_path / "run"
    over = _over(tiny_world, run)

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (40_000, 40_000))

    proc = subprocess.run([sys.executable, "-m", "at2po.cli", "train", "--preset", "at2po", *over],
                          capture_output=True, text=True, preexec_fn=limit, timeout=300, check=False,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    err = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert len(err) == 1 and err[0].startswith("error: checkpoint step 1 could not be written")
    assert "no earlier checkpoint exists" in err[0] and "Traceback" not in proc.stderr
    assert not list(ckpt.checkpoint_root(run).glob("*"))  # neither a checkpoint nor a partial .tmp
