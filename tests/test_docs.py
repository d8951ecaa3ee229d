"""Every ```python block of README.md and docs/*.md runs as written, importing the package by its installed
name (``modelkernels``; a bare ``import kernels`` fails here as it would for a user).

The blocks of one page run in order in one namespace (a later block may use an earlier one's
names), in a scratch folder that sees the repository's ``tests/data``. On a CPU the pages pick
small sizes and the CPU paths themselves (``torch.cuda.is_available()``); on a CUDA machine the same
blocks run their GPU lines. A block that cannot run here is preceded by ``<!-- not-run: reason -->``.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"^(?:<!--\s*not-run:(?P<why>[^\n]*?)-->\n)?```python\n(?P<code>.*?)^```$", re.M | re.S)


def python_blocks(text: str) -> list[tuple[int, str | None, str]]:
    """(0-based line of the code's first line, the not-run reason or None, the code) per python block."""
    out = []
    for m in BLOCK.finditer(text):
        why = m.group("why")
        out.append((text.count("\n", 0, m.start("code")), why.strip() if why is not None else None, m.group("code")))
    return out


def test_python_blocks_are_found_with_their_markers() -> None:
    text = "a\n```python\nx = 1\n```\n<!-- not-run: needs a robot -->\n```python\nrobot()\n```\n```bash\nls\n```\n"
    assert python_blocks(text) == [(2, None, "x = 1\n"), (6, "needs a robot", "robot()\n")]


@pytest.mark.parametrize("page", PAGES, ids=[p.relative_to(ROOT).as_posix() for p in PAGES])
def test_python_blocks_run(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = python_blocks(page.read_text())
    if not blocks:
        pytest.skip(f"{page.name} has no python blocks")
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "data").symlink_to(ROOT / "tests" / "data")
    monkeypatch.chdir(tmp_path)
    # as installed, the package is ``modelkernels.kernels`` only: the checkout's top-level ``kernels`` / ``pyimpl``
    # folders (importable here through pytest's pythonpath) must not make a bare ``import kernels`` work
    monkeypatch.setattr(sys, "path", [p for p in sys.path if Path(p or ".").resolve() != ROOT])
    for name in [m for m in sys.modules if m.split(".")[0] in ("kernels", "pyimpl")]:
        monkeypatch.delitem(sys.modules, name)
    namespace: dict[str, object] = {"__name__": "__docs__"}
    for line, why, code in blocks:
        if why is not None:
            assert why, f"{page.name}:{line}: a not-run marker needs its reason"
            continue
        # padded so a traceback names the page's own line numbers
        compiled = compile("\n" * line + code, str(page.relative_to(ROOT)), "exec")
        try:
            exec(compiled, namespace)
        except Exception as e:
            pytest.fail(f"{page.name}, the block at line {line + 1}: {type(e).__name__}: {e}")
