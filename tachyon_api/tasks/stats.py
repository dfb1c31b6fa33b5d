"""What the runner counts: :class:`TaskStats` (the totals), :class:`TaskMetrics` (per task name: outcomes,
a duration histogram, the last failures) and :class:`TaskFailure`, what an error hook receives."""

from __future__ import annotations

import bisect
import time
import traceback
from collections import deque
from typing import TYPE_CHECKING, Any

import msgspec

if TYPE_CHECKING:
    from .handles import BackgroundTask

__all__ = [
    "TaskFailure",
    "TaskStats",
    "TaskMetrics",
    "DURATION_BOUNDS",
    "OUTCOMES",
    "SUCCEEDED",
    "FAILED",
    "RETRIED",
    "TIMED_OUT",
    "DROPPED",
    "CANCELLED",
    "MAX_NAME_LENGTH",
    "stat_name",
]


class TaskFailure(msgspec.Struct, frozen=True):
    """What an error hook receives: the task, its final exception, and the request that added it."""

    task: BackgroundTask
    exception: BaseException
    attempts: int
    method: str
    path: str


class TaskStats(msgspec.Struct, frozen=True):
    """A snapshot of the runner's counters (``scheduled`` and the outcomes count tasks, not batches)."""

    scheduled: int
    queued: int
    running: int
    succeeded: int
    failed: int
    retried: int
    timed_out: int
    dropped: int
    duration_count: int
    duration_total: float
    duration_max: float
    waiting: int = 0  # tasks between two attempts (retry backoff): neither running nor queued, not done either
    delayed: int = 0  # in-process tasks waiting for their delay= or at= (a timer of the runner), not yet queued
    cancelled: int = 0  # tasks that ended cancelled on request (app.tasks.cancel, DELETE /tasks/{id})

    @property
    def duration_mean(self) -> float:
        return self.duration_total / self.duration_count if self.duration_count else 0.0


# Duration histogram bounds in seconds: 50 us to about 14 minutes, four buckets per doubling, so a percentile
# read from the histogram is within 10% of the true value. Fixed bounds keep memory per task name constant
# whatever the traffic.
DURATION_BOUNDS: tuple[float, ...] = tuple(0.00005 * 2 ** (i / 4) for i in range(97))
OUTCOMES = ("succeeded", "failed", "retried", "timed_out", "dropped", "cancelled")
_OTHER_NAMES = "(other)"
# Task names longer than this are cut (ending in "...") in statistics and metrics: a name built from request data
# would otherwise make every dashboard read and Prometheus scrape as large as the client wants.
MAX_NAME_LENGTH = 100


def stat_name(name: str) -> str:
    """``name`` as statistics and metrics show it: cut to ``MAX_NAME_LENGTH`` characters."""
    return name if len(name) <= MAX_NAME_LENGTH else name[: MAX_NAME_LENGTH - 3] + "..."


# Outcome indexes into the count lists below (the order of OUTCOMES).
SUCCEEDED, FAILED, RETRIED, TIMED_OUT, DROPPED, CANCELLED = range(len(OUTCOMES))


class _NameMetrics:
    """Counters (one per outcome, in the order of ``OUTCOMES``) and duration histogram of one task name."""

    __slots__ = ("counts", "buckets", "total")

    def __init__(self) -> None:
        self.counts = [0] * len(OUTCOMES)
        self.buckets = [0] * (len(DURATION_BOUNDS) + 1)  # the last one counts durations above every bound
        self.total = 0.0

    def percentile(self, fraction: float) -> float | None:
        count = sum(self.buckets)
        if not count:
            return None
        rank = fraction * count
        seen = 0
        for index, bucket in enumerate(self.buckets):
            seen += bucket
            if seen >= rank:
                if index == len(DURATION_BOUNDS):
                    return DURATION_BOUNDS[-1]
                low = DURATION_BOUNDS[index - 1] if index else 0.0
                return (low + DURATION_BOUNDS[index]) / 2  # the middle of the bucket
        return DURATION_BOUNDS[-1]


class TaskMetrics:
    """Everything the runner counts: outcome totals and durations, and per task name (unless ``per_name`` is
    False) outcome counts, a duration histogram and the last failures.

    The runner records each attempt once, when it ends, with one call under its lock (from the loop or a
    worker thread): a few additions, a dictionary lookup and a bisect. The tasks running now are not recorded
    here; the runner reads them from its batches when asked (:meth:`BackgroundRunner.snapshot`). Memory is
    bounded: at most ``max_names`` names are tracked (later ones are counted under ``"(other)"``; task names
    come from code or ``with_options(name=...)``, so a name built from request data would otherwise grow
    without limit), each cut to ``MAX_NAME_LENGTH`` characters, and the last ``max_failures`` failures are kept.
    """

    def __init__(self, max_names: int = 500, max_failures: int = 50, *, per_name: bool = True) -> None:
        self.max_names = max_names
        self.per_name = per_name
        self.totals = [0] * len(OUTCOMES)
        self.duration_count = 0
        self.duration_total = self.duration_max = 0.0
        self.by_name: dict[str, _NameMetrics] = {}
        self.failures: deque[dict[str, Any]] = deque(maxlen=max_failures)

    def _of(self, name: str) -> _NameMetrics:
        name = stat_name(name)
        metrics = self.by_name.get(name)
        if metrics is None:
            if len(self.by_name) >= self.max_names:
                name = _OTHER_NAMES
                metrics = self.by_name.get(name)
            if metrics is None:
                metrics = self.by_name[name] = _NameMetrics()
        return metrics

    def record(self, name: str, outcome: int, duration: float) -> None:
        """One attempt ended with ``outcome`` (an index into ``OUTCOMES``) after ``duration`` seconds."""
        self.totals[outcome] += 1
        self.duration_count += 1
        self.duration_total += duration
        if duration > self.duration_max:
            self.duration_max = duration
        if self.per_name:
            metrics = self.by_name.get(name) or self._of(name)
            metrics.counts[outcome] += 1
            metrics.buckets[bisect.bisect_left(DURATION_BOUNDS, duration)] += 1
            metrics.total += duration

    def count(self, name: str, outcome: int, n: int = 1) -> None:
        """An outcome without a duration of its own (``timed_out``, ``dropped``, ``cancelled`` before a start)."""
        self.totals[outcome] += n
        if self.per_name:
            self._of(name).counts[outcome] += n

    def failure(
        self, name: str, method: str, path: str, attempts: int, exc: BaseException, task_id: str | None = None
    ) -> None:
        if not self.per_name:
            return
        self.failures.append(
            {
                "name": stat_name(name),
                "id": task_id,
                "method": method,
                "path": path,
                "attempts": attempts,
                "time": time.time(),
                "error": f"{type(exc).__name__}: {exc}",
                "traceback": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
            }
        )

    def rows(self) -> list[tuple[str, list[int], list[int], float]]:
        """A copy of the per-name data: (name, counts by outcome, histogram buckets, total seconds)."""
        return [(name, list(m.counts), list(m.buckets), m.total) for name, m in self.by_name.items()]

    def snapshot(self) -> dict[str, Any]:
        """JSON-ready: per-name rows and failures (newest first)."""
        names = []
        for name, m in sorted(self.by_name.items()):
            row: dict[str, Any] = {"name": name}
            row.update(zip(OUTCOMES, m.counts, strict=True))
            row["count"] = sum(m.buckets)
            row["duration_total"] = m.total
            row.update((f"p{q}", m.percentile(q / 100)) for q in (50, 95, 99))
            names.append(row)
        return {"names": names, "failures": list(reversed(self.failures))}
