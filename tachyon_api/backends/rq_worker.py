"""``tachyon worker``: a durable-task worker over RQ's queues that keeps up and survives faults.

RQ's own worker forks a work horse per job (about 80 trivial jobs/s per process here) and makes some 57
Redis commands in 8 round trips per job; a Redis restart makes it exit. This worker reads and writes the
same keys (a job hash, the started registry with one execution per run, the finished and failed registries,
the results stream, the worker's hash), so ``rq info``, the dashboard, ``backend.stats()``, ``rq requeue``
and plain ``rq worker`` processes work beside it, but it runs the jobs in its own process:

- **Concurrency.** One asyncio loop (uvloop when installed) in the main thread. ``async def`` tasks run on
  it, concurrently; sync tasks run in a bounded thread pool. At most ``concurrency`` jobs run at once, and
  the worker claims only as many as it has free slots. ``fork=True`` runs each job in a forked child instead
  (process isolation: a crash, a leak or a hung C call stays in the child, and a timeout kills it).
- **Few round trips.** Jobs are claimed by one Lua script per batch (``_CLAIM``: pop from the queue, mark
  started, add the execution to the started registry, return the job hashes) and the successes of a batch
  are recorded by another (``_FINISH``). The rare paths (a failure, a retry, a job with callbacks,
  dependents, repeats or a rate limit) go through RQ's own code, so retries and the failed registry behave
  exactly as with ``rq worker``.
- **Leases.** A claimed job's entry in the started registry is a lease that expires ``lease`` seconds
  (1.5 heartbeats) after the worker last renewed it; the worker renews all of its jobs every heartbeat.
  Every half heartbeat one live worker per queue (a Redis lock elects it) runs RQ's cleanup of expired
  leases: a job whose worker is gone is re-queued if it has retries left, or moved to the failed registry,
  within two heartbeats of the worker's death. Jobs that an RQ worker left in the queue's intermediate list
  are put back on the queue. No lease is taken over until Redis has been up, and this worker connected to
  it, for a whole lease: after a Redis restart the live workers renew first.
- **Redis faults.** Every Redis call of the loop retries with capped exponential backoff until Redis
  answers; a job finished meanwhile is kept in memory and recorded when Redis is back (its lease renewed
  on reconnection). The scripts are idempotent where a lost reply could repeat them: a claim whose reply
  was lost leaves executions in the worker's set that it does not know, which it puts back on the queue;
  a finish records only jobs whose execution is still in the started registry.
- **Stopping.** SIGTERM or SIGINT (to the process or its whole group) stops claiming, lets the running jobs
  finish for up to ``shutdown_timeout`` seconds, puts the jobs still running then back on the queue, and
  exits 0. A second signal (after the first second) does that at once.
"""

from __future__ import annotations

import asyncio
import ctypes
import datetime as dt
import inspect
import logging
import os
import pickle
import re
import signal
import socket
import threading
import time
import traceback
import uuid
import zlib
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Callable, Sequence

import msgspec
import redis.exceptions
from rq.exceptions import DeserializationError, NoSuchJobError
from rq.executions import Execution
from rq.job import Job, JobStatus, Retry
from rq.queue import Queue
from rq.registry import StartedJobRegistry, clean_registries
from rq.suspension import is_suspended
from rq.timeouts import JobTimeoutException, TimerDeathPenalty
from rq.utils import import_attribute, parse_timeout, utcformat
from rq.worker import BaseWorker, WorkerStatus
from rq.worker_registration import clean_worker_registry

from ..tasks.records import CANCELLED, FAILED, RETRYING, SUCCEEDED, TaskError, encode_result
from ..tasks.status import running_task
from ..tracing import job_span
from .redis_status import END_LUA, START_LUA, JobTracker, changes

if TYPE_CHECKING:
    from redis import Redis

__all__ = ["TachyonWorker", "WorkHorseKilled"]

logger = logging.getLogger("tachyon_api.worker")

# What a Redis call can fail with when Redis is away, restarting or loading its data: retried with backoff.
TRANSIENT: tuple[type[BaseException], ...] = (
    redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, redis.exceptions.BusyLoadingError,
    redis.exceptions.ReadOnlyError, redis.exceptions.TryAgainError, OSError,
)

