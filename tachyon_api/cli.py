"""The ``tachyon`` command: ``run`` an app under uvicorn, list its ``routes``, run a durable-task ``worker``,
scaffold a project (``new``) or code (``generate``), wrap ruff (``lint``), print the ``version`` and the shell
``completion`` script, ``openapi export`` an app's schema and ``openapi validate`` a schema file.

``python -m tachyon_api`` is the same command. It is built on argparse (no dependency on the serving path)
with argcomplete for shell completion.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import importlib.util
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from .scaffold import ScaffoldError

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


LOG_FORMAT = "%(asctime)s %(levelprefix)s %(name)s: %(message)s"


def log_config(level: str) -> dict[str, Any]:
    """uvicorn's logging config with time and logger name on every line, and the framework's loggers
    (``tachyon_api.*``) on the same handler and format at ``level``, so a failing task is a dated, named line
    among uvicorn's. ``--log-config FILE`` replaces all of it (JSON logs: see docs/deployment.md)."""
    from uvicorn.config import LOG_LEVELS, LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["formatters"]["default"]["fmt"] = LOG_FORMAT
    config["formatters"]["access"]["fmt"] = (
        '%(asctime)s %(levelprefix)s %(name)s: %(client_addr)s - "%(request_line)s" %(status_code)s'
    )
    config["loggers"]["tachyon_api"] = {"handlers": ["default"], "level": LOG_LEVELS[level], "propagate": False}
    return config


def _run(args: argparse.Namespace) -> None:
    from .server import ServerConfig, serve, server_options

    if args.prod:  # tachyon-api 1.3's production switch: no reload, no access log
        args.reload, args.no_access_log = False, True
    if args.tachyon_server:
        print(
            "tachyon run: --tachyon-server (tachyon-api 1.3's direct-write server) is not needed: the default "
            "server is used, uvicorn with httptools and uvloop when installed",
            file=sys.stderr,
        )
    _cwd_importable()
    options: dict[str, Any] = {
        "host": args.host,
        "port": args.port,
        "workers": None if args.reload else args.workers,
        "reload": args.reload,
        **server_options(),  # uvloop and httptools when installed
        "log_config": args.log_config or log_config(args.log_level),
        "log_level": args.log_level,
        "access_log": not args.no_access_log,
        "timeout_graceful_shutdown": args.graceful_timeout,
    }
    if args.workers > 1:  # each process learns it has siblings (in-process task status warns at startup)
        os.environ["TACHYON_WORKERS"] = str(args.workers)
    # ServerConfig: the app's largest WebSocket message limit becomes uvicorn's ws_max_size (see server.py)
    if args.reload or args.workers > 1:  # uvicorn's supervisors build a server in each child
        serve(ServerConfig(args.app, **options))
        return
    server = _server(ServerConfig(args.app, **options))
    try:
        server.run()
    except KeyboardInterrupt:  # the Ctrl+C uvicorn handled, raised again by asyncio at exit: as uvicorn.run does
        pass
    if not server.started:
        raise SystemExit(3)  # what uvicorn.run exits with when startup fails


def _server(config: Any) -> Any:
    """uvicorn's server, except that a second Ctrl+C exits at once, non-zero, with one clear line."""
    import uvicorn

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            if self.should_exit and sig == signal.SIGINT:
                _force_exit(self)
            if not self.should_exit and sig == signal.SIGINT:
                _announce_force_exit(self)
            super().handle_exit(sig, frame)

    return Server(config)


def _tachyon_app(server: Any) -> Any:
    """The Tachyon app a uvicorn server serves, inside uvicorn's middleware wrappers (None for another app)."""
    from .server import find_app

    return find_app(getattr(server.config, "loaded_app", None))


