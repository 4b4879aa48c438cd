"""The test suite's own rule: helpers live in ``tests/helpers``, and no test module imports another."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def test_no_test_module_imports_another() -> None:
    offenders = []
    for path in TESTS.rglob("*.py"):
        if "node_modules" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            # Relative imports only: the suite's own modules (aiohttp.test_utils is not one).
            relative = isinstance(node, ast.ImportFrom) and node.module and node.level
            if relative and any(part.startswith("test_") for part in str(node.module).split(".")):
                offenders.append(f"{path.relative_to(TESTS)}: from {'.' * node.level}{node.module}")  # type: ignore[attr-defined]
    assert offenders == []
