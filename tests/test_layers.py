"""The package's structure: layers that form a DAG, short functions, citations a reader can follow.

These are the maintainability rules of CONTRIBUTING.md, checked on every run.
"""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "src" / "connprune"
MAX_FUNCTION_LINES = 80


def test_import_layers_contract_is_kept() -> None:
    """import-linter's layers contract in pyproject.toml: a lower layer never imports an upper one."""
    command = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    if command is None:
        pytest.skip("import-linter is not installed (pip install -e '.[test]')")
    result = subprocess.run([command, "--config", str(ROOT / "pyproject.toml")], cwd=ROOT, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "1 kept, 0 broken" in result.stdout


def _functions(path: Path) -> list[tuple[str, int, int]]:
    tree = ast.parse(path.read_text())
    return [(node.name, node.lineno, node.end_lineno - node.lineno + 1) for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))]


def test_no_function_is_longer_than_80_lines() -> None:
    long = [f"{path.relative_to(ROOT)}:{line} {name} ({length} lines)"
            for path in sorted(SOURCE.rglob("*.py")) for name, line, length in _functions(path)
            if length > MAX_FUNCTION_LINES]
    assert not long, "split these into named steps: " + "; ".join(long)


def test_citations_point_inside_the_repository() -> None:
    """Docstrings cite the paper or ``docs/...`` pages that exist, never spec files outside the package."""
    cited = re.compile(r"(?:docs/methods/)?([\w-]+\.md)\s+§")
    pages = {p.name for p in (ROOT / "docs" / "methods").glob("*.md")}
    problems = []
    for path in sorted(SOURCE.rglob("*.py")):
        text = path.read_text()
        if "shared/specs" in text or "specs/" in text:
            problems.append(f"{path.relative_to(ROOT)} cites a specs/ file")
        for match in cited.finditer(text):
            if not match.group(0).startswith("docs/methods/") or match.group(1) not in pages:
                problems.append(f"{path.relative_to(ROOT)}: {match.group(0)!r}")
    assert not problems, problems[:10]
