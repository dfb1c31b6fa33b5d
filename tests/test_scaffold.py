"""``tachyon new``, ``generate``, ``version``, ``lint`` and ``completion``.

The end-to-end test does what a new user does: create a project, install it into a fresh virtual environment
(only this repository and the project's requirements), run its tests, and serve it with ``tachyon run``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

import httpx
import pytest

from tachyon_api.cli import main
from tachyon_api.scaffold import ScaffoldError, create_project, generate, names_for

from .conftest import ROOT, free_port, wait_for_port

BIN = "Scripts" if os.name == "nt" else "bin"
# The first test pays for a fresh venv and a pip install (15 s on a quiet machine, minutes on a loaded one).
pytestmark = pytest.mark.timeout(600)


def run(*command: str | Path, cwd: Path, timeout: float = 120, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in command], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """``tachyon new demo`` plus one of each generator, installed into a fresh venv: (project, venv bin)."""
    base = tmp_path_factory.mktemp("scaffold")
    env_dir = base / "venv"
    venv.create(env_dir, with_pip=True)
    bin_dir = env_dir / BIN
    created = run(sys.executable, "-m", "tachyon_api", "new", "demo", "--path", base, cwd=base)
    assert created.returncode == 0, created.stderr
    root = base / "demo"
    installed = run(
        bin_dir / "python",
        "-m",
        "pip",
        "install",
        "-q",
        "-e",
        ROOT,
        "-r",
        root / "requirements.txt",
        cwd=root,
        timeout=300,
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr
    tachyon = bin_dir / "tachyon"
    for args in (
        ("generate", "service", "order-items", "--crud"),
        ("g", "controller", "items"),
        ("g", "repo", "stock"),
        ("g", "dto", "things"),
        ("g", "middleware", "timing"),
    ):
        result = run(tachyon, *args, cwd=root)
        assert result.returncode == 0, result.stderr
    # What the generators print is what the user pastes into app.py.
    app_py = root / "app.py"
    app_py.write_text(
        app_py.read_text()
        + "\nfrom modules.order_items import router as order_items_router\n"
        + "from middlewares.timing_middleware import TimingMiddleware\n\n"
        + "app.include_router(order_items_router)\napp.add_middleware(TimingMiddleware)\n"
    )
    return root, bin_dir


def test_new_project_and_generated_code_pass_their_own_tests(project: tuple[Path, Path]) -> None:
    root, bin_dir = project
    result = run(bin_dir / "python", "-m", "pytest", "-q", "-p", "no:cacheprovider", cwd=root)
    assert result.returncode == 0, result.stdout + result.stderr
    # app (3) + service with CRUD (4) + controller, repository, dto, middleware (1 each)
    assert "11 passed" in result.stdout, result.stdout


def test_new_project_serves_with_tachyon_run(project: tuple[Path, Path]) -> None:
    root, bin_dir = project
    port = free_port()
    log = root / "server.log"
    with log.open("wb") as out:
        server = subprocess.Popen(
            [str(bin_dir / "tachyon"), "run", "app:app", "--port", str(port)],
            cwd=root,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for_port(port, 20)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
            assert client.get("/health").json() == {"status": "ok", "app": "demo"}
            signup = client.post("/signups", json={"email": "ada@example.com"})
            assert signup.status_code == 202
            assert signup.headers["server-timing"].startswith("app;dur=")  # the generated middleware
            created = client.post("/order-items/", json={"name": "lamp"})
            assert created.status_code == 201
            row = created.json()
            assert client.get(f"/order-items/{row['id']}").json() == row
            assert client.delete(f"/order-items/{row['id']}").status_code == 204
    finally:
        server.terminate()
        server.wait(20)
    assert "welcome email sent to ada@example.com" in log.read_text(), log.read_text()


def test_lint_without_ruff_says_how_to_install_it(project: tuple[Path, Path]) -> None:
    root, bin_dir = project
    # Only the fresh venv and the system folders on PATH: no ruff from the environment running the tests.
    env = {**os.environ, "PATH": os.pathsep.join([str(bin_dir), "/usr/bin", "/bin"])}
    result = run(bin_dir / "tachyon", "lint", "check", cwd=root, env=env)
    assert result.returncode == 1
    assert "needs ruff" in result.stderr and "pip install" in result.stderr
    assert "Traceback" not in result.stderr


def test_version_names_the_installed_distribution(project: tuple[Path, Path]) -> None:
    root, bin_dir = project
    from importlib import metadata

    result = run(bin_dir / "tachyon", "version", cwd=root)
    assert result.stdout.strip() == f"Tachyon API v{metadata.version('tachyon-api-next')}"


# --- names and refusals (in-process, fast) --------------------------------------------------------------
@pytest.mark.parametrize(
    ("raw", "module", "cls", "prefix"),
    [
        ("users", "users", "Users", "/users"),
        ("order-items", "order_items", "OrderItems", "/order-items"),
        ("Order_Items", "Order_Items", "OrderItems", "/order-items"),
        ("v2_api", "v2_api", "V2Api", "/v2-api"),
    ],
)
def test_names(raw: str, module: str, cls: str, prefix: str) -> None:
    names = names_for(raw)
    assert (names.module, names.Class, names.prefix) == (module, cls, prefix)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("class", "keyword"),
        ("match", "keyword"),
        ("2fast", "not a valid"),
        ("my app", "not a valid"),
        ("", "not a valid"),
        ("a.b", "not a valid"),
    ],
)
def test_invalid_names_are_refused(raw: str, reason: str, tmp_path: Path) -> None:
    with pytest.raises(ScaffoldError, match=reason):
        create_project(raw, tmp_path)
    with pytest.raises(ScaffoldError, match=reason):
        generate("service", raw, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_new_never_overwrites_an_existing_folder(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "shop").mkdir()
    (tmp_path / "shop" / "app.py").write_text("mine")
    with pytest.raises(SystemExit, match="already exists"):
        main(["new", "shop", "--path", str(tmp_path)])
    assert (tmp_path / "shop" / "app.py").read_text() == "mine"
    assert [p.name for p in (tmp_path / "shop").iterdir()] == ["app.py"]


def test_generate_writes_nothing_when_one_target_exists(tmp_path: Path) -> None:
    target = tmp_path / "users" / "users_service.py"
    target.parent.mkdir()
    target.write_text("mine")
    with pytest.raises(ScaffoldError, match="refusing to overwrite"):
        generate("service", "users", tmp_path)
    assert target.read_text() == "mine"
    assert sorted(p.name for p in target.parent.iterdir()) == ["users_service.py"]


def test_generate_options(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    written = generate("controller", "items", tests=False)
    assert sorted(p.as_posix() for p in written) == [
        "modules/items/__init__.py",
        "modules/items/items_controller.py",
    ]
    # With a folder of the user's, one file named after the kind, as in tachyon-api 1.3.
    assert generate("controller", "items", tmp_path / "mine") == [tmp_path / "mine" / "items_controller.py"]
    with pytest.raises(ScaffoldError, match="applies to 'service' only"):
        generate("dto", "things", tmp_path, crud=True)
    plain = generate("service", "plain", tmp_path)
    controller = next(p for p in plain if p.name == "plain_controller.py").read_text()
    assert "@router.delete" not in controller and "@router.post" in controller
    crud = generate("service", "full", tmp_path, crud=True)
    assert "@router.delete" in next(p for p in crud if p.name == "full_controller.py").read_text()


# --- lint with ruff installed, and completion -------------------------------------------------------------
def test_lint_wraps_ruff(tmp_path: Path) -> None:
    source = tmp_path / "messy.py"
    source.write_text("import os\nx=1\n")
    tachyon = [sys.executable, "-m", "tachyon_api"]
    check = run(*tachyon, "lint", "check", source, cwd=tmp_path)
    assert check.returncode == 1 and "F401" in check.stdout  # unused import
    assert run(*tachyon, "lint", "format", "--check", source, cwd=tmp_path).returncode == 1
    assert run(*tachyon, "lint", "all", source, cwd=tmp_path).returncode == 0
    assert source.read_text() == "x = 1\n"
    assert run(*tachyon, "lint", "all", "--no-fix", source, cwd=tmp_path).returncode == 0


def test_generated_code_is_lint_clean(tmp_path: Path) -> None:
    root = create_project("clean", tmp_path)
    for kind in ("service", "controller", "repository", "dto", "middleware"):
        generate(
            kind, f"some-{kind}", root / ("middlewares" if kind == "middleware" else "modules"), crud=kind == "service"
        )
    result = run(sys.executable, "-m", "tachyon_api", "lint", "all", "--no-fix", cwd=root)
    assert result.returncode == 0, result.stdout + result.stderr


def test_shell_completion(tmp_path: Path) -> None:
    out = tmp_path / "completions"
    env = {
        **os.environ,
        "_ARGCOMPLETE": "1",
        "COMP_LINE": "tachyon g s",
        "COMP_POINT": "11",
        "_ARGCOMPLETE_STDOUT_FILENAME": str(out),
        "PYTHONPATH": str(ROOT),
    }
    result = run(sys.executable, "-m", "tachyon_api", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    assert out.read_text().split() == ["service"]
    script = run(sys.executable, "-m", "tachyon_api", "completion", "bash", cwd=tmp_path)
    assert "complete" in script.stdout and "tachyon" in script.stdout
