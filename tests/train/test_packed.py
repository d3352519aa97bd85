"""Tree-packed training equals flat rows: log-probs and the gradient of every trainable parameter, for every
policy loss × aggregation, KL on/off, entropy bonus on/off, LoRA and full fine-tuning, on real rollout batches of
the tiny search world (trees, chains, identical leaves, a one-node tree, DAPO's extra batches) and on
hypothesis-generated tries; a split into sub-tries equals one pack; the response-only chunked LM head equals the
full-logit path."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from at2po.config import load_config
from at2po.core.losses import AGG_MODES, POLICY_LOSSES, policy_loss
from at2po.core.tree import TurnEnd, TurnTree
from at2po.train.batching import Batch
from at2po.train.components import build_engine, build_env, load_examples, load_policy, load_tokenizer
from at2po.train.experience import build_batch, collect
from at2po.train.logprobs import ForwardSpec, scored_log_probs, token_log_probs
from at2po.train.trainer import make_accelerator
from at2po.train.update import compute_log_probs, plan_micro_batches, ppo_update
from tests.train.conftest import small_overrides

AGG_MODE_NAMES = tuple(AGG_MODES)  # the built-ins, snapshotted before any test registers more

TREE = ForwardSpec("tree", chunk_tokens=7, attention_block=16)  # small chunks/blocks: many of each on tiny batches


def _cfg(world: dict, model: Path, out: Path, extra: list[str] = ()):
    return load_config(preset="at2po", overrides=small_overrides(world, out) + [
        f"model.path={model}", "rollout.max_turn_tokens=40", "rollout.max_response_tokens=200", *extra,
    ])


def _finish(batch: Batch, seed: int) -> Batch:
    """Advantages of both signs and ratios ≠ 1 (old log-probs shifted inside the clips), as in a real update."""
    g = torch.Generator().manual_seed(seed)
    m = batch.response_mask
    batch.advantages = torch.randn(m.shape, generator=g) * m
    batch.old_log_prob = batch.sample_log_prob - 1e-3 * torch.rand(m.shape, generator=g) * m
    batch.ref_log_prob = batch.sample_log_prob + 2e-2 * torch.randn(m.shape, generator=g) * m
    return batch


def _odd_trees(tok) -> list[TurnTree]:
    """A one-node tree (prompt + one answer turn) and a tree whose two leaves are token-identical."""
    prompt = tok("Question: who is the mayor of Alba?", add_special_tokens=False)["input_ids"]
    one = TurnTree(prompt_ids=list(prompt))
    ans = tok("<answer>\\boxed{Bren}</answer>", add_special_tokens=False)["input_ids"]
    one.nodes[one.add_node(0, gen_ids=ans, gen_logprobs=[-0.5] * len(ans), end=TurnEnd.ANSWER)].reward = 1.0
    twin = TurnTree(prompt_ids=list(prompt))
    call = tok("<search>Alba</search>", add_special_tokens=False)["input_ids"]
    obs = tok(" <result> Alba is a city. </result> ", add_special_tokens=False)["input_ids"]
    a = twin.add_node(0, gen_ids=call, gen_logprobs=[-0.3] * len(call), end=TurnEnd.TOOL_CALL)
    for r in (0.0, 1.0):
        leaf = twin.add_node(a, obs_ids=obs, gen_ids=ans, gen_logprobs=[-0.2] * len(ans), end=TurnEnd.ANSWER)
        twin.nodes[leaf].reward = r
    return [one, twin]


def _cycler(examples: list) -> Callable[[int], list]:
    pos = itertools.cycle(range(len(examples)))
    return lambda k: [examples[next(pos)] for _ in range(k)]


@pytest.fixture(scope="module")
def batches(tiny_world, sft_model, tmp_path_factory) -> dict[str, Batch]:
    """Real rollout batches of the SFT'd tiny policy: trees, chains (plus the odd trees), DAPO's extra batches."""
    out = tmp_path_factory.mktemp("packed")
    tok = load_tokenizer(sft_model)
    policy = load_policy(load_config(overrides=[f"model.path={sft_model}"]).model)
    found: dict[str, Batch] = {}
    for name, extra in {
        "trees": ["rollout.mode=tree", "train.batch_prompts=3"],
        "chains+odd": ["rollout.mode=chain", "rollout.n=3", "train.batch_prompts=2"],
        "dapo": ["rollout.mode=chain", "rollout.n=3", "train.batch_prompts=3", "train.dynamic_sampling=true",
                 "train.max_gen_batches=3"],
    }.items():
        cfg = _cfg(tiny_world, sft_model, out / name, extra)
        engine, env = build_engine(policy, tok, cfg), build_env(cfg, tok)
        examples = load_examples(cfg.data.train, None)
        try:
            # DAPO: rows from more than one rollout batch (prompts with equal rewards were refilled); whether a
            # seed's first batch has such prompts depends on the checkpoint's bits (they differ by CPU ISA)
            for seed in range(12, 12 + (8 if name == "dapo" else 1)):
                trees, metrics, _ = collect(engine, env, _cycler(examples), cfg.train.batch_prompts, cfg, seed=seed)
                if name != "dapo" or metrics["rollout/gen_batches"] > 1:
                    break
        finally:
            env.close()
        assert trees, name
        if name == "dapo":
            assert metrics["rollout/gen_batches"] > 1
        if name == "chains+odd":
            trees = trees + _odd_trees(tok)
        found[name] = _finish(build_batch(trees, cfg, tok.pad_token_id)[0], seed=len(found))
    t = found["trees"]
    assert (t.node_ids.amax(-1) > 1).any()  # a real tree: some leaf is deeper than its first turn
    assert (t.attention_mask.sum(-1) > 0).all()
    return found


def _models(sft_model: Path) -> dict[str, torch.nn.Module]:
    full = load_policy(load_config(overrides=[f"model.path={sft_model}"]).model).train()
    lora = load_policy(load_config(overrides=[f"model.path={sft_model}", "model.lora_r=4"]).model).train()
    with torch.no_grad():  # LoRA's B starts at 0: give the adapters a value so their path changes the outputs
        for n, p in lora.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    return {"full": full, "lora": lora}


def _grads(model: torch.nn.Module, loss: torch.Tensor) -> list[torch.Tensor]:
    params = [p for p in model.parameters() if p.requires_grad]
    return list(torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True))


def _assert_grads_close(a: list[torch.Tensor | None], b: list[torch.Tensor | None], what: str) -> None:
    """Every parameter's gradient within 3e-5 relative (plus 1e-7 of the whole gradient's norm, for parameters
    whose exact gradient is 0 and whose computed one is rounding noise). fp32 sums in another order: on an AVX2
    CPU the aepo/token-mean case reaches 1.4e-5 relative, so 1e-5 was one ISA's rounding, not a bound."""
    a = [torch.zeros(()) if x is None else x for x in a]
    b = [torch.zeros(()) if y is None else y for y in b]
    total = float(torch.stack([y.norm() for y in b]).norm())
    for i, (x, y) in enumerate(zip(a, b, strict=True)):
        err = float((x - y).norm())
        scale = float(y.norm())
        assert err <= 3e-5 * scale + 1e-7 * total, f"{what}: parameter {i}: |Δg| = {err:.3g}, |g| = {scale:.3g}"


