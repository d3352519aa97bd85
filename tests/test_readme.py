"""Every Python block of the README runs in a test: each is an example of ``examples/`` verbatim (its code after
the module docstring), and the example's own test runs it (``tests/envs/test_calculator.py`` for the calculator
agent)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUN_BY = {"calculator_agent.py": ROOT / "tests" / "envs" / "test_calculator.py"}  # example → the test that runs it


def python_blocks(markdown: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", markdown, flags=re.DOTALL | re.MULTILINE)


def example_code(path: Path) -> str:
    """The file after its module docstring."""
    src = path.read_text()
    body = ast.parse(src).body
    start = body[1].lineno if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
        else 1
    return "\n".join(src.splitlines()[start - 1:]).strip()


def test_python_blocks_are_found():
    text = "x\n```python\na = 1\n```\n```bash\nls\n```\n```python\nb = 2\n```\n"
    assert python_blocks(text) == ["a = 1\n", "b = 2\n"]


def test_every_readme_python_block_is_an_example_a_test_runs():
    blocks = python_blocks((ROOT / "README.md").read_text())
    assert blocks, "the README shows the Python API example"
    examples = {p.name: example_code(p) for p in (ROOT / "examples").glob("*.py")}
    for block in blocks:
        matches = [name for name, code in examples.items() if code == block.strip()]
        assert matches, f"README python block is not an examples/ file verbatim:\n{block[:300]}"
        for name in matches:
            assert name in RUN_BY, f"no test runs examples/{name}"
            test_src = RUN_BY[name].read_text()  # the test names the file and executes it
            assert f'"{name}"' in test_src and "runpy.run_path(str(EXAMPLE)" in test_src, f"{RUN_BY[name]}"
