"""The "ours" benchmark app keeping a status record for every background task: ``Tachyon(task_status=True)``
(contender ``ours-status``), to measure what holdable tasks cost a task nobody asks about (bench/README.md)."""

import os

os.environ["TACHYON_BENCH_TASK_STATUS"] = "1"

from tachyon_app import app  # noqa: F401