@pytest.mark.parametrize("kind", ["trees", "chains+odd", "dapo"])
@pytest.mark.parametrize("tuning", ["full", "lora"])
def test_packed_equals_flat_for_every_loss(batches, sft_model, kind: str, tuning: str) -> None:
    batch = batches[kind]
    model = _models(sft_model)[tuning]
    mask = batch.response_mask
    flat_lp, flat_ent = token_log_probs(model, batch.input_ids, batch.attention_mask, 1.0, with_entropy=True)
    packed = scored_log_probs(model, batch.input_ids, batch.attention_mask, mask, 1.0, TREE, with_entropy=True)
    on = mask.bool()
    torch.testing.assert_close(packed.log_prob[on], flat_lp[on], rtol=0, atol=1e-5)
    torch.testing.assert_close(packed.entropy[on], flat_ent[on], rtol=0, atol=1e-5)
    assert packed.tokens < int(batch.attention_mask.sum())  # shared prefixes really were packed
    for name, agg, kl, ent in itertools.product(sorted(POLICY_LOSSES), AGG_MODE_NAMES, (False, True), (False, True)):
        kw: dict = {"turn_ids": batch.turn_ids, "agg": agg}
        if kl:
            kw.update(ref_log_prob=batch.ref_log_prob, kl_coef=0.1)
        losses = []
        for lp, h in ((flat_lp, flat_ent), (packed.log_prob, packed.entropy)):
            extra = {"entropy": h, "entropy_coef": 0.01} if ent else {}
            losses.append(policy_loss(name, lp, batch.old_log_prob, batch.advantages, mask, **kw, **extra)[0])
        what = f"{kind}/{tuning}: loss={name} agg={agg} kl={kl} entropy={ent}"
        torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=1e-7, msg=what)
        _assert_grads_close(_grads(model, losses[1]), _grads(model, losses[0]), what)


