"""Durable tasks written as RQ's own ``enqueue`` writes them, for :class:`~tachyon_api.backends.rq.RQBackend`.

One run of :data:`STORE` stores the jobs of every request of a group commit (``commit.py``). The script writes
exactly the keys RQ's ``enqueue`` writes (the job hash, the queue list or the scheduled registry, the set of
queues); the job hash is RQ's ``Job.to_dict()``, built by RQ once per task function and options
(:class:`JobTemplate`), so only the id, the pickled call and the timestamps are made per job.
"""

from __future__ import annotations

import calendar
import datetime as dt
import hashlib
import zlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..tasks.timers import due_time
from ..tracing import traceparent
from .commit import bulk

if TYPE_CHECKING:
    from ..tasks.handles import BackgroundTask
    from .rq import RQBackend

__all__ = ["STORE", "JobTemplate", "JobWriter"]

# One run stores the jobs of every request of a group commit. ARGV: the key of RQ's set of queues, this queue's
# key, the number of requests, then per request: its idempotency marker key ("" for none), the request's
# fingerprint (a hash of its body, kept as the marker's value), the marker's time-to-live, its number of jobs,
# and per job: job key, job id, unique ("1": skip if the job key exists, as RQ's ``unique=True``), target (queue
# list, or scheduled registry when a time is given), time ("" for now), the number of hash arguments, then the
# hash's fields and values. Returns per request -1 (stored before under its idempotency key with the same
# fingerprint: nothing written), -2 (the key was used for another payload: nothing written), a string (why it
# cannot be stored: nothing written) or a list of 1 (stored) / 0 (a job with that id exists) per job.
#
# Redis does not roll a script back when a command fails in it, so every request is checked (the types of the
# keys it writes, its numbers) before the first write: a request that would fail is left out whole, and can
# neither fail nor half-write the others.
STORE = """
local types = {}
local function kind(key)
  local t = types[key]
  if t == nil then t = redis.call('TYPE', key)['ok']; types[key] = t end
  return t
end
local function fits(key, want) local t = kind(key); return t == 'none' or t == want end
local n, a, starts, bad, any = tonumber(ARGV[3]), 4, {}, {}, false
for r = 1, n do
  starts[r] = a
  local marker, ttl, jobs = ARGV[a], tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
  local why = nil
  if not fits(ARGV[1], 'set') then why = ARGV[1] .. ' is not a set' end
  if marker ~= '' and not (ttl and ttl >= 1 and ttl == math.floor(ttl)) then why = 'invalid idempotency ttl' end
  if marker ~= '' and not fits(marker, 'string') then why = marker .. ' is not a string' end
  a = a + 4
  for j = 1, jobs do
    local key, target, at, count = ARGV[a], ARGV[a + 3], ARGV[a + 4], tonumber(ARGV[a + 5])
    if not fits(key, 'hash') then why = key .. ' is not a hash' end
    if not fits(target, at == '' and 'list' or 'zset') then why = target .. ' is a ' .. kind(target) end
    if at ~= '' and not tonumber(at) then why = 'invalid time ' .. at end
    a = a + 6 + count
  end
  bad[r] = why
  if not why then any = true end
end
if any then redis.call('SADD', ARGV[1], ARGV[2]) end
local out = {}
for r = 1, n do
  if bad[r] then
    out[r] = bad[r]
  else
    a = starts[r]
    local marker, fp, ttl, jobs = ARGV[a], ARGV[a + 1], ARGV[a + 2], tonumber(ARGV[a + 3])
    a = a + 4
    local again = false
    if marker ~= '' and not redis.call('SET', marker, fp, 'NX', 'EX', ttl) then
      if redis.call('GET', marker) == fp then again = -1 else again = -2 end
    end
    local flags = {}
    for j = 1, jobs do
      local key, id, unique, target, at, count =
        ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], ARGV[a + 4], tonumber(ARGV[a + 5])
      if again or (unique == '1' and redis.call('EXISTS', key) == 1) then
        flags[j] = 0
      else
        redis.call('HSET', key, unpack(ARGV, a + 6, a + 5 + count))
        if at == '' then redis.call('RPUSH', target, id) else redis.call('ZADD', target, at, id) end
        flags[j] = 1
      end
      a = a + 6 + count
    end
    if again then out[r] = again else out[r] = flags end
  end
end
return out
"""


