"""Every import path of the task code that 1.3, the docs, the examples or the bench use keeps working, and
``tachyon_api.background`` names the same objects as their new home ``tachyon_api.tasks``; so do the
compiler's and every path the docs name. Every module imports first without a cycle, and no module uses
another's private names."""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import pytest

# tachyon_api.background as 1.3 and today's docs, examples and bench import it.
BACKGROUND = [
    "BackgroundTask",
    "BackgroundTasks",
    "BackgroundRunner",
    "RQBackend",
    "TaskFailure",
    "TaskOptions",
    "TaskStats",
    "TaskMetrics",
    "ErrorHook",
    "DURATION_BOUNDS",
    "OUTCOMES",
    "SUCCEEDED",
    "FAILED",
    "RETRIED",
    "TIMED_OUT",
    "DROPPED",
    "collect",
    "has_durable",
    "store_durable",
]


@pytest.mark.parametrize("name", BACKGROUND)
def test_background_names_import(name: str) -> None:
    module = importlib.import_module("tachyon_api.background")
    assert getattr(module, name) is not None


def test_background_all_is_unchanged() -> None:
    module = importlib.import_module("tachyon_api.background")
    assert sorted(module.__all__) == sorted(
        [
            "BackgroundTask",
            "BackgroundTasks",
            "BackgroundRunner",
            "RQBackend",
            "TaskFailure",
            "TaskOptions",
            "TaskStats",
            "TaskMetrics",
        ]
    )
    for name in module.__all__:
        assert getattr(module, name) is not None


def test_other_task_paths_import() -> None:
    import tachyon_api
    from tachyon_api.backends.rq import RQBackend, traced_job_class
    from tachyon_api.background import RQBackend as FromBackground

    assert FromBackground is RQBackend
    assert callable(traced_job_class)
    assert tachyon_api.BackgroundTasks is importlib.import_module("tachyon_api.background").BackgroundTasks
    assert tachyon_api.BackgroundTask is importlib.import_module("tachyon_api.background").BackgroundTask


def test_rq_backend_implements_the_backend_protocol() -> None:
    from tachyon_api.backends.base import TaskBackend
    from tachyon_api.backends.rq import RQBackend

    assert TaskBackend in RQBackend.__mro__
    methods = [name for name, value in vars(TaskBackend).items() if callable(value) and not name.startswith("_")]
    assert {"check", "check_options", "store", "aclose", "stats", "failed_jobs", "requeue"} <= set(methods)
    for name in [*methods, "aclose"]:
        ours, theirs = inspect.signature(getattr(RQBackend, name)), inspect.signature(getattr(TaskBackend, name))
        expected = [p for p in theirs.parameters if p != "self"]
        assert [p for p in ours.parameters if p != "self"] == expected, name
        assert inspect.iscoroutinefunction(getattr(RQBackend, name)) == inspect.iscoroutinefunction(
            getattr(TaskBackend, name)
        ), name


