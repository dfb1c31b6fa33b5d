"""The README is a user's page: no work diary in it, and the commands it gives are the ones CI runs."""

from __future__ import annotations

import re

from .conftest import ROOT

README = (ROOT / "README.md").read_text(encoding="utf-8")
CI = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
BASH = re.compile(r"^```bash\n(.*?)^```", re.DOTALL | re.MULTILINE)


def commands() -> list[str]:
    """The command lines of the README's first shell block: install (and start), then test."""
    lines = BASH.search(README).group(1).splitlines()
    return [line for line in lines if line.strip() and not line.lstrip().startswith("#")]


def test_no_commit_hashes_issue_numbers_or_diary_words() -> None:
    # Seven to forty hex digits with at least one letter and one digit: a commit, not a number or a word.
    hashes = re.findall(r"\b(?=[0-9a-f]*[a-f])(?=[0-9a-f]*[0-9])[0-9a-f]{7,40}\b", README)
    issues = re.findall(r"#\d+\b|\bissues? \d+", README, re.IGNORECASE)
    diary = re.findall(r"\b(?:this|previous|last|that) (?:session|morning|day)\b|\btoday\b", README, re.IGNORECASE)
    assert (hashes, issues, diary) == ([], [], [])


def test_the_install_and_test_commands_are_the_ones_ci_runs() -> None:
    install, test = commands()
    install_only, separator, start = install.partition(" && tachyon run ")
    assert separator and start == "examples.shop.app:app", install  # installs, then starts the shop
    ci_lines = CI.splitlines()
    assert install_only in ci_lines, "the README's install command is not a line of .ci/run"
    assert test in ci_lines, "the README's test command is not a line of .ci/run"
    assert test.startswith("bash scripts/install-system-deps.sh && ")  # what pip cannot bring, visibly


def test_the_readme_names_the_system_packages_and_how_long_the_suite_takes() -> None:
    block = BASH.search(README).group(1)
    assert "memcached" in block and "chromium" in block
    assert re.search(r"takes about \d+ minutes", README)


def test_relative_links_point_at_files_that_exist() -> None:
    targets = re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", README)
    assert targets
    assert [t for t in targets if not (ROOT / t).exists()] == []
