#!/usr/bin/env python3
"""Benchmark harness: tachyon_api (this repo) vs tachyon-api 1.3 (PyPI) vs
FastAPI vs a hand-written raw ASGI app.

Standard library only.  Run from the repository root:

    python bench/run.py                 # full run: 14 scenarios, 3 rounds x 8 s
    python bench/run.py --quick         # 1 round x 3 s, 5 scenarios (< 2 min)
    python bench/run.py --memory        # RSS after 10k and after 1M more requests
    python bench/run.py --contenders raw,upstream --scenarios hello,items

See bench/README.md for the details (what is pinned where, how the numbers
are computed, how the venvs are made).
"""

import argparse
import datetime
import http.client
import json
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
APPS = BENCH / "apps"
LUA = BENCH / "lua"
VENVS = BENCH / ".venvs"
RESULTS = BENCH / "results"
LOGS = RESULTS / "logs"

SERVER_PKGS = ["uvicorn", "uvloop", "httptools"]
# Every venv gets this uvicorn (see ensure_uvicorn); --uvicorn overrides it.
UVICORN_PIN = "0.54.0"
UPSTREAM_SPEC = "tachyon-api>=1.3,<1.4"

ITEM_BODY = '{"name":"Widget","price":9.99,"in_stock":true}'
ORDER_BODY = '{"customer":"Alice","lines":[{"item_id":1,"qty":2},{"item_id":2,"qty":1}]}'
JSON_CT = {"Content-Type": "application/json"}


# ---------------------------------------------------------------------------
# Scenarios and contenders
# ---------------------------------------------------------------------------
class Scenario:
    def __init__(
        self,
        name,
        method,
        path,
        expect,
        lua=None,
        body=None,
        headers=None,
        task=None,
        probe=False,
        title="",
        neighbour=None,
    ):
        self.name = name
        self.method = method
        self.path = path
        self.expect = expect  # dict that must be a subset of the JSON reply
        self.lua = lua  # wrk script in bench/lua (POST bodies / headers)
        self.body = body  # body for the one-off correctness check
        self.headers = headers or {}  # headers for the one-off correctness check
        self.task = task  # /stats counter a background task increments
        self.probe = probe  # measure GET /ping latency while loading
        self.title = title
        self.neighbour = neighbour  # (path, connections): a second wrk that loads it meanwhile


SCENARIOS = [
    Scenario("hello", "GET", "/hello", {"message": "Hello, World!"}, title="1 GET /hello"),
    Scenario(
        "items",
        "GET",
        "/items/42?q=test&limit=5",
        {"item_id": 42, "q": "test", "limit": 5},
        title="2 path+query params",
    ),
    Scenario(
        "create-item",
        "POST",
        "/items",
        {"created": "Widget", "price": 9.99},
        lua="post_item.lua",
        body=ITEM_BODY,
        headers=JSON_CT,
        title="3 POST Struct body",
    ),
    Scenario(
        "orders",
        "POST",
        "/orders",
        {"customer": "Alice", "total_items": 3},
        lua="post_order.lua",
        body=ORDER_BODY,
        headers=JSON_CT,
        title="4 POST nested body",
    ),
    Scenario(
        "user",
        "GET",
        "/users/1",
        {"id": 1, "username": "user_1", "email": "user_1@example.com"},
        title="5 response_model",
    ),
    Scenario(
        "auth",
        "GET",
        "/auth",
        {"authenticated": True},
        lua="auth.lua",
        headers={"x-api-key": "secret"},
        title="6 Header + HTTPException",
    ),
    Scenario("profile", "GET", "/users/1/profile", {"id": 1, "source": "db"}, title="7 Depends(@injectable)"),
    Scenario(
        "search",
        "GET",
        "/search?q=foo&page=1&size=20&active=true",
        {"q": "foo", "page": 1, "size": 20, "active": True, "tags": []},
        title="8 four query params",
    ),
    Scenario("hello-async", "GET", "/hello-async", {"message": "Hello, World!"}, title="9 async def hello"),
    Scenario(
        "task-sync",
        "POST",
        "/task-sync",
        {"ok": True},
        lua="post_empty.lua",
        body="",
        task="sync",
        title="10 BackgroundTasks sync",
    ),
    Scenario("notask", "POST", "/notask", {"ok": True}, lua="post_empty.lua", body="", title="11 same, no task"),
    Scenario(
        "task-async",
        "POST",
        "/task-async",
        {"ok": True},
        lua="post_empty.lua",
        body="",
        task="async",
        title="12 BackgroundTasks async",
    ),
    Scenario(
        "task-slow",
        "POST",
        "/task-slow",
        {"ok": True},
        lua="post_empty.lua",
        body="",
        task="slow_done",
        probe=True,
        title="13 50 ms sync task + /ping probe",
    ),
    Scenario(
        "blocking-neighbour",
        "GET",
        "/hello",
        {"message": "Hello, World!"},
        neighbour=("/block", 4),
        title="14 /hello while 4 connections call a def endpoint that sleeps 50 ms",
    ),
]
SCENARIO_BY_NAME = {s.name: s for s in SCENARIOS}
QUICK_SCENARIOS = ["hello", "hello-async", "items", "task-sync", "notask"]

# name -> (venv, module served by uvicorn from bench/apps)
CONTENDERS = {
    "raw": ("fastapi", "raw_app"),
    "ours": ("ours", "tachyon_app"),
    "upstream": ("upstream", "tachyon_app"),
    "fastapi": ("fastapi", "fastapi_app"),
    # The cost of observability (docs/observability.md): ours without the runner's statistics, and ours with
    # statistics, Prometheus metrics and the dashboard mounted. Not in the default set: ask for them.
    "ours-bare": ("ours", "tachyon_bare"),
    "ours-observed": ("ours", "tachyon_observed"),
    # Every `def` endpoint on the event loop (Tachyon(sync_to_thread=False)): the opt-in's figures.
    "ours-inline": ("ours", "tachyon_inline"),
    # Without gc.freeze() after startup (Tachyon(gc_freeze=False)): what the frozen heap does to the p99.
    "ours-nofreeze": ("ours", "tachyon_nofreeze"),
    # Task status (docs/task-status.md): an app that serves it, where the scenarios' tasks are fire-and-forget
    # (ours-held), and one that keeps a record for every task, Tachyon(task_status=True) (ours-status).
    "ours-held": ("ours", "tachyon_held"),
    "ours-status": ("ours", "tachyon_status"),
}
CONTENDER_ORDER = ["raw", "ours", "upstream", "fastapi"]
EXTRA_CONTENDERS = ["ours-bare", "ours-observed", "ours-inline", "ours-nofreeze", "ours-held", "ours-status"]

