"""Every Python block of the documentation runs, so the docs cannot rot."""

from __future__ import annotations

import re
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


DOC_BLOCKS = blocks("background-tasks.md")


def test_the_page_has_examples() -> None:
    assert len(DOC_BLOCKS) >= 10


@pytest.mark.parametrize(("where", "code"), DOC_BLOCKS, ids=[w for w, _ in DOC_BLOCKS])
def test_block_runs(where: str, code: str) -> None:
    exec(compile(code, where, "exec"), {"__name__": f"docs_{where.split(':')[1]}"})
