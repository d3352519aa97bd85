"""The configuration's error type (its own module, so every config module can import it at the top)."""

from __future__ import annotations

from at2po.errors import UserError


class ConfigError(UserError, ValueError):
    """A configuration problem; the message names the offending key (and file, when there is one)."""


def registered(name: str, registry: str) -> str:
    """Check a config value against a core registry (``"module:NAME"``, imported only now, at validation time, so
    the config package imports no runtime module); the error lists the registered names and how to add one."""
    import importlib

    module, attr = registry.split(":")
    reg = getattr(importlib.import_module(module), attr)
    if name not in reg:
        raise ValueError(f"{reg.unknown(name)}, and list the module that registers it under `imports:` in the config")
    return name
