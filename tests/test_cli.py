"""The ``tachyon`` command: ``routes``, ``run`` (as ``python -m tachyon_api``) and ``--help``."""

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import pytest

from tachyon_api.cli import build_parser, load_app, main

from .conftest import wait_until

ROOT = Path(__file__).resolve().parent.parent

ROUTES_APP = textwrap.dedent(
    """
    from tachyon_api import Router, Tachyon
    from tachyon_api.openapi import create_openapi_config

    app = Tachyon()

    @app.get("/")
    def index():
        return "index"

    @app.route("/items", methods=["GET", "POST"])
    def items():
        return []

    @app.delete("/items/{item_id}", name="remove_item")
    def delete_item(item_id: int):
        return None

    router = Router(prefix="/admin")

    @router.get("/stats")
    async def admin_stats():
        return {}

    app.include_router(router)
    other = Tachyon(openapi_config=create_openapi_config(openapi_url=None))
    """
)

SERVED_APP = textwrap.dedent(
    """
    from tachyon_api import Tachyon

    app = Tachyon()

    @app.on_event("startup")
    def startup():
        print("APP STARTUP HOOK", flush=True)

    @app.on_event("shutdown")
    async def shutdown():
        print("APP SHUTDOWN HOOK", flush=True)

    @app.get("/hello/{name}")
    def hello(name: str):
        return {"hello": name}

    @app.post("/items", status_code=201)
    async def create(payload: dict):
        return payload
    """
)


def run_cli(*args: str, cwd: Path, executable: list[str] | None = None) -> subprocess.CompletedProcess:
    command = executable or [sys.executable, "-m", "tachyon_api"]
    return subprocess.run(
        [*command, *args],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": f"{cwd}{os.pathsep}{ROOT}"},
        capture_output=True,
        text=True,
        timeout=30,
    )


def parse_table(output: str) -> list[list[str]]:
    return [line.split() for line in output.strip().splitlines()]


