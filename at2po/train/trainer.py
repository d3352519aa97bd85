"""The RL loop, top to bottom (CleanRL-style): one step =

    rollout (chains or trees, tool calls) → rewards (on leaves, by the env) → credit (at2po.core.credit)
    → old log-probs recomputed here, or the sampler's (+ reference log-probs when KL is on)
    → PPO epochs over prompt mini-batches, token-budget micro-batches with gradient accumulation
      (every forward tree-packed: each unique token of a micro-batch's rows once; LM head on scored tokens only)
    → AdamW step with grad clipping and the LR schedule → metrics, eval, checkpoint.

Runs on ``accelerate`` (one process, or ``accelerate launch --num_processes N``: each process rolls out its
share of the prompts, gradients are all-reduced). fp32 on CPU, bf16 autocast on GPU. Everything is seeded;
rollout seeds are derived from (seed, step, process), so a resumed run repeats the uninterrupted one.
"""

from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from at2po.config import ConfigError, RunConfig, save_config
from at2po.core.tis import logprob_mismatch, tis_weights
from at2po.errors import EnvError, UserError
from at2po.rollout.scoring import RewardFn
from at2po.rollout.seeds import rollout_seed, update_rng
from at2po.rollout.tool_stats import tool_metrics
from at2po.train import checkpoint as ckpt
from at2po.train.components import (
    PromptSampler,
    build_engine,
    build_env,
    check_paths,
    ensure_pad,
    load_policy,
    load_tokenizer,
    resolve_examples,
)
from at2po.train.experience import (
    apply_overlong_penalty,
    build_batch,
    collect,
    leaf_rewards,
    tree_metrics,
)
from at2po.train.faults import (
    ToolFailureError,
    ToolHealth,
    eval_tool_warning,
    tool_hint,
)
from at2po.train.logging import RunLogger
from at2po.train.memory import PhaseMemory
from at2po.train.update import (
    NonFiniteGuard,
    compute_log_probs,
    forward_spec,
    ppo_update,
)


@dataclass
class TrainResult:
    run_dir: Path
    steps_done: int
    final_dir: Path | None
    evals: dict[int, dict[str, Any]] = field(default_factory=dict)  # step → eval summary (main process)
    stopped_by_budget: bool = False  # stopped early at train.max_generated_tokens


def make_accelerator(precision: str) -> Any:
    from accelerate import Accelerator

    if precision == "auto":
        precision = "bf16" if torch.cuda.is_available() else "fp32"
    # cpu=True without a GPU: under a multi-process launcher this selects the gloo MULTI_CPU backend.
    acc = Accelerator(mixed_precision="bf16" if precision == "bf16" else "no", cpu=not torch.cuda.is_available())
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > 1 and acc.num_processes != launched:
        # accelerate's process state is shared and set once: one made earlier in this process (e.g. a bare
        # PartialState() on a CPU machine) makes every process train alone, each on all the data, silently
        raise UserError(
            f"launched as {launched} processes (WORLD_SIZE), but accelerate's state here is single-process: "
            f"something created an accelerate PartialState/Accelerator before at2po did. Create none before "
            f"training, or create it with cpu=True on a machine without a GPU."
        )
    return acc


