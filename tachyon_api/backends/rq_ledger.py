"""``tachyon worker``'s bookkeeping in Redis: the Lua scripts that claim, renew, finish and put back jobs in
RQ's own keys, and :class:`Ledger`, which runs them for one worker.

A job is claimed by one script run per batch (pop from the queue, mark started, add the execution to the
started registry, return the job hashes) and the successes of a batch are recorded by another. The scripts are
idempotent where a lost reply could repeat them: a claim whose reply was lost leaves executions in the worker's
set that it does not know, which :meth:`Ledger.reconcile` puts back on the queue; a finish records only jobs
whose execution is still in the started registry.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from collections.abc import Callable, Collection, Sequence
from typing import TYPE_CHECKING, Any

from rq.executions import Execution
from rq.job import Job
from rq.queue import Queue
from rq.utils import utcformat

from .redis_status import END_LUA, START_LUA, JobTracker
from .rq_jobs import JobSpec, Outcome, RunningJob

if TYPE_CHECKING:
    from redis import Redis
    from redis.commands.core import Script

__all__ = ["Ledger", "CLAIM", "FINISH", "RENEW", "UNCLAIM", "REQUEUE_INTERMEDIATE"]

logger = logging.getLogger("tachyon_api.worker")

# Claim up to len(ARGV) - 11 jobs. ARGV: the number of queue keys q, the queue keys, then the started
# registry key of each queue (q of them), the job key prefix, the worker's name, its key, its executions key,
# now (RQ's time format), now (a Unix timestamp), the lease (seconds), the executions' time-to-live, the
# worker key's time-to-live, then one new execution id per job that may be claimed. Returns per claimed job:
# the index of its queue (1-based), its id, its execution id, 1 if its success can be recorded by FINISH (no
# success callback, repeat, rate limit, webhook or dependents, and a result kept), whether to run it ("0": it was
# cancelled while it waited) and its status record's result limit ("" when not kept; START_LUA of
# redis_status.py marks the record running), and the fields the worker needs to run it: data, description,
# timeout, meta, result_ttl, retries_left.
CLAIM = (
    """
local q = tonumber(ARGV[1])
local a = 2 + 2 * q
local prefix, worker, wkey, wexec = ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3]
local iso, now, lease, ttl, wttl =
  ARGV[a + 4], tonumber(ARGV[a + 5]), tonumber(ARGV[a + 6]), tonumber(ARGV[a + 7]), tonumber(ARGV[a + 8])
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
      redis.call('HSET', ekey, 'id', eid, 'job_id', id, 'created_at', ARGV[a + 5], 'last_heartbeat', ARGV[a + 5],
        'worker_name', worker)
      redis.call('EXPIRE', ekey, ttl)
      redis.call('ZADD', 'rq:executions:' .. id, now + ttl + 60, eid)
      redis.call('EXPIRE', 'rq:executions:' .. id, ttl + 60)
      redis.call('ZADD', ARGV[1 + q + qi], now + lease, composite)
      redis.call('SADD', wexec, composite)
      redis.call('HSET', key, 'last_heartbeat', iso, 'status', 'started', 'started_at', iso, 'worker_name', worker)
      redis.call('PERSIST', key)
      local tnow = ARGV[a + 5]
"""
    + START_LUA
    + """
      local f = redis.call('HMGET', key, 'data', 'description', 'timeout', 'meta', 'result_ttl', 'retries_left',
        'success_callback_name', 'repeats_left', 'rate_limit_key', 'webhooks')
      local plain = 1
      if (f[7] and f[7] ~= '') or f[8] or f[9] or f[10] or f[5] == '0'
          or redis.call('EXISTS', key .. ':dependents') == 1 then
        plain = 0
      end
      out[#out + 1] = {
        qi, id, eid, plain, trun, tkeep, f[1], f[2] or '', f[3] or '', f[4] or '', f[5] or '', f[6] or ''
      }
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
)

