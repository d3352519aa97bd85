"""The documentation: the site builds with ``mkdocs build --strict``, the README stays short and starts with the
two set-up commands, and every relative link in the README, BENCHMARKS.md and docs/ resolves (file and anchor)."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
MARKDOWN = [README, ROOT / "BENCHMARKS.md", *sorted((ROOT / "docs").rglob("*.md"))]
FIRST_COMMANDS = [
    "bash scripts/setup.sh && .venv/bin/at2po train",
    "bash scripts/setup.sh && .venv/bin/python -m pytest -q",
]

_FENCE = re.compile(r"^\s*(```|~~~)\s*([\w+-]*)")
_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def _prose(text: str, strip_code: bool = True) -> list[str]:
    """The lines outside fenced code blocks and HTML comments (with inline code removed unless ``strip_code``
    is false)."""
    out, fence = [], None
    text = re.sub(r"<!--.*?-->", "", text, flags=re.S)
    for line in text.splitlines():
        m = _FENCE.match(line)
        if m and (fence is None or m.group(1) == fence):
            fence = m.group(1) if fence is None else None
            continue
        if fence is None:
            out.append(re.sub(r"`[^`]*`", "", line) if strip_code else line)
    return out


def _code_blocks(text: str) -> list[tuple[str, str]]:
    """(language, content) of every fenced block."""
    blocks, fence, lang, body = [], None, "", []
    for line in text.splitlines():
        m = _FENCE.match(line)
        if fence is None and m:
            fence, lang, body = m.group(1), m.group(2), []
        elif fence is not None and line.strip().startswith(fence):
            blocks.append((lang, "\n".join(body)))
            fence = None
        elif fence is not None:
            body.append(line)
    return blocks


def github_slug(heading: str) -> str:
    """GitHub's anchor for a heading (also the site's: pymdownx.slugs with case=lower)."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text
    text = re.sub(r"<[^>]+>", "", text).replace("`", "").lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    anchors = set()
    for line in _prose(path.read_text(), strip_code=False):
        m = _HEADING.match(line) if line.startswith("#") else None
        if not m:
            continue
        slug = github_slug(m.group(2))
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        anchors.add(slug if n == 0 else f"{slug}-{n}")
    return anchors


def test_docs_build_strict(tmp_path: Path) -> None:
    missing = [m for m in ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python")
               if importlib.util.find_spec(m.split(".")[0]) is None or importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"the docs toolchain is not installed ({', '.join(missing)}): pip install -e '.[docs]'")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout}\n{proc.stderr}"
    site = tmp_path / "site"
    for page in ("index.html", "getting-started/index.html", "guide/python-api/index.html",
                 "reference/api/index.html", "benchmarks/index.html"):
        assert (site / page).is_file(), page
    api = (site / "reference/api/index.html").read_text()
    assert 'id="at2po.api.Trainer"' in api  # the reference is generated from the docstrings


def test_readme_is_short() -> None:
    n = len(README.read_text().splitlines())
    assert n <= 300, f"README.md has {n} lines (at most 300: the rest belongs in docs/)"


def test_readme_starts_with_the_two_setup_commands() -> None:
    blocks = _code_blocks(README.read_text())
    shell = [body.strip() for lang, body in blocks if lang in ("bash", "sh", "shell", "console")]
    assert shell[:2] == FIRST_COMMANDS


def test_relative_links_resolve() -> None:
    broken = []
    for path in MARKDOWN:
        for line in _prose(path.read_text()):
            for target in _LINK.findall(line):
                if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):
                    continue  # https:, mailto:
                file_part, _, anchor = target.partition("#")
                dest = (path.parent / file_part).resolve() if file_part else path
                where = f"{path.relative_to(ROOT)}: ({target})"
                if not dest.exists():
                    broken.append(f"{where}: no file {dest}")
                elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                    broken.append(f"{where}: no heading with anchor #{anchor} in {dest.relative_to(ROOT)}")
    assert not broken, "\n".join(broken)


def test_github_slug() -> None:
    assert github_slug("Training on unique tokens (`train.packing`)") == "training-on-unique-tokens-trainpacking"
    assert github_slug("The verdict grid: the `cpu-hard` testbed (2026-12-02; methods table complete)") == (
        "the-verdict-grid-the-cpu-hard-testbed-2026-12-02-methods-table-complete")
