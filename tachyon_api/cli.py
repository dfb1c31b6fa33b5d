"""The ``tachyon`` command: ``run`` an app under uvicorn, list its ``routes``, run a durable-task ``worker``.

``python -m tachyon_api`` is the same command.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys
from typing import Any, Sequence

__all__ = ["main", "load_app"]


def _cwd_importable() -> None:
    """Make the current directory importable, as uvicorn does for ``module:app``."""
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())


def load_app(target: str) -> Any:
    """Import ``module:attribute`` (the current directory is importable, as with uvicorn)."""
    module_name, _, attribute = target.partition(":")
    if not module_name:
        raise SystemExit(f"Expected module:app, got {target!r}")
    _cwd_importable()
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise SystemExit(f"Cannot import {module_name!r}: {exc}") from None
    try:
        return getattr(module, attribute or "app")
    except AttributeError:
        raise SystemExit(f"Module {module_name!r} has no attribute {attribute or 'app'!r}") from None


def _run(args: argparse.Namespace) -> None:
    import uvicorn

    _cwd_importable()
    has = importlib.util.find_spec
    uvicorn.run(
        args.app,
        host=args.host,
        port=args.port,
        workers=None if args.reload else args.workers,
        reload=args.reload,
        loop="uvloop" if has("uvloop") else "asyncio",
        http="httptools" if has("httptools") else "h11",
        log_level=args.log_level,
        access_log=not args.no_access_log,
        timeout_graceful_shutdown=args.graceful_timeout,
    )


def _routes(args: argparse.Namespace) -> None:
    app = load_app(args.app)
    rows = [(r["method"], r["path"], r.get("name") or "") for r in app.routes]
    width = max([len("METHOD"), *(len(m) for m, _, _ in rows)])
    path_width = max([len("PATH"), *(len(p) for _, p, _ in rows)])
    print(f"{'METHOD':<{width}}  {'PATH':<{path_width}}  NAME")
    for method, path, name in rows:
        print(f"{method:<{width}}  {path:<{path_width}}  {name}")


def _worker(args: argparse.Namespace) -> None:
    from rq import Queue, Worker

    from .backends.rq import RQBackend

    app = load_app(args.app)
    backend = getattr(app, "task_backend", None)
    if args.url:
        backend = RQBackend(args.url, args.queue[0] if args.queue else "tachyon")
    if not isinstance(backend, RQBackend):
        raise SystemExit(f"{args.app} has no RQBackend task_backend; pass --url redis://... (and --queue)")
    names = args.queue or [backend.queue_name]
    queues = [Queue(name, connection=backend.redis) for name in names]
    worker = Worker(queues, connection=backend.redis)
    worker.work(burst=args.burst, with_scheduler=args.with_scheduler, logging_level=args.log_level.upper())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tachyon", description="Run and inspect tachyon_api applications.")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="serve module:app with uvicorn (uvloop and httptools when installed)")
    run.add_argument("app", nargs="?", default="app:app", help="module:attribute (default app:app)")
    run.add_argument("--host", default="127.0.0.1")
    run.add_argument("--port", "-p", type=int, default=8000)
    run.add_argument("--workers", "-w", type=int, default=1)
    run.add_argument("--reload", action="store_true", help="restart on code changes (development)")
    run.add_argument("--log-level", default="info")
    run.add_argument("--no-access-log", action="store_true")
    run.add_argument(
        "--graceful-timeout", type=float, default=None,
        help="seconds to wait for open connections at shutdown (background tasks have their own shutdown_timeout)",
    )
    run.set_defaults(handler=_run)

    routes = commands.add_parser("routes", help="list the routes of module:app")
    routes.add_argument("app", nargs="?", default="app:app")
    routes.set_defaults(handler=_routes)

    worker = commands.add_parser("worker", help="run an RQ worker for the durable tasks of module:app")
    worker.add_argument("app", nargs="?", default="app:app")
    worker.add_argument("--burst", action="store_true", help="exit when the queue is empty")
    worker.add_argument(
        "--with-scheduler", action="store_true", help="also move delayed tasks and retries with a delay to the queue"
    )
    worker.add_argument("--queue", "-q", action="append", help="queue name (repeatable; default: the app's)")
    worker.add_argument("--url", help="Redis URL (default: the app's RQBackend)")
    worker.add_argument("--log-level", default="info")
    worker.set_defaults(handler=_worker)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    args.handler(args)


if __name__ == "__main__":
    main()
