"""MkDocs hooks (``hooks:`` in mkdocs.yml): one Markdown source, read alike on GitHub and in the site.

* ``README.md`` becomes the site's home page and ``BENCHMARKS.md`` its Benchmarks page; both stay at the
  repository root, where GitHub shows them (no copy under ``docs/``).
* Relative links are written for GitHub (paths from the file's own place in the repository:
  ``docs/guide/core.md`` in the README, ``../../BENCHMARKS.md`` in a guide page); each is mapped to the page it
  names in the site. A link to another file of the repository (``examples/x.py``) shows as its text only (the
  site has no copy of it); a link to a missing file is left alone, so ``mkdocs build --strict`` reports it.
* GitHub-flavoured list and block layout is rendered as GitHub does: Python-Markdown needs four spaces per
  nested list level and a blank line before a list, a table or a code fence that follows a paragraph; the
  Markdown handed to MkDocs gets them (the files are not changed).
"""

from __future__ import annotations

import posixpath
import re
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

# repository file -> its page in the site (a path as if under docs/)
ROOT_PAGES = {"README.md": "index.md", "BENCHMARKS.md": "benchmarks.md"}

_LINK = re.compile(r"(!?)\[([^\]]*)\]\(([^)\s]+)\)")
_FENCE = re.compile(r"^(\s*)(```|~~~)")
_ITEM = re.compile(r"^(\s*)([*+-]|\d+[.)])(\s+)")
_TABLE = re.compile(r"^\s*\|")
_CODE = re.compile(r"`[^`]+`")


def _repo_root(config: Any) -> Path:
    return Path(config["docs_dir"]).resolve().parent


def on_files(files: Files, config: Any, **_: Any) -> Files:
    root = _repo_root(config)
    for repo_path, site_path in ROOT_PAGES.items():
        if files.get_file_from_path(site_path) is None and (root / repo_path).is_file():
            files.append(File.generated(config, site_path, abs_src_path=str(root / repo_path)))
    return files


def _repo_path(page_src: str) -> str:
    """The repository path of a page's Markdown source."""
    for repo_path, site_path in ROOT_PAGES.items():
        if page_src == site_path:
            return repo_path
    return "docs/" + page_src


def _map_link(target: str, page_src: str, root: Path) -> str | None:
    """The link's target in the site; None for a repository file that is not a page (shown as plain text)."""
    if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I) or target.startswith(("#", "/")):
        return target
    path, sep, fragment = target.partition("#")
    if not path:
        return target
    in_repo = posixpath.normpath(posixpath.join(posixpath.dirname(_repo_path(page_src)), path))
    if in_repo in ROOT_PAGES:
        site = ROOT_PAGES[in_repo]
    elif in_repo.startswith("docs/"):
        site = in_repo[len("docs/"):]
    elif not in_repo.startswith("../") and (root / in_repo).exists():
        return None  # e.g. examples/x.py: a file of the repository, not of the site
    else:
        return target  # missing: mkdocs build --strict reports it
    rel = posixpath.relpath(site, posixpath.dirname(page_src) or ".")
    return rel + sep + fragment


def _layout(lines: list[str]) -> list[str]:
    """Four-space nested lists and blank lines before lists, tables and fences, outside code fences."""
    out: list[str] = []
    fence: str | None = None
    shift = 0  # how far the open fence's lines move (with the list item it belongs to)
    stack: list[tuple[int, int]] = []  # open list items: (content column in the file, content column here)
    for line in lines:
        if fence is not None:
            if shift > 0 and line.strip():
                line = " " * shift + line
            elif shift < 0:
                line = line[min(-shift, len(line) - len(line.lstrip(" "))):]
            out.append(line)
            if line.strip().startswith(fence):
                fence = None
            continue
        prev = out[-1] if out else ""
        if not line.strip():
            out.append(line)
            continue
        indent = len(line) - len(line.lstrip(" "))
        item = _ITEM.match(line)
        if item:
            in_list = bool(stack)
            while stack and indent < stack[-1][0]:
                stack.pop()
            if not in_list and prev.strip():
                out.append("")  # a list right after a paragraph
            new_indent = stack[-1][1] if stack else 0
            stack.append((indent + len(item.group(2)) + len(item.group(3)), new_indent + 4))
            out.append(" " * new_indent + line.lstrip(" "))
            continue
        owner = next((k for k in range(len(stack) - 1, -1, -1) if indent >= stack[k][0]), None)
        if owner is not None:  # a block inside list item `owner`
            del stack[owner + 1:]
            moved = " " * (stack[owner][1] + indent - stack[owner][0]) + line.lstrip(" ")
        else:
            if stack and not prev.strip():
                stack = []  # left of the list after a blank line: the list has ended
            moved = line
        m = _FENCE.match(moved)
        if m:
            if prev.strip():
                out.append("")  # a fence right after text
            shift = len(moved) - len(line)
            rest = moved.strip()[3:]
            fence = None if rest.rstrip().endswith(m.group(2)) else m.group(2)  # else a one-line fence
        elif _TABLE.match(moved):
            if prev.strip() and not _TABLE.match(prev):
                out.append("")  # a table right after a paragraph
            moved = _CODE.sub(lambda c: c.group(0).replace("\\|", "|"), moved)  # GitHub drops the \ of \| in code
        out.append(moved)
    return out


def on_page_markdown(markdown: str, page: Any, config: Any, files: Files, **_: Any) -> str:
    src = page.file.src_uri
    root = _repo_root(config)
    lines = _layout(markdown.split("\n"))

    def link(m: re.Match[str]) -> str:
        bang, text, target = m.groups()
        new = _map_link(target, src, root)
        if new is None:
            return m.group(0) if bang else text
        return f"{bang}[{text}]({new})"

    fence = False
    for i, line in enumerate(lines):
        if _FENCE.match(line):
            fence = not fence
            continue
        if not fence and "](" in line:
            lines[i] = _LINK.sub(link, line)
    return "\n".join(lines)
