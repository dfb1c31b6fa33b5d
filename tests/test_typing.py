"""The package is typed: it ships ``py.typed``, passes ``mypy --strict`` on the modules pyproject.toml does not
exempt, and its public API types a user's code as tests/typing/public_api.py expects."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # mypy brings tomli on 3.10
    import tomli as tomllib

from .conftest import ROOT

PUBLIC_API = ROOT / "tests" / "typing" / "public_api.py"
EXPECTED = re.compile(r"#\s*error:\s*([\w-]+)\s*$")
REPORTED = re.compile(r"^(?P<file>[^:\n]+):(?P<line>\d+): error: .*\[(?P<code>[\w-]+)\]$", re.M)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One mypy cache for both runs: the standard library and third-party modules are analysed once."""
    return tmp_path_factory.mktemp("mypy-cache")


def mypy(*args: str, cwd: Path, cache_dir: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "mypy", "--cache-dir", str(cache_dir), "--no-color-output", *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_the_package_ships_py_typed() -> None:
    assert (ROOT / "tachyon_api" / "py.typed").is_file()
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert "py.typed" in config["tool"]["setuptools"]["package-data"]["tachyon_api"]


def test_the_package_passes_mypy_strict(cache_dir: Path) -> None:
    """``mypy`` with the repository's configuration: strict, the package's files, the exempt list (see
    pyproject.toml's ``[tool.mypy]``)."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["mypy"]
    assert config["strict"] is True and config["files"] == ["tachyon_api"]
    result = mypy(cwd=ROOT, cache_dir=cache_dir)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("Success: no issues found")


def test_the_public_api_types_user_code_as_expected(tmp_path: Path, cache_dir: Path) -> None:
    """mypy --strict on a copy of tests/typing/public_api.py in a folder outside the repository, with the
    package on the interpreter's path: mypy reads it as an installed package, as in a user's project, and
    would skip it (every name ``Any``) without ``py.typed``. (Checked where it is, the file would make mypy
    take the repository for its project and read the package as source code.)"""
    text = PUBLIC_API.read_text(encoding="utf-8")
    lines = text.splitlines()
    expected = {(number, match.group(1)) for number, line in enumerate(lines, 1) if (match := EXPECTED.search(line))}
    assert len(expected) >= 10  # the wrong calls of add_task, BackgroundTask and decorated endpoints
    (tmp_path / "user_code.py").write_text(text, encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = mypy("--strict", "user_code.py", cwd=tmp_path, cache_dir=cache_dir, env=env)
    reported = {(int(m["line"]), m["code"]) for m in REPORTED.finditer(result.stdout)}
    assert {m["file"] for m in REPORTED.finditer(result.stdout)} == {"user_code.py"}, result.stdout
    assert "error:" in result.stdout and not result.stderr, result.stdout + result.stderr
    assert sorted(reported - expected) == [], result.stdout  # reported, not expected (an assert_type that failed...)
    assert sorted(expected - reported) == [], result.stdout  # expected and not reported: a wrong call type-checks
