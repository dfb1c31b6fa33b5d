"""The "ours" benchmark app with the runner's per-name statistics switched off: the baseline of the
observability overhead (contender ``ours-bare``)."""

from tachyon_api.background import _NoMetrics
from tachyon_app import app

app.background.metrics = _NoMetrics()  # what Tachyon(task_statistics=False) sets; tachyon_app is shared with 1.3
