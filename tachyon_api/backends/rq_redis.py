"""``tachyon worker``'s Redis connections, and its Redis calls retried with backoff while Redis is away.

Every Redis call of the worker's loop goes through :class:`RedisCalls`: one thread makes them, one at a time,
and a call that fails because Redis is away, restarting or loading its data is made again with capped
exponential backoff until Redis answers, with one warning when the outage starts, one every five seconds while
it lasts and one when it ends. redis-py itself retries nothing: a retried script could claim jobs twice; the
worker retries knowing what it sent (see ``rq_ledger.py``).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import redis.exceptions
from redis import Redis
from redis.backoff import NoBackoff
from redis.retry import Retry

__all__ = ["TRANSIENT", "RedisCalls", "connect", "safe_url"]

logger = logging.getLogger("tachyon_api.worker")

# What a Redis call can fail with when Redis is away, restarting or loading its data: retried with backoff.
TRANSIENT: tuple[type[BaseException], ...] = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.BusyLoadingError,
    redis.exceptions.ReadOnlyError,
    redis.exceptions.TryAgainError,
    OSError,
)


def connect(url: str, socket_timeout: float, read_timeout: float | None = None) -> Redis:
    """A client that never retries by itself (see the module docstring)."""
    return Redis.from_url(
        url,
        socket_connect_timeout=socket_timeout,
        socket_timeout=socket_timeout if read_timeout is None else read_timeout,
        retry=Retry(NoBackoff(), 0),
    )


def safe_url(url: str) -> str:
    """``url`` without its password, for the logs."""
    return re.sub(r"//[^@/]*@", "//***@", url)


class RedisCalls:
    """The Redis thread of the worker called ``name``, connected to ``url``.

    ``healthy_since`` is when the last failed call failed (or the worker reached Redis first): the worker takes
    over other workers' leases only after a while in touch with Redis (``rq_leases.py``)."""

    def __init__(self, name: str, url: str) -> None:
        self.name = name
        self.url = url
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="tachyon-worker-redis")
        self.healthy_since = time.monotonic()
        self.outage_since: float | None = None
        self.outage_logged = 0.0

    async def call(self, func: Callable[..., Any], *args: Any) -> Any:
        """``func(*args)`` in the Redis thread, again and again with capped backoff while Redis is unreachable."""
        delay = 0.1
        while True:
            try:
                result = await asyncio.get_running_loop().run_in_executor(self.pool, func, *args)
            except TRANSIENT as exc:
                self.outage(exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            except Exception:
                logger.exception("Worker %s: %s failed", self.name, getattr(func, "__name__", func))
                raise
            if self.outage_since is not None:
                logger.warning(
                    "Worker %s: Redis is reachable again after %.1fs", self.name, time.monotonic() - self.outage_since
                )
                self.outage_since = None
            return result

    def outage(self, exc: BaseException) -> None:
        """A call failed for ``exc``: logged at the outage's start, then every five seconds."""
        now = time.monotonic()
        self.healthy_since = now
        if self.outage_since is None:
            self.outage_since = now
            self.outage_logged = now
            logger.warning(
                "Worker %s: Redis at %s is not reachable (%s: %s); retrying with backoff, running jobs go on",
                self.name,
                safe_url(self.url),
                type(exc).__name__,
                exc,
            )
        elif now - self.outage_logged >= 5.0:
            self.outage_logged = now
            logger.warning(
                "Worker %s: Redis still unreachable after %.0fs (%s)",
                self.name,
                now - self.outage_since,
                type(exc).__name__,
            )
