"""The ``at2po`` command line. Each area registers its commands from its own module (see ``_COMMAND_MODULES``)."""

from __future__ import annotations

import importlib

import typer

app = typer.Typer(
    name="at2po",
    help="AT²PO: agentic turn-based policy optimization via tree search — train multi-turn search agents with RL.",
    no_args_is_help=False,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)

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
