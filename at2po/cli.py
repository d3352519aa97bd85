"""The ``at2po`` command line. Each area registers its commands from its own module (see ``_COMMAND_MODULES``).

Every command runs inside :func:`user_errors`: a :class:`~at2po.errors.UserError` (bad config key, data row,
path, unreachable retriever, full disk, a guard's stop) prints one ``error: ...`` line and exits with status 2;
``at2po --debug CMD`` or ``AT2PO_DEBUG=1`` shows its traceback. Other exceptions are internal errors and keep
their traceback.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from typing import Any

import typer

from at2po.errors import RunStopped, UserError, debug_enabled, set_debug


def user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a command: user errors become one line on stderr and exit status 2 (3 for a guard's stop)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            if debug_enabled():
                raise
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(3 if isinstance(exc, RunStopped) else 2) from None

    return wrapper


class _App(typer.Typer):
    """A Typer app whose commands all run inside :func:`user_errors`."""

    def command(self, *args: Any, **kwargs: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        register = super().command(*args, **kwargs)

        def decorator(fn: Callable[..., Any]) -> Callable[..., Any]:
            register(user_errors(fn))
            return fn

        return decorator


app = _App(
    name="at2po",
    help="AT²PO: agentic turn-based policy optimization via tree search — train multi-turn search agents with RL.",
    no_args_is_help=False,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="show the traceback of user errors too (or AT2PO_DEBUG=1)"),
) -> None:
    set_debug(debug)


# Each module defines ``register(app: typer.Typer) -> None``.
_COMMAND_MODULES: list[str] = [
    "at2po.commands.retrieval",
    "at2po.commands.tasks",
    "at2po.commands.data",
    "at2po.commands.train",
    "at2po.commands.models",
]

for _name in _COMMAND_MODULES:
    importlib.import_module(_name).register(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
