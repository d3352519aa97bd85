"""Error classes shared by every layer (imports nothing from at2po).

``UserError``: a problem with the user's inputs or surroundings — a config key, a data row, a path, an
unreachable service, a full disk — whose message says what was wrong and what to do. The command line prints
it as one ``error: ...`` line without a traceback (``--debug`` or ``AT2PO_DEBUG=1`` shows the traceback);
any other exception is an internal error and keeps its traceback.

``RunStopped``: a guard stopped a run on purpose (repeated NaN/inf updates, a failing tool); the message says
why, what was kept (checkpoints) and how to go on.
"""

from __future__ import annotations

import os


class UserError(Exception):
    """An error the user can fix from its message alone (printed without a traceback by the CLI)."""


class EnvError(UserError, ValueError):
    """An environment (the user's ``AgentEnv``) returned something the trainer cannot use; the message names it."""


class RunStopped(UserError):
    """A run stopped by a guard; the message names the cause and what survived."""


_debug = False  # set per command line by ``at2po --debug``


def set_debug(on: bool) -> None:
    global _debug
    _debug = on


def debug_enabled() -> bool:
    """``--debug`` given, or ``AT2PO_DEBUG`` set to anything but "", "0", "false", "no": show user errors'
    tracebacks too."""
    return _debug or os.environ.get("AT2PO_DEBUG", "").strip().lower() not in ("", "0", "false", "no")
