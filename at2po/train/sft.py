"""SFT warm start on protocol demonstrations, with observation tokens masked exactly as in RL rows.

Input (``sft.jsonl``, one demonstration per line, the synthetic world's expert writes it; or the same objects
in a list)::

    {"question": str, "golden_answers": [str], "turns": [{"text": "<turn text>", "observation": "<obs>" | null}]}

(other envs: the example's own fields instead of golden_answers, e.g. ``"answer"`` for a ``ToolEnv``).

Each demonstration becomes a one-chain :class:`~at2po.core.tree.TurnTree` — prompt ids from ``env.prompt_ids``,
each turn's text tokenised by itself (the final turn gets the end-of-turn token the engine would stop on), each
observation tokenised by ``env.observation_ids`` and placed before the next turn — and is flattened with
``at2po.rollout.rows.flatten``: the very function that builds RL rows. The loss is the token-mean negative
log-likelihood over generated tokens only: L = −(1/Σ M) Σ_t M_t log π_θ(y_t | y_<t), run like the RL update
(``train.packing``: the demonstrations of a micro-batch share the instruction prompt, packed once; the LM head
only on generated tokens).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from at2po.agent.env import QAExample
from at2po.config import RunConfig, save_config
from at2po.core.tree import TurnEnd, TurnTree
from at2po.errors import UserError
from at2po.train.batching import collate
from at2po.train.grad_step import accumulated_step
from at2po.train.logprobs import scored_log_probs
from at2po.train.update import forward_spec, plan_micro_batches


class DemoError(UserError, ValueError):
    """A demonstration line that cannot be used; the message names ``file:line``."""


def _check_demo(d: Any, where: str) -> dict[str, Any]:
    """One demonstration's shape: {question, turns: [{text, observation}], ...}; errors name ``where``."""
    turns = d.get("turns") if isinstance(d, dict) else None
    if not (isinstance(d, dict) and isinstance(d.get("question"), str) and isinstance(turns, list) and turns):
        raise DemoError(f"{where}: expected {{question, golden_answers, turns: [{{text, observation}}]}}")
    for j, t in enumerate(turns):
        if not isinstance(t, dict) or not isinstance(t.get("text"), str):
            raise DemoError(f"{where}: turns[{j}] needs a 'text' string")
    return d


