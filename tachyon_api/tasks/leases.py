"""The leases that elect, for each periodic job, the one process that runs its ticks (see ``schedule.py``).

:class:`ScheduleLease` is what the scheduler asks of a lease. :class:`FileLease` covers the processes of one
host; :class:`RedisLease` any processes on any hosts, and is what a Redis backend's ``schedule_lease`` returns.
"""

from __future__ import annotations

import fcntl
import hashlib
import inspect
import json
import logging
import math
import os
import re
import tempfile
import uuid
from collections.abc import Callable
from typing import Any, Protocol

__all__ = ["ScheduleLease", "FileLease", "RedisLease", "FILE_POLL"]

logger = logging.getLogger("tachyon_api.schedule")

# How often a process that does not hold a job's file lock tries to take it (seconds): the takeover bound on one
# host, since the kernel drops the lock of a process the moment it dies.
FILE_POLL = 0.5


class ScheduleLease(Protocol):
    """One periodic job's lease, and the job's state shared by every process that may hold it."""

    #: How often a process without the lease tries to take it (seconds).
    poll: float
    #: How often the holder must call :meth:`hold` to keep the lease (seconds; ``math.inf``: never).
    renew: float

    async def hold(self) -> tuple[bool, int | None]:
        """Take the lease if it is free, or keep it; never waits. Returns whether this process holds it, and the
        last tick claimed (epoch seconds; None if the job never ran anywhere)."""
        ...

    async def claim(self, tick: int, outcome: str | None) -> bool:
        """Record ``tick`` as claimed, if this process holds the lease and no tick at or after it was claimed;
        returns whether it did. With ``outcome`` (``"running"``, ``"queued"``) the tick runs and becomes the
        last run; without, it is skipped or missed."""
        ...

    async def record(self, tick: int, outcome: str) -> None:
        """The outcome of the run of ``tick``, unless another run was claimed since."""
        ...

    async def read(self) -> dict[str, Any]:
        """The shared state: ``tick`` (last claimed), ``run`` (last run) and ``outcome`` (of that run), each
        missing until known."""
        ...

    async def release(self) -> None:
        """Give the lease up, if held, so another process takes it at its next try."""
        ...


class FileLease:
    """A job's lease on one host: an exclusive ``flock`` on a file, held while the process lives (the kernel
    releases it when the process dies, however it dies). Its shared state (the last tick claimed and its
    outcome) is a JSON file beside it, replaced atomically, so any process can read it."""

    poll = FILE_POLL
    renew = math.inf  # nothing to renew: the lock lasts as long as the file descriptor

    def __init__(self, path: str) -> None:
        self.path = path
        self.state_path = path[: -len(".lock")] + ".json"
        self._fd: int | None = None

    @classmethod
    def for_job(cls, name: str, func: Callable[..., Any]) -> FileLease:
        """The lease of the job ``name`` in this user's lock folder, named after the job and the file that
        defines its function ``func``: two checkouts of an app are two apps, the ``--workers`` of one app share
        the lock."""
        folder = os.path.join(tempfile.gettempdir(), f"tachyon-schedule-{os.getuid()}")
        os.makedirs(folder, mode=0o700, exist_ok=True)
        if os.stat(folder).st_uid != os.getuid():
            raise PermissionError(f"{folder} belongs to another user: remove it, or set TMPDIR to a private folder")
        try:
            source = os.path.realpath(inspect.getfile(func))
        except TypeError:
            source = func.__module__
        digest = hashlib.sha256(f"{source}\0{name}".encode()).hexdigest()[:16]
        slug = re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:60]
        return cls(os.path.join(folder, f"{slug}-{digest}.lock"))

    async def hold(self) -> tuple[bool, int | None]:
        """Take the lock if it is free (never waits); returns whether this process holds it, and the last tick
        claimed."""
        if self._fd is None:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                return False, None
            self._fd = fd
        return True, (await self.read()).get("tick")

    async def read(self) -> dict[str, Any]:
        try:
            with open(self.state_path, encoding="utf-8") as file:
                state = json.load(file)
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            logger.warning("Unreadable schedule state %s (%s): treating the job as never run", self.state_path, exc)
            return {}
        return state if isinstance(state, dict) else {}

    async def claim(self, tick: int, outcome: str | None) -> bool:
        """Record ``tick`` as claimed; False if it or a later tick was claimed before. With ``outcome`` the
        tick runs (``"running"``, ``"queued"``): it becomes the last run; without, it is skipped or missed."""
        if self._fd is None:
            return False
        state = await self.read()
        if state.get("tick", -1) >= tick:
            return False
        state["tick"] = tick
        if outcome is not None:
            state["run"], state["outcome"] = tick, outcome
        self._write(state)
        return True

    async def record(self, tick: int, outcome: str) -> None:
        """The outcome of the run of ``tick``, unless another run was claimed meanwhile."""
        state = await self.read()
        if state.get("run") == tick:
            state["outcome"] = outcome
            self._write(state)

    def _write(self, state: dict[str, Any]) -> None:
        temporary = f"{self.state_path}.{os.getpid()}"
        with open(temporary, "w", encoding="utf-8") as file:
            json.dump(state, file)
        os.replace(temporary, self.state_path)

    async def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