class JobWriter:
    """The arguments of :data:`STORE` for the requests of ``backend``, with its options; the templates of its
    task functions are kept (bounded)."""

    def __init__(self, backend: RQBackend) -> None:
        self.backend = backend
        self._templates: dict[tuple[Any, ...], JobTemplate] = {}

    def entry(
        self,
        tasks: Sequence[BackgroundTask],
        method: str,
        path: str,
        idempotency_key: str | None,
        client: str = "",
        fingerprint: bytes = b"",
    ) -> tuple[list[bytes], int]:
        """One request's arguments to ``STORE``: its idempotency marker, then each job (see the script)."""
        if idempotency_key is None:
            chunks = [b"$0\r\n\r\n$0\r\n\r\n$1\r\n0\r\n"]
        else:
            scope = f"{self.backend.queue_name}\0{method}\0{path}\0{client}\0{idempotency_key}"
            digest = hashlib.sha256(scope.encode("utf-8", "surrogateescape")).hexdigest()
            chunks = [
                bulk(f"tachyon:idempotency:{digest}".encode()),
                bulk(fingerprint),
                bulk(b"%d" % self.backend.idempotency_ttl),
            ]
        chunks.append(bulk(b"%d" % len(tasks)))
        count = 4
        stamp = bulk(dt.datetime.now(dt.timezone.utc).strftime(_RQ_TIME_FORMAT).encode())
        parent = traceparent()
        for task in tasks:
            when = _when(task)
            template = self.template(task, when is not None)
            job_id = task.id  # the task's id is its job id (made now if nobody read it)
            data = _compress(template.dumps((template.func_name, None, task.args, task.kwargs)))
            extra: list[bytes] = []  # the status record's options (see redis_status.py), written only when set
            if task.owner is not None:
                extra += (b"$13\r\ntachyon_owner\r\n", bulk(task.owner.encode()))
            if task.keep_result:
                extra += (b"$12\r\ntachyon_keep\r\n", bulk(b"%d" % self.backend.result_limit))
            field_count = (
                template.field_count
                if parent is None and not extra
                else bulk(b"%d" % (template.pair_count * 2 + len(extra) + (2 if parent is not None else 0)))
            )
            chunks += (
                bulk(template.key_prefix + job_id.encode()),
                bulk(job_id.encode()),
                b"$1\r\n1\r\n" if task.job_id is not None else b"$1\r\n0\r\n",
                template.target,
                bulk(b"" if when is None else b"%d" % calendar.timegm(_next_second(when).utctimetuple())),
                field_count,
                b"$4\r\ndata\r\n",
                bulk(data),
                b"$10\r\ncreated_at\r\n",
                stamp,
            )
            if when is None:
                chunks += (b"$11\r\nenqueued_at\r\n", stamp)
            chunks.append(template.fields)
            count += template.arg_count + len(extra)
            if parent is not None:  # the worker continues the request's trace (see tracing.py)
                chunks += (b"$4\r\nmeta\r\n", bulk(template.dumps({"traceparent": parent})))
                count += 2
            chunks += extra
        return chunks, count

    def template(self, task: BackgroundTask, scheduled: bool) -> JobTemplate:
        """What RQ would write for a job of this function and options, built by RQ once and then reused."""
        key = (
            task.func,
            task.name,
            task.timeout,
            task.result_ttl,
            task.failure_ttl,
            task.retries,
            task.retry_delay,
            scheduled,
        )
        template = self._templates.get(key)
        if template is None:
            from rq.job import JobStatus

            options = self.options(task)
            if len(self._templates) >= 1024:  # options made per request (a name with an id): no unbounded cache
                self._templates.clear()
            status = JobStatus.SCHEDULED if scheduled else JobStatus.QUEUED
            job = self.backend.queue.create_job(task.func, args=(), kwargs={}, status=status, **options)
            target = self.backend.queue.scheduled_job_registry.key if scheduled else self.backend.queue.key
            template = self._templates[key] = JobTemplate(job, target, scheduled)
        return template

    def options(self, task: BackgroundTask) -> dict[str, Any]:
        """RQ's job options for ``task`` (timeouts, time-to-live, retries, description)."""
        from rq import Retry

        options: dict[str, Any] = {
            "timeout": _seconds(task.timeout) or self.backend.default_timeout,
            "result_ttl": task.result_ttl if task.result_ttl is not None else self.backend.result_ttl,
            "failure_ttl": task.failure_ttl if task.failure_ttl is not None else self.backend.failure_ttl,
            "description": task.name,
        }
        if task.retries:
            options["retry"] = Retry(
                max=task.retries, interval=[int(task.retry_delay * 2**n) for n in range(task.retries)]
            )
        return {key: value for key, value in options.items() if value is not None}


