"""In-process task records shared by several web processes through Redis: :class:`RedisTaskStore`.

Each process keeps the records of the tasks it runs in memory (it is a ``MemoryTaskStore``) and mirrors every
change to a Redis hash in the layout of ``redis_status.py``, where any process reads them, watches them over
pub/sub and asks for their cancellation.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import msgspec

from ..tasks.records import MemoryTaskStore, TaskRecord, Tracker
from .redis_status import CANCEL_CHANNEL, RedisStatus, channel

__all__ = ["RedisTaskStore"]

logger = logging.getLogger("tachyon_api.background")


class RedisTaskStore(MemoryTaskStore):
    """In-process task records shared by every web process of an app through Redis.

    ``Tachyon(task_store=RedisTaskStore("redis://..."))`` (or ``RedisTaskStore.of(rq_backend)`` to use the
    durable backend's Redis). Each process keeps the records of the tasks it runs in memory, as
    :class:`MemoryTaskStore` does, and mirrors every change to ``tachyon:task:<id>`` in Redis: a record is
    written there before the response that carries its id is sent, and later changes follow within a turn of
    the event loop (grouped into one round trip). Any process answers a status request from Redis, and a
    cancellation served by another process reaches the one running the task over pub/sub.

    ``ttl``: seconds an ended record stays (in Redis and in memory); an unfinished one is kept
    ``unfinished_ttl`` seconds past its last change, in case its process dies without ending it.
    """

    shared = True

    def __init__(
        self,
        redis_url: str,
        *,
        ttl: float = 3_600.0,
        unfinished_ttl: float = 86_400.0,
        socket_timeout: float = 5.0,
        **limits: Any,
    ) -> None:
        super().__init__(ttl=ttl, **limits)
        self.redis_url = redis_url
        self.unfinished_ttl = unfinished_ttl
        self.redis = RedisStatus(
            redis_url, "tachyon:task:", socket_timeout=socket_timeout, cancel_channel=CANCEL_CHANNEL
        )
        self._dirty: dict[str, Tracker] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._flushing = False
        self._flush_task: asyncio.Future[None] | None = None
        self._listener: asyncio.Future[None] | None = None

    @classmethod
    def of(cls, backend: Any, **options: Any) -> RedisTaskStore:
        """The store on the Redis of an ``RQBackend``."""
        return cls(backend.redis_url, socket_timeout=backend.socket_timeout, **options)

    # --- writing ----------------------------------------------------------------------------------------
    def _fields(self, tracker: Tracker) -> tuple[str, str, list[Any]]:
        """ADVANCE's state, ttl and fields for the tracker as it is now (call under the lock)."""
        fields: list[Any] = [
            "tachyon_name",
            tracker.name,
            "tachyon_created",
            f"{tracker.created:.6f}",
            "tachyon_attempts",
            str(tracker.attempts),
            "tachyon_progress",
            msgspec.json.encode((tracker.done, tracker.message)),
            "tachyon_error",
            b"" if tracker.error is None else msgspec.json.encode(tracker.error),
        ]
        for name, value in (("tachyon_started", tracker.started), ("tachyon_ended", tracker.ended)):
            if value is not None:
                fields += [name, f"{value:.6f}"]
        if tracker.owner is not None:
            fields += ["tachyon_owner", tracker.owner]
        if tracker.result is not None:
            fields += ["tachyon_result", tracker.result]
        ttl = self.ttl if tracker.final else self.unfinished_ttl
        return tracker.state, str(max(1, int(ttl))), fields

    async def publish(self, trackers: list[Tracker]) -> None:
        """Write new records to Redis now (before the response that carries their ids). If Redis cannot be
        reached, the request goes on (its tasks run here, and this process answers for them): the failure is
        logged and the records are written with the next change that reaches Redis."""
        self.start()
        with self.lock:
            writes = [(tracker.id, self._fields(tracker)) for tracker in trackers]
            for tracker in trackers:
                self._dirty.pop(tracker.id, None)
        try:
            await self._write(writes)
        except Exception as exc:
            logger.error(
                "Could not write %d new task record(s) to %s: other web processes cannot answer for them yet",
                len(writes),
                self.redis_url,
                exc_info=exc,
            )
            with self.lock:
                for tracker in trackers:
                    self.mirror(tracker)

    def mirror(self, tracker: Tracker) -> None:
        """A record changed (under the lock, in any thread): write it to Redis on the next turn of the loop.
        One flush at a time, so a record's writes reach Redis in the order they were made."""
        self._dirty[tracker.id] = tracker
        if not self._flushing and self._loop is not None:
            self._flushing = True
            try:
                self._loop.call_soon_threadsafe(self._schedule_flush)
            except RuntimeError:  # the loop is closed
                self._flushing = False

    def _schedule_flush(self) -> None:
        # The loop keeps only a weak reference to a task: hold it until it ends, or it may vanish mid-flush.
        self._flush_task = asyncio.ensure_future(self._flush())

    async def _flush(self) -> None:
        while True:
            with self.lock:
                dirty, self._dirty = self._dirty, {}
                if not dirty:
                    self._flushing = False
                    return
                writes = [(tracker.id, self._fields(tracker)) for tracker in dirty.values()]
            try:
                await self._write(writes)
            except Exception as exc:
                logger.error("Could not write %d task record(s) to %s", len(writes), self.redis_url, exc_info=exc)

    async def _write(self, writes: list[tuple[str, tuple[str, str, list[Any]]]]) -> None:
        if not writes:
            return
        client = self.redis.client()
        script = self.redis.script(client)
        async with client.pipeline(transaction=False) as pipe:
            for task_id, (state, ttl, fields) in writes:
                await script(
                    keys=[self.redis.key(task_id)], args=[channel(task_id), state, ttl, "", *fields], client=pipe
                )
            await pipe.execute()

    # --- the app's loop: flushes and cancellations from other processes --------------------------------
    def start(self) -> None:
        """Bind to the running loop and listen for cancellations (at startup, or at the first record)."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._loop = loop
            self._listener = asyncio.ensure_future(self._listen())

    async def _listen(self) -> None:
        """Stop the tasks of this process that another process was asked to cancel (the cancel channel's
        messages are task ids)."""
        while True:
            try:
                async with self.redis.hub().listen(CANCEL_CHANNEL, self._cancel_requested):
                    await asyncio.Future()  # until cancelled at shutdown
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.warning("Listening for task cancellations in %s failed: %r; retrying", self.redis_url, exc)
                await asyncio.sleep(1.0)

    def _cancel_requested(self, data: bytes | None) -> None:
        tracker = self.get(data.decode(errors="replace")) if data else None
        if tracker is not None:
            with self.lock:
                tracker.cancel()

    async def aclose(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            await asyncio.gather(self._listener, return_exceptions=True)
            self._listener = None
        if self._dirty:
            await self._flush()
        await self.redis.aclose()
        self._loop = None

    # --- the StatusSource protocol: this process's own records first, then Redis ------------------------
    async def read_status(self, task_id: str) -> tuple[TaskRecord, str | None] | None:
        found = await super().read_status(task_id)
        return found if found is not None else await self.redis.read(task_id)

    def watch_status(self, task_id: str) -> AsyncIterator[TaskRecord]:
        tracker = self.get(task_id)
        return tracker.watch() if tracker is not None else self.redis.watch(task_id)

    async def cancel_status(self, task_id: str) -> bool | None:
        if self.get(task_id) is not None:
            return await super().cancel_status(task_id)
        outcome = await self.redis.cancel(task_id)
        return None if outcome == "unknown" else not outcome.startswith("final:")
