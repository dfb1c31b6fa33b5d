"""The repository (package, tests, examples, benchmarks, scripts) is lint-clean and formatted under its ruff
configuration (pyproject.toml)."""

from __future__ import annotations

import subprocess
import sys

if sys.version_info >= (3, 11):
    import tomllib
else:  # mypy brings tomli on 3.10
    import tomli as tomllib

from .conftest import ROOT

PATHS = ["tachyon_api", "tests", "examples", "bench", "scripts"]
# The per-file ignores that are meant to stay: the typing spellings the tests and the benchmark app keep on purpose.
PERMANENT = {"tests/**", "bench/apps/tachyon_app.py"}


def ruff(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "ruff", "check", "--no-cache", *args, *PATHS]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_ruff_check_is_clean() -> None:
    result = ruff()
    assert result.returncode == 0, result.stdout + result.stderr


def test_no_module_is_exempt_but_the_permanent_ones() -> None:
    """Every module is checked with the whole rule set: the only per-file ignores are the typing spellings kept
    on purpose (PERMANENT), so a new exemption is a decision made here, not a line slipped into pyproject.toml."""
    lint = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["ruff"]["lint"]
    assert set(lint["per-file-ignores"]) == PERMANENT


def test_ruff_format_is_clean() -> None:
    """The repository is formatted by ``ruff format`` (its configuration in pyproject.toml): run it to fix this."""
    command = [sys.executable, "-m", "ruff", "format", "--check", "--no-cache", *PATHS]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
