"""Every import path of the task code that 1.3, the docs, the examples or the bench use keeps working, and
``tachyon_api.background`` names the same objects as their new home ``tachyon_api.tasks``."""

from __future__ import annotations

import importlib
import inspect
import subprocess
import sys

import pytest

# tachyon_api.background as 1.3 and today's docs, examples and bench import it.
BACKGROUND = [
    "BackgroundTask", "BackgroundTasks", "BackgroundRunner", "RQBackend", "TaskFailure", "TaskOptions", "TaskStats",
    "TaskMetrics", "ErrorHook", "DURATION_BOUNDS", "OUTCOMES", "SUCCEEDED", "FAILED", "RETRIED", "TIMED_OUT",
    "DROPPED", "collect", "has_durable", "store_durable",
]


@pytest.mark.parametrize("name", BACKGROUND)
def test_background_names_import(name: str) -> None:
    module = importlib.import_module("tachyon_api.background")
    assert getattr(module, name) is not None


def test_background_all_is_unchanged() -> None:
    module = importlib.import_module("tachyon_api.background")
    assert sorted(module.__all__) == sorted(
        [
            "BackgroundTask", "BackgroundTasks", "BackgroundRunner", "RQBackend", "TaskFailure", "TaskOptions",
            "TaskStats", "TaskMetrics",
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
    ["tachyon_api.tasks", "tachyon_api.tasks.handles", "tachyon_api.tasks.runner", "tachyon_api.tasks.stats",
     "tachyon_api.tasks.durable", "tachyon_api.background", "tachyon_api.backends.rq", "tachyon_api"],
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