def train(
    cfg: RunConfig, resume: bool = False, model_hook: Callable[[torch.nn.Module], None] | None = None, *,
    model: torch.nn.Module | None = None, tokenizer: Any = None, env: Any = None, reward_fn: RewardFn | None = None,
    train_dataset: Any = None, eval_dataset: Any = None, callbacks: Sequence[Any] = (),
) -> TrainResult:
    """Run RL training as configured; ``resume`` continues from the latest checkpoint in ``train.output_dir``.

    Every part can be given as an object instead of a config path (``at2po.Trainer`` is the friendly front):
    ``model`` (a causal LM; trained in place, in fp32), ``tokenizer`` (default: the env's, else ``model.path``'s),
    ``env`` (any ``AgentEnv``; default: the search env over ``data.index``), ``reward_fn(response_text, example)``
    (default: ``env.reward``), ``train_dataset`` / ``eval_dataset`` (a path, a list of examples or rows, an HF
    dataset; default: ``data.train`` / ``data.test``). ``callbacks``: objects with any of ``on_step(step, metrics)``,
    ``on_eval(step, report)``, ``on_checkpoint(step, path)``, called on the main process.
    ``model_hook(policy)`` is called once on the loaded policy before training (an extension point: freeze
    layers, register forward hooks for inspection or fault injection).
    """
    # --- 0. fail fast on missing inputs, before loading anything ------------------------------------------
    need = [] if model is not None else ["model"]
    need += [] if train_dataset is not None else ["train"]
    need += ["test"] if cfg.data.test and eval_dataset is None else []
    need += [] if env is not None else ["index"]
    check_paths(cfg, tuple(need))
    if model is not None and cfg.rollout.engine == "vllm" and not cfg.model.path:
        raise ConfigError("config key 'rollout.engine': vllm loads the model from model.path; set model.path to the "
                          "model's directory (the given model object's weights are synced into it after loading)")
    acc = make_accelerator(cfg.train.precision)
    for key in ("batch_prompts", "mini_batch_prompts"):  # both are global: each process takes an equal share
        if getattr(cfg.train, key) % acc.num_processes:
            raise ConfigError(f"config key 'train.{key}': {getattr(cfg.train, key)} must be divisible by the "
                              f"{acc.num_processes} processes")
    last = ckpt.latest_checkpoint(cfg.train.output_dir) if resume else None
    # a bad row fails here, before any model
    if train_dataset is not None:
        train_set = resolve_examples(train_dataset, env, cfg.data.max_train_examples, "train_dataset")
    else:
        train_set = resolve_examples(cfg.data.train, env, cfg.data.max_train_examples, "data.train")
    if eval_dataset is not None:
        test_set = resolve_examples(eval_dataset, env, cfg.data.max_test_examples, "eval_dataset")
    else:
        test_set = resolve_examples(cfg.data.test, env, cfg.data.max_test_examples, "data.test")
    if not train_set:
        raise ConfigError("train_dataset is empty" if train_dataset is not None else
                          f"data.train={cfg.data.train!r} has no examples")

    # --- 1. tool (checked before any model loads: faults.check_retriever), model, optimizer, schedule ----------
    if tokenizer is None:
        tokenizer = getattr(env, "tokenizer", None)
    if tokenizer is None:
        source = cfg.model.tokenizer or cfg.model.path or getattr(model, "name_or_path", None)
        if not source:
            raise ConfigError("no tokenizer: pass tokenizer=..., or set model.tokenizer / model.path")
        tokenizer = load_tokenizer(source)
    ensure_pad(tokenizer)
    own_env = env is None
    env = build_env(cfg, tokenizer) if own_env else env
    parts = _Parts(model, reward_fn, list(callbacks))
    try:
        return _train(cfg, acc, tokenizer, env, last, model_hook, train_set, test_set, parts)
    finally:  # also on NonFiniteError / ToolFailureError / KeyboardInterrupt: stop the tool threads
        if own_env:  # a caller's env is the caller's to close
            env.close()


@dataclass
class _Parts:
    """What the caller gave as objects (``train``'s keyword arguments)."""

    model: torch.nn.Module | None
    reward_fn: RewardFn | None
    callbacks: list[Any]

    def call(self, hook: str, *args: Any) -> None:
        for cb in self.callbacks:
            fn = getattr(cb, hook, None)
            if fn is not None:
                fn(*args)


