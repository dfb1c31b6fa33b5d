"""The docs site (mkdocs.yml) builds with ``mkdocs build --strict``: every page is in the nav, every link and
anchor resolves, and the API reference covers the public API."""

from __future__ import annotations

import html
import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from .conftest import ROOT

# The modules whose ``__all__`` the API reference must cover, name by name.
PUBLIC_MODULES = [
    "tachyon_api.tasks",
    "tachyon_api.requests",
    "tachyon_api.responses",
    "tachyon_api.exceptions",
    "tachyon_api.datastructures",
    "tachyon_api.params",
    "tachyon_api.dependencies",
    "tachyon_api.models",
    "tachyon_api.security",
    "tachyon_api.websockets",
    "tachyon_api.cache",
    "tachyon_api.middlewares",
    "tachyon_api.testing",
    "tachyon_api.metrics",
    "tachyon_api.tracing",
    "tachyon_api.openapi",
]


def build(config: Path, site: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}  # the theme's end-of-life banner, not a build problem
    command = [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(config)]
    command += ["--site-dir", str(site)]
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd=config.parent, timeout=120)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The site built from the repository's mkdocs.yml, or a failed test that shows the build's warnings."""
    out = tmp_path_factory.mktemp("site")
    result = build(ROOT / "mkdocs.yml", out)
    warnings = [line for line in result.stderr.splitlines() if line.startswith(("WARNING", "ERROR"))]
    assert result.returncode == 0 and warnings == [], result.stderr[-3000:]
    return out


def nav_pages(entries: list) -> list[str]:
    found = []
    for entry in entries:
        value = next(iter(entry.values())) if isinstance(entry, dict) else entry
        found.extend(nav_pages(value) if isinstance(value, list) else [value])
    return found


def test_the_site_builds_in_strict_mode(site: Path) -> None:
    assert (site / "index.html").is_file()
    assert (site / "background-tasks" / "index.html").is_file()
    assert (site / "reference" / "tasks" / "index.html").is_file()


def test_every_docs_page_is_in_the_nav() -> None:
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))
    pages = sorted(str(p.relative_to(ROOT / "docs")) for p in (ROOT / "docs").rglob("*.md"))
    nav = nav_pages(config["nav"])
    assert sorted(nav) == pages, "a docs/ page missing from mkdocs.yml's nav, or a nav entry without its page"


def test_the_api_reference_covers_the_public_api(site: Path) -> None:
    pages = [p.read_text(encoding="utf-8") for p in (site / "reference").rglob("index.html")]
    anchors = {anchor for page in pages for anchor in re.findall(r'id="(tachyon_api[\w.]*)"', page)}
    code = {html.unescape(text) for page in pages for text in re.findall(r"<code>([^<]+)</code>", page)}
    missing = []
    for name in PUBLIC_MODULES:
        module = importlib.import_module(name)
        missing += [f"{name}.{n}" for n in module.__all__ if f"{name}.{n}" not in anchors and n not in code]
    top = importlib.import_module("tachyon_api")
    missing += [f"tachyon_api.{n}" for n in top.__all__ if not any(a.endswith(f".{n}") for a in anchors)]
    assert missing == []
    # The docstrings' Sphinx roles were turned into code (scripts/griffe_docs.py), not printed as they are.
    assert not [page for page in pages if ":class:" in page or ":meth:" in page]


def test_a_broken_link_or_anchor_fails_the_build(tmp_path: Path) -> None:
    """The strict settings of mkdocs.yml catch what they are there for, on a copy of its configuration."""
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "index.md").write_text("# Home\n\n[a section that is not there](other.md#nowhere), [a page](gone.md)\n")
    (docs / "other.md").write_text("# Other\n\n## Somewhere\n")
    (docs / "orphan.md").write_text("# Not in the nav\n")
    config = tmp_path / "mkdocs.yml"
    config.write_text(f"INHERIT: {ROOT / 'mkdocs.yml'}\ndocs_dir: docs\nnav: [index.md, other.md]\n")
    result = build(config, tmp_path / "site")
    assert result.returncode != 0
    warnings = "\n".join(line for line in result.stderr.splitlines() if line.startswith("WARNING"))
    assert "does not contain an anchor '#nowhere'" in warnings
    assert "'gone.md', but the target" in warnings
    assert 'are not included in the "nav"' in warnings and "orphan.md" in result.stderr