# Claim up to len(ARGV) - 11 jobs. ARGV: the number of queue keys q, the queue keys, then the started
# registry key of each queue (q of them), the job key prefix, the worker's name, its key, its executions key,
# now (RQ's time format), now (a Unix timestamp), the lease (seconds), the executions' time-to-live, the
# worker key's time-to-live, then one new execution id per job that may be claimed. Returns per claimed job:
# the index of its queue (1-based), its id, its execution id, 1 if its success can be recorded by _FINISH (no
# success callback, repeat, rate limit, webhook or dependents, and a result kept), whether to run it ("0": it was
# cancelled while it waited) and its status record's result limit ("" when not kept; START_LUA of
# redis_status.py marks the record running), and the fields the worker needs to run it: data, description,
# timeout, meta, result_ttl, retries_left.
_CLAIM = """
local q = tonumber(ARGV[1])
local a = 2 + 2 * q
local prefix, worker, wkey, wexec = ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3]
local iso, now, lease, ttl, wttl = ARGV[a + 4], tonumber(ARGV[a + 5]), tonumber(ARGV[a + 6]), tonumber(ARGV[a + 7]), tonumber(ARGV[a + 8])
local out = {}
local e = a + 9
local qi = 1
while e <= #ARGV and qi <= q do
  local id = redis.call('LPOP', ARGV[1 + qi])
  if not id then
    qi = qi + 1
  else
    local key = prefix .. id
    if redis.call('EXISTS', key) == 1 then
      local eid = ARGV[e]
      e = e + 1
      local composite = id .. ':' .. eid
      local ekey = 'rq:execution:' .. composite
      redis.call('HSET', ekey, 'id', eid, 'job_id', id, 'created_at', ARGV[a + 5], 'last_heartbeat', ARGV[a + 5], 'worker_name', worker)
      redis.call('EXPIRE', ekey, ttl)
      redis.call('ZADD', 'rq:executions:' .. id, now + ttl + 60, eid)
      redis.call('EXPIRE', 'rq:executions:' .. id, ttl + 60)
      redis.call('ZADD', ARGV[1 + q + qi], now + lease, composite)
      redis.call('SADD', wexec, composite)
      redis.call('HSET', key, 'last_heartbeat', iso, 'status', 'started', 'started_at', iso, 'worker_name', worker)
      redis.call('PERSIST', key)
      local tnow = ARGV[a + 5]
""" + START_LUA + """
      local f = redis.call('HMGET', key, 'data', 'description', 'timeout', 'meta', 'result_ttl', 'retries_left',
        'success_callback_name', 'repeats_left', 'rate_limit_key', 'webhooks')
      local plain = 1
      if (f[7] and f[7] ~= '') or f[8] or f[9] or f[10] or f[5] == '0' or redis.call('EXISTS', key .. ':dependents') == 1 then
        plain = 0
      end
      out[#out + 1] = {qi, id, eid, plain, trun, tkeep, f[1], f[2] or '', f[3] or '', f[4] or '', f[5] or '', f[6] or ''}
    end
  end
end
if #out > 0 then
  redis.call('EXPIRE', wexec, ttl + 60)
  redis.call('HSET', wkey, 'state', 'busy', 'last_heartbeat', iso)
  redis.call('EXPIRE', wkey, wttl)
end
return out
"""

# Record successes. ARGV: the job key prefix, the worker's key, its executions key, now (RQ's format), now (Unix
# timestamp, integer), now (Unix timestamp, float), the total working time of the batch, the worker's name, then
# per job 11 values:
# job id, execution id, started registry key, finished registry key, result ttl (-1: forever), the encoded return
# value ("" for None), when the execution started (Unix timestamp), and for its status record (END_LUA of
# redis_status.py): its state (succeeded, or cancelled), the kept result, the error and the latest progress
# (JSON, "" for none). Returns per job 1 (recorded) or 0 (its
# execution is no longer in the started registry: its lease was taken over, nothing written).
_FINISH = """
local prefix, wkey, wexec, iso, nowi, nowf = ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5]), ARGV[6]
local out, done = {}, 0
for a = 9, #ARGV, 11 do
  local id, eid, wip, finished, ttl, value, started = ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], tonumber(ARGV[a + 4]), ARGV[a + 5], ARGV[a + 6]
  local tstate, tresult, terror, tprogress, tnow = ARGV[a + 7], ARGV[a + 8], ARGV[a + 9], ARGV[a + 10], nowf
  local composite = id .. ':' .. eid
  if redis.call('ZSCORE', wip, composite) then
    local key = prefix .. id
    if redis.call('EXISTS', key) == 1 then  -- not deleted while it ran
      redis.call('HSET', key, 'status', 'finished', 'ended_at', iso, 'last_heartbeat', iso)
""" + END_LUA + """
      local rkey = 'rq:results:' .. id
      if value == '' then
        redis.call('XADD', rkey, 'MAXLEN', '~', '10', '*', 'type', '1', 'worker_name', ARGV[8], 'execution_id', eid, 'execution_started_at', started, 'execution_ended_at', nowf)
      else
        redis.call('XADD', rkey, 'MAXLEN', '~', '10', '*', 'type', '1', 'worker_name', ARGV[8], 'return_value', value, 'execution_id', eid, 'execution_started_at', started, 'execution_ended_at', nowf)
      end
      if ttl < 0 then
        redis.call('PERSIST', rkey)
        redis.call('ZADD', finished, '+inf', id)
      else
        redis.call('EXPIRE', rkey, ttl)
        redis.call('ZADD', finished, nowi + ttl, id)
        redis.call('EXPIRE', key, ttl)
        redis.call('EXPIRE', key .. ':dependents', ttl)
        redis.call('EXPIRE', key .. ':dependencies', ttl)
      end
    end
    redis.call('DEL', 'rq:execution:' .. composite)
    redis.call('ZREM', wip, composite)
    redis.call('ZREM', 'rq:executions:' .. id, eid)
    redis.call('SREM', wexec, composite)
    done = done + 1
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
if done > 0 then
  redis.call('HINCRBY', wkey, 'successful_job_count', done)
  redis.call('HINCRBYFLOAT', wkey, 'total_working_time', ARGV[7])
end
return out
"""

# Renew the leases of the running jobs and the worker's heartbeat. ARGV: the job key prefix, the worker's key,
# its executions key, now (RQ's format), now (Unix timestamp), the lease, the executions' time-to-live, the
# worker key's time-to-live, the worker's state, then per job: its started registry key and its composite key
# (job id:execution id). Returns the composite keys whose lease was gone (taken over by another worker).
_RENEW = """
local prefix, wkey, wexec, iso, now, lease, ttl, wttl = ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
local lost = {}
for a = 10, #ARGV, 2 do
  local wip, composite = ARGV[a], ARGV[a + 1]
  if redis.call('ZSCORE', wip, composite) then
    local sep = composite:find(':', 1, true)
    local id, eid = composite:sub(1, sep - 1), composite:sub(sep + 1)
    redis.call('ZADD', wip, now + lease, composite)
    redis.call('HSET', 'rq:execution:' .. composite, 'last_heartbeat', ARGV[5])
    redis.call('EXPIRE', 'rq:execution:' .. composite, ttl)
    redis.call('ZADD', 'rq:executions:' .. id, 'XX', now + ttl + 60, eid)
    redis.call('EXPIRE', 'rq:executions:' .. id, ttl + 60)
    redis.call('HSET', prefix .. id, 'last_heartbeat', iso)
  else
    lost[#lost + 1] = composite
  end
end
redis.call('HSET', wkey, 'last_heartbeat', iso, 'state', ARGV[9])
redis.call('EXPIRE', wkey, wttl)
redis.call('EXPIRE', wexec, ttl + 60)
return lost
"""

