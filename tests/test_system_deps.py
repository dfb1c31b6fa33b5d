"""What the suite needs from the system: ``scripts/install-system-deps.sh`` installs it and says why; the suite
itself never installs anything, and a missing part stops it once, before the first test, naming the command."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from .conftest import ROOT

SCRIPT = ROOT / "scripts" / "install-system-deps.sh"
COMMAND = "bash scripts/install-system-deps.sh"


def run(argv: list[str], path: str, **kwargs: object) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": path}
    return subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, **kwargs)


def test_the_suite_never_installs_system_packages() -> None:
    installer = "apt" + "-get"  # spelled apart, so this file does not match itself
    offenders = [p.name for p in (ROOT / "tests").glob("*.py") if installer in p.read_text(encoding="utf-8")]
    assert offenders == []


def test_with_everything_installed_the_script_says_so_and_succeeds() -> None:
    result = run(["bash", str(SCRIPT)], os.environ["PATH"])
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == "System packages for the tests: memcached and chromium are installed.\n"


def test_without_root_the_script_names_what_is_missing_why_and_the_one_command(tmp_path: Path) -> None:
    """Run as an ordinary user (the test drops root when it has it) with a PATH on which neither server is."""
    empty = tmp_path / "bin"
    empty.mkdir()
    setpriv = shutil.which("setpriv") or "/usr/bin/setpriv"  # util-linux
    as_user = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups"] if os.geteuid() == 0 else []
    result = run([*as_user, "/bin/bash", str(SCRIPT)], str(empty))
    assert result.returncode == 1
    assert "The tests need memcached chromium: the cache tests run a real memcached" in result.stdout
    assert result.stderr == f"Run this once as root, then the test command again:  sudo bash {SCRIPT}\n"


def test_a_missing_memcached_stops_the_suite_once_before_any_test(tmp_path: Path) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    tests = ["tests/test_cache.py::test_memcached_backend_on_a_real_server", "tests/test_cache.py"]
    result = run([sys.executable, "-m", "pytest", *tests, "-p", "no:randomly", "-p", "no:cacheprovider"], str(empty))
    output = result.stdout + result.stderr
    assert result.returncode == 4, output  # pytest's usage error: nothing ran
    message = f"The tests need memcached, which is not installed. Run once, as root: {COMMAND}"
    assert output.count(message) == 1, output
    assert " passed" not in output and " failed" not in output
