"""Every Python block of the documentation runs, so the docs cannot rot."""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def blocks(name: str) -> list[tuple[str, str]]:
    text = (DOCS / name).read_text()
    found = []
    for match in BLOCK.finditer(text):
        line = text.count("\n", 0, match.start()) + 1
        found.append((f"{name}:{line}", match.group(1)))
    return found


PAGES = [
    "background-tasks.md",
    "getting-started.md",
    "routing-and-parameters.md",
    "validation-and-errors.md",
    "dependency-injection.md",
    "testing.md",
    "migration.md",
    "observability.md",
]
DOC_BLOCKS = [block for page in PAGES for block in blocks(page)]


def test_the_background_tasks_page_has_examples() -> None:
    assert len(blocks("background-tasks.md")) >= 10


@pytest.mark.parametrize(("where", "code"), DOC_BLOCKS, ids=[w for w, _ in DOC_BLOCKS])
def test_block_runs(where: str, code: str) -> None:
    # Each block runs as a module of its own, as it would from a file (msgspec and typing resolve
    # annotations through sys.modules).
    name = "docs_" + re.sub(r"\W", "_", where)
    module = types.ModuleType(name)
    sys.modules[name] = module
    try:
        exec(compile(code, where, "exec"), module.__dict__)
    finally:
        del sys.modules[name]
