"""Every import path of the task code that 1.3, the docs, the examples or the bench use keeps working, and
``tachyon_api.background`` names the same objects as their new home ``tachyon_api.tasks``."""

from __future__ import annotations

import importlib

import pytest

# tachyon_api.background as 1.3 and today's docs, examples and bench import it.
BACKGROUND = (
    "BackgroundTask BackgroundTasks BackgroundRunner RQBackend TaskFailure TaskOptions TaskStats TaskMetrics "
    "ErrorHook DURATION_BOUNDS OUTCOMES SUCCEEDED FAILED RETRIED TIMED_OUT DROPPED collect has_durable store_durable"
).split()


@pytest.mark.parametrize("name", BACKGROUND)
def test_background_names_import(name: str) -> None:
    module = importlib.import_module("tachyon_api.background")
    assert getattr(module, name) is not None


def test_background_all_is_unchanged() -> None:
    module = importlib.import_module("tachyon_api.background")
    assert sorted(module.__all__) == sorted(
        "BackgroundTask BackgroundTasks BackgroundRunner RQBackend TaskFailure TaskOptions TaskStats TaskMetrics".split()
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
