"""at2po: Agentic Turn-based Policy Optimization via Tree Search.

The public API (imported lazily, so ``import at2po`` and the CLI start fast)::

    from at2po import Trainer, TrainerCallback, ToolEnv, AgentEnv, load_config, sft
"""
from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    # training
    "Trainer": "at2po.api", "TrainerCallback": "at2po.api", "as_config": "at2po.api",
    "TrainResult": "at2po.train.trainer", "sft": "at2po.train.sft",
    # config
    "RunConfig": "at2po.config", "load_config": "at2po.config", "ConfigError": "at2po.config",
    # environments
    "AgentEnv": "at2po.agent.env", "ParsedTurn": "at2po.agent.env", "ToolResult": "at2po.agent.env",
    "TurnKind": "at2po.agent.env", "QAExample": "at2po.agent.env", "ToolEnv": "at2po.agent.tool_env",
    "SearchEnv": "at2po.agent.search_env",
    # registries
    "register_policy_loss": "at2po.core.losses", "register_estimator": "at2po.core.credit",
    # trees
    "TurnTree": "at2po.core.tree",
}
# spelled out (not computed from _EXPORTS) so static tools can read it; tests/test_api.py checks the two agree
__all__ = [
    "AgentEnv", "ConfigError", "ParsedTurn", "QAExample", "RunConfig", "SearchEnv", "ToolEnv", "ToolResult",
    "TrainResult", "Trainer", "TrainerCallback", "TurnKind", "TurnTree", "as_config", "load_config",
    "register_estimator", "register_policy_loss", "sft",
]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'at2po' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
