"""The "ours" benchmark app with every `def` endpoint on the event loop: ``Tachyon(sync_to_thread=False)``
(contender ``ours-inline``). ``/block`` keeps its thread (``sync_to_thread=True`` on the route)."""

import os

os.environ["TACHYON_BENCH_INLINE"] = "1"

from tachyon_app import app  # noqa: F401
