"""Griffe extension for the API reference (mkdocs.yml): docstrings written with Sphinx roles and reST literal
blocks read as Markdown. ``:class:`~a.b.C``` becomes ```C```, ``:func:`a.f``` becomes ```a.f```, and a line
ending in ``::`` ends in ``:`` (the indented block after it is a code block in Markdown too)."""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|mod|attr|data|obj|exc|const):`(~?)([^`]+)`")
_LITERAL = re.compile(r"(\S)::\n")


def _code(match: re.Match[str]) -> str:
    tilde, name = match.groups()
    return f"`{name.rsplit('.', 1)[-1] if tilde else name}`"


class SphinxRoles(griffe.Extension):
    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        doc = obj.docstring
        if doc is not None and doc.value:
            doc.value = _LITERAL.sub(r"\1:\n", _ROLE.sub(_code, doc.value))