class JobTemplate:
    """The constant part of a job's hash, as RQ writes it, encoded once: per job only the id, the pickled call
    and the timestamps change. Taken from ``Job.to_dict()`` of the installed RQ, so the fields follow RQ."""

    __slots__ = ("fields", "field_count", "pair_count", "arg_count", "func_name", "dumps", "key_prefix", "target")

    def __init__(self, job: Any, target: str, scheduled: bool) -> None:
        fields = job.to_dict()
        for varying in ("data", "created_at", "enqueued_at"):
            fields.pop(varying, None)
        pairs = self.pair_count = len(fields) + (2 if scheduled else 3)  # + data, created_at (+ enqueued_at)
        self.fields = b"".join(bulk(_encode(k)) + bulk(_encode(v)) for k, v in fields.items())
        self.field_count = bulk(b"%d" % (2 * pairs))
        self.arg_count = 6 + 2 * pairs
        self.func_name = job.func_name
        self.dumps = job.serializer.dumps
        self.key_prefix = job.key[: -len(job.id)].encode()
        self.target = bulk(target.encode())


# RQ's ``utcformat``: how its job hashes write times (``created_at``, ``enqueued_at``).
_RQ_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


def _compress(data: bytes) -> bytes:
    """``zlib`` as RQ stores a job's call (workers read it with ``zlib.decompress``). The smallest window and
    memory level: a pickled call is small, and ``zlib.compress``'s defaults allocate some 256 KB per call."""
    compressor = zlib.compressobj(1, zlib.DEFLATED, 9, 1)
    return compressor.compress(data) + compressor.flush()


def _encode(value: Any) -> bytes:
    """A hash field or value as redis-py would send it (str enums such as RQ's ``JobStatus`` by value)."""
    if isinstance(value, bytes):
        return value
    return str.encode(value) if isinstance(value, str) else str(value).encode()


def _when(task: BackgroundTask) -> dt.datetime | None:
    """When a delayed task is due (None: run as soon as a worker is free), as the in-process tier counts it."""
    due = due_time(task)
    return None if due is None else dt.datetime.fromtimestamp(due, dt.timezone.utc)


def _next_second(when: dt.datetime) -> dt.datetime:
    """RQ's scheduler keeps whole seconds and truncates: round up, so a task never runs before its time."""
    if when.tzinfo is None:
        when = when.astimezone(dt.timezone.utc)  # a naive datetime is local time, as datetime.now() gives
    if when.microsecond:
        when = when.replace(microsecond=0) + dt.timedelta(seconds=1)
    return when


def _seconds(value: float | None) -> int | None:
    return None if value is None else max(1, round(value))