def _announce_force_exit(server: Any) -> None:
    """At the first Ctrl+C, when the stop has something to wait for, say how to stop waiting (the app then
    says what it waits for and until when)."""
    app = _tachyon_app(server)
    tasks = len(app.background.unfinished()) if app is not None else 0
    requests = len(server.server_state.tasks)
    if tasks or requests:
        logging.getLogger("tachyon_api.lifespan").warning(
            "Stopping after %d request(s) in progress and %d background task(s); press Ctrl+C again to exit at "
            "once (they would be lost)",
            requests,
            tasks,
        )


def _force_exit(server: Any) -> None:
    """The user wants out now: say in one line what is lost, then exit with 130 (128 + SIGINT), rather than
    let the event loop's teardown print a traceback for each cancelled request and task and exit with 0."""
    app = _tachyon_app(server)
    lost = app.background.unfinished() if app is not None else []
    logging.getLogger("tachyon_api.lifespan").error(
        "Forced exit on a second Ctrl+C: %d request(s) in progress cancelled, %d background task(s) lost%s",
        len(server.server_state.tasks),
        len(lost),
        (": " + ", ".join(lost)) if lost else "",
    )
    logging.shutdown()  # flush the handlers: os._exit does not
    sys.stdout.flush()
    os._exit(128 + signal.SIGINT)


def _routes(args: argparse.Namespace) -> None:
    app = load_app(args.app)
    rows = [(r["method"], r["path"], r.get("name") or "") for r in app.routes]
    rows += [("WEBSOCKET", r.path, r.name or "") for r in getattr(app, "websocket_routes", ())]
    width = max([len("METHOD"), *(len(m) for m, _, _ in rows)])
    path_width = max([len("PATH"), *(len(p) for _, p, _ in rows)])
    print(f"{'METHOD':<{width}}  {'PATH':<{path_width}}  NAME")
    for method, path, name in rows:
        print(f"{method:<{width}}  {path:<{path_width}}  {name}")


def _schedule(args: argparse.Namespace) -> None:
    """List the periodic jobs of module:app with their next run times (computed here, nothing is started)."""
    import time

    from .tasks.schedule import iso

    app = load_app(args.app)
    scheduler = getattr(app, "scheduler", None)
    jobs = list(scheduler) if scheduler is not None else []
    if not jobs:
        print(f"{args.app} declares no periodic jobs (@app.periodic)")
        return
    now = time.time()
    rows = []
    for job in jobs:
        marked = hasattr(job.func, "__tachyon_backend__")
        durable = job.durable is not False and (app.task_backend is not None or marked)
        options = [f"{key}={value}" for key, value in job.options.items()]
        options += [name for name in ("overlap", "catch_up") if getattr(job, name)]
        options += [f"jitter={job.jitter:g}s"] if job.jitter else []
        ticks = [iso(tick, job.schedule.zone()) for tick in job.upcoming(now, args.next)]
        where = "durable" if durable else "in-process"
        rows.append((job.name, job.schedule.describe(), where, ticks, ", ".join(options)))
    titles = ("NAME", "SCHEDULE", "RUNS", "NEXT RUN")
    widths = [max(len(title), *(len(row[i] if i < 3 else row[3][0]) for row in rows)) for i, title in enumerate(titles)]

    def line(*cells: str) -> str:
        return "  ".join(f"{cell:<{width}}" for cell, width in zip(cells, widths, strict=False)) + "  " + cells[-1]

    print(line(*titles, "OPTIONS"))
    for name, schedule, where, ticks, listed in rows:
        print(line(name, schedule, where, ticks[0], listed).rstrip())
        for tick in ticks[1:]:
            print(" " * (sum(widths[:3]) + 6) + tick)


