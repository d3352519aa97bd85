"""Train a calculator agent with AT²PO through the Python API (a few minutes on a 2-core CPU).

    python examples/calculator_agent.py      # writes runs/calculator/{init,sft,rl}

The code below is the README's Python API example, verbatim (a test checks that they are the same).

A fresh tiny model learns the tag protocol from imperfect demonstrations (half of them answer "in their head",
off by a few units), then AT²PO teaches it to call the calculator: held-out reward and calls per answer go up.
"""

from transformers import AutoTokenizer

from at2po import Trainer, load_config, sft
from at2po.envs import calculator

out = "runs/calculator"
train_set, test_set = calculator.make_dataset(600, seed=0), calculator.make_dataset(40, seed=1)
init = calculator.tiny_model(f"{out}/init", num_hidden_layers=4, hidden_size=128, intermediate_size=256)
env = calculator.CalculatorEnv(AutoTokenizer.from_pretrained(init))  # <calc> 47 + 23 </calc>, exact-match reward
args = load_config(preset="at2po", overrides=[
    f"model.path={init}", f"train.output_dir={out}/rl", "train.steps=30", "train.batch_prompts=8",
    "optim.lr=3e-4", "rollout.m=4", "rollout.l=1", "rollout.k=4", "rollout.max_turn_tokens=32",
    "rollout.max_response_tokens=128", "sft.epochs=12", "sft.lr=3e-3", "eval.n=4", "eval.temperature=1.0",
])
warm = sft(args, env=env, demos=calculator.make_demos(train_set, seed=0), out_dir=f"{out}/sft")
result = Trainer(model=warm, env=env, train_dataset=train_set, eval_dataset=test_set, args=args).train()
first, last = result.evals[0], result.evals[result.steps_done]
print(f"held-out reward {first['reward']:.3f} -> {last['reward']:.3f}, "
      f"calculator calls per answer {first['tool_calls']:.2f} -> {last['tool_calls']:.2f}")