def test_routes_lists_method_path_name(tmp_path):
    (tmp_path / "routes_app.py").write_text(ROUTES_APP)
    result = run_cli("routes", "routes_app:app", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    rows = parse_table(result.stdout)
    assert rows[0] == ["METHOD", "PATH", "NAME"]
    assert sorted(map(tuple, rows[1:])) == sorted(
        [
            ("GET", "/openapi.json", "openapi"),  # the docs pages are routes like any other
            ("GET", "/docs", "scalar_html"),
            ("GET", "/swagger", "swagger_ui_html"),
            ("GET", "/swagger/{file}", "swagger_ui_asset"),
            ("GET", "/redoc", "redoc_html"),
            ("GET", "/", "index"),
            ("GET", "/items", "items"),
            ("POST", "/items", "items"),
            ("DELETE", "/items/{item_id}", "remove_item"),
            ("GET", "/admin/stats", "admin_stats"),
        ]
    )


def test_routes_via_console_script(tmp_path):
    script = shutil.which("tachyon", path=os.path.dirname(sys.executable))
    assert script is not None, "the tachyon console script is installed next to the interpreter"
    (tmp_path / "routes_app.py").write_text(ROUTES_APP)
    result = run_cli("routes", "routes_app:app", cwd=tmp_path, executable=[script])
    assert result.returncode == 0, result.stderr
    assert ["GET", "/admin/stats", "admin_stats"] in parse_table(result.stdout)


def test_routes_in_process_with_other_attribute(tmp_path, capsys, monkeypatch):
    (tmp_path / "routes_app_inproc.py").write_text(ROUTES_APP)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    main(["routes", "routes_app_inproc:other"])
    rows = parse_table(capsys.readouterr().out)
    assert rows == [["METHOD", "PATH", "NAME"]]  # an app without routes (and no docs pages): just the header


def test_routes_columns_are_aligned(tmp_path):
    (tmp_path / "routes_app.py").write_text(ROUTES_APP)
    lines = run_cli("routes", "routes_app:app", cwd=tmp_path).stdout.strip().splitlines()
    path_column = lines[0].index("PATH")
    name_column = lines[0].index("NAME")
    for line in lines[1:]:
        assert line[path_column - 1] == " " and line[path_column] == "/"
        assert line[name_column - 1] == " " and line[name_column] != " "


def test_load_app_errors(tmp_path, monkeypatch):
    (tmp_path / "loadable.py").write_text("app = 'the app'\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert load_app("loadable:app") == "the app"
    assert load_app("loadable") == "the app"  # attribute defaults to "app"
    with pytest.raises(SystemExit, match="no attribute"):
        load_app("loadable:missing")
    with pytest.raises(SystemExit, match="Cannot import"):
        load_app("no_such_module_here:app")
    with pytest.raises(SystemExit, match="module:app"):
        load_app(":app")


def test_routes_with_bad_target_exits_nonzero(tmp_path):
    result = run_cli("routes", "missing_module:app", cwd=tmp_path)
    assert result.returncode != 0
    assert "Cannot import" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("args", [["--help"], ["run", "--help"], ["routes", "--help"]])
def test_help(args, tmp_path):
    result = run_cli(*args, cwd=tmp_path)
    assert result.returncode == 0
    assert "usage: tachyon" in result.stdout
    if args == ["--help"]:
        assert "run" in result.stdout and "routes" in result.stdout
    if args[0] == "run":
        for option in ("--host", "--port", "--workers", "--reload", "--log-level"):
            assert option in result.stdout


def test_no_command_is_an_error(tmp_path):
    result = run_cli(cwd=tmp_path)
    assert result.returncode == 2
    assert "usage: tachyon" in result.stderr


def test_parser_defaults():
    args = build_parser().parse_args(["run"])
    assert args.app == "app:app"
    assert args.host == "127.0.0.1"
    assert args.port == 8000
    parsed = build_parser().parse_args(["run", "m:a", "-p", "9001", "--host", "0.0.0.0", "--no-access-log"])
    assert (parsed.app, parsed.port, parsed.host, parsed.no_access_log) == ("m:a", 9001, "0.0.0.0", True)


def test_run_serves_and_shuts_down_gracefully(serve_process):
    server = serve_process(SERVED_APP)
    with httpx.Client(base_url=server.url, timeout=5) as client:
        hello = client.get("/hello/world")
        assert hello.status_code == 200
        assert hello.json() == {"hello": "world"}
        created = client.post("/items", json={"a": 1})
        assert created.status_code == 201
        assert created.json() == {"a": 1}
        assert client.get("/nope").status_code == 404
    server.terminate()
    # uvicorn re-raises SIGTERM after a graceful shutdown, so the exit status is -15.
    assert server.wait() == -15
    output = server.output()
    assert "APP STARTUP HOOK" in output
    assert "APP SHUTDOWN HOOK" in output
    assert "Application shutdown complete" in output
    assert output.index("APP STARTUP HOOK") < output.index("APP SHUTDOWN HOOK")
    assert "Traceback" not in output
    assert '"GET /hello/world HTTP/1.1" 200' in output  # the access log is on by default


def test_run_no_access_log(serve_process):
    server = serve_process(SERVED_APP, "--no-access-log")
    assert server.url.endswith(f":{server.port}")
    response = httpx.get(f"{server.url}/hello/port", timeout=5)
    assert response.json() == {"hello": "port"}
    server.terminate()
    assert server.wait() == -15
    output = server.output()
    assert "Application startup complete" in output
    assert "GET /hello/port" not in output  # --no-access-log


FAILING_TASK_APP = textwrap.dedent(
    """
    from tachyon_api import BackgroundTasks, Tachyon

    app = Tachyon()


    def send_receipt() -> None:
        raise RuntimeError("smtp down")


    @app.post("/orders")
    def order(background_tasks: BackgroundTasks):
        background_tasks.add_task(send_receipt).with_options(retries=1, retry_delay=0.01)
        return {}
    """
)
STAMP = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}"


@pytest.mark.parametrize("level", ["info", "error"])
def test_run_logs_the_framework_with_time_level_and_logger_at_the_chosen_level(serve_process, level) -> None:
    server = serve_process(FAILING_TASK_APP, "--log-level", level)
    assert httpx.post(f"{server.url}/orders", timeout=5).status_code == 200
    assert wait_until(lambda: "Background task send_receipt failed (request" in server.output(), 5), server.output()
    server.terminate()
    server.wait(15)
    lines = server.output().splitlines()

    failed = [line for line in lines if "send_receipt failed (request" in line]
    assert len(failed) == 1 and re.fullmatch(
        rf"{STAMP} ERROR: +tachyon_api\.background: Background task send_receipt failed \(request POST /orders\)",
        failed[0],
    ), failed
    assert lines[lines.index(failed[0]) + 1] == "Traceback (most recent call last):"
    retry = [line for line in lines if "retrying in" in line]
    started = [line for line in lines if "Application startup complete" in line]
    if level == "info":
        assert len(retry) == 1 and re.match(rf"{STAMP} WARNING: +tachyon_api\.background: Background task", retry[0])
        assert len(started) == 1 and re.match(rf"{STAMP} INFO: +uvicorn\.error: ", started[0])  # one format for all
    else:
        assert retry == [] and started == []


def test_run_takes_a_log_config_file(serve_process, tmp_path) -> None:
    """The documented way to JSON logs: a dictConfig file with a formatter from the app's package."""
    (tmp_path / "jsonlog.py").write_text(
        textwrap.dedent(
            """
        import json
        import logging


        class JSONFormatter(logging.Formatter):
            def format(self, record):
                entry = {"time": self.formatTime(record), "level": record.levelname, "logger": record.name,
                         "message": record.getMessage()}
                if record.exc_info:
                    entry["traceback"] = self.formatException(record.exc_info)
                return json.dumps(entry)
        """
        )
    )
    (tmp_path / "logging.json").write_text(
        json.dumps(
            {
                "version": 1,
                "disable_existing_loggers": False,
                "formatters": {"json": {"()": "jsonlog.JSONFormatter"}},
                "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "json"}},
                "loggers": {
                    "uvicorn": {"handlers": ["stderr"], "level": "INFO", "propagate": False},
                    "tachyon_api": {"handlers": ["stderr"], "level": "INFO", "propagate": False},
                },
            }
        )
    )
    server = serve_process(FAILING_TASK_APP, "--log-config", "logging.json")
    httpx.post(f"{server.url}/orders", timeout=5)
    assert wait_until(lambda: "send_receipt failed (request" in server.output(), 5), server.output()
    server.terminate()
    server.wait(15)
    entries = [json.loads(line) for line in server.output().splitlines() if line.startswith("{")]
    failed = [e for e in entries if e["message"] == "Background task send_receipt failed (request POST /orders)"]
    assert len(failed) == 1 and failed[0]["level"] == "ERROR" and failed[0]["logger"] == "tachyon_api.background"
    assert "RuntimeError: smtp down" in failed[0]["traceback"]