def _worker(args: argparse.Namespace) -> None:
    """``tachyon worker``: the app's durable jobs, run in this process (docs/durable-tasks.md, "Running workers")."""
    from .backends.postgres import PostgresBackend
    from .backends.rq import RQBackend
    from .backends.rq_worker import TachyonWorker

    app = load_app(args.app)
    backend = getattr(app, "task_backend", None)
    if args.url:
        tier = PostgresBackend if args.url.startswith(("postgres://", "postgresql://")) else RQBackend
        backend = tier(args.url, args.queue[0] if args.queue else "tachyon")
    if not isinstance(backend, (RQBackend, PostgresBackend)):
        raise SystemExit(
            f"{args.app} has no RQBackend or PostgresBackend task_backend; pass --url redis://... or postgresql://..."
        )
    for name, value, least in (
        ("--concurrency", args.concurrency, 1),
        ("--threads", args.threads, 1),
        ("--heartbeat", args.heartbeat, 0.1),
        ("--shutdown-timeout", args.shutdown_timeout, 0),
    ):
        if value is not None and value < least:
            raise SystemExit(f"tachyon worker: {name} must be at least {least}, got {value}")
    _worker_logging(args.log_level)
    if isinstance(backend, PostgresBackend):
        _postgres_worker(args, backend)
    worker = TachyonWorker(
        args.queue or [backend.queue_name],
        backend.redis_url,
        concurrency=args.concurrency,
        threads=args.threads,
        fork=args.fork,
        heartbeat=args.heartbeat,
        shutdown_timeout=args.shutdown_timeout,
        socket_timeout=backend.socket_timeout,
    )
    status = worker.run(burst=args.burst, with_scheduler=args.with_scheduler)
    if worker.abandoned_threads:  # a sync job's thread outlived the deadline: exit without joining it
        logging.shutdown()
        sys.stdout.flush()
        os._exit(status)
    raise SystemExit(status)


def _postgres_worker(args: argparse.Namespace, backend: Any) -> NoReturn:
    """``tachyon worker`` for a PostgresBackend: procrastinate's worker (``backends/postgres_worker.py``)."""
    from .backends.postgres_worker import run_worker

    for option in ("fork", "with_scheduler", "threads"):  # RQ's worker's; procrastinate has its own ways
        if getattr(args, option) not in (None, False):
            raise SystemExit(f"tachyon worker: --{option.replace('_', '-')} is for RQBackend workers only")
    raise SystemExit(
        run_worker(
            backend,
            args.queue or [backend.queue_name],
            concurrency=args.concurrency,
            burst=args.burst,
            shutdown_timeout=args.shutdown_timeout,
        )
    )