def _train(
    cfg: RunConfig, acc: Any, tokenizer: Any, env: Any, last: Path | None,
    model_hook: Callable[[torch.nn.Module], None] | None, train_set: list[Any], test_set: list[Any], parts: _Parts,
) -> TrainResult:
    from accelerate.utils import set_seed
    from transformers import get_scheduler

    from at2po.train.evaluate import evaluate, format_table, write_report

    rank, world = acc.process_index, acc.num_processes
    run_dir = Path(cfg.train.output_dir)
    set_seed(cfg.train.seed)  # same on every process: identical LoRA initialisation
    ref_model = None
    if cfg.loss.kl_coef > 0:  # the initial policy, frozen (a given object: a copy made before any update)
        ref_model = (copy.deepcopy(parts.model) if parts.model is not None else None)
        ref_model = load_policy(cfg.model, trainable=False, model=ref_model).to(acc.device)
    model = load_policy(cfg.model, weights_dir=(last / "model") if last else None, model=parts.model)
    set_seed(cfg.train.seed + rank)
    if model_hook is not None:
        model_hook(model)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        params, lr=cfg.optim.lr, betas=cfg.optim.betas, eps=cfg.optim.eps, weight_decay=cfg.optim.weight_decay
    )
    n_chunks = max(1, cfg.train.batch_prompts // cfg.train.mini_batch_prompts)
    total_updates = cfg.train.steps * cfg.train.ppo_epochs * n_chunks
    scheduler = get_scheduler(cfg.optim.schedule, optimizer, cfg.optim.warmup_updates, total_updates)
    # The scheduler is stepped by hand once per update (accelerate's wrapper would step it once per process).
    model, optimizer = acc.prepare(model, optimizer)
    policy = acc.unwrap_model(model)
    engine = build_engine(policy, tokenizer, cfg)
    pad_id = int(tokenizer.pad_token_id)

    # --- 2. data and state --------------------------------------------------------------------------------
    sampler = PromptSampler(len(train_set), seed=cfg.train.seed)
    start = 0
    gen_total = 0.0  # cumulative generated tokens of all processes (train.max_generated_tokens budget)
    if last is not None:
        state = ckpt.load_checkpoint(last, acc, optimizer, scheduler)
        start = int(state["step"])
        sampler.load(state["data"])
        gen_total = float(state.get("generated_tokens", 0.0))
    guard = NonFiniteGuard(cfg.train.max_nonfinite_steps)
    health = ToolHealth(cfg.faults.tool_failure_warn, cfg.faults.tool_failure_stop, cfg.faults.tool_failure_patience,
                        hint=tool_hint(cfg))
    log = RunLogger(
        run_dir, enabled=acc.is_main_process, tensorboard=cfg.logging.tensorboard, wandb=cfg.logging.wandb,
        wandb_project=cfg.logging.wandb_project, wandb_run_name=cfg.logging.wandb_run_name,
        config=cfg.model_dump(mode="json"), resume_step=start if last else None,
    )
    if acc.is_main_process:
        save_config(cfg, run_dir / "config.yaml")
        if last:
            log.print(f"resuming from {last} (step {start})")
    result = TrainResult(run_dir=run_dir, steps_done=start, final_dir=None)

    def save(step: int, data: dict[str, int], generated: float, rng: dict[str, Any] | None = None) -> None:
        path = ckpt.save_checkpoint(run_dir, step, acc, model, tokenizer, optimizer, scheduler,
                                    {"data": data, "preset": cfg.preset, "generated_tokens": generated},
                                    keep_last=cfg.checkpoint.keep_last, rng=rng)
        if acc.is_main_process:
            parts.call("on_checkpoint", step, path)
    mem = PhaseMemory()  # samples RSS / CUDA memory on a thread: the per-phase peaks of each step

    def run_eval(step: int) -> None:
        if not test_set:
            return
        report = evaluate(engine, env, test_set, cfg, acc, seed=cfg.train.seed + 104_729 * step,
                          reward_fn=parts.reward_fn)
        if acc.is_main_process:
            parts.call("on_eval", step, report)
            write_report(report, run_dir / "eval" / f"step-{step:08d}.json")
            log.log(step, {f"eval/{k}": v for k, v in report["overall"].items()})
            log.print(format_table(report, title=f"eval @ step {step}"))
            if warning := eval_tool_warning(report, cfg.faults.tool_failure_warn, f"eval @ step {step}"):
                log.print(f"[yellow]warning: {warning}[/yellow]")
            result.evals[step] = report["overall"]

    try:
        if start == 0:
            run_eval(0)

        local_prompts = cfg.train.batch_prompts // world
        if cfg.logging.progress:
            log.start_progress(cfg.train.steps, completed=start)
        budget = cfg.train.max_generated_tokens
        spec = forward_spec(cfg.train)
        result.stopped_by_budget = budget is not None and gen_total >= budget  # resumed after a budget stop
        for step in range(start + 1, start + 1 if result.stopped_by_budget else cfg.train.steps + 1):
            t_step = time.perf_counter()
            # --- 3. rollout → rewards (leaves) ------------------------------------------------------------------
            policy.eval()
            engine.reset_stats()

            def next_examples(k: int) -> list[Any]:
                idx = sampler.next(k * world)  # every process advances the global sampler identically
                return [train_set[i] for i in idx[rank::world]]

            before = {"data": sampler.state(), "rng": ckpt.rng_state(), "generated_tokens": gen_total}
            t0 = time.perf_counter()
            mem.start()
            trees, metrics, events = collect(engine, env, next_examples, local_prompts, cfg,
                                             seed=rollout_seed(cfg.rollout.seed, step, rank), reward_fn=parts.reward_fn)
            metrics["time/rollout_s"] = time.perf_counter() - t0
            all_events = _gather(acc, events)  # every process decides on all processes' calls: they stop together
            try:
                warning = health.step(all_events, step)
            except ToolFailureError as exc:  # before this step's update: keep the last completed step
                raise ToolFailureError(f"{exc} {_kept_after_stop(save, run_dir, step, start, before)}") from exc
            if warning and acc.is_main_process:
                log.print(f"[yellow]warning: {warning}[/yellow]")
            metrics.update(mem.metrics("rollout"))
            metrics["rollout/overlong_penalised"] = float(apply_overlong_penalty(
                trees, cfg.rollout.max_response_tokens, cfg.train.overlong_buffer, cfg.train.overlong_penalty
            ))
            scored = tree_metrics(trees)
            if clash := sorted(set(scored) & set(metrics)):  # an env metric named like a rollout metric
                raise EnvError(f"{type(env).__name__}.metrics returns {[k.split('/', 1)[1] for k in clash]}, "
                               f"names the rollout's own metrics use ({clash}): rename them")
            metrics.update(scored)
            # a NaN/inf reward (a broken reward function) has no credit to give: its tree leaves the batch, and the
            # step counts as a bad one for the non-finite guard
            finite = [bool(np.isfinite(leaf_rewards(t)).all()) for t in trees]
            dropped = finite.count(False)
            dropped_all = int(sum(_gather(acc, [dropped])))  # the guard must see the same count on every process
            metrics["rollout/nonfinite_reward_trees"] = float(dropped)
            if dropped:
                trees = [t for t, ok in zip(trees, finite, strict=True) if ok]
                if acc.is_main_process:
                    log.print(f"[red]step {step}: {int(metrics['rollout/nonfinite_rewards'])} leaf rewards are "
                              f"NaN/inf: the updates over their {dropped} trees are skipped[/red]")
            if metrics.get("rollout/all_equal_reward") and acc.is_main_process:
                log.print(f"[yellow]step {step}: every reward in the rollout batch is equal "
                          f"({metrics['rollout/reward_mean']:+.2f}): no learning signal[/yellow]")

            engine.sleep()  # vLLM + enable_sleep_mode on GPU: hand the memory to the trainer (no-op otherwise)

            # --- 4. credit → batch with per-token advantages ---------------------------------------------------
            batch = row_tree = None
            if trees:
                batch, row_tree, m = build_batch(trees, cfg, pad_id)
                metrics.update(m)

                # --- 5. old (and reference) log-probs: recomputed with the current weights, or the sampler's ----
                t0 = time.perf_counter()
                mem.start()
                if cfg.train.old_log_prob == "sampler":  # exact when the engine computes the trainer's numbers
                    batch.old_log_prob = batch.sample_log_prob * batch.response_mask
                else:
                    batch.old_log_prob = compute_log_probs(
                        model, batch, cfg.train.micro_batch_tokens, cfg.rollout.temperature, acc.device,
                        acc.autocast, spec,
                    )
                    gap = logprob_mismatch(batch.sample_log_prob, batch.old_log_prob, batch.response_mask)
                    metrics["actor/sampler_logprob_gap"] = float(gap["mean_abs"])
                    metrics["actor/sampler_logprob_gap_max"] = float(gap["max_abs"])
                if ref_model is not None:
                    batch.ref_log_prob = compute_log_probs(
                        ref_model, batch, cfg.train.micro_batch_tokens, cfg.rollout.temperature, acc.device,
                        acc.autocast, spec,
                    )
                if cfg.loss.tis_cap is not None:
                    # w·min(s·A, clip(s)·A) = min(s·wA, clip(s)·wA) for w ≥ 0: TIS is a per-token advantage scale.
                    batch.advantages = batch.advantages * tis_weights(
                        batch.old_log_prob, batch.sample_log_prob, cfg.loss.tis_cap
                    )
                metrics["time/old_logprob_s"] = time.perf_counter() - t0
                metrics.update(mem.metrics("old_logprob"))

            # --- 6. PPO epochs: mini-batches of prompts, micro-batches of tokens, AdamW -------------------------
            t0 = time.perf_counter()
            mem.start()
            rng = update_rng(cfg.train.seed, step, rank)
            stats = ppo_update(acc, model, optimizer, scheduler, batch, row_tree, cfg, rng, pad_id)
            metrics["time/update_s"] = time.perf_counter() - t0
            metrics.update(mem.metrics("update"))
            t0 = time.perf_counter()
            engine.sync_weights(policy)  # vLLM: load the new weights in place; both: drop stale KV caches
            metrics["time/sync_s"] = time.perf_counter() - t0
            metrics.update(stats.as_dict())
            metrics["time/step_s"] = time.perf_counter() - t_step

            # --- 7. log, guard, eval, checkpoint ----------------------------------------------------------------
            metrics = _reduce_metrics(acc, metrics)
            # tool rates and percentiles pooled over every process's calls (a mean of per-process rates is not one)
            metrics = {k: v for k, v in metrics.items() if not k.startswith("tool/")} | tool_metrics(all_events)
            gen_total += float(metrics.get("rollout/generated_tokens") or 0.0) * world  # reduced = mean per process
            budget_hit = budget is not None and gen_total >= budget
            final = step == cfg.train.steps or budget_hit
            log.log(step, metrics)
            log.print(log.summary_line(step, cfg.train.steps, metrics))
            if acc.is_main_process:
                parts.call("on_step", step, metrics)
            log.advance()
            guard.step(stats.skipped + dropped_all, step)  # raises NonFiniteError after too many bad steps in a row
            result.steps_done = step
            if cfg.eval.every and step % cfg.eval.every == 0 and not final:
                run_eval(step)
            if final or (cfg.checkpoint.every and step % cfg.checkpoint.every == 0):
                save(step, sampler.state(), gen_total)
            if budget_hit:
                result.stopped_by_budget = True
                log.print(f"step {step}: {gen_total:.0f} generated tokens reached "
                          f"train.max_generated_tokens={cfg.train.max_generated_tokens}: stopping")
                break

        if result.steps_done == cfg.train.steps or result.stopped_by_budget:
            run_eval(result.steps_done)
            if cfg.checkpoint.export_final:
                result.final_dir = ckpt.export_final(acc, model, tokenizer, run_dir / "final")
    finally:  # also on NonFiniteError / ToolFailureError / KeyboardInterrupt: close the progress bar, TensorBoard
        log.close()
        mem.close()
    return result


def _kept_after_stop(save: Callable[..., None], run_dir: Path, step: int, start: int, before: dict[str, Any]) -> str:
    """On a stop before step ``step``'s update: checkpoint step − 1 (unless saved already) with the data position
    and RNG states of the step's start, which are exactly those at the end of step − 1; say what survived."""
    last = step - 1
    if last <= start:
        return ("No step completed in this run, so nothing new was checkpointed"
                + (f"; checkpoint step {start} is the latest." if start else "."))
    if not ckpt.has_checkpoint(run_dir, last):
        try:
            save(last, before["data"], before["generated_tokens"], before["rng"])
        except ckpt.CheckpointWriteError as exc:
            return f"The last completed step {last} could not be checkpointed either: {exc}"
    return f"Checkpoint step {last} holds the last completed step; fix the tool and continue with --resume."


def _gather(acc: Any, items: list[Any]) -> list[Any]:
    """Every process's ``items``, concatenated in rank order (the list itself with one process)."""
    if acc.num_processes == 1:
        return items
    from accelerate.utils import gather_object

    return gather_object(items)


def _reduce_metrics(acc: Any, metrics: dict[str, float]) -> dict[str, float]:
    """Average every metric over processes (one all-reduce over a fixed, sorted key set)."""
    if acc.num_processes == 1:
        return metrics
    from accelerate.utils import gather_object

    all_metrics = gather_object([metrics])
    keys = sorted(set().union(*all_metrics))
    out: dict[str, float] = {}
    for k in keys:
        vals = [m[k] for m in all_metrics if k in m and isinstance(m[k], (int, float)) and math.isfinite(m[k])]
        out[k] = float(np.mean(vals)) if vals else math.nan
    return out
