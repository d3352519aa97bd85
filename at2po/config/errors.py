"""The configuration's error type (its own module, so every config module can import it at the top)."""

from __future__ import annotations

from at2po.errors import UserError


class ConfigError(UserError, ValueError):
    """A configuration problem; the message names the offending key (and file, when there is one)."""