def _worker_logging(level: str) -> None:
    """The worker's lines (``tachyon_api.*``) and RQ's (``rq.*``) on stderr, dated and named as ``tachyon run``'s."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for name in ("tachyon_api", "rq", "procrastinate"):
        named = logging.getLogger(name)
        named.handlers[:] = [handler]
        named.setLevel(level.upper())
        named.propagate = False


def _new(args: argparse.Namespace) -> None:
    from .origin import origin
    from .scaffold import create_project

    root = create_project(args.name, Path(args.path))
    print(f"Created {root}")
    source = origin()
    if source.url is not None:
        where = source.folder or source.url
        print(f"Its requirements.txt installs tachyon_api from where this one comes from: {where}")
    print("Next:")
    print(f"  cd {root}")
    print("  python3 -m venv .venv && . .venv/bin/activate && pip install -r requirements.txt")
    print("  cp .env.example .env              # the settings (real environment variables take precedence)")
    print("  tachyon run app:app --reload      # then open http://127.0.0.1:8000/health")
    print("  python -m pytest                  # its tests")
    print("  tachyon lint all                  # ruff: checks, fixes and formats")
    print("  tachyon generate service NAME --crud   # a feature module in modules/NAME")


def _generate(args: argparse.Namespace) -> None:
    from .scaffold import generate, names_for

    base = Path(args.path) if args.path else None
    written = generate(args.kind, args.name, base, tests=not args.no_tests, crud=args.crud)
    for path in written:
        print(f"created {path}")
    names = names_for(args.name)
    if args.kind == "middleware":
        source = _import_path(written[0].with_suffix(""))
        imported, line = f"{names.Class}Middleware", f"app.add_middleware({names.Class}Middleware)"
    elif args.kind == "service":
        source = _import_path(written[0].parent)
        imported, line = f"router as {names.module}_router", f"app.include_router({names.module}_router)"
    elif args.kind == "controller":
        controller = next(path for path in written if path.name == f"{names.module}_controller.py")
        source = _import_path(controller.with_suffix(""))
        imported, line = f"router as {names.module}_router", f"app.include_router({names.module}_router)"
    else:
        return
    # Where each line goes matters: an import below code is ruff's E402, and a router included before the
    # app exists is a NameError.
    print(
        f"To use it, add to app.py, among the imports at the top (`tachyon lint fix` sorts them):\n"
        f"    from {source} import {imported}\n"
        f"and below `app = Tachyon(...)`:\n"
        f"    {line}"
    )


def _import_path(path: Path) -> str:
    """The dotted import path of ``path`` (a module file without suffix, or a package folder) from the current
    directory; for a path outside it, the import from the folder that contains it, which must then be on
    ``sys.path``."""
    absolute = path.resolve()
    try:
        parts = absolute.relative_to(Path.cwd().resolve()).parts
    except ValueError:
        parts = (absolute.name,)
        print(f"(add {absolute.parent} to sys.path, or generate inside the project, for this import)")
    return ".".join(parts)


def _version(args: argparse.Namespace) -> None:
    from importlib import metadata

    from . import __version__

    try:
        version = metadata.version("tachyon-api-next")
    except metadata.PackageNotFoundError:
        version = __version__
    print(f"Tachyon API v{version}")


def _ruff_command() -> list[str]:
    if importlib.util.find_spec("ruff") is not None:
        return [sys.executable, "-m", "ruff"]
    found = shutil.which("ruff")
    if found:
        return [found]
    from .origin import install_hint

    raise SystemExit(f"tachyon lint needs ruff, which is not installed: {install_hint('lint')} (or pip install ruff)")


def _lint(args: argparse.Namespace) -> None:
    ruff = _ruff_command()
    paths = args.paths or ["."]
    if args.action == "check":
        steps = [["check", *(["--fix"] if args.fix else []), *(["--watch"] if args.watch else []), *paths]]
    elif args.action == "fix":
        steps = [["check", "--fix", *(["--unsafe-fixes"] if args.unsafe else []), *paths]]
    elif args.action == "format":
        steps = [["format", *(["--check"] if args.check else []), *(["--diff"] if args.diff else []), *paths]]
    else:  # all: what CI would ask, fixing what is safe to fix unless --no-fix
        steps = [
            ["check", *([] if args.no_fix else ["--fix"]), *paths],
            ["format", *(["--check"] if args.no_fix else []), *paths],
        ]
    status = 0
    for step in steps:
        status = subprocess.call([*ruff, *step]) or status
    if status:
        raise SystemExit(status)


def _completion(args: argparse.Namespace) -> None:
    import argcomplete

    print(argcomplete.shellcode(["tachyon"], shell=args.shell))


def _openapi_export(args: argparse.Namespace) -> None:
    app = load_app(args.app)
    if not hasattr(app, "openapi"):
        raise SystemExit(f"{args.app} is not a Tachyon app (it has no openapi())")
    text = json.dumps(app.openapi(), indent=args.indent or None, ensure_ascii=False) + "\n"
    if args.output:
        with open(args.output, "w", encoding="utf-8") as file:
            file.write(text)
        print(f"Wrote the OpenAPI schema of {args.app} to {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)


def _openapi_validate(args: argparse.Namespace) -> None:
    """Validate against the OpenAPI specification (3.0 or 3.1, as the file says) with openapi-spec-validator."""
    try:
        from openapi_spec_validator import validate
        from openapi_spec_validator.readers import read_from_filename
    except ImportError:
        from .origin import install_hint

        raise SystemExit(f"tachyon openapi validate needs openapi-spec-validator: {install_hint('openapi')}") from None
    try:
        spec, _ = read_from_filename(args.file)
    except (OSError, ValueError) as exc:
        raise SystemExit(f"Cannot read {args.file}: {exc}") from None
    if not isinstance(spec, dict) or "openapi" not in spec:
        raise SystemExit(f"{args.file} is not an OpenAPI document: it has no 'openapi' key (the version, e.g. 3.1.0)")
    try:
        validate(spec)
    except Exception as exc:  # the validator's errors have no common base beyond Exception
        reason = getattr(exc, "message", None) or str(exc) or type(exc).__name__
        raise SystemExit(f"{args.file} is not a valid OpenAPI document: {reason}") from None
    print(f"{args.file}: valid OpenAPI {spec.get('openapi', '?')}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tachyon", description="Run and inspect tachyon_api applications.")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="serve module:app with uvicorn (uvloop and httptools when installed)")
    run.add_argument("app", nargs="?", default="app:app", help="module:attribute (default app:app)")
    run.add_argument("--host", default="127.0.0.1")
    run.add_argument("--port", "-p", type=int, default=8000)
    run.add_argument("--workers", "-w", type=int, default=1)
    run.add_argument(
        "--reload",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="restart on code changes (development); off unless given",
    )
    run.add_argument("--prod", action="store_true", help="tachyon-api 1.3's production mode: no reload, no access log")
    run.add_argument(
        "--tachyon-server",
        action="store_true",
        help="accepted for tachyon-api 1.3 command lines; the default server is used (with a notice)",
    )
    run.add_argument(
        "--log-level",
        default="info",
        choices=["critical", "error", "warning", "info", "debug", "trace"],
        help="for uvicorn's loggers and the framework's (tachyon_api.*)",
    )
    run.add_argument("--log-config", help="a logging config file (.json, .yaml or .ini) replacing the default")
    run.add_argument("--no-access-log", action="store_true")
    run.add_argument(
        "--graceful-timeout",
        type=float,
        default=None,
        help="seconds to wait for open connections at shutdown (background tasks have their own shutdown_timeout)",
    )
    run.set_defaults(handler=_run)

    routes = commands.add_parser("routes", help="list the routes of module:app")
    routes.add_argument("app", nargs="?", default="app:app")
    routes.set_defaults(handler=_routes)

    schedule = commands.add_parser("schedule", help="list the periodic jobs of module:app and their next runs")
    schedule.add_argument("app", nargs="?", default="app:app")
    schedule.add_argument("--next", "-n", type=int, default=1, help="how many upcoming run times per job (default 1)")
    schedule.set_defaults(handler=_schedule)

    worker = commands.add_parser(
        "worker", help="run the durable tasks of module:app (many at once, in this process; survives Redis restarts)"
    )
    worker.add_argument("app", nargs="?", default="app:app")
    worker.add_argument("--burst", action="store_true", help="exit when the queues are empty")
    worker.add_argument(
        "--with-scheduler", action="store_true", help="also move delayed tasks and retries with a delay to the queue"
    )
    worker.add_argument("--queue", "-q", action="append", help="queue name (repeatable; default: the app's)")
    worker.add_argument("--url", help="redis:// or postgresql:// URL (default: the app's task_backend)")
    worker.add_argument(
        "--concurrency",
        "-c",
        type=int,
        default=16,
        help="jobs running at once: async tasks on the event loop, sync tasks in threads (default 16)",
    )
    worker.add_argument(
        "--threads", type=int, default=None, help="threads for sync tasks (default: min(concurrency, 32))"
    )
    worker.add_argument(
        "--fork",
        action="store_true",
        help="run each job in a forked child (isolation, timeouts kill it; about 20 times slower per job)",
    )
    worker.add_argument(
        "--heartbeat",
        type=float,
        default=5.0,
        help="seconds between lease renewals; a dead worker's jobs are recovered within two (default 5)",
    )
    worker.add_argument(
        "--shutdown-timeout",
        type=float,
        default=25.0,
        help="on SIGTERM/SIGINT, seconds to let running jobs finish before putting them back (default 25)",
    )
    worker.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    worker.set_defaults(handler=_worker)

    new = commands.add_parser("new", help="create a project skeleton (app, settings, modules, tests)")
    new.add_argument("name", help="project name; hyphens become underscores")
    new.add_argument("--path", "-p", default=".", help="folder to create the project in (default: .)")
    new.set_defaults(handler=_new)

    from .scaffold import GENERATORS

    generate = commands.add_parser("generate", aliases=["g"], help="generate a module, service or middleware")
    kinds = generate.add_subparsers(dest="kind", required=True, metavar="{" + ",".join(GENERATORS) + "}")
    help_texts = {
        "service": "a feature module: controller, service, repository, DTOs and tests",
        "controller": "a router with its endpoints",
        "repository": "a data-access class",
        "dto": "request and response Structs",
        "middleware": "a pure ASGI middleware",
    }
    for kind in GENERATORS:
        sub = kinds.add_parser(kind, aliases=["repo"] if kind == "repository" else [], help=help_texts[kind])
        sub.add_argument("name")
        sub.add_argument("--path", "-p", help="base folder (default: ./modules, ./middlewares for middleware)")
        sub.add_argument("--no-tests", action="store_true", help="do not write the test file")
        sub.add_argument("--crud", action="store_true", help="service only: also update and delete endpoints")
        sub.set_defaults(handler=_generate, kind=kind)

    version = commands.add_parser("version", help="print the installed version")
    version.set_defaults(handler=_version)

    lint = commands.add_parser("lint", help="ruff: check, fix, format, or all (the lint extra)")
    actions = lint.add_subparsers(dest="action", required=True)
    check = actions.add_parser("check", help="report problems")
    check.add_argument("--fix", action="store_true", help="apply the safe fixes")
    check.add_argument("--watch", action="store_true", help="check again whenever a file changes")
    fix = actions.add_parser("fix", help="apply the fixes")
    fix.add_argument("--unsafe", action="store_true", help="also apply ruff's unsafe fixes")
    fmt = actions.add_parser("format", help="format the code")
    fmt.add_argument("--check", action="store_true", help="report files that would change, change nothing")
    fmt.add_argument("--diff", action="store_true", help="show the changes instead of writing them")
    every = actions.add_parser("all", help="check with fixes, then format")
    every.add_argument("--no-fix", action="store_true", help="change nothing: check, and format --check")
    for action in (check, fix, fmt, every):
        action.add_argument("paths", nargs="*", help="files or folders (default: .)")
    lint.set_defaults(handler=_lint)

    completion = commands.add_parser("completion", help="print the shell completion script")
    completion.add_argument("shell", choices=["bash", "zsh", "fish"])
    completion.set_defaults(handler=_completion)

    openapi = commands.add_parser("openapi", help="export or validate an OpenAPI schema")
    openapi_commands = openapi.add_subparsers(dest="openapi_command", required=True)
    export = openapi_commands.add_parser("export", help="write the OpenAPI schema of module:app as JSON")
    export.add_argument("app", nargs="?", default="app:app")
    export.add_argument("--output", "-o", help="file to write (default: standard output)")
    export.add_argument("--indent", "-i", type=int, default=2, help="JSON indentation (0: one line; default 2)")
    export.set_defaults(handler=_openapi_export)
    validate = openapi_commands.add_parser("validate", help="check a JSON or YAML file against the OpenAPI spec")
    validate.add_argument("file")
    validate.set_defaults(handler=_openapi_validate)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    try:
        import argcomplete
    except ImportError:  # completion is a convenience: the command works without it
        pass
    else:
        argcomplete.autocomplete(parser)
    args = parser.parse_args(argv)
    try:
        args.handler(args)
    except ScaffoldError as exc:
        raise SystemExit(f"tachyon {args.command}: {exc}") from None


if __name__ == "__main__":
    main()
