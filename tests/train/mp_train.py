"""Entry point for the multi-process test:
``accelerate launch --num_processes 2 --cpu tests/train/mp_train.py OUT KEY=VAL...``.

Trains, then every process writes a checksum of its own copy of the weights to ``OUT/rank-<i>.json``.
"""

import json
import sys
from pathlib import Path

import torch

from at2po.config import load_config
from at2po.train.trainer import train

torch.set_num_threads(1)
out = Path(sys.argv[1])
params: dict = {}


def hook(m: torch.nn.Module) -> None:  # called once, before training: keep the model and its initial weights
    params["m"] = m
    params["init"] = torch.cat([p.detach().flatten() for p in m.parameters()]).double().clone()


res = train(load_config(preset="at2po", overrides=sys.argv[2:]), model_hook=hook)
flat = torch.cat([p.detach().flatten() for p in params["m"].parameters()])
rank = __import__("accelerate").PartialState().process_index
(out / f"rank-{rank}.json").write_text(json.dumps({"sum": float(flat.double().sum()),
                                                   "abs": float(flat.double().abs().sum()),
                                                   "moved": float((flat.double() - params["init"]).norm()),
                                                   "steps": res.steps_done}))
