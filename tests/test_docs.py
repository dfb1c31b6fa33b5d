"""Every Python block of the documentation runs, so the docs cannot rot."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import types
from pathlib import Path

import pytest

from .conftest import ROOT, RedisServer, wait_until

DOCS = ROOT / "docs"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
BASH = re.compile(r"^```bash\n(.*?)^```", re.S | re.M)


def blocks(name: str, section: str | None = None) -> list[tuple[str, str]]:
    """The Python blocks of a page, or of one of its ``## `` sections (with its sub-sections)."""
    text = (DOCS / name).read_text()
    start, end = 0, len(text)
    if section is not None:
        start = text.index(f"\n## {section}\n")
        following = text.find("\n## ", start + 1)
        end = following if following >= 0 else end
    found = []
    for match in BLOCK.finditer(text, start, end):
        line = text.count("\n", 0, match.start()) + 1
        found.append((f"{name}:{line}", match.group(1)))
    return found


PAGES = [
    "index.md",
    "background-tasks.md",
    "getting-started.md",
    "routing-and-parameters.md",
    "validation-and-errors.md",
    "dependency-injection.md",
    "testing.md",
    "migration.md",
    "observability.md",
    "security.md",
    "middleware.md",
    "cache.md",
    "security-model.md",
    "openapi.md",
    "websockets.md",
    "scheduling.md",
    "task-status.md",
]
DOC_BLOCKS = [block for page in PAGES for block in blocks(page)]
# A complete program of a page whose other blocks are fragments: it needs a Redis (its URL in REDIS_URL).
REDIS_BLOCKS = blocks("durable-tasks.md", "Consistency with your database")


def test_the_background_tasks_page_has_examples() -> None:
    assert len(blocks("background-tasks.md")) >= 10


def test_the_consistency_section_has_its_example() -> None:
    assert len(REDIS_BLOCKS) == 1


def test_the_consistency_example_runs_as_its_page_says(redis_server: RedisServer, tmp_path: Path) -> None:
    """Saved as ``signup_app.py`` and run with the page's commands, in real processes with a deadline (its
    first form, a demo at the top of the module, hung on the import lock and was run again by the worker)."""
    ((_, code),) = REDIS_BLOCKS
    (tmp_path / "signup_app.py").write_text(code)
    text = (DOCS / "durable-tasks.md").read_text()
    commands = BASH.search(text, text.index("\n## Consistency with your database\n")).group(1).splitlines()
    assert [c.split()[0] for c in commands] == ["python", "tachyon"]
    env = {**os.environ, "REDIS_URL": redis_server.url, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"}
    demo, worker = (shlex.split(command, comments=True)[1:] for command in commands)
    result = subprocess.run([sys.executable, *demo], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    # The burst worker runs the job and quits; RQ 3.0's exit can then wait up to a minute for its pub/sub
    # thread, which is RQ's own business: the test stops it once it has quit the queue.
    log = tmp_path / "worker.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tachyon_api", *worker], cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        assert wait_until(lambda: proc.poll() is not None or "done, quitting" in log.read_text(), 60), log.read_text()
    finally:
        proc.terminate()
        proc.wait(10)
    assert "Welcome, ada@example.com!" in log.read_text(), log.read_text()
    assert "bob" not in log.read_text()


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


CONSOLE = re.compile(r"^```console\n(.*?)^```", re.S | re.M)


def curl_calls(transcript: str) -> list[tuple[list[str], list[str]]]:
    """The ``$ curl ...`` commands of a console block, each with the lines it printed."""
    calls: list[tuple[list[str], list[str]]] = []
    for line in transcript.splitlines():
        if line.startswith("$ "):
            calls.append((shlex.split(line[2:]), []))
        elif line.strip() and calls:
            calls[-1][1].append(line)
    return calls


def test_getting_started_first_app_answers_as_its_transcript_shows() -> None:
    """The first app of getting-started.md is a ``main.py`` with nothing to assert; the "Call it" transcript
    below it is what it promises. Replay each curl command on the app with the test client and compare the
    status (when the transcript shows it) and the body, byte for byte."""
    from tachyon_api.testing import TachyonTestClient

    text = (DOCS / "getting-started.md").read_text()
    where, code = blocks("getting-started.md")[0]
    assert "def create_item" in code, "the first block is no longer the first app"
    module = types.ModuleType("docs_first_app")
    sys.modules[module.__name__] = module
    try:
        exec(compile(code, where, "exec"), module.__dict__)
        calls = curl_calls(CONSOLE.search(text, text.index("## Call it")).group(1))
        assert len(calls) == 5
        with TachyonTestClient(module.app) as client:
            for argv, printed in calls:
                options, url, args = {}, "", iter(argv[1:])
                for arg in args:
                    if arg in ("-X", "-H", "-d"):
                        options[arg] = next(args)
                    elif arg != "-i":
                        url = arg
                headers = dict([options["-H"].split(": ", 1)]) if "-H" in options else {}
                response = client.request(options.get("-X", "GET"), url, content=options.get("-d"), headers=headers)
                assert response.text == printed[-1], (argv, response.text)
                if printed[0].startswith("HTTP/1.1 "):
                    assert printed[0] == f"HTTP/1.1 {response.status_code} {response.reason_phrase}", argv
    finally:
        del sys.modules[module.__name__]
