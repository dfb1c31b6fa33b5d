"""The "ours" benchmark app with everything of docs/observability.md on: the runner's statistics (on by
default), Prometheus metrics on every request and the task dashboard mounted (contender ``ours-observed``)."""

from tachyon_app import app

from tachyon_api.dashboard import task_dashboard
from tachyon_api.metrics import instrument

instrument(app)
app.include_router(task_dashboard(public=True))
