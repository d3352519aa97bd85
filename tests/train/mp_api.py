"""Entry point for the multi-process public-API test:
``accelerate launch --num_processes N tests/train/mp_api.py OUT INIT_MODEL``.

Every process: SFT on an odd number of demonstrations (the processes' shards differ in size, so one process runs
out of rows a step early), then ``at2po.Trainer`` with objects — a model loaded here, the calculator env, lists of
examples, a callback — for two RL steps; each writes a checksum of its own weights and what its callback saw to
``OUT/rank-<i>.json``.
"""

import json
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from at2po import Trainer, TrainerCallback, load_config, sft
from at2po.envs import calculator

torch.set_num_threads(1)
out, init = Path(sys.argv[1]), sys.argv[2]
env = calculator.CalculatorEnv(AutoTokenizer.from_pretrained(init))
args = load_config(preset="at2po", overrides=[
    f"model.path={init}", f"train.output_dir={out}/rl", "train.steps=2", "train.batch_prompts=4",
    "train.mini_batch_prompts=2", "optim.lr=1e-3", "rollout.m=2", "rollout.l=1", "rollout.k=2",
    "rollout.max_turn_tokens=24", "rollout.max_response_tokens=64", "sft.epochs=2", "sft.lr=3e-3", "sft.batch_rows=3",
    "eval.every=2", "eval.n=1", "logging.tensorboard=false", "logging.progress=false",
])
demos = calculator.make_demos(calculator.make_dataset(7, seed=0), seed=0)  # 7 rows: shards of 4 and 3
warm = sft(args, env=env, demos=demos, out_dir=f"{out}/sft")


class Seen(TrainerCallback):
    def __init__(self) -> None:
        self.steps: list[int] = []

    def on_step(self, step, metrics):
        self.steps.append(step)


seen = Seen()
model = AutoModelForCausalLM.from_pretrained(warm)  # an object, not a path
res = Trainer(model=model, env=env, tokenizer=env.tokenizer, args=args, callbacks=[seen],
              train_dataset=calculator.make_dataset(16, seed=2),
              eval_dataset=calculator.make_dataset(4, seed=3)).train()
rank = torch.distributed.get_rank()  # after training: a PartialState made before at2po's would be single-process
flat = torch.cat([p.detach().flatten() for p in model.parameters()]).double()
(out / f"rank-{rank}.json").write_text(json.dumps({"sum": float(flat.sum()), "abs": float(flat.abs().sum()),
                                                   "steps": res.steps_done, "callback_steps": seen.steps,
                                                   "evals": sorted(res.evals)}))
