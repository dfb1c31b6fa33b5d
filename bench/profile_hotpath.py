#!/usr/bin/env python3
"""What one request costs our framework, counted in CPU instructions: independent of machine load.

Drives requests through the ASGI app of ``bench/apps/tachyon_app.py`` in-process (no sockets, no server), for
each scenario of bench/run.py that the app serves: ``WARMUP`` requests, then ``N`` measured ones, each
request awaited before the next (the endpoint's thread hop included). Run it under callgrind:

    python bench/profile_hotpath.py --callgrind                # every scenario, N=1000, report Ir/request
    python bench/profile_hotpath.py --callgrind --inline       # the same app with sync_to_thread=False
    python bench/profile_hotpath.py --scenarios items,hello    # plain run (wall time only, load-dependent)
    python bench/profile_hotpath.py --callgrind --app tachyon_observed --scenarios task-sync   # with metrics on
    python bench/profile_hotpath.py --callgrind --upstream --scenarios hello,items   # tachyon-api 1.3 (def on the loop)

``--callgrind`` re-runs this script under ``valgrind --tool=callgrind --dump-before=getppid`` and calls
``os.getppid()`` (which nothing else here calls) before and after each measured loop: callgrind writes one
profile part per call, so the part that ends after a loop counts exactly that loop's instructions. The
report divides it by N. Threads are serialised under valgrind, so this shows the work, not how threads are
scheduled (tests/test_sync_offloop.py counts the threads).
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
UPSTREAM = "--upstream" in sys.argv  # tachyon-api 1.3 from its bench venv: this repository stays off the path
sys.path.insert(0, str(BENCH / "apps"))
if not UPSTREAM:
    sys.path.insert(0, str(BENCH.parent))

# name -> (method, path, query, headers, body); the requests of bench/run.py's scenarios.
SCENARIOS = {
    "hello": ("GET", "/hello", b"", [], b""),
    "items": ("GET", "/items/42", b"q=test&limit=5", [], b""),
    "create-item": (
        "POST",
        "/items",
        b"",
        [(b"content-type", b"application/json")],
        b'{"name":"Widget","price":9.99,"in_stock":true}',
    ),
    "orders": (
        "POST",
        "/orders",
        b"",
        [(b"content-type", b"application/json")],
        b'{"customer":"Alice","lines":[{"item_id":1,"qty":2},{"item_id":2,"qty":1}]}',
    ),
    "user": ("GET", "/users/1", b"", [], b""),
    "auth": ("GET", "/auth", b"", [(b"x-api-key", b"secret")], b""),
    "profile": ("GET", "/users/1/profile", b"", [], b""),
    "search": ("GET", "/search", b"q=foo&page=1&size=20&active=true", [], b""),
    "hello-async": ("GET", "/hello-async", b"", [], b""),
    "task-sync": ("POST", "/task-sync", b"", [(b"content-length", b"0")], b""),
    "notask": ("POST", "/notask", b"", [(b"content-length", b"0")], b""),
    "task-async": ("POST", "/task-async", b"", [(b"content-length", b"0")], b""),
}


def scope_for(method: str, path: str, query: bytes, headers: list) -> dict:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query,
        "root_path": "",
        "headers": [(b"host", b"127.0.0.1:8000"), *headers],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }


async def one_request(app, spec) -> int:
    method, path, query, headers, body = spec
    status = 0
    sent = False

    async def receive() -> dict:
        nonlocal sent
        if sent:
            await asyncio.Event().wait()  # a client that stays connected
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(scope_for(method, path, query, headers), receive, send)
    return status


async def drive(app, names: list[str], warmup: int, n: int) -> dict[str, float]:
    # Lifespan startup, as under uvicorn: background batches detach from the request.
    messages = asyncio.Queue()
    await messages.put({"type": "lifespan.startup"})
    started = asyncio.Event()

    async def lifespan_send(message):
        if message["type"] == "lifespan.startup.complete":
            started.set()

    lifespan = asyncio.ensure_future(app({"type": "lifespan", "asgi": {"version": "3.0"}}, messages.get, lifespan_send))
    await started.wait()
    timings = {}
    for name in names:
        spec = SCENARIOS[name]
        status = await one_request(app, spec)
        if status != 200:
            raise SystemExit(f"{name}: HTTP {status}")
        for _ in range(warmup):
            await one_request(app, spec)
        await _join(app)
        os.getppid()  # callgrind: a profile part ends here (warm-up) ...
        start = time.perf_counter()
        for _ in range(n):
            await one_request(app, spec)
        await _join(app)  # the tasks of the measured requests are part of their cost
        timings[name] = time.perf_counter() - start
        os.getppid()  # ... and here (the measured loop)
    await messages.put({"type": "lifespan.shutdown"})
    await lifespan
    return timings


async def _join(app) -> None:
    """Wait for the background tasks of the requests so far (tachyon-api 1.3 runs them before answering)."""
    background = getattr(app, "background", None)
    if background is not None:
        await background.join()


def run_inprocess(args) -> None:
    import importlib

    app = importlib.import_module("tachyon_inline" if args.inline else args.app).app
    if args.loop == "uvloop":
        import uvloop

        runner = uvloop.run
    else:
        runner = asyncio.run
    timings = runner(drive(app, args.scenarios, args.warmup, args.requests))
    if not args.quiet:
        for name, seconds in timings.items():
            print(f"{name:12s} {seconds / args.requests * 1e6:8.1f} us/request (wall time, load-dependent)")


def run_callgrind(args) -> None:
    out = Path(tempfile.mkdtemp(prefix="tachyon-callgrind-"))
    python = str(BENCH / ".venvs" / "upstream" / "bin" / "python") if args.upstream else sys.executable
    cmd = [
        "valgrind",
        "--tool=callgrind",
        "--dump-before=getppid",
        f"--callgrind-out-file={out}/cg.out",
        python,
        __file__,
        "--scenarios",
        ",".join(args.scenarios),
        "--warmup",
        str(args.warmup),
        "--requests",
        str(args.requests),
        "--loop",
        args.loop,
        "--app",
        args.app,
        "--quiet",
    ]
    cmd += (["--inline"] if args.inline else []) + (["--upstream"] if args.upstream else [])
    subprocess.run(cmd, check=True, stderr=subprocess.DEVNULL)
    parts = sorted(glob.glob(f"{out}/cg.out.*"), key=lambda p: int(p.rsplit(".", 1)[1]))
    totals = []
    for part in parts:
        text = Path(part).read_text(errors="replace")
        found = re.search(r"^(?:summary|totals): (\d+)", text, re.MULTILINE)
        totals.append(int(found.group(1)) if found else 0)
    # Part 1 ends at the first getppid (imports, startup, first warm-up); then measured, warm-up, measured...
    measured = totals[1::2]
    print(
        f"loop={args.loop} app={args.app} inline={args.inline} upstream={args.upstream} warmup={args.warmup} "
        f"N={args.requests} (Ir per request)"
    )
    for name, ir in zip(args.scenarios, measured, strict=False):
        print(f"{name:12s} {ir / args.requests:10,.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    parser.add_argument("--inline", action="store_true", help="the app with sync_to_thread=False (tachyon_inline)")
    parser.add_argument(
        "--app",
        default="tachyon_app",
        help="the app module in bench/apps: tachyon_bare, tachyon_observed (observability overhead)",
    )
    parser.add_argument(
        "--upstream",
        action="store_true",
        help="with --callgrind: the app on tachyon-api 1.3 (bench/.venvs/upstream, made by bench/run.py)",
    )
    parser.add_argument("--callgrind", action="store_true", help="count instructions under valgrind")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()
    args.scenarios = [s for s in args.scenarios.split(",") if s]
    unknown = [s for s in args.scenarios if s not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(unknown)}")
    if args.callgrind:
        run_callgrind(args)
    else:
        run_inprocess(args)


if __name__ == "__main__":
    main()