# Put claimed jobs back at the front of their queue, as if never claimed (a claim whose reply was lost, jobs
# still running at the shutdown deadline). ARGV: the job key prefix, the worker's executions key, then composite
# keys. A composite no longer in its started registry is only dropped from the worker's set. Returns the ids
# put back.
_UNCLAIM = """
local prefix, wexec = ARGV[1], ARGV[2]
local out = {}
for a = 3, #ARGV do
  local composite = ARGV[a]
  local sep = composite:find(':', 1, true)
  local id, eid = composite:sub(1, sep - 1), composite:sub(sep + 1)
  local origin = redis.call('HGET', prefix .. id, 'origin')
  if origin and redis.call('ZREM', 'rq:wip:' .. origin, composite) == 1 then
    redis.call('DEL', 'rq:execution:' .. composite)
    redis.call('ZREM', 'rq:executions:' .. id, eid)
    redis.call('HSET', prefix .. id, 'status', 'queued')
    redis.call('LPUSH', 'rq:queue:' .. origin, id)
    out[#out + 1] = id
  end
  redis.call('SREM', wexec, composite)
end
return out
"""

# Put back on its queue a job an RQ worker left in the queue's intermediate list (it moved it there, then died
# before registering it as started). ARGV: intermediate list key, queue key, job id. 1 if moved.
_REQUEUE_INTERMEDIATE = """
if redis.call('LREM', ARGV[1], 1, ARGV[3]) == 1 then
  redis.call('LPUSH', ARGV[2], ARGV[3])
  return 1
end
return 0
"""


class WorkHorseKilled(Exception):
    """The forked child running a job (``fork=True``) ended without reporting a result: killed, or crashed."""


class _Overrun(JobTimeoutException):
    """Raised asynchronously in the thread of a sync job that outlived its timeout (see ``_overrun``)."""


class _Spec:
    """What running a job needs, read from the fields the claim returns (RQ's ``Job`` is built only for the rare
    paths: building one per job costs more than the rest of the claim)."""

    __slots__ = ("id", "origin", "func_name", "instance", "args", "kwargs", "description", "timeout", "meta",
                 "result_ttl", "retries_left", "error")

    _functions: dict[str, Any] = {}

    def __init__(self, job_id: str, origin: str, fields: list[Any], serializer: Any) -> None:
        data, description, timeout, meta, result_ttl, retries_left = fields
        self.id = job_id
        self.origin = origin
        self.description = description.decode() if description else None
        self.timeout = parse_timeout(timeout.decode()) if timeout else None
        self.result_ttl = int(result_ttl) if result_ttl else None
        self.retries_left = int(retries_left) if retries_left else None
        self.error: Exception | None = None  # unreadable data: raised when the job runs, recorded as its failure
        self.func_name, self.instance, self.args, self.kwargs = None, None, (), {}
        self.meta: dict = {}
        try:
            try:
                data = zlib.decompress(data)
            except zlib.error:  # stored uncompressed
                pass
            self.func_name, self.instance, self.args, self.kwargs = serializer.loads(data)
            if meta:
                self.meta = serializer.loads(meta)
        except Exception as exc:
            self.error = DeserializationError(f"job {job_id} cannot be read: {exc!r}")

    @property
    def func(self) -> Callable[..., Any]:
        if self.error is not None:
            raise self.error
        if self.instance is not None:
            return getattr(self.instance, self.func_name)
        func = self._functions.get(self.func_name)
        if func is None:
            func = import_attribute(self.func_name)
            if len(self._functions) < 4096:
                self._functions[self.func_name] = func
        return func

    @property
    def name(self) -> str:
        return self.description or self.func_name or self.id


class _Running:
    """A claimed job, from its claim to the moment its outcome is recorded in Redis."""

    __slots__ = (
        "job", "queue", "execution", "composite", "plain", "started", "task", "thread", "pid", "lock", "lost",
        "stopped", "tries", "tracker", "skip",
    )

    def __init__(self, job: _Spec, queue: Queue, execution: Execution, plain: bool) -> None:
        self.job = job
        self.queue = queue
        self.execution = execution
        self.composite = f"{job.id}:{execution.id}"
        self.plain = plain  # a success can be recorded by _FINISH (no callback, dependents, repeat, rate limit)
        self.started = time.time()
        self.task: asyncio.Task | None = None
        self.thread: int | None = None  # the pool thread running a sync job, while it runs it
        self.pid = 0  # the child running it (fork mode)
        self.lock = threading.Lock()
        self.lost = False  # its lease was taken over (a warning was logged)
        self.stopped = False  # stopped by RQ's stop-job command
        self.tries = 0  # attempts at recording its outcome (more than one after a lost reply)
        self.tracker: JobTracker | None = None  # its status record (report_progress, cancelled, its end)
        self.skip = False  # cancelled while it waited (its record says so): not run


