"""Periodic jobs: ``@app.periodic(every=...)`` and ``@app.periodic(cron=...)``, each tick run once per deployment.

The life of a periodic job, all of it in this module except the run itself (a normal task of the runner, or a
durable job on the workers):

1. ``@app.periodic(...)`` checks everything at declaration: the schedule (a cron expression through
   ``cronsim``, imported only then), the time zone, the task options. A mistake raises there, at import.
2. At startup the app's :class:`Scheduler` starts one loop per job. A loop holds the job's *lease* or waits to
   take it over: without a durable backend a file lock on this host (:class:`FileLease`, so ``tachyon run
   --workers N`` runs each tick in one process), with one the backend's Redis (:class:`RedisLease`, any number
   of processes and hosts).
3. The holder wakes at each tick. Ticks are instants computed from the schedule alone (``every=`` ticks are
   multiples of the interval since the Unix epoch), so every process agrees on them, and a tick's time is its
   id. Each tick is *claimed* in the lease's shared state, which only moves forward: a tick claimed once is
   never run again, whoever holds the lease next. A tick due while nobody held the lease is run late if it is
   at most :data:`GRACE` seconds late (a takeover, a restart), else counted as missed; ``catch_up=True`` runs
   the latest missed tick anyway.
4. In-process, the tick is claimed and then handed to the runner (so it runs at most once, even if the
   process dies in between); durable, it is stored first under an id made of the tick (``store`` refuses a
   second copy) and claimed after (so a holder that dies in between leaves the next holder a tick it cannot
   store twice).
5. At shutdown the loops stop first; the leases are released once the runner has drained, so a run still
   finishing here does not overlap the next tick started elsewhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import inspect
import logging
import math
import os
import random
import re
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from ..concurrency import run_in_threadpool
from ..exceptions import TaskBackendUnavailable
from .handles import BackgroundTask
from .leases import FileLease, ScheduleLease
from .records import RETRYING, RUNNING, TaskRecord

if TYPE_CHECKING:
    from ..applications import Tachyon
    from ..backends.base import TaskBackend
    from .records import Tracker

__all__ = ["PeriodicJob", "Scheduler", "Every", "Cron", "GRACE"]

logger = logging.getLogger("tachyon_api.schedule")

# How late a tick may still run (seconds): a takeover or a quick restart runs the tick it interrupted; a longer
# outage counts its ticks as missed (``catch_up=True`` runs the latest one anyway).
GRACE = 60.0
_MISSED_COUNT_LIMIT = 10_000  # ticks counted one by one after an outage (cron); beyond it "at least" this many


class Every:
    """Ticks at every multiple of ``seconds`` since the Unix epoch (UTC): ``every=timedelta(hours=1)`` runs on
    the hour. Computed from the clock alone, so every process finds the same ticks."""

    __slots__ = ("seconds",)

    def __init__(self, every: float | dt.timedelta) -> None:
        seconds = every.total_seconds() if isinstance(every, dt.timedelta) else every
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
            raise TypeError(f"periodic(every={every!r}): a datetime.timedelta or a number of seconds")
        if seconds < 1 or seconds != int(seconds):
            raise ValueError(f"periodic(every={every!r}): a whole number of seconds, at least 1")
        self.seconds = int(seconds)

    def after(self, t: float) -> int:
        """The first tick strictly after ``t`` (epoch seconds)."""
        return (math.floor(t) // self.seconds + 1) * self.seconds

    def latest(self, t: float) -> int:
        """The last tick at or before ``t``."""
        return math.floor(t) // self.seconds * self.seconds

    def between(self, start: int, end: int) -> int:
        """How many ticks lie strictly between the ticks ``start`` and ``end``."""
        return max((end - start) // self.seconds - 1, 0)

    def describe(self) -> str:
        rest, parts = self.seconds, []
        for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)):
            if rest >= size:
                parts.append(f"{rest // size}{unit}")
                rest %= size
        return "every " + "".join(parts)

    def zone(self) -> dt.tzinfo:
        return dt.timezone.utc


class Cron:
    """Ticks of a cron expression (5 fields, or 6 with seconds first) in ``timezone`` (UTC by default), through
    ``cronsim``: daylight saving time follows cron's own rules (a time skipped by the change runs at the
    change, a time repeated runs once)."""

    __slots__ = ("expr", "tz", "_cronsim")

    def __init__(self, expr: str, timezone: str | None) -> None:
        if not isinstance(expr, str):
            raise TypeError(f"periodic(cron={expr!r}): a cron expression string such as '0 3 * * *'")
        try:
            from cronsim import CronSim, CronSimError
        except ImportError:
            raise ImportError(
                "periodic(cron=...) needs cronsim: pip install 'tachyon-api-next[cron]' (or cronsim)"
            ) from None
        self.expr = expr
        self.tz = _zone(timezone)
        self._cronsim = CronSim
        try:
            next(CronSim(expr, dt.datetime.now(self.tz)))
        except (CronSimError, StopIteration) as exc:
            why = exc or "it never fires"
            raise ValueError(f"periodic(cron={expr!r}): not a valid cron expression: {why}") from None

    def after(self, t: float) -> int:
        start = dt.datetime.fromtimestamp(math.floor(t), self.tz)
        return int(next(self._cronsim(self.expr, start)).timestamp())

    def latest(self, t: float) -> int:
        # cronsim's reverse walk includes its start when the start has microseconds: so the tick at floor(t) counts
        start = dt.datetime.fromtimestamp(math.floor(t), self.tz) + dt.timedelta(microseconds=1)
        return int(next(self._cronsim(self.expr, start, reverse=True)).timestamp())

    def between(self, start: int, end: int) -> int:
        count, tick = 0, self.after(start)
        while tick < end and count < _MISSED_COUNT_LIMIT:
            count, tick = count + 1, self.after(tick)
        return count

    def describe(self) -> str:
        return f"cron {self.expr!r} ({self.tz})"

    def zone(self) -> dt.tzinfo:
        return self.tz


def _zone(name: str | None) -> dt.tzinfo:
    if name is None:
        return dt.timezone.utc
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"periodic(timezone={name!r}): not an IANA time zone name such as 'Europe/Madrid' (on a system without "
            f"a time zone database, pip install tzdata)"
        ) from None


def iso(tick: float, zone: dt.tzinfo = dt.timezone.utc) -> str:
    """A tick as ISO 8601 in ``zone``."""
    return dt.datetime.fromtimestamp(tick, zone).isoformat()


class PeriodicJob:
    """One ``@app.periodic`` declaration and what this process knows of its runs (for the dashboard)."""

    def __init__(
        self,
        func: Callable[[], Any],
        schedule: Every | Cron,
        *,
        name: str,
        options: dict[str, Any],
        overlap: bool,
        catch_up: bool,
        jitter: float,
        durable: bool | None,
    ) -> None:
        self.func = func
        self.schedule = schedule
        self.name = name
        self.options = options  # task options: timeout, retries, retry_delay
        self.overlap = overlap
        self.catch_up = catch_up
        self.jitter = jitter
        self.durable = durable
        self.pass_tick = False  # the function takes a `tick` parameter: the run's scheduled time (a UTC datetime)
        self.held = False  # this process holds the job's lease
        self.running = 0  # runs started here and not ended
        self.runs = self.skipped = self.missed = 0
        self.last_tick: int | None = None  # the last tick claimed (run, skipped or missed), as far as seen here
        self.last_run: int | None = None  # the last tick run, and its outcome, as far as seen here
        self.last_outcome: str | None = None
        self.next_tick: int | None = None
        self.record: Tracker | None = None  # the status record of the last run started here (in-process)

    @classmethod
    def declare(
        cls,
        func: Callable[..., Any],
        *,
        every: float | dt.timedelta | None,
        cron: str | None,
        timezone: str | None,
        name: str | None,
        options: dict[str, Any],
        overlap: bool,
        catch_up: bool,
        jitter: float | dt.timedelta | None,
        durable: bool | None,
    ) -> PeriodicJob:
        """Check a declaration (raises TypeError or ValueError with what is wrong) and build the job."""
        if (every is None) == (cron is None):
            raise TypeError("periodic() needs exactly one of every= (a timedelta or seconds) or cron= (an expression)")
        if every is not None and timezone is not None:
            raise TypeError("periodic(timezone=...) applies to cron= schedules; every= ticks are the same everywhere")
        if inspect.iscoroutine(func) or not callable(func):
            raise TypeError(f"@periodic decorates a function, got {type(func).__name__}")
        try:
            signature = inspect.signature(func)
        except (TypeError, ValueError):
            signature = None
        pass_tick = False
        if signature is not None:
            pass_tick = "tick" in signature.parameters
            required = [
                p.name
                for p in signature.parameters.values()
                if p.name != "tick" and p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
            ]
            if required:
                raise TypeError(
                    f"@periodic: {getattr(func, '__qualname__', func)} is called with no arguments (or only `tick`, "
                    f"the run's scheduled time), but it needs: {', '.join(required)}"
                )
        schedule = Every(every) if every is not None else Cron(cron, timezone)  # type: ignore[arg-type]
        probe = BackgroundTask.create(func, (), {"tick": None} if pass_tick else {}, None, durable=False)
        probe.with_options(name=name, **options)  # the task options' own checks
        seconds = jitter.total_seconds() if isinstance(jitter, dt.timedelta) else (jitter or 0.0)
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or seconds < 0:
            raise ValueError(f"periodic(jitter={jitter!r}): a timedelta or seconds, not negative")
        if isinstance(schedule, Every) and seconds >= schedule.seconds:
            raise ValueError(f"periodic(jitter={jitter!r}): shorter than the interval ({schedule.seconds}s)")
        job_name = probe.name if name is not None else f"{func.__module__}.{probe.name}"
        job = cls(
            func,
            schedule,
            name=job_name,
            options=options,
            overlap=overlap,
            catch_up=catch_up,
            jitter=float(seconds),
            durable=durable,
        )
        job.pass_tick = pass_tick
        return job

    def arguments(self, tick: int) -> dict[str, Any]:
        """The keyword arguments of the run of ``tick``: the tick itself, when the function asks for it."""
        return {"tick": dt.datetime.fromtimestamp(tick, dt.timezone.utc)} if self.pass_tick else {}

    def offset(self, tick: int) -> float:
        """The jitter of ``tick``: random, but the same in every process (seeded by the job and the tick)."""
        return random.Random(f"{self.name}@{tick}").uniform(0, self.jitter) if self.jitter else 0.0

    def job_id(self, tick: int) -> str:
        """The durable job id of a tick: the same in every process, so a tick is stored once."""
        slug = re.sub(r"[^A-Za-z0-9_-]", "_", self.name)[:80]
        digest = hashlib.sha256(self.name.encode()).hexdigest()[:8]
        return f"periodic-{slug}-{digest}-{tick}"

    def upcoming(self, now: float, count: int = 1) -> list[int]:
        """The next ``count`` ticks after ``now``."""
        ticks, tick = [], now
        for _ in range(count):
            tick = self.schedule.after(tick)
            ticks.append(int(tick))
        return ticks

    def row(self, state: dict[str, Any] | None) -> dict[str, Any]:
        """The dashboard's row: this process's counts, and the lease's shared state (last tick and outcome)."""
        zone = self.schedule.zone()
        last = state.get("run") if state is not None else self.last_run
        outcome = state.get("outcome") if state is not None else self.last_outcome
        nxt = self.next_tick if self.next_tick is not None else self.upcoming(time.time())[0]
        return {
            "name": self.name,
            "schedule": self.schedule.describe(),
            "durable": bool(self.durable),
            "held_here": self.held,
            "last_run": None if last is None else iso(last, zone),
            "last_outcome": outcome,
            "next_run": iso(nxt, zone),
            "running": self.running,
            "runs": self.runs,
            "skipped": self.skipped,
            "missed": self.missed,
        }


