"""The run configuration, in one package that imports no runtime module (no torch, no engine, no env):

- ``run``: :class:`RunConfig` and its sections, ``load_config`` (defaults ← preset ← YAML ← ``KEY=VALUE``),
  ``save_config``, :class:`ConfigError`;
- ``env``: :class:`EnvConfig` (the search environment), ``rollout``: :class:`RolloutConfig`, :class:`VLLMConfig`;
- ``presets``: the named method presets; ``errors``: :class:`ConfigError`.

Registered names (``loss.name``, ``credit.name``) are checked against the core registries when a config is
validated, not when this package is imported.
"""

from at2po.config.env import EnvConfig
from at2po.config.presets import PRESETS, get_preset
from at2po.config.rollout import AEPOConfig, RolloutConfig, VLLMConfig
from at2po.config.run import (
    CheckpointConfig,
    ConfigError,
    CreditConfig,
    DataConfig,
    EvalConfig,
    FaultsConfig,
    LoggingConfig,
    LossConfig,
    ModelConfig,
    OptimConfig,
    RunConfig,
    SFTConfig,
    TrainConfig,
    deep_merge,
    load_config,
    parse_overrides,
    read_yaml,
    save_config,
    validate_config,
)

__all__ = [
    "PRESETS", "AEPOConfig", "CheckpointConfig", "ConfigError", "CreditConfig", "DataConfig", "EnvConfig", "EvalConfig",
    "FaultsConfig", "LoggingConfig", "LossConfig", "ModelConfig", "OptimConfig", "RolloutConfig", "RunConfig",
    "SFTConfig", "TrainConfig", "VLLMConfig", "deep_merge", "get_preset", "load_config", "parse_overrides",
    "read_yaml", "save_config", "validate_config",
]
