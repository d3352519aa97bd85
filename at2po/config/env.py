"""The search environment's settings (``env:`` in the run config); ``at2po.agent.search_env.SearchEnv`` reads them."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class EnvConfig(BaseModel):
    """Search environment settings (paper: top-3 passages, at most 6 tool calls)."""

    model_config = ConfigDict(extra="forbid")

    max_tool_calls: int = Field(6, ge=0, description="tool calls (incl. invalid turns) per trajectory")
    limit_mode: Literal["end", "notice"] = "end"  # at the limit: end the trajectory, or insert a masked notice
    topk: int = Field(3, ge=1, le=100)
    max_obs_tokens: int = Field(512, ge=16, description="token budget of one observation, tags included")
    tool_timeout_s: float = Field(30.0, gt=0, description="per search call, from its start (also the HTTP timeout)")
    tool_workers: int = Field(8, ge=1)
    max_query_chars: int = Field(4096, ge=1, description="longer queries are cut (flag query_truncated)")
    # HTTP retriever (data.index=http://...): transient failures (refused, reset, 429/5xx) are retried with
    # exponential backoff; a timed-out request only retriever_timeout_retries times
    retriever_retries: int = Field(3, ge=0)
    retriever_timeout_retries: int = Field(0, ge=0)
    retriever_backoff_s: float = Field(0.25, ge=0)
    retriever_cache_size: int = Field(10_000, ge=0, description="client-side LRU of (query, k) → passages; 0 = off")
    use_chat_template: bool = True
    # Additive: what a turn with neither a search nor an answer does ("retry": corrective observation, counted
    # against the call limit, as Search-R1; "end": the trajectory ends as NO_ACTION).
    no_action: Literal["retry", "end"] = "retry"
    chat_template_kwargs: dict[str, Any] = Field(default_factory=dict)  # e.g. {"enable_thinking": False} (Qwen3)