# --- the scheduler ---------------------------------------------------------------------------------------------
class Scheduler:
    """The app's periodic jobs and, while the app runs, one loop per job (see the module docstring)."""

    def __init__(self, app: Tachyon, lease_ttl: float = 10.0) -> None:
        if lease_ttl <= 0:
            raise ValueError("schedule_lease must be positive (seconds)")
        self.app = app
        self.lease_ttl = lease_ttl
        self.jobs: dict[str, PeriodicJob] = {}
        self._loops: list[asyncio.Task[None]] = []
        self._leases: dict[str, ScheduleLease] = {}
        self._runs: set[asyncio.Task[None]] = set()

    def add(self, job: PeriodicJob) -> None:
        if job.name in self.jobs:
            raise ValueError(f"a periodic job named {job.name!r} is declared already: give one of them name=")
        self.jobs[job.name] = job

    def __iter__(self) -> Iterator[PeriodicJob]:
        return iter(self.jobs.values())

    # --- life ------------------------------------------------------------------------------------------------
    def start(self) -> None:
        """Start one loop per job (at lifespan startup, once the runner takes tasks)."""
        if self._loops or not self.jobs:
            return
        for job in self.jobs.values():
            backend = self._backend(job)
            if backend is not None:
                # A durable tick is stored by reference: checked now, when the module is fully imported.
                BackgroundTask.create(job.func, (), job.arguments(0), backend)
            lease = self._leases[job.name] = self._lease(job, backend)
            self._loops.append(asyncio.get_running_loop().create_task(self._drive(job, lease)))

    async def stop(self) -> None:
        """Stop the loops (at shutdown, before the runner drains): no tick starts from now on."""
        loops, self._loops = self._loops, []
        for loop in loops:
            loop.cancel()
        await asyncio.gather(*loops, return_exceptions=True)

    async def release(self) -> None:
        """Give the leases up (after the runner drained), so another process takes over at once."""
        leases, self._leases = self._leases, {}
        for lease in leases.values():
            try:
                await lease.release()
            except Exception as exc:  # Redis down: the lease expires by itself
                logger.warning("Could not release a schedule lease: %s", exc)
        for job in self.jobs.values():
            job.held = False

    def _backend(self, job: PeriodicJob) -> TaskBackend | None:
        """The durable backend of ``job``'s ticks, or None to run them in-process."""
        if job.durable is False:
            return None
        marked = getattr(job.func, "__tachyon_backend__", None)
        backend = marked[0] if marked is not None else self.app.task_backend
        if backend is None and job.durable:
            raise ValueError(f"periodic job {job.name}: durable=True needs a durable task backend")
        return backend

    def _lease(self, job: PeriodicJob, backend: TaskBackend | None) -> ScheduleLease:
        """The durable backend's lease (the job's, else the app's), whose processes may span hosts; without one
        a file lock, which covers the processes of one host."""
        backend = backend or self.app.task_backend
        if backend is None:
            return FileLease.for_job(job.name, job.func)
        return backend.schedule_lease(job.name, self.lease_ttl)

    # --- the loop of one job ---------------------------------------------------------------------------------
    async def _drive(self, job: PeriodicJob, lease: ScheduleLease) -> None:
        failing = False
        while True:
            try:
                wait = await self._step(job, lease)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis down, a full disk: log once, and try again after a pause
                if not failing:
                    logger.error("Periodic job %s: the schedule step failed; trying again", job.name, exc_info=exc)
                failing, job.held, wait = True, False, lease.poll
            else:
                if failing:
                    logger.info("Periodic job %s: the schedule works again", job.name)
                failing = False
            await asyncio.sleep(max(wait, 0.0))

    async def _step(self, job: PeriodicJob, lease: ScheduleLease) -> float:
        """One wake-up of a job's loop: hold the lease, handle the due tick; returns how long to sleep."""
        held, last = await lease.hold()
        if held and not job.held:
            logger.info("Periodic job %s: this process (pid %d) runs its ticks", job.name, os.getpid())
        job.held = held
        if not held:
            job.next_tick = None
            return lease.poll
        now = time.time()
        due = job.schedule.latest(now)
        if last is None:  # never run anywhere: start with the next tick
            await lease.claim(due, None)
            last = due
        job.last_tick = last
        if due > last:
            fire_at = due + job.offset(due)
            if now < fire_at:  # jitter: not yet
                return min(fire_at - now, lease.renew)
            await self._handle(job, lease, last, due, now - fire_at)
        job.next_tick = nxt = job.schedule.after(max(due, last))
        return min(nxt + job.offset(nxt) - time.time(), lease.renew)

    async def _handle(self, job: PeriodicJob, lease: ScheduleLease, last: int, due: int, late: float) -> None:
        """``due`` is the latest tick, ``last`` the last one claimed: run, skip or count ``due`` as missed."""
        zone = job.schedule.zone()
        missed = job.schedule.between(last, due)
        run = late <= GRACE or job.catch_up
        if not run:
            missed += 1
        if missed:
            job.missed += missed
            logger.warning(
                "Periodic job %s: %d tick(s) missed between %s and %s (nothing held its schedule)%s",
                job.name,
                missed,
                iso(last, zone),
                iso(due, zone),
                "; running the latest" if run and late > GRACE else "",
            )
        backend = self._backend(job)
        previous = None if not run or job.overlap else await self._still_running(job, backend, lease)
        if previous is not None:
            logger.warning("Periodic job %s: tick %s skipped, %s", job.name, iso(due, zone), previous)
            job.skipped += 1
            run = False
        if not run:
            if await lease.claim(due, None):
                job.last_tick = due
            return
        if backend is None:
            if await lease.claim(due, "running"):  # claimed first: at most once, even if this process dies now
                job.last_tick = job.last_run = due
                self._run_here(job, lease, due)
            return
        await self._store(job, backend, due)  # stored first: a tick's job id is stored once (see the docstring)
        if await lease.claim(due, "queued"):
            job.last_tick, job.last_run, job.last_outcome = due, due, "queued"
            job.runs += 1

    async def _still_running(self, job: PeriodicJob, backend: TaskBackend | None, lease: ScheduleLease) -> str | None:
        """If the last run of ``job`` has not ended, what it is doing (for the skip warning); else None. Counted
        here in-process (a run of a process that died ended with it), asked of the backend for a durable job."""
        zone = job.schedule.zone()
        if backend is None:
            if job.running == 0:
                return None
            record = None
            if job.record is not None:
                with self.app.tasks.store.lock:
                    record = job.record.record()
            return _previous(job.last_run, "running", record, zone)
        run = (await lease.read()).get("run")
        if run is None:
            return None
        state = await run_in_threadpool(backend.job_state, job.job_id(run))
        if state not in ("queued", "started", "scheduled", "deferred"):
            return None
        found = None
        if hasattr(backend, "read_status"):  # the job's status record says since when (the backend logs a failure)
            with contextlib.suppress(TaskBackendUnavailable):
                found = await backend.read_status(job.job_id(run))
        return _previous(run, state or "", None if found is None else found[0], zone)

    async def _store(self, job: PeriodicJob, backend: TaskBackend, tick: int) -> None:
        task = BackgroundTask.create(job.func, (), job.arguments(tick), backend)
        task.with_options(name=job.name, job_id=job.job_id(tick), **job.options)
        await backend.store([task], "PERIODIC", job.name, str(tick))

    def _run_here(self, job: PeriodicJob, lease: ScheduleLease, tick: int) -> None:
        """Hand the tick to the app's runner as a normal task: its timeout, retries, logs, hooks and stats."""
        task = BackgroundTask.create(job.func, (), job.arguments(tick), None, durable=False)
        task.with_options(name=job.name, **job.options)
        # A status record, as a held task has: the skip warning says the run's state from it, and the dashboard
        # shows the run's id (and cancels it).
        task.tracker = job.record = self.app.tasks.store.create(task.id, job.name, is_async=task.is_async)
        loop = asyncio.get_running_loop()
        job.running += 1
        job.runs += 1
        job.last_outcome = "running"

        def ended(outcome: str) -> None:  # on the loop
            job.running -= 1
            job.last_outcome = outcome
            record = loop.create_task(lease.record(tick, outcome))
            self._runs.add(record)
            record.add_done_callback(self._recorded)

        def on_end(outcome: str) -> None:  # from the loop, or the worker thread of a sync task
            try:
                loop.call_soon_threadsafe(ended, outcome)
            except RuntimeError:  # the loop is closed: nobody is left to tell
                pass

        task.on_end = on_end
        self.app.background.submit([task], "PERIODIC", iso(tick, job.schedule.zone()))

    def _recorded(self, record: asyncio.Task[None]) -> None:
        self._runs.discard(record)
        if not record.cancelled() and record.exception() is not None:
            logger.warning("Could not record a periodic run's outcome: %s", record.exception())

    # --- reading ---------------------------------------------------------------------------------------------
    async def snapshot(self) -> list[dict[str, Any]]:
        """One row per job for the dashboard: the lease's shared state when it can be read (else this process's
        view), and for a durable job the state of its last tick's job, as its backend tells it."""
        rows = []
        for job in self.jobs.values():
            lease = self._leases.get(job.name)
            state = None
            try:
                if lease is not None:
                    state = await lease.read()
                backend = self._backend(job)
                if state and backend is not None and "run" in state:
                    known = await run_in_threadpool(backend.job_state, job.job_id(state["run"]))
                    if known is not None:  # None: expired from the backend; the state keeps "queued"
                        state["outcome"] = _DURABLE_OUTCOMES.get(known, known)
            except Exception as exc:  # Redis down: show what this process knows
                logger.warning("Could not read the schedule state of %s: %s", job.name, exc)
            rows.append(job.row(state))
        return rows


def _previous(run: int | None, state: str, record: TaskRecord | None, zone: dt.tzinfo) -> str:
    """The skip warning's account of the previous run: its tick, its state and since when, as its status record
    says (else ``state``, the backend's word), so that an operator can tell a slow run (started long ago) from a
    stuck one (queued long ago: no worker takes it)."""
    text = "the previous run" + ("" if run is None else f" (tick {iso(run, zone)})") + " is still "
    if record is None:
        return text + state
    if record.state in (RUNNING, RETRYING) and record.started_at is not None:
        when, how = record.started_at, f"{record.state}: attempt {record.attempts} started"
    else:
        when, how = record.created_at, f"{record.state} since"
    age = (dt.datetime.now(dt.timezone.utc) - when).total_seconds()
    return text + f"{how} {when.astimezone(zone).isoformat(timespec='seconds')} ({age:.0f}s ago)"


# RQ's job states where the dashboard has a word of its own for the same outcome.
_DURABLE_OUTCOMES = {"finished": "succeeded", "started": "running"}
