"""The "ours" benchmark app serving task status (``task_status_router``) with an endpoint that returns
``Accepted(task)``, so some tasks are held: the task-sync and task-async scenarios measure what a
fire-and-forget task costs in an app that serves task status (contender ``ours-held``, bench/README.md)."""

from tachyon_app import app, record_sync

from tachyon_api.background import BackgroundTasks
from tachyon_api.responses import Accepted
from tachyon_api.tasks import task_status_router

app.include_router(task_status_router(public=True))


@app.post("/task-held")
def task_held(background_tasks: BackgroundTasks):
    return Accepted(background_tasks.add_task(record_sync, 1))


background_tasks = BackgroundTasks()
assert background_tasks.add_task(record_sync, 1).id  # a task's handle taken: every request checks for held tasks