# Take or renew the lease, and read the last tick claimed. KEYS: lease, state; ARGV: holder id, ttl (ms).
_HOLD = """
local holder = redis.call('GET', KEYS[1])
local held = 0
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2]); held = 1
elseif not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]); held = 1
end
return {held, redis.call('HGET', KEYS[2], 'tick')}
"""
# Claim a tick (only the holder, only forward). KEYS: lease, state; ARGV: holder id, tick, outcome ("" when the
# tick does not run).
_CLAIM = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
local last = tonumber(redis.call('HGET', KEYS[2], 'tick') or '-1')
if tonumber(ARGV[2]) <= last then return 0 end
redis.call('HSET', KEYS[2], 'tick', ARGV[2])
if ARGV[3] ~= '' then redis.call('HSET', KEYS[2], 'run', ARGV[2], 'outcome', ARGV[3]) end
return 1
"""
# Record the outcome of a run unless another run was claimed since. KEYS: state; ARGV: tick, outcome.
_RECORD = """
if redis.call('HGET', KEYS[1], 'run') == ARGV[1] then redis.call('HSET', KEYS[1], 'outcome', ARGV[2]) end
return 1
"""
# Give the lease up if it is still ours. KEYS: lease; ARGV: holder id.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
"""


class RedisLease:
    """A job's lease across processes and hosts: a Redis key holding this process's id for ``ttl`` seconds,
    renewed every third of it while held. A process that dies stops renewing, and another takes the lease at
    most ``ttl`` plus a third of it later. The shared state (last tick claimed, its outcome) is a hash beside
    it; claims go through a script that checks the holder, so a holder that lost its lease (a long pause)
    cannot claim a tick."""

    def __init__(self, redis: Any, prefix: str, ttl: float) -> None:
        self.redis = redis  # a redis.asyncio client
        self.lease_key = f"{prefix}:lease"
        self.state_key = f"{prefix}:state"
        self.ttl = ttl
        self.poll = self.renew = ttl / 3
        self.holder = uuid.uuid4().hex

    async def hold(self) -> tuple[bool, int | None]:
        held, tick = await self.redis.eval(_HOLD, 2, self.lease_key, self.state_key, self.holder, int(self.ttl * 1000))
        return bool(held), None if tick is None else int(tick)

    async def read(self) -> dict[str, Any]:
        state = {key.decode(): value.decode() for key, value in (await self.redis.hgetall(self.state_key)).items()}
        return {key: value if key == "outcome" else int(value) for key, value in state.items()}

    async def claim(self, tick: int, outcome: str | None) -> bool:
        return bool(await self.redis.eval(_CLAIM, 2, self.lease_key, self.state_key, self.holder, tick, outcome or ""))

    async def record(self, tick: int, outcome: str) -> None:
        await self.redis.eval(_RECORD, 1, self.state_key, tick, outcome)

    async def release(self) -> None:
        await self.redis.eval(_RELEASE, 1, self.lease_key, self.holder)