class _Outcome:
    __slots__ = ("running", "value", "error", "exc_string", "state", "result", "failure")

    def __init__(self, running: _Running, value: Any = None, error: BaseException | None = None,
                 exc_string: str = "") -> None:
        self.running = running
        self.value = value
        self.error = error
        self.exc_string = exc_string
        # For the status record: the state the job ends in, its kept result and its error (JSON, b"" for none).
        self.state = SUCCEEDED
        self.result = self.failure = b""

    def settle(self) -> None:
        """Decide what the job's status record says of this outcome (see ``tasks/records.py``)."""
        running = self.running
        tracker = running.tracker
        error = self.error
        if error is None:
            self.state = CANCELLED if tracker is not None and tracker.cancel_seen else SUCCEEDED
            if self.state == SUCCEEDED and tracker is not None and tracker.keep is not None:
                data, failure = encode_result(self.value, tracker.keep)
                self.result = data or b""
                self.failure = msgspec.json.encode(failure) if failure is not None else b""
            return
        if running.stopped or (tracker is not None and tracker.cancel_requested):
            self.state = CANCELLED
            return
        self.state = RETRYING if running.job.retries_left else FAILED
        if self.exc_string:  # a child's traceback: only its last line (the exception) leaves the logs
            kind, _, message = self.exc_string.strip().splitlines()[-1].partition(": ")
            failure = TaskError(kind.rsplit(".", 1)[-1], message)
        else:
            failure = TaskError.of(error)
        self.failure = msgspec.json.encode(failure)


def _flush_pending() -> None:
    """A Python-level call: an exception set asynchronously in this thread is raised here at the latest."""