@pytest.mark.parametrize(
    "module",
    [
        "tachyon_api.tasks",
        "tachyon_api.tasks.handles",
        "tachyon_api.tasks.runner",
        "tachyon_api.tasks.stats",
        "tachyon_api.tasks.durable",
        "tachyon_api.tasks.schedule",
        "tachyon_api.tasks.leases",
        "tachyon_api.background",
        "tachyon_api.backends.rq",
        "tachyon_api",
    ],
)
def test_each_task_module_imports_first_and_the_engine_imports_no_backend(module: str) -> None:
    """In a fresh interpreter (an import cycle shows only when its modules are imported in some order), and
    without pulling in the Redis backend: the engine reaches a backend only through the app."""
    code = (
        f"import sys, {module}\n"
        "engine = 'tachyon_api.backends.rq' in sys.modules\n"
        f"print(engine and {module!r} != 'tachyon_api.backends.rq')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


# --- the package's module layout ------------------------------------------------------------------------
ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "tachyon_api"


def _modules() -> list[str]:
    import tachyon_api

    found = pkgutil.walk_packages(tachyon_api.__path__, "tachyon_api.")
    return ["tachyon_api", *(m.name for m in found if not m.name.endswith("__main__"))]  # __main__ runs the CLI


# Imports each module named on stdin first: the package's modules are forgotten before each (the libraries
# they use stay loaded, which is what makes one interpreter for all of them fast enough).
IMPORT_EACH_FIRST = """
import importlib, sys, traceback
for name in sys.stdin.read().split():
    for loaded in [m for m in sys.modules if m == "tachyon_api" or m.startswith("tachyon_api.")]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except BaseException as exc:
        print(name, "->", traceback.format_exception_only(exc)[-1].strip())
"""


def test_every_module_imports_first_without_a_cycle() -> None:
    """An import cycle shows only when its modules are imported in some order: each module of the package is
    imported first, in a fresh interpreter, with none of the package's other modules loaded."""
    done = subprocess.run(
        [sys.executable, "-c", IMPORT_EACH_FIRST], input=" ".join(_modules()), capture_output=True, text=True
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")


def test_compiler_paths_import() -> None:
    """The compiler's names where they were before it was split (the docs name ``compiler.PathNotFound``),
    each the same object as in its new home."""
    from tachyon_api import compiler, converters, extractors

    assert compiler.PathNotFound is extractors.PathNotFound
    assert compiler.MAX_LIST_ITEMS == extractors.MAX_LIST_ITEMS
    assert compiler.describe_validation_error is converters.describe_validation_error
    for name in compiler.__all__:
        assert getattr(compiler, name) is not None, name


def _documented_paths() -> set[str]:
    """Every ``from tachyon_api... import a, b`` in the README and docs (dotted names in their prose are also
    loggers, or tachyon-api 1.3's internals that the migration page says are left out)."""
    paths: set[str] = set()
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = page.read_text()
        for module, names in re.findall(r"from (tachyon_api[\w.]*) import \(?([\w, ]+)", text):
            paths.update(f"{module}.{name.split(' as ')[0].strip()}" for name in names.split(",") if name.strip())
    return paths


def test_every_import_path_the_docs_name_imports() -> None:
    missing = []
    for path in sorted(_documented_paths()):
        parts = path.split(".")
        for cut in range(len(parts), 0, -1):  # the longest prefix that is a module, then attributes
            try:
                target: object = importlib.import_module(".".join(parts[:cut]))
            except ImportError:
                continue
            try:
                for attribute in parts[cut:]:
                    target = getattr(target, attribute)
            except AttributeError:
                missing.append(path)
            break
        else:
            missing.append(path)
    assert len(_documented_paths()) > 40
    assert missing == []


def _private_names_defined(tree: ast.Module) -> set[str]:
    """The private names a module defines: functions, classes, variables, attributes it assigns, slots.

    An attribute read on ``self`` or ``cls`` counts as the class's own, inherited ones included."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.isidentifier():
            names.add(node.value)  # __slots__ entries
    return {name for name in names if name.startswith("_")}


# Private attributes of other libraries' objects, read where they offer no public way.
OTHER_LIBRARIES = {
    ("backends/rq_worker.py", "execution._job"),  # RQ's Execution
    ("backends/rq_worker.py", "job._status"),  # RQ's Job
    ("backends/rq_worker.py", "self.scheduler._process"),  # RQ's RQScheduler
    ("tracing.py", "_trace._TRACER_PROVIDER"),  # OpenTelemetry's global provider (see tracing._configured)
}


def test_no_private_name_or_attribute_crosses_modules() -> None:
    """No ``from .x import _y`` between the package's modules, and no ``obj._attr`` read in a module that does
    not define ``_attr`` itself (an attribute of another module's object)."""
    crossing = set()
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text())
        where = path.relative_to(PACKAGE).as_posix()
        own = _private_names_defined(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("tachyon_api")):
                crossing.update(
                    (where, f"import {alias.name}")
                    for alias in node.names
                    if alias.name.startswith("_") and not alias.name.startswith("__")
                )
            elif (
                isinstance(node, ast.Attribute)
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
                and node.attr not in own
                and ast.unparse(node) != "os._exit"
                and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))  # inherited
            ):
                crossing.add((where, ast.unparse(node)))
    assert crossing - OTHER_LIBRARIES == set()