VERSION_SNIPPET = r"""
import json, sys, importlib.metadata as md
out = {"python": sys.version.split()[0]}
for dist in ("tachyon-api", "fastapi", "pydantic", "starlette", "uvicorn",
             "uvloop", "httptools", "msgspec", "orjson"):
    try:
        out[dist] = md.version(dist)
    except Exception:
        pass
try:
    import tachyon_api, os
    out["tachyon_api file"] = os.path.realpath(tachyon_api.__file__)
except Exception as exc:
    out["tachyon_api file"] = "not importable: %s" % (exc,)
print(json.dumps(out))
"""


class SetupError(Exception):
    pass


def log(msg=""):
    print(msg, flush=True)


def warn(msg):
    print("WARNING: " + msg, flush=True)


def clean_env():
    env = dict(os.environ)
    for var in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP"):
        env.pop(var, None)
    return env


# ---------------------------------------------------------------------------
# Installation
# ---------------------------------------------------------------------------
def ensure_wrk():
    path = shutil.which("wrk")
    if path:
        return path
    log("wrk not found on PATH: installing it with apt-get ...")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    rc = subprocess.call(["apt-get", "install", "-y", "wrk"], env=env)
    if rc != 0:
        subprocess.call(["apt-get", "update"], env=env)
        subprocess.call(["apt-get", "install", "-y", "wrk"], env=env)
    path = shutil.which("wrk")
    if not path:
        raise SetupError("could not install wrk (apt-get install -y wrk failed)")
    return path


def venv_python(name):
    return VENVS / name / "bin" / "python"


