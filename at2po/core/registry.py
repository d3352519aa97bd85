"""Named registries: every pluggable algorithm piece (credit estimators, value and advantage modes, policy losses,
aggregations, expansion modes) is an entry of a :class:`Registry`, selected by its name from a config string.

A registry is a plain ``dict`` (``name in REG``, ``sorted(REG)``, ``REG[name]``) that also knows what it holds, so
errors name the kind, the unknown name and the registered ones, and how to add one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")


def function_identity(fn: Any) -> tuple[str, str] | None:
    """(module, qualname) of a function; None when it has none (then it never counts as the same)."""
    mod, qual = getattr(fn, "__module__", None), getattr(fn, "__qualname__", None)
    return (mod, qual) if mod and qual else None


class Registry(dict[str, T], Generic[T]):
    """``kind``: what an entry is ("policy loss"); ``how``: the call that adds one (for error messages);
    ``identity``: what makes two entries the same (default: the function's module and qualname)."""

    def __init__(self, kind: str, how: str, identity: Callable[[T], Any] = function_identity) -> None:
        super().__init__()
        self.kind, self.how, self._identity = kind, how, identity

    def add(self, name: str, entry: T) -> T:
        """Register ``entry`` under ``name``. Registering the same function again (a plugin module imported twice)
        is a no-op replacement; a different one under a taken name raises."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"a {self.kind} name must be a non-empty string, got {name!r}")
        old = self.get(name)
        if old is not None and (self._identity(old) is None or self._identity(old) != self._identity(entry)):
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self[name] = entry
        return entry

    def decorator(self, name: str) -> Callable[[T], T]:
        """``@REG.decorator("name")`` over a function registers it and returns it unchanged."""

        def deco(fn: T) -> T:
            self.add(name, fn)
            return fn

        return deco

    def lookup(self, name: str) -> T:
        """The entry, or a ValueError naming the unknown name and the registered ones."""
        if name not in self:
            raise ValueError(self.unknown(name))
        return self[name]

    def unknown(self, name: str) -> str:
        return f"unknown {self.kind} {name!r}; registered: {sorted(self)} (add one with {self.how})"


__all__ = ["Registry", "function_identity"]