def read_demos(path: str | Path, limit: int | None = None) -> list[dict[str, Any]]:
    p = Path(path)
    demos = []
    for lineno, line in enumerate(p.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DemoError(f"{p}:{lineno}: invalid JSON ({exc.msg})") from None
        demos.append(_check_demo(d, f"{p}:{lineno}"))
        if limit is not None and len(demos) >= limit:
            break
    if not demos:
        raise DemoError(f"{p}: no demonstrations")
    return demos


def check_demos(demos: Any, where: str = "demos") -> list[dict[str, Any]]:
    """Demonstrations given as objects: the same checks as :func:`read_demos`, naming ``demos[i]``."""
    out = [_check_demo(d, f"{where}[{i}]") for i, d in enumerate(demos)]
    if not out:
        raise DemoError(f"{where}: no demonstrations")
    return out


def demo_tree(demo: dict[str, Any], env: Any, tokenizer: Any) -> TurnTree:
    """One demonstration → a single-chain turn tree (token ids exactly as a rollout would hold them). The prompt
    is ``env.prompt_ids`` of the demonstration's example: a ``QAExample`` for the search env, else the
    demonstration's own fields (``env.example_from_row``, e.g. ``{question, answer}``)."""
    from at2po.agent.search_env import SearchEnv

    if isinstance(env, SearchEnv):
        ex: Any = QAExample(question=demo["question"], golden_answers=list(demo.get("golden_answers") or []))
    else:
        ex = env.example_from_row({k: v for k, v in demo.items() if k != "turns"}, "demonstration")
    tree = TurnTree(prompt_ids=list(env.prompt_ids(ex)), meta={"example": ex})
    end_id = env.stop_token_ids[0] if env.stop_token_ids else tokenizer.eos_token_id
    parent, obs_ids, obs_text = 0, [], ""
    turns = demo["turns"]
    for k, turn in enumerate(turns):
        final = k == len(turns) - 1
        gen = list(tokenizer(turn["text"], add_special_tokens=False)["input_ids"])
        if final:
            gen.append(int(end_id))  # the engine stops on (and keeps) the end-of-turn token
        parent = tree.add_node(
            parent, obs_ids=obs_ids, obs_text=obs_text, gen_ids=gen, gen_logprobs=[0.0] * len(gen),
            text=turn["text"], end=TurnEnd.ANSWER if final else TurnEnd.TOOL_CALL,
        )
        obs_text = turn.get("observation") or ""
        obs_ids = env.observation_ids(obs_text) if obs_text else []
    tree.nodes[parent].reward = 1.0
    return tree


def sft(
    cfg: RunConfig, out_dir: str | Path | None = None, *, env: Any = None, demos: list[dict[str, Any]] | None = None,
) -> Path:
    """Fine-tune ``model.path`` on demonstrations; writes an HF model dir (default ``<train.output_dir>/sft``) and
    returns it. ``demos`` (objects, format above) replace ``data.sft``; ``env`` (any ``AgentEnv``) formats
    prompts and observations (default: the search env; its tokenizer is used when it has one)."""
    from accelerate.utils import set_seed

    from at2po.agent.search_env import SearchEnv
    from at2po.rollout.rows import flatten
    from at2po.train.checkpoint import export_final
    from at2po.train.components import check_paths, ensure_pad, load_policy, load_tokenizer
    from at2po.train.logging import RunLogger
    from at2po.train.trainer import make_accelerator

    check_paths(cfg, ("model",) + (("sft",) if demos is None else ()))
    out = Path(out_dir or cfg.sft.output_dir or Path(cfg.train.output_dir) / "sft")
    acc = make_accelerator(cfg.train.precision)
    set_seed(cfg.train.seed)
    tokenizer = ensure_pad(getattr(env, "tokenizer", None) or load_tokenizer(cfg.model.tokenizer or cfg.model.path))
    # Only prompt and observation formatting are used here, so no retriever is needed.
    env = env if env is not None else SearchEnv(tokenizer, None, cfg.env)
    if demos is None:
        demos = read_demos(str(cfg.data.sft), cfg.sft.max_examples)
    else:
        demos = check_demos(demos)[: cfg.sft.max_examples]
    rows = flatten([demo_tree(d, env, tokenizer) for d in demos])
    batch = collate(rows, int(tokenizer.pad_token_id))
    model = load_policy(cfg.model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.sft.lr)
    model, optimizer = acc.prepare(model, optimizer)
    log = RunLogger(out.with_name(out.name + "-logs"), enabled=acc.is_main_process, tensorboard=cfg.logging.tensorboard)
    if acc.is_main_process:
        save_config(cfg, log.run_dir / "config.yaml")
    rng = np.random.default_rng(cfg.train.seed)
    spec = forward_spec(cfg.train)
    idx = np.arange(len(rows))[acc.process_index :: acc.num_processes]
    # the same number of steps on every process (shards differ by at most one row): a process whose shard runs out
    # first joins the last step's all-reduce with a zero gradient
    steps_per_epoch = math.ceil(math.ceil(len(rows) / acc.num_processes) / cfg.sft.batch_rows)
    pad_id = int(tokenizer.pad_token_id)

    def loss_of(g: list[int], n_tok: float) -> tuple[torch.Tensor, torch.Tensor]:
        sub = batch.select(g).to(acc.device)  # demonstrations share the instruction prompt: packed once
        with acc.autocast():
            lp = scored_log_probs(model, sub.input_ids, sub.attention_mask, sub.response_mask, spec=spec).log_prob
        nll = -(lp.float() * sub.response_mask).sum() / max(n_tok, 1.0)  # token-mean over the batch
        return nll, nll

    step = skipped = 0
    model.train()
    for epoch in range(cfg.sft.epochs):
        t0 = time.perf_counter()
        order = rng.permutation(idx)
        for s in range(steps_per_epoch):
            part = order[s * cfg.sft.batch_rows : (s + 1) * cfg.sft.batch_rows]
            n_tok = float(batch.response_mask[part].sum())
            groups = plan_micro_batches(batch, part, cfg.train.micro_batch_tokens, spec.packing)
            res = accumulated_step(acc, model, optimizer, groups, lambda g, n=n_tok: loss_of(g, n), spec=spec,
                                   max_grad_norm=cfg.optim.max_grad_norm, pad_id=pad_id)
            total = float(sum(res.losses))
            skipped += not res.applied
            step += 1
            log.log(step, {"sft/nll": total, "sft/grad_norm": res.grad_norm, "sft/epoch": epoch,
                           "sft/skipped_updates": float(skipped)})
        log.print(f"sft epoch {epoch + 1}/{cfg.sft.epochs} | nll {total:.4f} | {time.perf_counter() - t0:.1f}s"
                  + (f" | {skipped} non-finite steps skipped so far" if skipped else ""))
    log.close()
    export_final(acc, model, tokenizer, out)
    return out