def import_check(python, modules, env=None, inside=None):
    """True if `modules` import with `python` (from bench/apps like the server).

    With `inside`, tachyon_api must also come from that directory."""
    code = "import " + ", ".join(modules)
    if inside is not None:
        code += "\nimport os, tachyon_api\np = os.path.realpath(tachyon_api.__file__)\nassert p.startswith(%r), p" % (
            str(Path(inside).resolve()) + os.sep
        )
    res = subprocess.run(
        [str(python), "-c", code],
        cwd=APPS,
        env=env or clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    return res.returncode == 0, res.stdout.strip()


def pip_install(python, packages):
    cmd = [str(python), "-m", "pip", "install", "--disable-pip-version-check", "-q", *packages]
    log("  $ " + shlex.join(cmd))
    return subprocess.call(cmd, env=clean_env()) == 0


def ensure_venv(name, packages, modules, inside=None):
    py = venv_python(name)
    if py.exists():
        ok, _ = import_check(py, modules, inside=inside)
        if ok:
            return py
        log("venv bench/.venvs/{} is incomplete: (re)installing {}".format(name, " ".join(packages)))
    else:
        log(f"creating venv bench/.venvs/{name} ...")
        VENVS.mkdir(parents=True, exist_ok=True)
        rc = subprocess.call([sys.executable, "-m", "venv", str(VENVS / name)], env=clean_env())
        if rc != 0 or not py.exists():
            raise SetupError("python -m venv %s failed" % (VENVS / name))
    if not pip_install(py, packages):
        raise SetupError(f"pip install into bench/.venvs/{name} failed")
    ok, out = import_check(py, modules, inside=inside)
    if not ok:
        raise SetupError(f"bench/.venvs/{name}: import check failed after install:\n{out}")
    return py


def dist_version(python, dist, env=None):
    res = subprocess.run(
        [str(python), "-c", f"import importlib.metadata as m; print(m.version({dist!r}))"],
        cwd=APPS,
        env=env or clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    return res.stdout.strip() if res.returncode == 0 else None


def ensure_uvicorn(python, name, uv_pin):
    """Put the same uvicorn version in every venv (the server layer is not
    what we compare: uvicorn 0.35, which tachyon-api 1.3 pins, is ~20% slower
    than 0.54 on the same raw ASGI app)."""
    if not uv_pin or uv_pin == "native":
        return
    have = dist_version(python, "uvicorn")
    if have == uv_pin:
        return
    log(f"bench/.venvs/{name}: uvicorn {have} -> {uv_pin} (same server for every contender)")
    # A resolver complaint about the framework's own uvicorn pin is expected here.
    pip_install(python, [f"uvicorn=={uv_pin}"])
    have = dist_version(python, "uvicorn")
    if have != uv_pin:
        warn(f"bench/.venvs/{name}: could not install uvicorn=={uv_pin} (has {have})")


def setup_ours(uv_pin):
    """Return (python, env, how) for our package.

    Preferred: bench/.venvs/ours with `pip install -e <repo>`.  Fallback (the
    package is not installable yet): the repo .venv python with
    PYTHONPATH=<repo root>."""
    if (ROOT / "pyproject.toml").exists() or (ROOT / "setup.py").exists():
        try:
            # The metrics extra: the ours-observed contender mounts Prometheus metrics.
            py = ensure_venv(
                "ours",
                ["-e", f"{ROOT}[metrics]", *SERVER_PKGS],
                ["uvicorn", "uvloop", "httptools", "tachyon_api", "prometheus_client"],
                inside=ROOT,
            )
            ensure_uvicorn(py, "ours", uv_pin)
            return py, clean_env(), "bench/.venvs/ours (pip install -e .)"
        except SetupError as exc:
            warn(f"ours: editable install failed, falling back to PYTHONPATH: {exc}")
    else:
        warn(
            f"ours: no pyproject.toml at the repo root yet: using the fallback (repo .venv python + PYTHONPATH={ROOT})"
        )
    py = ROOT / ".venv" / "bin" / "python"
    if not py.exists():
        py = Path(sys.executable)
    env = clean_env()
    env["PYTHONPATH"] = str(ROOT)
    ok, out = import_check(py, ["uvicorn", "uvloop", "httptools", "tachyon_api"], env=env, inside=ROOT)
    if not ok:
        warn(f"ours: `import tachyon_api` from {ROOT} fails: {out.splitlines()[-1:] or out}")
    have = dist_version(py, "uvicorn", env)
    if uv_pin and uv_pin != "native" and have != uv_pin:
        warn(f"ours (fallback {py}) has uvicorn {have}, the other contenders get {uv_pin}")
    return py, env, f"fallback: {py} with PYTHONPATH={ROOT}"


def setup_contenders(names, uv_pin):
    """Return {name: dict(python, env, module, how)} for the wanted contenders."""
    out = {}
    cache = {}
    for name in names:
        venv, module = CONTENDERS[name]
        try:
            if venv == "ours":
                if venv not in cache:
                    cache[venv] = setup_ours(uv_pin)
                py, env, how = cache[venv]
            elif venv == "upstream":
                if venv not in cache:
                    cache[venv] = ensure_venv(
                        "upstream", [UPSTREAM_SPEC, *SERVER_PKGS], ["uvicorn", "uvloop", "httptools", "tachyon_api"]
                    )
                    ensure_uvicorn(cache[venv], "upstream", uv_pin)
                py, env, how = cache[venv], clean_env(), "bench/.venvs/upstream"
            else:
                if venv not in cache:
                    cache[venv] = ensure_venv(
                        "fastapi",
                        ["fastapi", "msgspec", *SERVER_PKGS],
                        ["uvicorn", "uvloop", "httptools", "fastapi", "msgspec"],
                    )
                    ensure_uvicorn(cache[venv], "fastapi", uv_pin)
                py, env, how = cache[venv], clean_env(), "bench/.venvs/fastapi"
        except SetupError as exc:
            warn(f"{name}: setup failed, all its cells will be FAIL: {exc}")
            out[name] = {"python": None, "env": None, "module": module, "how": "setup failed", "error": str(exc)}
            continue
        res = subprocess.run(
            [str(py), "-c", VERSION_SNIPPET],
            cwd=APPS,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            versions = json.loads(res.stdout.strip().splitlines()[-1])
        except Exception:
            versions = {"error": res.stdout.strip()[-300:]}
        if name in ("raw", "fastapi"):
            versions.pop("tachyon_api file", None)
        out[name] = {"python": py, "env": env, "module": module, "how": how, "versions": versions}
    for dist in ("uvicorn", "uvloop", "httptools"):
        seen = {n: s["versions"].get(dist) for n, s in out.items() if s.get("versions")}
        if len(set(seen.values())) > 1:
            warn(
                "contenders run different {} versions: {}".format(
                    dist, ", ".join("{}={}".format(*kv) for kv in seen.items())
                )
            )
    return out


# ---------------------------------------------------------------------------
# Servers and HTTP helpers
# ---------------------------------------------------------------------------
def pin(cpu):
    if cpu is None or not shutil.which("taskset"):
        return []
    return ["taskset", "-c", str(cpu)]


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_request(port, method, path, body=None, headers=None, timeout=10.0):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        if isinstance(body, str):
            body = body.encode()
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


class Server:
    def __init__(self, name, spec, cpu):
        self.name = name
        self.spec = spec
        self.cpu = cpu
        self.proc = None
        self.port = None
        self.error = None
        self.cmd = None
        self.logfile = LOGS / (f"{name}.log")

    def start(self, append=False):
        if self.spec.get("python") is None:
            self.error = self.spec.get("error", "setup failed")
            return
        self.port = free_port()
        self.cmd = [
            *pin(self.cpu),
            str(self.spec["python"]),
            "-m",
            "uvicorn",
            f"{self.spec['module']}:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            "1",
            "--loop",
            "uvloop",
            "--http",
            "httptools",
            "--log-level",
            "error",
            "--no-access-log",
        ]
        LOGS.mkdir(parents=True, exist_ok=True)
        self._log = open(self.logfile, "a" if append else "w")  # noqa: SIM115 - the server's log, open while it runs
        self.proc = subprocess.Popen(
            self.cmd,
            cwd=APPS,
            env=self.spec["env"],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )

    def wait_ready(self, timeout=30.0):
        if self.proc is None:
            return False
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.error = f"server exited with code {self.proc.returncode}: {self.log_tail()}"
                return False
            try:
                http_request(self.port, "GET", "/hello", timeout=2.0)
                return True  # any HTTP answer means the port answers
            except (OSError, http.client.HTTPException):
                time.sleep(0.1)
        self.error = f"port {self.port} did not answer within {timeout:.0f} s: {self.log_tail()}"
        return False

    def log_tail(self, n=8):
        try:
            lines = self.logfile.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return " | ".join(lines[-n:])

    def restart(self, kill=False):
        self.stop(kill=kill)
        self.start(append=True)
        return self.wait_ready()

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def rss_kib(self):
        return read_status_kib(self.proc.pid, "VmRSS")

    def stop(self, kill=False):
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                # the process group we created for it (start_new_session)
                os.killpg(self.proc.pid, signal.SIGKILL if kill else signal.SIGTERM)
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
            except ProcessLookupError:
                pass
        try:
            self._log.close()
        except Exception:
            pass


def read_status_kib(pid, field):
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return None


def get_stats(port):
    try:
        status, data = http_request(port, "GET", "/stats", timeout=10.0)
        if status == 200:
            obj = json.loads(data)
            if isinstance(obj, dict):
                return obj
    except Exception:
        pass
    return None


def same(expected, got):
    """Deep equality that does not accept 1 for True or "42" for 42."""
    if isinstance(expected, bool) or isinstance(got, bool):
        return type(expected) is type(got) and expected == got
    if isinstance(expected, (int, float)) and isinstance(got, (int, float)):
        return abs(expected - got) < 1e-9 and isinstance(got, type(expected))
    if isinstance(expected, dict):
        return isinstance(got, dict) and all(k in got and same(v, got[k]) for k, v in expected.items())
    if isinstance(expected, list):
        return (
            isinstance(got, list)
            and len(expected) == len(got)
            and all(same(a, b) for a, b in zip(expected, got, strict=False))
        )
    return type(expected) is type(got) and expected == got


def check_scenario(server, sc):
    """One request per scenario before measuring.

    Returns (ok, reason, notes); notes are non-fatal observations."""
    notes = []
    before = get_stats(server.port) if sc.task else None
    try:
        status, data = http_request(server.port, sc.method, sc.path, body=sc.body, headers=sc.headers, timeout=10.0)
    except Exception as exc:
        return False, f"request failed: {exc}", notes
    snippet = data[:160].decode("utf-8", "replace")
    if status != 200:
        return False, f"HTTP {status}, body {snippet}", notes
    try:
        got = json.loads(data)
    except ValueError:
        return False, f"body is not JSON: {snippet}", notes
    if not same(sc.expect, got):
        return (
            False,
            "expected {} in the body, got {}".format(json.dumps(sc.expect, separators=(",", ":")), snippet),
            notes,
        )

    if sc.neighbour:
        try:
            st, body = http_request(server.port, "GET", sc.neighbour[0], timeout=10.0)
        except Exception as exc:
            st, body = None, str(exc).encode()
        if st != 200:
            return (
                False,
                "the neighbour {} answered {}: {}".format(sc.neighbour[0], st, body[:100].decode("utf-8", "replace")),
                notes,
            )
    if sc.name == "auth":
        for hdrs, want, label in (
            ({"x-api-key": "wrong"}, (403,), "wrong key"),
            ({}, (400, 401, 403, 422), "missing header"),
        ):
            try:
                st, body = http_request(server.port, "GET", "/auth", headers=hdrs)
            except Exception as exc:
                st, body = None, str(exc).encode()
            if st not in want:
                notes.append(
                    "/auth with {} answered {} (expected {}): {}".format(
                        label, st, "/".join(map(str, want)), body[:100].decode("utf-8", "replace")
                    )
                )
    if sc.task:
        if before is None:
            notes.append("GET /stats unavailable: cannot verify that the background task runs")
        else:
            deadline = time.monotonic() + 3.0
            after = before
            while time.monotonic() < deadline:
                after = get_stats(server.port) or before
                if after.get(sc.task, 0) > before.get(sc.task, 0):
                    break
                time.sleep(0.05)
            if not after.get(sc.task, 0) > before.get(sc.task, 0):
                return (
                    False,
                    f"200 OK but the background task never ran (/stats {sc.task} stayed {before.get(sc.task)})",
                    notes,
                )
    return True, "", notes


# ---------------------------------------------------------------------------
# wrk
# ---------------------------------------------------------------------------
_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def to_ms(value, unit):
    return float(value) * _UNITS[unit]


def parse_wrk(text):
    res = {"rps": 0.0, "requests": 0, "non2xx": 0, "errors": 0, "timeouts": 0}
    m = re.search(r"Requests/sec:\s+([\d.]+)", text)
    if m:
        res["rps"] = float(m.group(1))
    m = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)", text)
    if m:
        res["requests"] = int(m.group(1))
    for pct, val, unit in re.findall(r"^\s*(50|75|90|99)%\s+([\d.]+)(us|ms|s|m)\s*$", text, re.M):
        res[f"p{pct}"] = to_ms(val, unit)
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    if m:
        res["non2xx"] = int(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if m:
        c, r, w, t = map(int, m.groups())
        res["errors"] = c + r + w + t
        res["timeouts"] = t
    if not res["requests"]:
        for k in ("p50", "p75", "p90", "p99"):
            res.pop(k, None)  # wrk prints 0.00us when nothing completed
    return res


def wrk_cmd(args, port, path, duration, lua=None, connections=None, extra=()):
    cmd = [
        *pin(args.client_cpu),
        args.wrk,
        "-t1",
        f"-c{connections or args.connections}",
        f"-d{duration}s",
        "--timeout",
        f"{args.wrk_timeout}s",
        "--latency",
    ]
    if lua:
        cmd += ["-s", str(LUA / lua)]
    cmd.append(f"http://127.0.0.1:{port}{path}")
    return cmd + list(extra)


def run_wrk(cmd, timeout):
    res = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout)
    out = parse_wrk(res.stdout)
    out["raw"] = res.stdout
    return out


class PingProbe(threading.Thread):
    """Low-rate latency probe: one GET /ping every `interval` s on one
    keep-alive connection (stdlib http.client), recording each latency."""

    def __init__(self, port, interval=0.05):
        super().__init__(daemon=True)
        self.port = port
        self.interval = interval
        self.stop_event = threading.Event()
        self.latencies = []
        self.errors = 0

    def run(self):
        conn = None
        while not self.stop_event.is_set():
            t0 = time.perf_counter()
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
                conn.request("GET", "/ping")
                resp = conn.getresponse()
                resp.read()
                dt = time.perf_counter() - t0
                if resp.status == 200:
                    self.latencies.append(dt * 1000.0)
                else:
                    self.errors += 1
            except Exception:
                self.errors += 1
                if conn is not None:
                    conn.close()
                conn = None
            rest = self.interval - (time.perf_counter() - t0)
            if rest > 0:
                self.stop_event.wait(rest)
        if conn is not None:
            conn.close()


def percentile(values, pct):
    if not values:
        return None
    vals = sorted(values)
    k = max(0, min(len(vals) - 1, round(pct / 100.0 * len(vals) + 0.5) - 1))
    return vals[k]


def settle(server, timeout):
    """Wait until the slow background tasks have drained (slow_added == slow_done)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        st = get_stats(server.port)
        if st is None:
            time.sleep(1.0)
            return None
        if st.get("slow_added", 0) <= st.get("slow_done", 0):
            return time.monotonic() - t0
        time.sleep(0.25)
    return float("inf")


def measure(args, server, sc):
    wtimeout = args.duration + args.wrk_timeout + 60
    run_wrk(wrk_cmd(args, server.port, sc.path, args.warmup, sc.lua), wtimeout)  # warm-up
    # Requests still queued from the warm-up must not eat the measurement
    # (e.g. a server whose event loop is blocked by 50 ms tasks): wait until
    # it answers again.
    try:
        http_request(server.port, "GET", "/ping", timeout=60.0)
    except Exception:
        pass
    probe = None
    if sc.probe:
        probe = PingProbe(server.port)
    neighbour = None
    if sc.neighbour:  # keeps loading its path from before the measurement starts to after it ends
        path, conns = sc.neighbour
        neighbour = subprocess.Popen(
            wrk_cmd(args, server.port, path, args.duration + 2, connections=conns),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        time.sleep(0.5)
    cmd = wrk_cmd(args, server.port, sc.path, args.duration, sc.lua)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if probe:
        time.sleep(0.2)
        probe.start()
    try:
        out, _ = proc.communicate(timeout=wtimeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    if probe:
        probe.stop_event.set()
        probe.join(timeout=35)
    res = parse_wrk(out)
    res["raw"] = out
    if neighbour is not None:
        try:
            side, _ = neighbour.communicate(timeout=wtimeout)
        except subprocess.TimeoutExpired:
            neighbour.kill()
            side, _ = neighbour.communicate()
        side = parse_wrk(side)
        res["neighbour_rps"] = side["rps"]
        res["neighbour_p99"] = side.get("p99")
    if probe:
        res["ping_n"] = len(probe.latencies)
        res["ping_errors"] = probe.errors
        res["ping_p50"] = percentile(probe.latencies, 50)
        res["ping_p99"] = percentile(probe.latencies, 99)
    if sc.task == "slow_done":
        st = get_stats(server.port)
        if st is not None:
            res["backlog"] = max(0, st.get("slow_added", 0) - st.get("slow_done", 0))
        res["drain_s"] = settle(server, args.settle_timeout)
    return res


# ---------------------------------------------------------------------------
# Reporting
# ---------------------------------------------------------------------------
def one_line(text, limit=160):
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def fmt_rps(v):
    return f"{v:,.0f}" if v is not None else "-"


def fmt_ms(v):
    if v is None:
        return "-"
    if v >= 100:
        return f"{v:.0f} ms"
    if v >= 10:
        return f"{v:.1f} ms"
    return f"{v:.2f} ms"


def fmt_ratio(a, b):
    if a is None or not b:
        return "-"
    return "%.2fx" % (a / b)


def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def machine_info(args):
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        nproc = subprocess.run(["nproc"], stdout=subprocess.PIPE, text=True).stdout.strip()
    except OSError:
        nproc = str(os.cpu_count())
    try:
        wrkv = (
            subprocess.run([args.wrk, "-v"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            .stdout.strip()
            .splitlines()[0]
        )
    except Exception:
        wrkv = "?"
    try:
        rev = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--", "tachyon_api"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        ).stdout.strip()
        rev = (rev or "no commit yet") + (" (tachyon_api/ has uncommitted changes)" if dirty else "")
    except OSError:
        rev = "?"
    try:
        load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        load = "?"
    return {
        "load": load,
        "nproc": nproc,
        "cpu": cpu,
        "kernel": platform.release(),
        "python": f"{platform.python_version()} ({sys.executable})",
        "wrk": wrkv,
        "git": rev,
    }


def command_line():
    script = os.path.relpath(os.path.abspath(sys.argv[0]), os.getcwd())
    return shlex.join(["python", script, *sys.argv[1:]])


def header_md(args, info, specs, mode):
    lines = [
        f"# tachyon_api benchmark ({mode})",
        "",
        "- date: {}".format(datetime.datetime.now().strftime("%Y-%m-%d %H:%M:%S")),
        f"- command: `{command_line()}` (cwd {os.getcwd()})",
        "- machine: nproc={}, CPU: {}, kernel {}".format(info["nproc"], info["cpu"], info["kernel"]),
        "- harness python: {}".format(info["python"]),
        "- load average (1/5/15 min) before starting: {} (the servers and wrk share the 2 cores with "
        "nothing else only if this is near 0)".format(info["load"]),
        "- {}; repo HEAD {}".format(info["wrk"], info["git"]),
    ]
    if mode == "throughput":
        lines += [
            (
                f"- settings: {args.rounds} round(s) x {args.duration} s (after {args.warmup} s warm-up), wrk -t1 "
                f"-c{args.connections} --timeout {args.wrk_timeout}s --latency, server on CPU {args.server_cpu}, "
                f"wrk on CPU {args.client_cpu}; contenders alternate round-robin per scenario"
            ),
        ]
    lines += ["", "Contenders:", ""]
    for name, spec in specs.items():
        v = dict(spec.get("versions") or {})
        tfile = v.pop("tachyon_api file", None)
        vs = ", ".join(f"{k} {val}" for k, val in v.items())
        lines.append(
            "- **{}** (`{}`): {}; {}{}".format(
                name, spec["module"], spec["how"], vs, (f"; tachyon_api from {tfile}") if tfile else ""
            )
        )
    return lines


def report(args, info, specs, scenarios, contenders, results, failures, notes):
    lines = header_md(args, info, specs, "throughput")
    lines += [
        "",
        "## Results (median over rounds)",
        "",
        "| scenario | contender | req/s | p99 | vs raw | vs upstream | req/s per round |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    medians = {}
    for sc in scenarios:
        for c in contenders:
            runs = results.get((sc.name, c), [])
            if (sc.name, c) in failures or not runs:
                continue
            medians[(sc.name, c)] = (med([r["rps"] for r in runs]), med([r.get("p99") for r in runs]))
    for sc in scenarios:
        raw = medians.get((sc.name, "raw"), (None, None))[0]
        up = medians.get((sc.name, "upstream"), (None, None))[0]
        for c in contenders:
            label = f"{sc.name} `{sc.method} {sc.path}`"
            if (sc.name, c) in failures:
                lines.append(
                    "| {} | {} | FAIL | FAIL | - | - | {} |".format(
                        label, c, one_line(failures[(sc.name, c)], 120).replace("|", "/")
                    )
                )
                continue
            if (sc.name, c) not in medians:
                lines.append(f"| {label} | {c} | - | - | - | - | not run |")
                continue
            runs = results[(sc.name, c)]
            rps, p99 = medians[(sc.name, c)]
            flag = ""
            if any(r["non2xx"] or r["errors"] or not r["rps"] for r in runs):
                flag = " (!)"
            lines.append(
                "| {} | {} | {}{} | {} | {} | {} | {} |".format(
                    label,
                    c,
                    fmt_rps(rps),
                    flag,
                    fmt_ms(p99),
                    fmt_ratio(rps, raw),
                    fmt_ratio(rps, up),
                    " / ".join(fmt_rps(r["rps"]) for r in runs),
                )
            )

    # Derived numbers.
    names = {sc.name for sc in scenarios}
    derived = []
    if {"task-sync", "notask"} <= names or {"task-async", "notask"} <= names:
        derived += [
            "",
            "### Background-task overhead (task endpoint req/s / `notask` req/s; target >= 0.80)",
            "",
            "| contender | task-sync / notask | task-async / notask |",
            "|---|---:|---:|",
        ]
        for c in contenders:
            nt = medians.get(("notask", c), (None,))[0]
            ts = medians.get(("task-sync", c), (None,))[0]
            ta = medians.get(("task-async", c), (None,))[0]
            derived.append(f"| {c} | {fmt_ratio(ts, nt)} | {fmt_ratio(ta, nt)} |")
    if {"ours-bare", "ours-observed"} <= set(contenders):
        derived += [
            "",
            "### Observability overhead (ours-observed req/s / ours-bare req/s; target >= 0.95)",
            "",
            "| scenario | ours-bare | ours-observed | ratio |",
            "|---|---:|---:|---:|",
        ]
        for sc in scenarios:
            bare = medians.get((sc.name, "ours-bare"), (None,))[0]
            observed = medians.get((sc.name, "ours-observed"), (None,))[0]
            derived.append(f"| {sc.name} | {fmt_rps(bare)} | {fmt_rps(observed)} | {fmt_ratio(observed, bare)} |")
    if {"hello", "hello-async"} <= names:
        derived += [
            "",
            "### hello vs hello-async (ratio to raw)",
            "",
            "| contender | hello / raw | hello-async / raw |",
            "|---|---:|---:|",
        ]
        for c in contenders:
            h = medians.get(("hello", c), (None,))[0]
            ha = medians.get(("hello-async", c), (None,))[0]
            derived.append(
                "| {} | {} | {} |".format(
                    c,
                    fmt_ratio(h, medians.get(("hello", "raw"), (None,))[0]),
                    fmt_ratio(ha, medians.get(("hello-async", "raw"), (None,))[0]),
                )
            )
    if "blocking-neighbour" in names:
        derived += [
            "",
            (
                f"### blocking-neighbour: /hello at {args.connections} connections while 4 connections call a "
                "`def` endpoint sleeping 50 ms (medians; target: /hello p99 < 10 ms)"
            ),
            "",
            "| contender | /hello req/s | /hello p99 | /block req/s | /block p99 |",
            "|---|---:|---:|---:|---:|",
        ]
        for c in contenders:
            runs = results.get(("blocking-neighbour", c), [])
            if ("blocking-neighbour", c) in failures or not runs:
                derived.append(f"| {c} | FAIL | - | - | - |")
                continue
            derived.append(
                "| {} | {} | {} | {} | {} |".format(
                    c,
                    fmt_rps(med([r["rps"] for r in runs])),
                    fmt_ms(med([r.get("p99") for r in runs])),
                    fmt_rps(med([r.get("neighbour_rps") for r in runs])),
                    fmt_ms(med([r.get("neighbour_p99") for r in runs])),
                )
            )
    if "task-slow" in names:
        derived += [
            "",
            "### task-slow: GET /ping latency while /task-slow is loaded (medians over rounds)",
            "",
            (
                "| contender | /task-slow req/s | /ping p50 | /ping p99 | /ping samples (errors) "
                "| tasks pending at end of run | backlog drained after |"
            ),
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for c in contenders:
            runs = results.get(("task-slow", c), [])
            if ("task-slow", c) in failures or not runs:
                derived.append(f"| {c} | FAIL | - | - | - | - | - |")
                continue
            drains = [r.get("drain_s") for r in runs]
            drain = med(drains)
            backlog = med([r.get("backlog") for r in runs])
            derived.append(
                "| {} | {} | {} | {} | {} ({}) | {} | {} |".format(
                    c,
                    fmt_rps(med([r["rps"] for r in runs])),
                    fmt_ms(med([r.get("ping_p50") for r in runs])),
                    fmt_ms(med([r.get("ping_p99") for r in runs])),
                    sum(r.get("ping_n", 0) for r in runs),
                    sum(r.get("ping_errors", 0) for r in runs),
                    "n/a" if backlog is None else f"{backlog:,.0f}",
                    "n/a"
                    if drain is None
                    else (
                        f"not within {args.settle_timeout}s (server restarted)"
                        if drain == float("inf")
                        else f"{drain:.1f} s"
                    ),
                )
            )
    lines += derived
    if any(r["non2xx"] or r["errors"] or not r["rps"] for runs in results.values() for r in runs):
        lines += [
            "",
            (
                "`(!)`: some responses were non-2xx, hit socket errors/timeouts, or no request "
                "completed in a round (see notes)."
            ),
        ]
    lines.append("")
    if failures or notes:
        lines += ["## Warnings and notes", ""]
        for (s, c), why in failures.items():
            lines.append(f"- FAIL {c} / {s}: {one_line(why, 400)}")
        for n in notes:
            lines.append("- " + n)
        lines.append("")
    return "\n".join(lines)


def write_results(text, data, stem):
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    (RESULTS / (f"{stem}.md")).write_text(text)
    (RESULTS / ("{}-{}.md".format(stem.replace("latest", "run"), stamp))).write_text(text)
    (RESULTS / (f"{stem}.json")).write_text(json.dumps(data, indent=1, default=str))


# ---------------------------------------------------------------------------
# Modes
# ---------------------------------------------------------------------------
def start_servers(specs, cpu):
    servers = {name: Server(name, spec, cpu) for name, spec in specs.items()}
    for s in servers.values():
        s.start()
    for name, s in servers.items():
        if s.proc is not None and s.wait_ready():
            log(f"  {name:<9} ready on port {s.port} (pid {s.proc.pid})")
        else:
            warn(f"{name}: server not available: {s.error}")
    return servers


def throughput_mode(args, specs, info):
    scenarios = [SCENARIO_BY_NAME[n] for n in args.scenarios]
    contenders = list(specs)
    failures, notes = {}, []
    results = {}
    log(f"starting servers (uvicorn, 1 worker, pinned to CPU {args.server_cpu}) ...")
    servers = start_servers(specs, args.server_cpu)
    try:
        log("checking every scenario once per contender ...")
        for c in contenders:
            srv = servers[c]
            for sc in scenarios:
                if not srv.alive():
                    failures[(sc.name, c)] = "server not running: %s" % (srv.error or srv.log_tail())
                    continue
                ok, why, extra = check_scenario(srv, sc)
                for n in extra:
                    notes.append(f"{c} / {sc.name}: {n}")
                    warn(f"{c} / {sc.name}: {n}")
                if not ok:
                    failures[(sc.name, c)] = why
                    warn(f"{c} FAILS scenario {sc.name}: {why}")
        todo = sum(1 for sc in scenarios for c in contenders if (sc.name, c) not in failures)
        est = todo * args.rounds * (args.warmup + args.duration + 0.3)
        log(f"measuring {todo} cells x {args.rounds} round(s), about {est:.0f} s ...")
        for rnd in range(args.rounds):
            for sc in scenarios:
                k = rnd % len(contenders)
                order = contenders[k:] + contenders[:k]  # alternate who goes first
                for c in order:
                    if (sc.name, c) in failures:
                        continue
                    srv = servers[c]
                    if not srv.alive():
                        failures[(sc.name, c)] = f"server died: {srv.log_tail()}"
                        warn(f"{c}: server died during {sc.name}")
                        continue
                    res = measure(args, srv, sc)
                    results.setdefault((sc.name, c), []).append(res)
                    extra = ""
                    if res["non2xx"] or res["errors"]:
                        extra = f"  non-2xx={res['non2xx']} socket-errors={res['errors']}"
                        notes.append(
                            f"{c} / {sc.name} round {rnd + 1}: {res['non2xx']} non-2xx responses, "
                            f"{res['errors']} socket errors ({res['timeouts']} timeouts) out of "
                            f"{res['requests']} requests"
                        )
                    if sc.probe:
                        extra += (
                            f"  /ping p50={fmt_ms(res.get('ping_p50'))} p99={fmt_ms(res.get('ping_p99'))} "
                            f"(n={res.get('ping_n', 0)})"
                        )
                    if res.get("backlog") is not None:
                        extra += f"  pending tasks {res['backlog']:,}"
                    if res.get("drain_s") is not None:
                        extra += ", drained in " + (
                            f"> {args.settle_timeout}s" if res["drain_s"] == float("inf") else f"{res['drain_s']:.1f} s"
                        )
                    log(
                        f"  round {rnd + 1}  {sc.name:<12} {c:<9} {fmt_rps(res['rps']):>10} req/s  "
                        f"p99 {fmt_ms(res.get('p99')):>9}{extra}"
                    )
                    if res["rps"] == 0:
                        notes.append(
                            f"{c} / {sc.name} round {rnd + 1}: no request completed during the {args.duration} s "
                            f"run (wrk timeout {args.wrk_timeout} s)"
                        )
                    if res.get("drain_s") == float("inf"):
                        notes.append(
                            f"{c} / {sc.name} round {rnd + 1}: {res.get('backlog') or 0:,} background tasks still "
                            f"pending after {args.settle_timeout} s: server restarted so the next "
                            "measurement starts clean"
                        )
                        log(
                            f"  {c}: background backlog not drained after {args.settle_timeout} s, "
                            "restarting the server"
                        )
                        if not srv.restart(kill=True):
                            warn(f"{c}: restart failed: {srv.error}")
    finally:
        for s in servers.values():
            s.stop()
    for c in contenders:
        tail = servers[c].log_tail(3)
        if tail and "Traceback" in servers[c].logfile.read_text(errors="replace"):
            notes.append(f"{c}: its server log has tracebacks, see bench/results/logs/{c}.log")
    text = report(args, info, specs, scenarios, contenders, results, failures, notes)
    data = {
        "info": info,
        "command": command_line(),
        "settings": {
            k: getattr(args, k) for k in ("rounds", "duration", "warmup", "connections", "server_cpu", "client_cpu")
        },
        "contenders": {k: {kk: vv for kk, vv in v.items() if kk != "env"} for k, v in specs.items()},
        "failures": {"{}/{}".format(*k): v for k, v in failures.items()},
        "results": {
            "{}/{}".format(*k): [{kk: vv for kk, vv in r.items() if kk != "raw"} for r in v] for k, v in results.items()
        },
        "notes": notes,
    }
    write_results(text, data, "latest")
    return text


def wrk_count(args, server, count, connections):
    """Send about `count` requests with mixed.lua, then stop wrk (SIGINT)."""
    max_dur = int(count / 500) + 60  # generous upper bound, wrk is stopped earlier
    cmd = wrk_cmd(args, server.port, "/", max_dur, "mixed.lua", connections, ["--", str(count)])
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    reached = []

    def watch():
        for line in proc.stderr:
            if line.startswith("LIMIT_REACHED"):
                reached.append(line.strip())
                try:
                    proc.send_signal(signal.SIGINT)  # wrk prints its summary on SIGINT
                except ProcessLookupError:
                    pass

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    out = proc.stdout.read()
    proc.wait()
    t.join(timeout=5)
    res = parse_wrk(out)
    res["elapsed"] = time.monotonic() - t0
    res["limit_line"] = reached[0] if reached else "limit not reached (wrk ran its full duration)"
    return res


def memory_mode(args, specs, info):
    name = next(iter(specs))
    log(f"memory mode: contender {name}")
    servers = start_servers({name: specs[name]}, args.server_cpu)
    srv = servers[name]
    lines = header_md(args, info, {name: specs[name]}, "memory")
    try:
        if not srv.alive():
            raise SetupError(f"{name} server not available: {srv.error}")
        bad = []
        for sc in SCENARIOS:
            if sc.name == "task-slow":
                continue
            ok, why, _ = check_scenario(srv, sc)
            if not ok:
                bad.append(sc.name)
                warn(f"{name} FAILS scenario {sc.name}: {why} (its requests are still sent)")
        log(f"phase 1: {args.memory_first} mixed requests ...")
        r1 = wrk_count(args, srv, args.memory_first, args.memory_connections)
        time.sleep(1.0)
        rss1 = srv.rss_kib()
        log(f"  {r1['requests']} requests in {r1['elapsed']:.1f} s, VmRSS {rss1} KiB")
        log(f"phase 2: {args.memory_requests} more mixed requests ...")
        r2 = wrk_count(args, srv, args.memory_requests, args.memory_connections)
        time.sleep(1.0)
        if not srv.alive():
            raise SetupError(f"server died during phase 2: {srv.log_tail()}")
        rss2 = srv.rss_kib()
        hwm = read_status_kib(srv.proc.pid, "VmHWM")
        log(f"  {r2['requests']} requests in {r2['elapsed']:.1f} s, VmRSS {rss2} KiB")
    finally:
        srv.stop()
    ratio = rss2 / rss1
    verdict = "PASS" if ratio <= 1.10 else "FAIL"
    lines += [
        (
            f"- settings: wrk -t1 -c{args.memory_connections} with bench/lua/mixed.lua (12 routes in turn, task "
            f"endpoints included, not /task-slow); server on CPU {args.server_cpu}, wrk on CPU {args.client_cpu}"
        ),
        "",
        "| phase | requests (wrk count) | non-2xx | socket errors | req/s | VmRSS after |",
        "|---|---:|---:|---:|---:|---:|",
        (
            f"| warm-up | {r1['requests']} | {r1['non2xx']} | {r1['errors']} | {fmt_rps(r1['rps'])} | "
            f"{rss1 / 1024.0:.1f} MiB |"
        ),
        (
            f"| load | {r2['requests']} | {r2['non2xx']} | {r2['errors']} | {fmt_rps(r2['rps'])} | "
            f"{rss2 / 1024.0:.1f} MiB |"
        ),
        "",
        f"RSS ratio after/before: **{ratio:.3f}** (target <= 1.10): **{verdict}**; VmHWM {hwm / 1024.0:.1f} MiB",
        "",
    ]
    if bad:
        lines.append("Scenarios failing their check (their requests were non-2xx): {}".format(", ".join(bad)))
        lines.append("")
    text = "\n".join(lines)
    write_results(
        text,
        {
            "info": info,
            "command": command_line(),
            "contender": name,
            "rss_kib": [rss1, rss2],
            "hwm_kib": hwm,
            "ratio": ratio,
            "phases": [{k: v for k, v in r.items() if k != "raw"} for r in (r1, r2)],
        },
        "memory-latest",
    )
    return text


# ---------------------------------------------------------------------------
def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="1 round x 3 s on {}".format(",".join(QUICK_SCENARIOS)))
    p.add_argument(
        "--contenders",
        help="comma list from {} (default: {})".format(
            ",".join(CONTENDER_ORDER + EXTRA_CONTENDERS), ",".join(CONTENDER_ORDER)
        ),
    )
    p.add_argument("--scenarios", help="comma list (default: all 14; --quick: its 5)")
    p.add_argument("--rounds", type=int, help="rounds (default 3, --quick 1)")
    p.add_argument("--duration", type=int, help="seconds per measurement (default 8, --quick 3)")
    p.add_argument("--warmup", type=int, default=2, help="warm-up seconds before each measurement (2)")
    p.add_argument("--connections", type=int, default=64, help="wrk connections (64)")
    p.add_argument("--wrk-timeout", type=int, default=10, help="wrk --timeout in seconds (10)")
    p.add_argument(
        "--settle-timeout",
        type=int,
        default=20,
        help="max seconds to wait for /task-slow background work to drain; after that the server is restarted (20)",
    )
    p.add_argument("--server-cpu", type=int, default=0, help="CPU the servers are pinned to (0)")
    p.add_argument("--client-cpu", type=int, default=1, help="CPU wrk and the probe are pinned to (1)")
    p.add_argument(
        "--memory",
        action="store_true",
        help="memory mode: RSS after 10,000 then after 1,000,000 more requests (contender: ours)",
    )
    p.add_argument("--memory-first", type=int, default=10000, help="memory mode: first phase (10000)")
    p.add_argument("--memory-requests", type=int, default=1000000, help="memory mode: second phase (1000000)")
    p.add_argument("--memory-connections", type=int, default=64, help="memory mode: wrk connections (64)")
    p.add_argument(
        "--uvicorn",
        default=UVICORN_PIN,
        help=f"uvicorn version installed in every bench venv ({UVICORN_PIN}); 'native' keeps what "
        "pip resolved for each venv",
    )
    p.add_argument("--list", action="store_true", help="list scenarios and contenders and exit")
    args = p.parse_args(argv)

    def split(value):
        return [x.strip() for x in value.split(",") if x.strip()]

    if args.contenders:
        args.contenders = split(args.contenders)
        bad = [c for c in args.contenders if c not in CONTENDERS]
        if bad:
            p.error("unknown contender(s) {}; known: {}".format(",".join(bad), ",".join(CONTENDERS)))
    else:
        args.contenders = ["ours"] if args.memory else list(CONTENDER_ORDER)
    if args.scenarios:
        args.scenarios = split(args.scenarios)
        bad = [s for s in args.scenarios if s not in SCENARIO_BY_NAME]
        if bad:
            p.error("unknown scenario(s) {}; known: {}".format(",".join(bad), ",".join(SCENARIO_BY_NAME)))
    else:
        args.scenarios = list(QUICK_SCENARIOS) if args.quick else [s.name for s in SCENARIOS]
    if args.rounds is None:
        args.rounds = 1 if args.quick else 3
    if args.duration is None:
        args.duration = 3 if args.quick else 8
    if args.rounds < 1 or args.duration < 1 or args.warmup < 0:
        p.error("--rounds and --duration must be >= 1, --warmup >= 0")
    ncpu = os.cpu_count() or 1
    if ncpu < 2 and args.client_cpu == args.server_cpu + 1:
        warn("only 1 CPU: server and wrk share CPU 0, numbers will be noisy")
        args.client_cpu = 0
    return args


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.list:
        for sc in SCENARIOS:
            log(f"{sc.name:<12} {sc.method:<4} {sc.path:<42} {sc.title}")
        log("contenders: " + ", ".join(CONTENDERS))
        return 0
    # Make SIGTERM behave like Ctrl-C so that the servers get stopped.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    t0 = time.monotonic()
    try:
        args.wrk = ensure_wrk()
        specs = setup_contenders(args.contenders, args.uvicorn)
    except SetupError as exc:
        log("ERROR: " + str(exc))
        return 2
    t_setup = time.monotonic() - t0
    info = machine_info(args)  # before narrowing our affinity (nproc would say 1)
    try:
        if float(info["load"].split()[0]) > 0.5:
            warn(
                "load average is {} before starting: other processes compete for the 2 cores, "
                "expect noisy numbers".format(info["load"])
            )
    except ValueError:
        pass
    try:  # keep the harness (and the probe) off the server CPU
        os.sched_setaffinity(0, {args.client_cpu})
    except (AttributeError, OSError):
        pass
    try:
        if args.memory:
            text = memory_mode(args, specs, info)
            out = RESULTS / "memory-latest.md"
        else:
            text = throughput_mode(args, specs, info)
            out = RESULTS / "latest.md"
    except SetupError as exc:
        log("ERROR: " + str(exc))
        return 1
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    log("")
    log(text)
    log(f"written to {os.path.relpath(out)} (setup {t_setup:.0f} s, total {time.monotonic() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