# Record successes. ARGV: the job key prefix, the worker's key, its executions key, now (RQ's format), now (Unix
# timestamp, integer), now (Unix timestamp, float), the total working time of the batch, the worker's name, then
# per job 11 values:
# job id, execution id, started registry key, finished registry key, result ttl (-1: forever), the encoded return
# value ("" for None), when the execution started (Unix timestamp), and for its status record (END_LUA of
# redis_status.py): its state (succeeded, or cancelled), the kept result, the error and the latest progress
# (JSON, "" for none). Returns per job 1 (recorded) or 0 (its
# execution is no longer in the started registry: its lease was taken over, nothing written).
FINISH = (
    """
local prefix, wkey, wexec, iso, nowi, nowf = ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5]), ARGV[6]
local out, done = {}, 0
for a = 9, #ARGV, 11 do
  local id, eid, wip, finished, ttl, value, started =
    ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], tonumber(ARGV[a + 4]), ARGV[a + 5], ARGV[a + 6]
  local tstate, tresult, terror, tprogress, tnow = ARGV[a + 7], ARGV[a + 8], ARGV[a + 9], ARGV[a + 10], nowf
  local composite = id .. ':' .. eid
  if redis.call('ZSCORE', wip, composite) then
    local key = prefix .. id
    if redis.call('EXISTS', key) == 1 then  -- not deleted while it ran
      redis.call('HSET', key, 'status', 'finished', 'ended_at', iso, 'last_heartbeat', iso)
"""
    + END_LUA
    + """
      local rkey = 'rq:results:' .. id
      if value == '' then
        redis.call('XADD', rkey, 'MAXLEN', '~', '10', '*', 'type', '1', 'worker_name', ARGV[8], 'execution_id', eid,
          'execution_started_at', started, 'execution_ended_at', nowf)
      else
        redis.call('XADD', rkey, 'MAXLEN', '~', '10', '*', 'type', '1', 'worker_name', ARGV[8], 'return_value', value,
          'execution_id', eid, 'execution_started_at', started, 'execution_ended_at', nowf)
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
)

# Renew the leases of the running jobs and the worker's heartbeat. ARGV: the job key prefix, the worker's key,
# its executions key, now (RQ's format), now (Unix timestamp), the lease, the executions' time-to-live, the
# worker key's time-to-live, the worker's state, then per job: its started registry key and its composite key
# (job id:execution id). Returns the composite keys whose lease was gone (taken over by another worker).
RENEW = """
local prefix, wkey, wexec, iso, now, lease, ttl, wttl =
  ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
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
UNCLAIM = """
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
REQUEUE_INTERMEDIATE = """
if redis.call('LREM', ARGV[1], 1, ARGV[3]) == 1 then
  redis.call('LPUSH', ARGV[2], ARGV[3])
  return 1
end
return 0
"""


class Ledger:
    """One worker's jobs in Redis, claimed, renewed, finished and put back through the scripts above.

    Its methods make blocking Redis calls: the worker runs them in its Redis thread, retrying while Redis is
    away (a repeated call is safe: see the module docstring)."""

    def __init__(
        self,
        connection: Redis,
        name: str,
        key: str,
        executions_key: str,
        *,
        lease: float,
        executions_ttl: int,
        worker_ttl: int,
        serializer: Any,
    ) -> None:
        self.connection = connection
        self.name = name
        self.key = key
        self.executions_key = executions_key
        self.lease = lease
        self.executions_ttl = executions_ttl
        self.worker_ttl = worker_ttl  # of the worker's key
        self.serializer = serializer
        self._scripts: dict[str, Script] = {}
        self._unsure = False  # a claim was sent and its reply not read: it may have claimed jobs

    def script(self, source: str) -> Script:
        script = self._scripts.get(source)
        if script is None:
            script = self._scripts[source] = self.connection.register_script(source)
        return script

    def claim(
        self, queues: Sequence[Queue], count: int, known: Collection[str], send: Callable[[Callable[[], Any]], Any]
    ) -> list[RunningJob]:
        """Claim up to ``count`` jobs from ``queues`` (the first first). After a claim whose reply was lost, the
        executions of this worker not in ``known`` (the composite keys of its jobs) go back first. ``send``
        hands the jobs' status-record writes to the worker's Redis thread."""
        if self._unsure:
            self.reconcile(known)
        now = dt.datetime.now(dt.timezone.utc)
        stamp = now.timestamp()
        base = uuid.uuid4().hex[:24]
        ids = [f"{base}{i:08x}" for i in range(count)]  # unique execution ids, cheaper than a uuid each
        keys = [queue.key for queue in queues]
        wips = [queue.started_job_registry.key for queue in queues]
        self._unsure = True  # until the reply is read
        reply = self.script(CLAIM)(
            args=[
                len(keys),
                *keys,
                *wips,
                Job.redis_job_namespace_prefix,
                self.name,
                self.key,
                self.executions_key,
                utcformat(now),
                repr(stamp),
                self.lease,
                self.executions_ttl,
                self.worker_ttl,
                *ids,
            ]
        )
        self._unsure = False
        claimed = []
        for index, job_id, eid, plain, run, keep, *fields in reply:
            queue = queues[int(index) - 1]
            spec = JobSpec(job_id.decode(), queue.name, fields, self.serializer)
            execution = Execution(eid.decode(), spec.id, self.connection, worker_name=self.name)
            execution.created_at = now
            running = RunningJob(spec, queue, execution, bool(plain))
            running.skip = run == b"0"
            running.tracker = JobTracker(
                spec.id,
                Job.redis_job_namespace_prefix + spec.id,
                self.connection,
                keep=int(keep) if keep else None,
                send=send,
            )
            claimed.append(running)
        return claimed

    def reconcile(self, known: Collection[str]) -> None:
        """After a claim whose reply was lost: executions of this worker that it does not know go back."""
        members = [m.decode() for m in self.connection.smembers(self.executions_key)]  # type: ignore[union-attr]
        unknown = [m for m in members if m not in known]
        if unknown:
            self.unclaim(unknown)
        self._unsure = False

    def finish(self, outcomes: list[Outcome], default_result_ttl: int) -> list[Outcome]:
        """Record successes in one script run; returns those whose execution was no longer in the started
        registry (recorded by an attempt whose reply was lost, or their lease was taken over)."""
        now = dt.datetime.now(dt.timezone.utc)
        stamp = now.timestamp()
        args: list[Any] = [
            Job.redis_job_namespace_prefix,
            self.key,
            self.executions_key,
            utcformat(now),
            int(stamp),
            repr(stamp),
            repr(sum(stamp - o.running.started for o in outcomes)),
            self.name,
        ]
        for outcome in outcomes:
            running = outcome.running
            # The return value is kept in the status record when asked (keep_result), never in RQ's result.
            args += [
                running.job.id,
                running.execution.id,
                running.queue.started_job_registry.key,
                running.queue.finished_job_registry.key,
                default_result_ttl if running.job.result_ttl is None else running.job.result_ttl,
                "",
                repr(running.started),
                outcome.state,
                outcome.result,
                outcome.failure,
                running.tracker.pending_progress() if running.tracker is not None else b"",
            ]
        for outcome in outcomes:
            outcome.running.tries += 1
        reply = self.script(FINISH)(args=args)
        return [outcome for outcome, stored in zip(outcomes, reply, strict=True) if not stored]  # a flag per job

    def renew(self, jobs: Sequence[RunningJob], state: str) -> list[str]:
        """Renew the leases of ``jobs`` and the worker's heartbeat; returns the composite keys of the jobs whose
        lease was gone (taken over by another worker)."""
        now = dt.datetime.now(dt.timezone.utc)
        args: list[Any] = [
            Job.redis_job_namespace_prefix,
            self.key,
            self.executions_key,
            utcformat(now),
            repr(now.timestamp()),
            self.lease,
            self.executions_ttl,
            self.worker_ttl,
            state,
        ]
        for running in jobs:
            args += [running.queue.started_job_registry.key, running.composite]
        return [composite.decode() for composite in self.script(RENEW)(args=args)]

    def unclaim(self, composites: list[str]) -> None:
        """Put claimed jobs back at the front of their queue, as if never claimed."""
        ids = self.script(UNCLAIM)(args=[Job.redis_job_namespace_prefix, self.executions_key, *composites])
        if ids:
            logger.warning(
                "Worker %s: %d job(s) put back at the front of their queue: %s",
                self.name,
                len(ids),
                ", ".join(i.decode() for i in ids),
            )

    def requeue_intermediate(self, queue: Queue, job_id: str) -> bool:
        """Put back on ``queue`` a job an RQ worker left in its intermediate list; False if it was not there."""
        return bool(self.script(REQUEUE_INTERMEDIATE)(args=[queue.intermediate_queue.key, queue.key, job_id]))
