"""A third durable backend needs no change anywhere else: a toy one, in this file, under 100 lines.

It keeps jobs in a list, joins the "transaction" a ``scope="function"`` dependency yields (its jobs land only
when that transaction commits), and serves the dashboard's durable view.
"""

from __future__ import annotations

import inspect
from typing import Any, Sequence

from tachyon_api import Depends, HTTPException, Tachyon
from tachyon_api.backends.calls import check_reference
from tachyon_api.background import BackgroundTasks
from tachyon_api.dashboard import task_dashboard
from tachyon_api.testing import TachyonTestClient


class Transaction:
    """What an app's database session would be: writes that land on commit."""

    def __init__(self, store: list) -> None:
        self.store, self.pending = store, []

    def commit(self) -> None:
        self.store.extend(self.pending)


class ToyBackend:
    queue_name = "toy"

    def __init__(self) -> None:
        self.jobs: list[tuple[str, tuple, dict]] = []
        self.failed = [{"id": "f1", "name": "broken", "exc_info": "Traceback ..."}]

    def check(self, func: Any, args: tuple, kwargs: dict) -> None:
        check_reference(func)

    def check_options(self, options: dict[str, Any]) -> None:
        if options.get("job_id") == "refused":
            raise TypeError("the toy refuses this job id")

    async def store(
        self,
        tasks: Sequence[Any],
        method: str,
        path: str,
        idempotency_key: str | None = None,
        *,
        client: str = "",
        fingerprint: bytes = b"",
        within: Sequence[Any] = (),
    ) -> bool:
        jobs = [(task.name, task.args, task.kwargs) for task in tasks]
        for held in within:
            if isinstance(held, Transaction):
                held.pending.extend(jobs)
                return True
        self.jobs.extend(jobs)
        return False

    async def aclose(self) -> None:
        pass

    def stats(self) -> dict[str, int]:
        return {"queued": len(self.jobs), "failed": len(self.failed)}

    def started_jobs(self, limit: int = 100) -> list[dict[str, Any]]:
        return []

    def failed_jobs(self, limit: int = 100) -> list[dict[str, Any]]:
        return self.failed[:limit]

    def requeue(self, job_id: str) -> bool:
        return any(job["id"] == job_id for job in self.failed)


def welcome(email: str) -> None:
    """A durable task (never run here: the toy has no worker)."""


def test_a_toy_backend_stores_joins_a_transaction_and_serves_the_dashboard() -> None:
    backend = ToyBackend()
    app = Tachyon(task_backend=backend)
    app.include_router(task_dashboard(public=True))

    async def transaction():
        tx = Transaction(backend.jobs)
        yield tx
        tx.commit()  # reached only when the request succeeded: a failure is raised at the yield

    @app.post("/plain")
    def plain(email: str, background_tasks: BackgroundTasks) -> dict:
        background_tasks.add_task(welcome, email)
        return {}

    @app.post("/joined")
    async def joined(
        email: str,
        background_tasks: BackgroundTasks,
        fail: bool = False,
        tx: Transaction = Depends(transaction, scope="function"),
    ) -> dict:
        background_tasks.add_task(welcome, email)
        if fail:
            raise HTTPException(409, "no")
        return {}

    @app.post("/refused")
    def refused(background_tasks: BackgroundTasks) -> dict:
        background_tasks.add_task(welcome, "x").with_options(job_id="refused")
        return {}

    with TachyonTestClient(app, raise_server_exceptions=False) as client:
        assert client.post("/plain?email=a").status_code == 200
        assert client.post("/joined?email=b").status_code == 200
        assert client.post("/joined?email=c&fail=true").status_code == 409
        assert client.post("/refused").status_code == 500  # a TypeError in the endpoint, where the mistake is
        assert [job[1] for job in backend.jobs] == [("a",), ("b",)]  # c rolled back with its transaction
        durable = client.get("/tasks/data").json()["durable"]
        counts = {"queued": 2, "failed": 1}
        assert durable == {"queue": "toy", "counts": counts, "running": [], "failed": backend.failed}
        requeue = {"x-tachyon-dashboard": "requeue"}
        assert client.post("/tasks/requeue/f1", headers=requeue).status_code == 200
        assert client.post("/tasks/requeue/f2", headers=requeue).status_code == 404
    assert len(inspect.getsource(Transaction).splitlines()) + len(inspect.getsource(ToyBackend).splitlines()) < 100