def test_sub_trie_split_equals_one_pack(batches, sft_model) -> None:
    """Old log-probs and a whole PPO update give the same numbers whatever the unique-token budget (one pack per
    micro-batch vs trees split into parts that recompute their shared prefix) and with flat rows."""
    batch = batches["trees"]
    lengths = batch.attention_mask.sum(-1)
    small = int(lengths.max()) + 8  # forces every tree into several parts
    assert len(plan_micro_batches(batch, range(len(batch)), small, "tree")) > 3
    acc = make_accelerator("fp32")
    model = _models(sft_model)["full"]
    one = compute_log_probs(model, batch, 10**6, 1.0, acc.device, acc.autocast, ForwardSpec("tree"))
    for spec, budget in ((ForwardSpec("tree", 5, attention_block=8), small), (ForwardSpec("rows", 0), 10**6),
                         (ForwardSpec("tree", 0, "dense"), 10**6)):
        other = compute_log_probs(model, batch, budget, 1.0, acc.device, acc.autocast, spec)
        torch.testing.assert_close(other, one, rtol=0, atol=1e-5)
    assert (one[batch.response_mask == 0] == 0).all()


@pytest.mark.parametrize("loss, agg", [("turn", "seq-mean-token-mean"), ("token", "token-mean")])
def test_ppo_update_packed_equals_rows(tiny_world, sft_model, batches, tmp_path, loss: str, agg: str) -> None:
    """The trainer's update path end to end (micro-batch planning, share weighting, accumulation): SGD with lr 1
    moves the weights by the gradient, identically with train.packing=tree (split into sub-tries) and rows."""
    results = []
    for packing, budget in (("rows", 100_000), ("tree", 300), ("tree", 100_000)):
        cfg = _cfg(tiny_world, sft_model, tmp_path, [
            f"loss.name={loss}", f"loss.agg={agg}", "train.batch_prompts=3", "train.mini_batch_prompts=3",
            f"train.packing={packing}", f"train.micro_batch_tokens={budget}", "optim.max_grad_norm=1e9",
            "train.logprob_chunk_tokens=16",
        ])
        model = load_policy(cfg.model)
        acc = make_accelerator("fp32")
        opt = torch.optim.SGD(model.parameters(), lr=1.0)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
        model, opt = acc.prepare(model, opt)
        batch = batches["trees"]  # one mini-batch (batch_prompts = mini_batch_prompts): the row→tree map is unused
        stats = ppo_update(acc, model, opt, sched, batch, np.zeros(len(batch), dtype=np.int64), cfg,
                           np.random.default_rng(0), 0)
        assert stats.updates == 1
        results.append((torch.cat([p.detach().flatten() for p in model.parameters()]), stats.forward_tokens))
    p0 = torch.cat([p.detach().flatten() for p in load_policy(cfg.model).parameters()])
    assert (results[0][0] - p0).abs().max() > 1e-4  # the update did something
    for params, _ in results[1:]:
        torch.testing.assert_close(params, results[0][0], rtol=1e-4, atol=1e-6)
    assert results[2][1] < results[1][1] < results[0][1]  # one pack < split packs < padded rows