def _safe_url(url: str) -> str:
    return re.sub(r"//[^@/]*@", "//***@", url)


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
        from redis import Redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry as RedisRetry

        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        # No retries inside redis-py: a retried script could claim twice; the loop retries, knowing what it sent.
        connection = Redis.from_url(
            redis_url, socket_connect_timeout=socket_timeout, socket_timeout=socket_timeout,
            retry=RedisRetry(NoBackoff(), 0),
        )
        self.redis_url = redis_url
        self.heartbeat_interval = float(heartbeat)
        self.lease = 1.5 * self.heartbeat_interval
        super().__init__(
            list(queues), name=name, connection=connection, worker_ttl=max(int(3 * self.heartbeat_interval), 1),
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
        self._running: dict[str, _Running] = {}  # by composite key, until the outcome is recorded
        self._overruns: set[_Running] = set()  # sync jobs past their timeout, whose thread may still run them
        self._active = 0  # jobs executing: a finished job frees its slot before its outcome is recorded
        self._outcomes: list[_Outcome] = []
        self._exec_ttl = int(self.lease) + 60
        self._scripts: dict[str, Any] = {}
        self._stopping = False
        self._forced = False
        self._stop_signal_at = 0.0
        self._suspended = False
        self._reconcile = False
        self._outage_since: float | None = None
        self._outage_logged = 0.0
        self._healthy_since = time.monotonic()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake = None
        self._slot = None
        self._finished = None
        self._listener: threading.Thread | None = None

    # BaseWorker would raise its socket timeout to the blocking dequeue's (over 400 s): this worker's calls are
    # short, and a hung Redis must be noticed within socket_timeout.
    def _set_connection(self, connection: "Redis") -> "Redis":
        return connection

    # --- running --------------------------------------------------------------------------------------------
    def run(self, burst: bool = False, with_scheduler: bool = False) -> int:
        """Work until stopped (or, with ``burst``, until the queues are empty); returns the exit status."""
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
        self._redis_pool = ThreadPoolExecutor(1, thread_name_prefix="tachyon-worker-redis")
        self._wait_pool = ThreadPoolExecutor(1, thread_name_prefix="tachyon-worker-wait")
        self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="tachyon-worker-task")
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
                await self._loop.run_in_executor(self._redis_pool, self._register)
                break
            except TRANSIENT as exc:
                if self._stopping:
                    raise SystemExit(0) from None
                logger.warning(
                    "Redis at %s is not reachable (%s: %s); attempt %d, next in %.1fs",
                    _safe_url(self.redis_url), type(exc).__name__, exc, attempt, delay,
                )
                await self._sleep(delay)
                delay = min(delay * 2, 5.0)
        self._healthy_since = time.monotonic()
        logger.info(
            "Worker %s (pid %d) started on %s: queues %s, concurrency %d, %s, heartbeat %.1fs",
            self.name, self.pid, _safe_url(self.redis_url), ", ".join(self.queue_names()), self.concurrency,
            "a forked child per job" if self.fork else f"sync tasks in {self.threads} threads",
            self.heartbeat_interval,
        )
        self._listener = threading.Thread(target=self._listen, name="tachyon-worker-commands", daemon=True)
        self._listener.start()
        if with_scheduler:
            await self._call(self._start_scheduler, burst, logging.getLevelName(logger.getEffectiveLevel()))

    def _register(self) -> None:
        self.connection.ping()
        try:
            self._set_ip_address(self.connection)
        except redis.exceptions.ResponseError:
            self.ip_address = "unknown"
        self.register_birth()
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
                self.name, signal.Signals(sig).name, len(self._running), self.shutdown_timeout,
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
                claimed = await self._call(self._claim, min(free, 256))
            except Exception:  # logged by _call (a bug or an unexpected reply): try again in a moment
                await self._sleep(1.0)
                continue
            if self._stopping and claimed:
                await self._call(self._unclaim, [r.composite for r in claimed])
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
        self._waiter.execute_command("BLMOVE", key, key, "LEFT", "LEFT", 1)

    @property
    def _waiter(self) -> "Redis":
        waiter = self.__dict__.get("_waiter_connection")
        if waiter is None:
            from redis import Redis
            from redis.backoff import NoBackoff
            from redis.retry import Retry as RedisRetry

            waiter = self.__dict__["_waiter_connection"] = Redis.from_url(
                self.redis_url, socket_connect_timeout=self.socket_timeout, socket_timeout=self.socket_timeout + 2,
                retry=RedisRetry(NoBackoff(), 0),
            )
        return waiter

    def _script(self, source: str) -> Any:
        script = self._scripts.get(source)
        if script is None:
            script = self._scripts[source] = self.connection.register_script(source)
        return script

    def _claim(self, count: int) -> list[_Running]:
        """Claim up to ``count`` jobs (in the Redis thread). A claim whose reply was lost is reconciled first."""
        if self._reconcile:
            self._reconcile_executions()
        now = dt.datetime.now(dt.timezone.utc)
        stamp = now.timestamp()
        base = uuid.uuid4().hex[:24]
        ids = [f"{base}{i:08x}" for i in range(count)]  # unique execution ids, cheaper than a uuid each
        keys = [queue.key for queue in self.queues]
        wips = [queue.started_job_registry.key for queue in self.queues]
        self._reconcile = True  # until the reply is read: a lost reply may have claimed jobs
        reply = self._script(_CLAIM)(args=[
            len(keys), *keys, *wips, Job.redis_job_namespace_prefix, self.name, self.key, self.executions_key,
            utcformat(now), repr(stamp), self.lease, self._exec_ttl, self.worker_ttl + 60, *ids,
        ])
        self._reconcile = False
        claimed = []
        for index, job_id, eid, plain, run, keep, *fields in reply:
            queue = self.queues[int(index) - 1]
            spec = _Spec(job_id.decode(), queue.name, fields, self.serializer)
            execution = Execution(eid.decode(), spec.id, self.connection, worker_name=self.name)
            execution.created_at = now
            running = _Running(spec, queue, execution, bool(plain))
            running.skip = run == b"0"
            running.tracker = JobTracker(spec.id, Job.redis_job_namespace_prefix + spec.id, self.connection,
                                         keep=int(keep) if keep else None, send=self._redis_pool.submit)
            self._running[running.composite] = running
            claimed.append(running)
        return claimed

    # --- running jobs ---------------------------------------------------------------------------------------
    def _start_job(self, running: _Running) -> None:
        self._active += 1
        running.task = self._loop.create_task(self._run(running))
        running.task.add_done_callback(self._job_done)

    def _job_done(self, task: asyncio.Task) -> None:
        self._active -= 1
        self._slot.set()

    async def _run(self, running: _Running) -> None:
        job = running.job
        timeout = job.timeout if job.timeout is not None else Queue.DEFAULT_TIMEOUT
        limit = None if timeout == -1 else float(timeout)
        outcome: _Outcome
        if running.skip:
            logger.info("Worker %s: job %s was cancelled before it started: not run", self.name, job.id)
            outcome = _Outcome(running)
            outcome.state = CANCELLED
            self._outcomes.append(outcome)
            self._finished.set()
            return
        try:
            if self.fork:
                value = await self._in_child(running, limit)
            else:
                func = job.func
                if inspect.iscoroutinefunction(func):
                    value = await self._on_loop(running, func, limit)
                else:
                    value = await self._in_thread(running, func, limit)
            outcome = _Outcome(running, value=value)
        except asyncio.CancelledError:
            if not running.stopped:  # stopping: the job goes back to the queue (see _drain)
                raise
            outcome = _Outcome(running, error=_Stopped("Job stopped by user"))
        except Exception as exc:
            outcome = _Outcome(running, error=exc, exc_string=getattr(exc, "exc_string", ""))
        outcome.settle()
        if outcome.error is not None and outcome.state != CANCELLED:
            retries = job.retries_left or 0
            logger.error(
                "Worker %s: task %s (job %s) failed%s%s",
                self.name, job.name, job.id,
                f"; retried ({retries} retries left)" if retries else "",
                f" in its work horse:\n{outcome.exc_string}" if outcome.exc_string else "",
                exc_info=None if outcome.exc_string else outcome.error,
            )
        else:
            logger.debug("Worker %s: job %s finished", self.name, job.id)
        self._outcomes.append(outcome)
        self._finished.set()

    async def _on_loop(self, running: _Running, func: Callable[..., Any], limit: float | None) -> Any:
        job = running.job

        async def call() -> Any:
            running_task.set(running.tracker)  # report_progress and cancelled() in the job (its own task)
            with job_span(job.name, job.meta.get("traceparent"), job.id):
                return await func(*job.args, **job.kwargs)

        inner = self._loop.create_task(call())
        try:
            done, _ = await asyncio.wait({inner}, timeout=limit)
        except asyncio.CancelledError:
            inner.cancel()
            raise
        if not done:
            inner.cancel()  # the task's own finally blocks run; its outcome is the timeout
            raise JobTimeoutException(f"Task exceeded maximum timeout value ({limit:g} seconds)")
        return inner.result()

    async def _in_thread(self, running: _Running, func: Callable[..., Any], limit: float | None) -> Any:
        future = self._loop.run_in_executor(self._pool, self._call_sync, running, func)
        done, _ = await asyncio.wait({future}, timeout=limit)
        if not done:
            self._overrun(running)
            raise JobTimeoutException(
                f"Task exceeded maximum timeout value ({limit:g} seconds); its thread was interrupted"
            )
        value = future.result()
        if inspect.isawaitable(value):  # a sync function that returned an awaitable
            value = await value
        return value

    def _call_sync(self, running: _Running, func: Callable[..., Any]) -> Any:
        """A sync job in a pool thread. A timeout raises ``_Overrun`` in it (see ``_overrun``); past the job, an
        overrun raised late is absorbed here, never in the next job of this thread."""
        job = running.job
        token = running_task.set(running.tracker)  # report_progress and cancelled() in the job
        try:
            try:
                with running.lock:
                    running.thread = threading.get_ident()
                with job_span(job.name, job.meta.get("traceparent"), job.id):
                    return func(*job.args, **job.kwargs)
            finally:
                with running.lock:
                    running.thread = None
                running_task.reset(token)
                _flush_pending()
        except _Overrun:
            logger.warning("Worker %s: job %s was interrupted in its thread after its timeout", self.name, job.id)
            return None

    def _overrun(self, running: _Running) -> None:
        """Raise ``_Overrun`` in the thread of a sync job past its timeout. Python raises it at the thread's next
        bytecode: pure-Python code stops there, a blocking call (sleep, socket, C code) first returns."""
        with running.lock:
            if running.thread is not None:
                self._overruns.add(running)
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(running.thread), ctypes.py_object(_Overrun))

    async def _in_child(self, running: _Running, limit: float | None) -> Any:
        future = self._loop.run_in_executor(self._pool, self._fork, running)
        try:
            done, _ = await asyncio.wait({future}, timeout=limit)
        except asyncio.CancelledError:
            self._kill_child(running)
            raise
        if not done:
            self._kill_child(running)
            raise JobTimeoutException(f"Task exceeded maximum timeout value ({limit:g} seconds); its work horse was killed")
        ok, payload = future.result()
        if not ok:
            raise _ChildFailed(payload)
        return payload

    @staticmethod
    def _kill_child(running: _Running) -> None:
        if running.pid:
            try:
                os.kill(running.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def _fork(self, running: _Running) -> tuple[bool, Any]:
        """Run the job in a forked child (in a pool thread, which waits for it); returns (ok, value or
        traceback text). SIGTERM and SIGINT are blocked across the fork, then ignored in the child: a signal
        to the whole process group does not interrupt the job; the worker stops it at the deadline."""
        read_fd, write_fd = os.pipe()
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
        pid = os.fork()
        if pid == 0:
            os.close(read_fd)
            self._child(running, write_fd, previous)
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
        running.pid = pid
        os.close(write_fd)
        chunks = []
        while chunk := os.read(read_fd, 65536):
            chunks.append(chunk)
        os.close(read_fd)
        _, status = os.waitpid(pid, 0)
        running.pid = 0
        if not chunks:
            how = (f"killed by signal {signal.Signals(os.WTERMSIG(status)).name}" if os.WIFSIGNALED(status)
                   else f"exited with status {os.waitstatus_to_exitcode(status)}")
            raise WorkHorseKilled(f"the work horse (pid {pid}) running job {running.job.id} {how} without a result")
        return pickle.loads(b"".join(chunks))

    @staticmethod
    def _child(running: _Running, write_fd: int, mask: Any) -> None:
        """The forked child: run the job, write (ok, value or traceback) to the pipe, exit without cleanup."""
        try:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            job = running.job
            parent = running.tracker
            tracker = None if parent is None else JobTracker(job.id, parent.key, parent.redis, keep=parent.keep)
            running_task.set(tracker)  # in the child, its own blocking writes (no Redis thread was forked)
            with job_span(job.name, job.meta.get("traceparent"), job.id):
                value = job.func(*job.args, **job.kwargs)
                if inspect.isawaitable(value):
                    value = asyncio.run(_awaited(value))
            if tracker is not None and (progress := tracker.pending_progress()):
                tracker.advance("", ["tachyon_progress", progress])
            try:
                payload = pickle.dumps((True, value))
            except Exception:  # an unpicklable return value: the job still succeeded
                payload = pickle.dumps((True, None))
        except BaseException:
            payload = pickle.dumps((False, traceback.format_exc()))
        try:
            view = memoryview(payload)
            while view:
                view = view[os.write(write_fd, view):]
        finally:
            os._exit(0)

    # --- recording outcomes ---------------------------------------------------------------------------------
    async def _finisher(self) -> None:
        while True:
            if not self._outcomes:
                self._finished.clear()
                await self._finished.wait()
                continue
            batch, self._outcomes = self._outcomes, []
            try:
                await self._call(self._record, batch)
            except Exception:  # logged by _call; record them one by one, so one bad job cannot block the others
                for outcome in batch:
                    try:
                        await self._call(self._record, [outcome])
                    except Exception:
                        logger.error(
                            "Worker %s: the outcome of job %s could not be recorded; its lease will expire and it "
                            "will be retried or failed", self.name, outcome.running.job.id,
                        )
            for outcome in batch:
                self._running.pop(outcome.running.composite, None)
            self._slot.set()

    def _record(self, batch: list[_Outcome]) -> None:
        """Record outcomes (in the Redis thread): plain successes in one script run, the rest with RQ's code."""
        plain = [o for o in batch if o.error is None and o.running.plain and not isinstance(o.value, Retry)]
        if plain:
            self._record_successes(plain)
        for outcome in batch:
            if outcome.error is not None or not outcome.running.plain or isinstance(outcome.value, Retry):
                self._record_with_rq(outcome)

    def _record_successes(self, outcomes: list[_Outcome]) -> None:
        now = dt.datetime.now(dt.timezone.utc)
        stamp = now.timestamp()
        args: list[Any] = [
            Job.redis_job_namespace_prefix, self.key, self.executions_key, utcformat(now), int(stamp), repr(stamp),
            repr(sum(stamp - o.running.started for o in outcomes)), self.name,
        ]
        for outcome in outcomes:
            running = outcome.running
            # The return value is kept in the status record when asked (keep_result), never in RQ's result.
            args += [
                running.job.id, running.execution.id, running.queue.started_job_registry.key,
                running.queue.finished_job_registry.key,
                self.default_result_ttl if running.job.result_ttl is None else running.job.result_ttl,
                "", repr(running.started), outcome.state, outcome.result, outcome.failure,
                running.tracker.pending_progress() if running.tracker is not None else b"",
            ]
        for outcome in outcomes:
            outcome.running.tries += 1
        reply = self._script(_FINISH)(args=args)
        for outcome, stored in zip(outcomes, reply):
            if not stored:
                self._not_held(outcome.running)

    def _not_held(self, running: _Running) -> None:
        """Its execution is gone from the started registry: recorded by an attempt whose reply was lost, or its
        lease was taken over (said once)."""
        if running.tries <= 1 and not running.lost:
            running.lost = True
            logger.warning(
                "Worker %s: job %s ran, but its lease had been taken over (the worker could not renew it in time): "
                "another worker may run it again", self.name, running.job.id,
            )

    def _record_with_rq(self, outcome: _Outcome) -> None:
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
            self._record_status(outcome)
            return
        job.ended_at = dt.datetime.now(dt.timezone.utc)
        job._status = JobStatus.FAILED
        error = outcome.error
        exc_string = outcome.exc_string or "".join(traceback.format_exception(type(error), error, error.__traceback__))
        if isinstance(error, _Stopped):
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
        self._record_status(outcome)

    @staticmethod
    def _record_status(outcome: _Outcome) -> None:
        """The end of a job recorded with RQ's code, in its status record too (redis_status.py's ADVANCE)."""
        tracker = outcome.running.tracker
        if tracker is None:
            return
        fields = changes(outcome.state)
        fields += [name for pair in (("tachyon_result", outcome.result), ("tachyon_error", outcome.failure),
                                     ("tachyon_progress", tracker.pending_progress())) if pair[1] for name in pair]
        tracker.advance(outcome.state, fields)

    # --- heartbeats, leases, recovery -----------------------------------------------------------------------
    async def _heartbeats(self) -> None:
        renewed = time.monotonic()
        maintained = time.monotonic()
        while True:
            await asyncio.sleep(self.heartbeat_interval / 2)
            try:
                now = time.monotonic()
                if now - renewed >= self.heartbeat_interval * 0.9:
                    await self._call(self._renew)
                    renewed = time.monotonic()
                await self._call(self._recover)
                if now - maintained >= self.maintenance_interval:
                    await self._call(self._maintain)
                    maintained = now
            except asyncio.CancelledError:
                raise
            except Exception:  # logged by _call; the next heartbeat tries again
                pass

    def _renew(self) -> None:
        now = dt.datetime.now(dt.timezone.utc)
        state = WorkerStatus.BUSY if self._running else WorkerStatus.IDLE
        args: list[Any] = [
            Job.redis_job_namespace_prefix, self.key, self.executions_key, utcformat(now), repr(now.timestamp()),
            self.lease, self._exec_ttl, self.worker_ttl + 60, state.value,
        ]
        for running in list(self._running.values()):
            args += [running.queue.started_job_registry.key, running.composite]
        lost = self._script(_RENEW)(args=args)
        for composite in lost:
            running = self._running.get(composite.decode())
            if running is not None and not running.lost:
                running.lost = True
                logger.warning(
                    "Worker %s: the lease of job %s was taken over while it ran (this worker could not renew it in "
                    "time): another worker may run it again", self.name, running.job.id,
                )
        self._suspended = bool(is_suspended(self.connection))

    @property
    def _guard(self) -> float:
        """How long Redis and this worker must have been in touch before it takes over expired leases: a lease,
        the longest backoff and a heartbeat, time for every live worker to renew after a Redis restart."""
        return self.lease + 2.0 + self.heartbeat_interval

    def _recover(self) -> None:
        """Expired leases and stuck intermediate entries of each queue, by one worker per half heartbeat."""
        if self._stopping:
            return
        settled = time.monotonic() - self._healthy_since >= self._guard
        for queue in self.queues:
            lock = f"tachyon:worker-recovery:{queue.name}"
            if not self.connection.set(lock, self.name, nx=True, px=max(int(self.heartbeat_interval * 450), 1)):
                continue
            self._requeue_intermediate(queue)
            if not settled or self.connection.info("server").get("uptime_in_seconds", 0) < self._guard:
                continue
            registry = queue.started_job_registry
            expired = registry.get_expired_job_ids()
            if expired:
                logger.warning(
                    "Worker %s: %d job(s) of queue %s were held by a worker that stopped renewing their leases: "
                    "retried if they have retries left, else failed: %s",
                    self.name, len(expired), queue.name, ", ".join(expired),
                )
                registry.cleanup()  # RQ's: each job to its queue (retries left) or to the failed registry

    def _requeue_intermediate(self, queue: Queue) -> None:
        intermediate = queue.intermediate_queue
        ids = intermediate.get_job_ids()
        if not ids:
            return
        started = {StartedJobRegistry.parse_job_id(entry) for entry in self.connection.zrange(
            queue.started_job_registry.key, 0, -1)}
        for job_id in ids:
            if job_id in started or intermediate.set_first_seen(job_id):
                continue  # first seen now: an RQ worker may be between its two steps
            first = intermediate.get_first_seen(job_id)
            if first is None or (dt.datetime.now(dt.timezone.utc) - first).total_seconds() < max(
                    self.heartbeat_interval / 2, 1.0):
                continue
            if self._script(_REQUEUE_INTERMEDIATE)(args=[intermediate.key, queue.key, job_id]):
                logger.warning(
                    "Worker %s: job %s was left in %s by a worker that stopped before running it: back on the queue",
                    self.name, job_id, intermediate.key,
                )

    def _maintain(self) -> None:
        """RQ's periodic maintenance: expired entries of the registries, dead workers, the scheduler."""
        for queue in self.queues:
            if queue.acquire_maintenance_lock():
                clean_registries(queue, self._exc_handlers)
                clean_worker_registry(queue)
                queue.release_maintenance_lock()
        if self.scheduler and (not self.scheduler._process or not self.scheduler._process.is_alive()):
            self.scheduler.acquire_locks(auto_start=True)

    def _reconcile_executions(self) -> None:
        """After a claim whose reply was lost: executions of this worker that it does not know go back."""
        members = [m.decode() for m in self.connection.smembers(self.executions_key)]
        unknown = [m for m in members if m not in self._running]
        if unknown:
            self._unclaim(unknown)
        self._reconcile = False

    def _unclaim(self, composites: list[str]) -> None:
        ids = self._script(_UNCLAIM)(args=[Job.redis_job_namespace_prefix, self.executions_key, *composites])
        if ids:
            logger.warning(
                "Worker %s: %d job(s) put back at the front of their queue: %s",
                self.name, len(ids), ", ".join(i.decode() for i in ids),
            )

    # --- Redis calls ----------------------------------------------------------------------------------------
    async def _call(self, func: Callable[..., Any], *args: Any) -> Any:
        """``func(*args)`` in the Redis thread, again and again with capped backoff while Redis is unreachable."""
        delay = 0.1
        while True:
            try:
                result = await self._loop.run_in_executor(self._redis_pool, func, *args)
            except TRANSIENT as exc:
                self._outage(exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            except Exception:
                logger.exception("Worker %s: %s failed", self.name, getattr(func, "__name__", func))
                raise
            if self._outage_since is not None:
                logger.warning(
                    "Worker %s: Redis is reachable again after %.1fs", self.name, time.monotonic() - self._outage_since
                )
                self._outage_since = None
            return result

    def _outage(self, exc: BaseException) -> None:
        now = time.monotonic()
        self._healthy_since = now
        if self._outage_since is None:
            self._outage_since = now
            self._outage_logged = now
            logger.warning(
                "Worker %s: Redis at %s is not reachable (%s: %s); retrying with backoff, running jobs go on",
                self.name, _safe_url(self.redis_url), type(exc).__name__, exc,
            )
        elif now - self._outage_logged >= 5.0:
            self._outage_logged = now
            logger.warning("Worker %s: Redis still unreachable after %.0fs (%s)", self.name, now - self._outage_since,
                           type(exc).__name__)

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

    @property
    def _listener_stop(self) -> threading.Event:
        event = self.__dict__.get("_listener_event")
        if event is None:
            event = self.__dict__["_listener_event"] = threading.Event()
        return event

    def _command(self, payload: dict) -> None:
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
                    self._kill_child(running)
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
        unfinished = [r for r in self._running.values() if r.task is not None and not r.task.done()]
        if unfinished:
            for running in unfinished:
                self._kill_child(running)
                running.task.cancel()
            await asyncio.gather(*(r.task for r in unfinished), return_exceptions=True)
            logger.warning(
                "Worker %s: %d job(s) still running at the shutdown deadline (%.0fs): putting them back on the queue",
                self.name, len(unfinished), self.shutdown_timeout,
            )
            try:
                await asyncio.wait_for(self._call(self._unclaim, [r.composite for r in unfinished]), 10)
            except (asyncio.TimeoutError, Exception):
                logger.error(
                    "Worker %s: could not put back %s; their leases will expire and they will be retried or failed",
                    self.name, ", ".join(r.job.id for r in unfinished),
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
                    self.name, len(self._running), ", ".join(r.job.id for r in self._running.values()),
                )
        return 0

    async def _flushed(self) -> None:
        while self._running:
            self._slot.clear()
            await self._wait_slot(0.1)

    async def _teardown(self) -> None:
        self._listener_stop.set()
        if self.scheduler is not None:
            await self._loop.run_in_executor(self._redis_pool, self.stop_scheduler)
        for attempt in range(3):
            try:
                await self._loop.run_in_executor(self._redis_pool, self.register_death)
                break
            except TRANSIENT:
                await asyncio.sleep(0.5)
        if self._listener is not None:
            await self._loop.run_in_executor(None, self._listener.join, 2.0)
        logger.info("Worker %s: stopped", self.name)
        self._redis_pool.shutdown(wait=False)
        self._wait_pool.shutdown(wait=False)
        self._pool.shutdown(wait=False)

    @property
    def abandoned_threads(self) -> bool:
        """True when a sync job's thread was still running at exit: the process must end without joining it."""
        return any(running.thread is not None for running in [*self._overruns, *self._running.values()])


class _ChildFailed(Exception):
    """A job that raised in its forked child; ``exc_string`` is the child's traceback."""

    def __init__(self, exc_string: str) -> None:
        super().__init__(exc_string.strip().splitlines()[-1] if exc_string.strip() else "failed")
        self.exc_string = exc_string


class _Stopped(Exception):
    """A job stopped by RQ's stop-job command."""


async def _awaited(awaitable: Any) -> Any:
    return await awaitable
