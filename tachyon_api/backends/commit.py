"""Group commit: the writes of every request ready at the same moment go to Redis in one round trip.

A durable backend hands :meth:`GroupCommit.commit` one *entry* per request (the arguments that request adds to
one Lua script, already encoded). The first entry of an idle moment starts a flush as an asyncio task: it runs
on the next turn of the event loop, so entries that become ready in the same turn join it, and a lone request
waits for nothing but its own round trip. While a flush is in flight, new entries gather; the next flush takes
them all. Each flush is **one** ``EVALSHA`` of the backend's script. Redis runs a script without running
anything else in between, but does not roll it back when a command in it fails: so the script checks every entry
before its first write and answers per entry, and each request's entry is stored whole or not at all, whatever
the other entries of the flush do.

Why not redis-py's pipeline: its reply parser costs several microseconds per queued command, a MULTI/EXEC of
n commands has n + 2 replies while the script has one, and its ``execute`` retries on connection errors, which
could store a transaction twice. The connection itself (URL, AUTH, SELECT, TLS, timeouts) is redis-py's
``redis.asyncio`` connection, on the event loop: no thread hop.

Failures are told apart by how far the flush got, because the client's next step depends on it:

- :class:`NotStored`: nothing reached Redis (connecting failed, the connection was found closed before
  sending) or Redis refused the script before running it (``NOSCRIPT`` aside, which is retried at once;
  ``OOM``, ``LOADING``, ``READONLY``...). Nothing was written: safe to retry.
- :class:`OutcomeUnknown`: the script was sent but its reply never came (timeout, connection lost), or it failed
  in a way its checks did not foresee (a bug). Redis may have stored the entries. Only an idempotent retry is
  safe.

After a failure the connection is dropped; the next flush connects again, so the backend recovers by itself
when Redis is back.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable
from typing import Any

__all__ = ["GroupCommit", "NotStored", "OutcomeUnknown", "bulk"]

logger = logging.getLogger("tachyon_api.background")

_errors: Any
try:
    from redis import exceptions as _errors
except ImportError:  # redis is the optional ``rq`` extra; only an RQBackend, which needs it, commits
    _errors = None

if _errors is not None:
    # Error replies Redis gives *instead of* running a command (nothing was written), by redis-py's class for
    # the codes it knows and by code for the others.
    REFUSALS: tuple[type[BaseException], ...] = (
        _errors.ReadOnlyError,
        _errors.BusyLoadingError,
        _errors.OutOfMemoryError,
        _errors.AuthenticationError,
        _errors.NoPermissionError,
        _errors.ExecAbortError,
        _errors.ClusterDownError,
        _errors.TryAgainError,
    )
    # An error reply: Redis answered (the connection is in step), with an error instead of a result.
    ANSWERED: tuple[type[BaseException], ...] = (
        _errors.ResponseError,
        _errors.BusyLoadingError,
        _errors.AuthenticationError,
    )
    # The connection failed: what Redis did is unknown.
    BROKEN: tuple[type[BaseException], ...] = (_errors.RedisError, OSError, asyncio.TimeoutError)
    NoScriptError: type[BaseException] = _errors.NoScriptError
else:
    REFUSALS = ANSWERED = ()
    BROKEN = (OSError, asyncio.TimeoutError)
    NoScriptError = type("NoScriptError", (Exception,), {})
REFUSED_CODES = ("BUSY", "MISCONF", "NOREPLICAS")


def _refused(error: Exception) -> bool:
    return isinstance(error, REFUSALS) or str(error).startswith(REFUSED_CODES)


def bulk(value: bytes) -> bytes:
    """One RESP bulk string (an argument of a command)."""
    return b"$%d\r\n%s\r\n" % (len(value), value)


class NotStored(Exception):
    """Nothing of the flush was written to Redis."""


class OutcomeUnknown(Exception):
    """The flush may or may not have been written: its reply was lost."""


class _Entry:
    __slots__ = ("chunks", "count", "future")

    def __init__(self, chunks: list[bytes], count: int, future: asyncio.Future[Any]) -> None:
        self.chunks = chunks
        self.count = count
        self.future = future


class GroupCommit:
    """Group commit of script entries over one ``redis.asyncio`` connection, owned by one event loop.

    ``connect`` makes a new (not yet connected) ``redis.asyncio`` connection. ``prologue`` holds the encoded
    arguments the script takes before the entries; the script receives ``prologue..., number of entries,
    entries...`` and returns one reply per entry. ``max_entries`` bounds one flush.
    """

    def __init__(self, connect: Callable[[], Any], script: str, prologue: list[bytes], max_entries: int = 512) -> None:
        self._connect = connect
        self._script = script.encode()
        self._sha = hashlib.sha1(self._script).hexdigest().encode()
        self._prologue = b"".join(prologue)
        self._prologue_count = len(prologue)
        self._max = max_entries
        self._conn: Any = None
        self._waiting: list[_Entry] = []
        self._flusher: asyncio.Task[None] | None = None

    async def commit(self, chunks: list[bytes], count: int) -> Any:
        """Store one entry (``count`` encoded arguments); returns the script's reply for it.

        Raises :class:`NotStored` or :class:`OutcomeUnknown` (see the module docstring).
        """
        loop = asyncio.get_running_loop()
        entry = _Entry(chunks, count, loop.create_future())
        self._waiting.append(entry)
        if self._flusher is None:
            # Not flushed here and now: the task first runs on the next loop turn, after the other requests
            # that are ready in this one, so they share the round trip.
            self._flusher = loop.create_task(self._flush_all())
        return await entry.future

    async def aclose(self) -> None:
        """Close the connection (the next commit opens a new one)."""
        if self._flusher is not None:
            await asyncio.gather(self._flusher, return_exceptions=True)
        await self._drop()

    async def _flush_all(self) -> None:
        try:
            while self._waiting:
                batch, self._waiting = self._waiting[: self._max], self._waiting[self._max :]
                try:
                    replies = await self._flush(batch)
                except (NotStored, OutcomeUnknown) as exc:
                    for entry in batch:  # one exception object each: every request logs its own traceback
                        if not entry.future.done():
                            error = type(exc)(*exc.args)
                            error.__cause__ = exc.__cause__
                            entry.future.set_exception(error)
                    continue
                except BaseException as exc:  # a bug or a cancellation: no request may hang on it
                    for entry in batch + self._waiting:
                        if not entry.future.done():
                            entry.future.set_exception(OutcomeUnknown(f"the commit failed: {exc!r}"))
                    self._waiting = []
                    await self._drop()
                    raise
                for entry, reply in zip(batch, replies, strict=True):  # _flush checked the count
                    if not entry.future.done():
                        entry.future.set_result(reply)
        finally:
            self._flusher = None

    async def _flush(self, batch: list[_Entry]) -> list[Any]:
        count = self._prologue_count + 1 + sum(entry.count for entry in batch)
        args = [self._prologue, bulk(b"%d" % len(batch))]
        for entry in batch:
            args.extend(entry.chunks)
        conn = await self._ready()
        reply = await self._send(conn, b"EVALSHA", self._sha, count, args)
        if isinstance(reply, NoScriptError):
            # A new or restarted Redis does not know the script yet; it ran nothing, so send it in full.
            reply = await self._send(conn, b"EVAL", self._script, count, args)
        if isinstance(reply, Exception):
            await self._drop()
            if _refused(reply):
                raise NotStored(f"Redis refused the commit: {type(reply).__name__}: {reply}")
            raise OutcomeUnknown(f"the commit failed in Redis, possibly half-way: {type(reply).__name__}: {reply}")
        if not isinstance(reply, list) or len(reply) != len(batch):
            await self._drop()
            raise OutcomeUnknown(f"unexpected reply to the commit: {reply!r:.200}")
        return reply

    async def _ready(self) -> Any:
        """A connected connection, checked not to have been closed by Redis while idle; else NotStored."""
        if self._conn is not None and self._conn.is_connected:
            can_read = getattr(self._conn, "can_read", None) or self._conn.can_read_destructive
            try:
                stale = await can_read()  # stray data, or the end of a connection the server closed
            except BROKEN:  # redis-py raises for a connection the server closed (a restart, its idle timeout)
                stale = True
            if stale:  # nothing was sent on it yet: start afresh
                await self._drop()
        try:
            if self._conn is None or not self._conn.is_connected:
                self._conn = self._conn or self._connect()
                await self._conn.connect()
            return self._conn
        except BROKEN as exc:
            await self._drop()
            raise NotStored(f"cannot connect to Redis: {exc}") from exc

    async def _send(self, conn: Any, command: bytes, script: bytes, count: int, args: list[bytes]) -> Any:
        """One round trip: write the command, read its reply (an error reply is returned, not raised).

        Once writing has started, Redis may have received the whole command: any failure from here on
        leaves the outcome unknown.
        """
        head = b"*%d\r\n%s%s$1\r\n0\r\n" % (count + 3, bulk(command), bulk(script))
        try:
            await conn.send_packed_command([head, *args], check_health=False)
            return await conn.read_response()
        except ANSWERED as exc:  # Redis answered with an error
            return exc
        except BROKEN as exc:
            await self._drop()
            raise OutcomeUnknown(f"the commit was sent but its reply was lost: {exc!r}") from exc

    async def _drop(self) -> None:
        if self._conn is not None:
            try:
                await self._conn.disconnect(nowait=True)
            except Exception:  # already broken: nothing more to release
                logger.debug("Closing the Redis connection failed", exc_info=True)
