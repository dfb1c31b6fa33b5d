"""``tachyon worker``: a durable-task worker over RQ's queues that keeps up and survives faults.

RQ's own worker forks a work horse per job (about 80 trivial jobs/s per process here) and makes some 57
Redis commands in 8 round trips per job; a Redis restart makes it exit. This worker reads and writes the
same keys (a job hash, the started registry with one execution per run, the finished and failed registries,
the results stream, the worker's hash), so ``rq info``, the dashboard, ``backend.stats()``, ``rq requeue``
and plain ``rq worker`` processes work beside it, but it runs the jobs in its own process:

- **Concurrency.** One asyncio loop (uvloop when installed) in the main thread. ``async def`` tasks run on
  it, concurrently; sync tasks run in a bounded thread pool. At most ``concurrency`` jobs run at once, and
  the worker claims only as many as it has free slots. ``fork=True`` runs each job in a forked child instead
  (process isolation: a crash, a leak or a hung C call stays in the child, and a timeout kills it). How a job
  runs is ``rq_execution.py``'s.
- **Few round trips.** Jobs are claimed by one Lua script per batch and the successes of a batch are recorded
  by another (``rq_ledger.py``). The rare paths (a failure, a retry, a job with callbacks, dependents, repeats
  or a rate limit) go through RQ's own code, so retries and the failed registry behave exactly as with
  ``rq worker``.
- **Leases.** A claimed job is leased for 1.5 heartbeats, renewed every heartbeat; a live worker takes over
  the jobs of a gone one within two heartbeats (``rq_leases.py``).
- **Redis faults.** Every Redis call of the loop retries with capped exponential backoff until Redis
  answers; a job finished meanwhile is kept in memory and recorded when Redis is back (its lease renewed
  on reconnection).
- **Stopping.** SIGTERM or SIGINT (to the process or its whole group) stops claiming, lets the running jobs
  finish for up to ``shutdown_timeout`` seconds, puts the jobs still running then back on the queue, and
  exits 0. A second signal (after the first second) does that at once.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import signal
import socket
import threading
import time
import traceback
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import redis.exceptions
from rq.exceptions import NoSuchJobError
from rq.job import JobStatus, Retry
from rq.queue import Queue
from rq.registry import clean_registries
from rq.suspension import is_suspended
from rq.timeouts import TimerDeathPenalty
from rq.worker import BaseWorker, WorkerStatus
from rq.worker_registration import clean_worker_registry

from ..tasks.records import CANCELLED
from .rq_execution import Executor, kill_child
from .rq_jobs import Outcome, RunningJob, Stopped, WorkHorseKilled
from .rq_leases import Leases
from .rq_ledger import Ledger
from .rq_redis import TRANSIENT, RedisCalls, connect, safe_url

if TYPE_CHECKING:
    from redis import Redis

__all__ = ["TachyonWorker", "WorkHorseKilled"]

logger = logging.getLogger("tachyon_api.worker")


class TachyonWorker(BaseWorker):
    """Run the jobs of ``queues`` (names) in this process: see the module docstring.

    ``concurrency`` bounds the jobs running at once; ``threads`` the pool of sync jobs (default
    ``min(concurrency, 32)``); ``fork`` runs each job in a forked child; ``heartbeat`` is the seconds between
    two renewals of the worker's leases (a dead worker's jobs are recovered within two of them);
    ``shutdown_timeout`` how long a stop waits for running jobs.
    """

    log_result_lifespan = False

    def __init__(
        self,
        queues: Sequence[str],
        redis_url: str,
        *,
        concurrency: int = 16,
        threads: int | None = None,
        fork: bool = False,
        heartbeat: float = 5.0,
        shutdown_timeout: float = 25.0,
        socket_timeout: float = 5.0,
        name: str | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        connection = connect(redis_url, socket_timeout)
        self.redis_url = redis_url
        self.heartbeat_interval = float(heartbeat)
        self.lease = 1.5 * self.heartbeat_interval
        super().__init__(
            list(queues),
            name=name,
            connection=connection,
            worker_ttl=max(int(3 * self.heartbeat_interval), 1),
            prepare_for_work=False,
        )
        self.log = logger
        self.death_penalty_class = TimerDeathPenalty  # callbacks run in threads: SIGALRM works in the main one only
        self.hostname = socket.gethostname()
        self.pid = os.getpid()
        self.concurrency = concurrency
        self.fork = fork
        self.threads = threads or min(concurrency, 32)
        self.shutdown_timeout = shutdown_timeout
        self.socket_timeout = socket_timeout
        self._running: dict[str, RunningJob] = {}  # by composite key, until the outcome is recorded
        self._overruns: set[RunningJob] = set()  # sync jobs past their timeout, whose thread may still run them
        self._active = 0  # jobs executing: a finished job frees its slot before its outcome is recorded
        self._outcomes: list[Outcome] = []
        self._ledger = Ledger(
            connection,
            self.name,
            self.key,
            self.executions_key,
            lease=self.lease,
            executions_ttl=int(self.lease) + 60,
            worker_ttl=self.worker_ttl + 60,
            serializer=self.serializer,
        )
        self._leases = Leases(self._ledger, self.queues, self.heartbeat_interval)
        self._stopping = False
        self._forced = False
        self._stop_signal_at = 0.0
        self._suspended = False
        self._redis = RedisCalls(self.name, redis_url)  # every Redis call of the loop
        # Made by run(), on its loop.
        self._loop: asyncio.AbstractEventLoop
        self._wake: asyncio.Event  # a stop was requested
        self._slot: asyncio.Event  # a job ended (a slot is free) or its outcome was recorded
        self._finished: asyncio.Event  # an outcome waits to be recorded
        self._wait_pool: ThreadPoolExecutor  # the blocking wait for a job
        self._pool: ThreadPoolExecutor  # sync jobs (or the threads waiting for forked children)
        self._executor: Executor
        self._listener: threading.Thread | None = None
        self._listener_stop = threading.Event()
        self._waiter: Redis | None = None  # the blocking wait's connection

    # BaseWorker would raise its socket timeout to the blocking dequeue's (over 400 s): this worker's calls are
    # short, and a hung Redis must be noticed within socket_timeout.
    def _set_connection(self, connection: Redis) -> Redis:
        return connection

    # --- running --------------------------------------------------------------------------------------------
    def run(self, burst: bool = False, with_scheduler: bool = False) -> int:
        """Work until stopped (or, with ``burst``, until the queues are empty); returns the exit status."""
        loop: asyncio.AbstractEventLoop
        try:
            import uvloop

            loop = uvloop.new_event_loop()
        except ImportError:
            loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            return loop.run_until_complete(self._main(burst, with_scheduler))
        finally:
            loop.close()

    async def _main(self, burst: bool, with_scheduler: bool) -> int:
        loop = self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._slot = asyncio.Event()
        self._finished = asyncio.Event()
        self._wait_pool = ThreadPoolExecutor(1, thread_name_prefix="tachyon-worker-wait")
        self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="tachyon-worker-task")
        self._executor = Executor(self.name, loop, self._pool, fork=self.fork, overruns=self._overruns)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)
        await self._start(burst, with_scheduler)
        helpers = [loop.create_task(self._finisher()), loop.create_task(self._heartbeats())]
        try:
            await self._claimer(burst)
            status = await self._drain()
        finally:
            for helper in helpers:
                helper.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)
        await self._teardown()
        return status

    async def _start(self, burst: bool, with_scheduler: bool) -> None:
        """Wait for Redis (one line per attempt, no traceback), then register as RQ's workers do."""
        delay = 0.5
        attempt = 0
        while True:
            attempt += 1
            try:
                await self._loop.run_in_executor(self._redis.pool, self._register)
                break
            except TRANSIENT as exc:
                if self._stopping:
                    raise SystemExit(0) from None
                logger.warning(
                    "Redis at %s is not reachable (%s: %s); attempt %d, next in %.1fs",
                    safe_url(self.redis_url),
                    type(exc).__name__,
                    exc,
                    attempt,
                    delay,
                )
                await self._sleep(delay)
                delay = min(delay * 2, 5.0)
        self._redis.healthy_since = time.monotonic()
        logger.info(
            "Worker %s (pid %d) started on %s: queues %s, concurrency %d, %s, heartbeat %.1fs",
            self.name,
            self.pid,
            safe_url(self.redis_url),
            ", ".join(self.queue_names()),
            self.concurrency,
            "a forked child per job" if self.fork else f"sync tasks in {self.threads} threads",
            self.heartbeat_interval,
        )
        self._listener = threading.Thread(target=self._listen, name="tachyon-worker-commands", daemon=True)
        self._listener.start()
        if with_scheduler:
            await self._redis.call(self._start_scheduler, burst, logging.getLevelName(logger.getEffectiveLevel()))

    def _register(self) -> None:
        self.connection.ping()
        try:
            self._set_ip_address(self.connection)
        except redis.exceptions.ResponseError:
            self.ip_address = "unknown"
        self.register_birth()  # type: ignore[no-untyped-call]
        self.set_state(WorkerStatus.STARTED)

    async def _sleep(self, seconds: float) -> None:
        """Sleep, but wake up early when a stop is requested."""
        try:
            await asyncio.wait_for(self._wake.wait(), seconds)
        except asyncio.TimeoutError:
            pass

    # --- signals --------------------------------------------------------------------------------------------
    def _on_signal(self, sig: int) -> None:
        now = time.monotonic()
        if not self._stopping:
            self._stopping = True
            self._stop_signal_at = now
            logger.info(
                "Worker %s: %s received: finishing %d running job(s) (at most %.0fs), claiming no more",
                self.name,
                signal.Signals(sig).name,
                len(self._running),
                self.shutdown_timeout,
            )
        elif now - self._stop_signal_at > 1.0:  # the same signal sent to the group and to us counts once
            self._forced = True
            logger.warning("Worker %s: second %s: stopping now", self.name, signal.Signals(sig).name)
        self._wake.set()
        self._slot.set()
        self._finished.set()

    def request_stop(self, signum: Any = None, frame: Any = None) -> None:  # RQ's "shutdown" command
        self._loop.call_soon_threadsafe(self._on_signal, signal.SIGTERM)

    # --- claiming ------------------------------------------------------------------------------------------
    async def _claimer(self, burst: bool) -> None:
        while not self._stopping:
            free = self.concurrency - self._active
            if free <= 0 or self._suspended:
                self._slot.clear()
                await self._wait_slot(1.0)
                continue
            try:
                claimed = await self._redis.call(self._claim, min(free, 256))
            except Exception:  # logged by _call (a bug or an unexpected reply): try again in a moment
                await self._sleep(1.0)
                continue
            if claimed and self._wake.is_set():  # a stop was requested while they were claimed
                await self._redis.call(self._ledger.unclaim, [r.composite for r in claimed])
                break
            for running in claimed:
                self._start_job(running)
            if claimed:
                continue
            if burst:
                if not self._running:
                    logger.info("Worker %s: the queues are empty, quitting (burst)", self.name)
                    return
                self._slot.clear()
                await self._wait_slot(1.0)  # a failing job may come back to the queue: look again after it
                continue
            await self._wait_for_jobs()

    async def _wait_slot(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._slot.wait(), seconds)
        except asyncio.TimeoutError:
            pass

    async def _wait_for_jobs(self) -> None:
        """Block until a queue has a job (or a second passed): ``BLMOVE q q LEFT LEFT`` moves the head of the list
        onto itself, which changes nothing but waits like a pop. Several queues are polled instead."""
        if len(self.queues) > 1:
            await self._sleep(0.1)
            return
        try:
            await self._loop.run_in_executor(self._wait_pool, self._block, self.queues[0].key)
        except TRANSIENT:
            await self._sleep(0.5)  # the claim's call will report the outage and back off

    def _block(self, key: str) -> None:
        """In the wait thread, on a connection of its own, which waits longer than the wait (1 s)."""
        if self._waiter is None:
            self._waiter = connect(self.redis_url, self.socket_timeout, self.socket_timeout + 2)
        self._waiter.execute_command("BLMOVE", key, key, "LEFT", "LEFT", 1)  # type: ignore[no-untyped-call]

    def _claim(self, count: int) -> list[RunningJob]:
        """Claim up to ``count`` jobs (in the Redis thread); they are this worker's from the moment they are."""
        claimed = self._ledger.claim(self.queues, count, self._running, self._redis.pool.submit)
        for running in claimed:
            self._running[running.composite] = running
        return claimed

    # --- running jobs ---------------------------------------------------------------------------------------
    def _start_job(self, running: RunningJob) -> None:
        self._active += 1
        running.task = self._loop.create_task(self._run(running))
        running.task.add_done_callback(self._job_done)

    def _job_done(self, task: asyncio.Task[None]) -> None:
        self._active -= 1
        self._slot.set()

    async def _run(self, running: RunningJob) -> None:
        job = running.job
        timeout = job.timeout if job.timeout is not None else Queue.DEFAULT_TIMEOUT
        limit = None if timeout == -1 else float(timeout)
        outcome: Outcome
        if running.skip:
            logger.info("Worker %s: job %s was cancelled before it started: not run", self.name, job.id)
            outcome = Outcome(running)
            outcome.state = CANCELLED
            self._outcomes.append(outcome)
            self._finished.set()
            return
        try:
            value = await self._executor.execute(running, limit)
            outcome = Outcome(running, value=value)
        except asyncio.CancelledError:
            if not running.stopped:  # stopping: the job goes back to the queue (see _drain)
                raise
            outcome = Outcome(running, error=Stopped("Job stopped by user"))
        except Exception as exc:
            outcome = Outcome(running, error=exc, exc_string=getattr(exc, "exc_string", ""))
        outcome.settle()
        if outcome.error is not None and outcome.state != CANCELLED:
            retries = job.retries_left or 0
            logger.error(
                "Worker %s: task %s (job %s) failed%s%s",
                self.name,
                job.name,
                job.id,
                f"; retried ({retries} retries left)" if retries else "",
                f" in its work horse:\n{outcome.exc_string}" if outcome.exc_string else "",
                exc_info=None if outcome.exc_string else outcome.error,
            )
        else:
            logger.debug("Worker %s: job %s finished", self.name, job.id)
        self._outcomes.append(outcome)
        self._finished.set()

    # --- recording outcomes ---------------------------------------------------------------------------------
    async def _finisher(self) -> None:
        while True:
            if not self._outcomes:
                self._finished.clear()
                await self._finished.wait()
                continue
            batch, self._outcomes = self._outcomes, []
            try:
                await self._redis.call(self._record, batch)
            except Exception:  # logged by _call; record them one by one, so one bad job cannot block the others
                for outcome in batch:
                    try:
                        await self._redis.call(self._record, [outcome])
                    except Exception:
                        logger.error(
                            "Worker %s: the outcome of job %s could not be recorded; its lease will expire and it "
                            "will be retried or failed",
                            self.name,
                            outcome.running.job.id,
                        )
            for outcome in batch:
                self._running.pop(outcome.running.composite, None)
            self._slot.set()

    def _record(self, batch: list[Outcome]) -> None:
        """Record outcomes (in the Redis thread): plain successes in one script run, the rest with RQ's code."""
        plain = [o for o in batch if o.error is None and o.running.plain and not isinstance(o.value, Retry)]
        if plain:
            self._record_successes(plain)
        for outcome in batch:
            if outcome.error is not None or not outcome.running.plain or isinstance(outcome.value, Retry):
                self._record_with_rq(outcome)

    def _record_successes(self, outcomes: list[Outcome]) -> None:
        for outcome in self._ledger.finish(outcomes, self.default_result_ttl):
            self._not_held(outcome.running)

    def _not_held(self, running: RunningJob) -> None:
        """Its execution is gone from the started registry: recorded by an attempt whose reply was lost, or its
        lease was taken over (said once)."""
        if running.tries <= 1 and not running.lost:
            running.lost = True
            logger.warning(
                "Worker %s: job %s ran, but its lease had been taken over (the worker could not renew it in time): "
                "another worker may run it again",
                self.name,
                running.job.id,
            )

    def _record_with_rq(self, outcome: Outcome) -> None:
        """A failure, a retry or a success with callbacks, dependents, repeats or a rate limit: RQ's own code,
        once (its writes are one transaction; the execution still in the started registry says it did not
        happen yet)."""
        running = outcome.running
        queue, execution = running.queue, running.execution
        wip = queue.started_job_registry.key
        running.tries += 1
        if self.connection.zscore(wip, running.composite) is None:
            self._not_held(running)
            return
        try:
            job = self.job_class.fetch(running.job.id, connection=self.connection, serializer=self.serializer)
        except NoSuchJobError:  # deleted while it ran: nothing to record it in
            self.connection.zrem(wip, running.composite)
            return
        execution._job = job
        job.started_at = dt.datetime.fromtimestamp(running.started, dt.timezone.utc)
        if outcome.error is None:
            value = outcome.value if isinstance(outcome.value, Retry) else None  # kept only in the status record
            self._finalize_success(job, queue, execution, value)
            outcome.record_status()
            return
        job.ended_at = dt.datetime.now(dt.timezone.utc)
        job._status = JobStatus.FAILED
        error = outcome.error
        exc_string = outcome.exc_string or "".join(traceback.format_exception(type(error), error, error.__traceback__))
        if isinstance(error, Stopped):
            self._stopped_job_id = job.id
        if running.tries == 1 and job.failure_callback is not None:  # not again when recording is repeated
            try:
                from rq.callbacks import execute_failure_callback

                execute_failure_callback(job, self.death_penalty_class, type(error), error, error.__traceback__)
            except Exception:
                logger.exception("Worker %s: the failure callback of job %s raised", self.name, job.id)
        self.handle_job_failure(
            job, queue, started_job_registry=queue.started_job_registry, exc_string=exc_string, execution=execution
        )
        if self.connection.zscore(wip, running.composite) is not None:  # RQ logged why
            raise redis.exceptions.ConnectionError(f"the failure of job {job.id} was not recorded")
        outcome.record_status()

    # --- heartbeats, leases, recovery -----------------------------------------------------------------------
    async def _heartbeats(self) -> None:
        renewed = time.monotonic()
        maintained = time.monotonic()
        while True:
            await asyncio.sleep(self.heartbeat_interval / 2)
            try:
                now = time.monotonic()
                if now - renewed >= self.heartbeat_interval * 0.9:
                    await self._redis.call(self._renew)
                    renewed = time.monotonic()
                await self._redis.call(self._recover)
                if now - maintained >= self.maintenance_interval:
                    await self._redis.call(self._maintain)
                    maintained = now
            except asyncio.CancelledError:
                raise
            except Exception:  # logged by _call; the next heartbeat tries again
                pass

    def _renew(self) -> None:
        state = WorkerStatus.BUSY if self._running else WorkerStatus.IDLE
        self._leases.renew(self._running, state.value)
        self._suspended = bool(is_suspended(self.connection))

    def _recover(self) -> None:
        if not self._stopping:
            self._leases.recover(time.monotonic() - self._redis.healthy_since)

    def _maintain(self) -> None:
        """RQ's periodic maintenance: expired entries of the registries, dead workers, the scheduler."""
        for queue in self.queues:
            if queue.acquire_maintenance_lock():
                clean_registries(queue, self._exc_handlers)
                clean_worker_registry(queue)
                queue.release_maintenance_lock()  # type: ignore[no-untyped-call]
        process: Any = self.scheduler._process if self.scheduler else None  # RQ types it None
        if self.scheduler and not (process and process.is_alive()):
            self.scheduler.acquire_locks(auto_start=True)  # type: ignore[no-untyped-call]

    # --- commands (rq's pub/sub channel) --------------------------------------------------------------------
    def _listen(self) -> None:
        """RQ's worker commands (``rq`` ``send_shutdown_command``, ``send_stop_job_command``), read with a one
        second timeout so that stopping never waits on it (RQ's thread waited up to 60 s)."""
        from rq.command import parse_payload

        pubsub = None
        while not self._listener_stop.is_set():
            try:
                if pubsub is None:
                    pubsub = self.connection.pubsub()
                    pubsub.subscribe(self.pubsub_channel_name)
                message = pubsub.get_message(ignore_subscribe_messages=True, timeout=0.25)
                if message is not None:
                    self._loop.call_soon_threadsafe(self._command, parse_payload(message))
            except Exception:  # Redis away: subscribe again when it is back
                if pubsub is not None:
                    try:
                        pubsub.close()
                    except Exception:
                        pass
                pubsub = None
                self._listener_stop.wait(1.0)
        if pubsub is not None:
            try:
                pubsub.close()
            except Exception:
                pass

    def _command(self, payload: dict[str, Any]) -> None:
        command = payload.get("command")
        if command == "shutdown":
            logger.info("Worker %s: shutdown command received", self.name)
            self._on_signal(signal.SIGTERM)
        elif command in ("stop-job", "stop-execution"):
            for running in list(self._running.values()):
                if running.job.id == payload.get("job_id") and running.task is not None and not running.task.done():
                    logger.info("Worker %s: stopping job %s on request", self.name, running.job.id)
                    running.stopped = True
                    if running.tracker is not None:  # a sync job's thread cannot be stopped: cancelled() says so
                        running.tracker.cancel_requested = True
                    kill_child(running)
                    running.task.cancel()
        else:
            logger.warning("Worker %s: command %r is not supported by this worker", self.name, command)

    # --- stopping -------------------------------------------------------------------------------------------
    async def _drain(self) -> int:
        """Wait for the running jobs until the shutdown deadline; put back on the queue the ones still running."""
        deadline = (self._stop_signal_at or time.monotonic()) + self.shutdown_timeout
        while self._running and not self._forced and time.monotonic() < deadline:
            self._slot.clear()
            await self._wait_slot(min(0.2, max(deadline - time.monotonic(), 0.01)))
        tasks = {r: r.task for r in self._running.values() if r.task is not None and not r.task.done()}
        unfinished = list(tasks)
        if unfinished:
            for running, task in tasks.items():
                kill_child(running)
                task.cancel()
            await asyncio.gather(*tasks.values(), return_exceptions=True)
            logger.warning(
                "Worker %s: %d job(s) still running at the shutdown deadline (%.0fs): putting them back on the queue",
                self.name,
                len(unfinished),
                self.shutdown_timeout,
            )
            try:
                await asyncio.wait_for(self._redis.call(self._ledger.unclaim, [r.composite for r in unfinished]), 10)
            except (asyncio.TimeoutError, Exception):
                logger.error(
                    "Worker %s: could not put back %s; their leases will expire and they will be retried or failed",
                    self.name,
                    ", ".join(r.job.id for r in unfinished),
                )
            for running in unfinished:
                self._running.pop(running.composite, None)
                if running.thread is not None:
                    self._overruns.add(running)
        if self._running:  # finished, but Redis is away: the outcomes are lost, their leases will expire
            try:
                await asyncio.wait_for(self._flushed(), 5)
            except asyncio.TimeoutError:
                logger.error(
                    "Worker %s: the outcomes of %d job(s) could not be recorded before exiting: %s",
                    self.name,
                    len(self._running),
                    ", ".join(r.job.id for r in self._running.values()),
                )
        return 0

    async def _flushed(self) -> None:
        while self._running:
            self._slot.clear()
            await self._wait_slot(0.1)

    async def _teardown(self) -> None:
        self._listener_stop.set()
        if self.scheduler is not None:
            await self._loop.run_in_executor(self._redis.pool, self.stop_scheduler)
        for _attempt in range(3):
            try:
                await self._loop.run_in_executor(self._redis.pool, self.register_death)
                break
            except TRANSIENT:
                await asyncio.sleep(0.5)
        if self._listener is not None:
            await self._loop.run_in_executor(None, self._listener.join, 2.0)
        logger.info("Worker %s: stopped", self.name)
        self._redis.pool.shutdown(wait=False)
        self._wait_pool.shutdown(wait=False)
        self._pool.shutdown(wait=False)

    @property
    def abandoned_threads(self) -> bool:
        """True when a sync job's thread was still running at exit: the process must end without joining it."""
        return any(running.thread is not None for running in [*self._overruns, *self._running.values()])