def test_chunked_head_equals_full_logits_at_the_edges(batches, sft_model) -> None:
    """Response-only chunked log-probs equal the full-logit path on every response token, including the first one
    after an observation and the last token of each row, in value and gradient, at a rollout temperature ≠ 1."""
    batch = batches["trees"]
    model = _models(sft_model)["full"]
    m = batch.response_mask
    after_obs = (m[:, 1:] > 0) & (m[:, :-1] == 0) & (batch.turn_ids[:, 1:] > 0)  # first generated token of turn ≥ 1
    last = batch.attention_mask.sum(-1) - 1
    assert after_obs.any() and bool((m[torch.arange(len(batch)), last] > 0).all())
    ref = token_log_probs(model, batch.input_ids, batch.attention_mask, 0.7)
    for spec in (ForwardSpec("rows", 3), ForwardSpec("tree", 5)):
        out = scored_log_probs(model, batch.input_ids, batch.attention_mask, m, 0.7, spec)
        on = m.bool()
        torch.testing.assert_close(out.log_prob[on], ref[on], rtol=0, atol=1e-5)
        torch.testing.assert_close(out.log_prob[:, 1:][after_obs], ref[:, 1:][after_obs], rtol=0, atol=1e-5)
        rows = torch.arange(len(batch))
        torch.testing.assert_close(out.log_prob[rows, last], ref[rows, last], rtol=0, atol=1e-5)
        assert (out.log_prob[~on] == 0).all()
        w = torch.randn(m.shape, generator=torch.Generator().manual_seed(3)) * m
        _assert_grads_close(_grads(model, (out.log_prob * w).sum()), _grads(model, (ref * w).sum()), str(spec))


@st.composite
def tries(draw):
    """Rows forking from each other at random depths, as [B, T] ids with a random score mask."""
    rows: list[list[int]] = []
    for _ in range(draw(st.integers(1, 7))):
        base = rows[draw(st.integers(0, len(rows) - 1))] if rows and draw(st.booleans()) else []
        row = base[: draw(st.integers(0, len(base)))] + draw(st.lists(st.integers(0, 40), max_size=20))
        rows.append(row if len(row) >= 2 else row + [1, 2])
    T = max(map(len, rows))
    ids = torch.zeros((len(rows), T), dtype=torch.long)
    attn = torch.zeros((len(rows), T), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)], attn[i, : len(r)] = torch.tensor(r), 1
    n = T * len(rows)
    score = torch.tensor(draw(st.lists(st.booleans(), min_size=n, max_size=n))).view(len(rows), T)
    return ids, attn, score & attn.bool(), draw(st.sampled_from([1, 3, 16]))


@pytest.fixture(scope="module")
def random_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=48, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, tie_word_embeddings=True, max_position_embeddings=256)
    return LlamaForCausalLM(cfg)


@settings(max_examples=40, deadline=None)
@given(tries())
def test_packed_equals_flat_on_random_tries(random_llama, case) -> None:
    ids, attn, score, block = case
    model = random_llama
    ref = token_log_probs(model, ids, attn)
    out = scored_log_probs(model, ids, attn, score, 1.0, ForwardSpec("tree", 4, attention_block=block))
    torch.testing.assert_close(out.log_prob, torch.where(score & (torch.arange(ids.shape[1]) > 0), ref, 0.0),
                               rtol=0, atol=1e-5)
    w = torch.randn(ref.shape, generator=torch.Generator().manual_seed(0)) * score  # no exact cancellations
    if score[:, 1:].any():
        _assert_grads_close(_grads(model, (out.log_prob * w).sum()), _grads(model, (ref * w).sum()), "random trie")


