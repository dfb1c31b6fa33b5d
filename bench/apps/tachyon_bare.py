"""The "ours" benchmark app with the runner's per-name statistics switched off: the baseline of the
observability overhead (contender ``ours-bare``)."""

from tachyon_app import app

app.background.metrics.per_name = False  # what Tachyon(task_statistics=False) sets; tachyon_app is shared with 1.3
