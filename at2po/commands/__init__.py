"""CLI command modules; each defines ``register(app)`` and is listed in ``at2po.cli._COMMAND_MODULES``."""