def test_gradient_checkpointing_needs_the_scope_and_then_matches(batches, sft_model) -> None:
    """Checkpointed layers re-run their forward in backward: inside ``use_tree_attention`` (as the trainer runs each
    micro-batch) the packed gradient equals the flat one; outside it the call refuses instead of recomputing the
    wrong attention."""
    from at2po.train.tree_attention import use_tree_attention

    batch = batches["trees"]
    cfg = load_config(overrides=[f"model.path={sft_model}", "model.gradient_checkpointing=true", "model.lora_r=4"])
    model = load_policy(cfg.model).train()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    m = batch.response_mask
    w = torch.randn(m.shape, generator=torch.Generator().manual_seed(5)) * m
    with pytest.raises(RuntimeError, match="use_tree_attention"):
        scored_log_probs(model, batch.input_ids, batch.attention_mask, m, 1.0, TREE)
    with use_tree_attention(model):
        out = scored_log_probs(model, batch.input_ids, batch.attention_mask, m, 1.0, TREE)
        packed = _grads(model, (out.log_prob * w).sum())
    flat = _grads(model, (token_log_probs(model, batch.input_ids, batch.attention_mask) * w).sum())
    _assert_grads_close(packed, flat, "gradient checkpointing")


def test_bad_inputs_are_refused(random_llama) -> None:
    ids = torch.tensor([[1, 2, 3], [4, 5, 6]])
    left_padded = torch.tensor([[0, 1, 1], [1, 1, 1]])
    with pytest.raises(ValueError, match="right-padded"):
        scored_log_probs(random_llama, ids, left_padded, left_padded, 1.0, TREE)
    with pytest.raises(ValueError, match="no tokens"):
        scored_log_probs(random_llama, ids, torch.zeros_like(ids), torch.zeros_like(ids), 1.0, TREE)
    random_llama.config._attn_implementation = "eager"  # eager adds a boolean mask instead of masking with it
    try:
        with pytest.raises(ValueError, match="tree_attention=dense needs the model's sdpa"):
            scored_log_probs(random_llama, ids, torch.ones_like(ids), torch.ones_like(ids), 1.0,
                             ForwardSpec("tree", 4, "dense"))
        blocked = scored_log_probs(random_llama, ids, torch.ones_like(ids), torch.ones_like(ids), 1.0, TREE)
    finally:
        random_llama.config._attn_implementation = "sdpa"
    ref = token_log_probs(random_llama, ids, torch.ones_like(ids))
    torch.testing.assert_close(blocked.log_prob[:, 1:], ref[:, 1:], rtol=0, atol=1e-5)  # blocked ignores the setting


def test_nothing_scored_with_a_wrapped_head_still_backpropagates(random_llama) -> None:
    """A head that is not a plain Linear takes the checkpointed path; a micro-batch without scored tokens must give
    a loss whose backward is a no-op, not an error."""
    from at2po.train.chunked_head import chunked_log_probs

    head = torch.nn.Sequential(random_llama.get_output_embeddings())
    hidden = torch.randn(0, 32, requires_grad=True)
    lp, ent = chunked_log_probs(hidden, head, torch.zeros(0, dtype=torch.long), 1.0, 4, with_entropy=True)
    (lp.sum() + ent.sum()).backward()
    h = torch.randn(5, 32, requires_grad=True)
    y = torch.randint(0, 48, (5,))
    lp2, _ = chunked_log_probs(h, head, y, 0.8, 2)
    ref = torch.log_softmax(head(h).float() / 0.8, -1).gather(1, y[:, None])[:, 0]
    torch.testing.assert_close(lp2, ref, rtol=0, atol=1e-6)
    g1 = torch.autograd.grad(lp2.sum(), h)[0]
    g2 = torch.autograd.grad(ref.sum(), h)[0]
    torch.testing.assert_close(g1, g2, rtol=1e-5, atol=1e-7)
