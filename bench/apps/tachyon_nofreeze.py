"""The "ours" benchmark app without ``gc.freeze()`` after startup: ``Tachyon(gc_freeze=False)`` (contender
``ours-nofreeze``), to measure what freezing the startup heap does to the tail latency (bench/README.md)."""

import os

os.environ["TACHYON_BENCH_NO_GC_FREEZE"] = "1"

from tachyon_app import app  # noqa: F401
