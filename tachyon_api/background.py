"""Background tasks: the per-request list (:class:`BackgroundTasks`) and the app's runner that owns every task.

The life of a task, all of it in this module:

1. ``add_task(func, *args, **kwargs)`` checks the call at once, inside the request: a coroutine object, a
   non-callable or arguments that do not bind to ``func``'s signature raise ``TypeError`` there, where the
   mistake is, rather than later in a log.
2. After the last byte of the response has been handed to the server, the framework gives the request's
   tasks (those of a returned ``Response(background=...)`` first, then the injected ones) to
   :meth:`BackgroundRunner.submit` as one *batch*, together with a copy of the request's context variables.
3. The runner starts the batch as an asyncio task it keeps referenced, unless ``concurrency`` batches are
   already running; then the batch waits in a bounded queue. Room is checked before the response is sent
   (:meth:`BackgroundRunner.admit`): when the queue is full the ``overflow`` policy applies, ``"wait"``
   (default) delays the response until there is room (at most ``shutdown_timeout``), so overload slows the
   clients down and memory stays bounded; ``"drop"`` logs and counts the lost tasks.
4. A batch runs its tasks one after another, in order. Async tasks run on the loop; sync tasks in the
   runner's own bounded thread pool (never the endpoints' pool, never the loop). A failure is retried if the
   task asked for it, else logged at ERROR with its traceback on the ``tachyon_api.background`` logger and
   passed to the error hooks; the next task runs regardless.
5. At shutdown the runner stops taking tasks, lets running and queued ones finish until ``shutdown_timeout``,
   then cancels the rest and logs every lost task by name.

Without a lifespan (a bare ASGI call, as ``httpx.ASGITransport`` makes it) there is nobody to own a detached
task, so the request's own ASGI call runs its batch after sending the response: nothing is lost.
"""

from __future__ import annotations

import asyncio
import bisect
import contextvars
import functools
import inspect
import logging
import random
import sys
import threading
import time
import traceback
import types
import weakref
from collections import deque
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Iterator, Sequence

import msgspec

from .backends.rq import RQBackend
from .concurrency import ThreadPool
from .idempotency import Credentials, client_scope, fingerprint
from .tracing import task_span

if TYPE_CHECKING:
    from .requests import HTTPConnection

__all__ = [
    "BackgroundTask", "BackgroundTasks", "BackgroundRunner", "RQBackend", "TaskFailure", "TaskOptions", "TaskStats",
    "TaskMetrics",
]

logger = logging.getLogger("tachyon_api.background")

class _Callee:
    """What ``add_task`` needs to know about a callable, worked out once per function or method.

    ``check(args, kwargs)`` raises TypeError when the arguments do not bind. Plain positional calls, the usual
    case, are checked by counting; anything else goes through ``Signature.bind``.
    """

    __slots__ = ("sig", "offset", "min_args", "max_args", "is_async", "name")

    def __init__(self, func: Any, target: Any, offset: int) -> None:
        self.is_async = _is_async(func)
        self.name = _name(func)
        try:
            self.sig: inspect.Signature | None = inspect.signature(target)
        except (TypeError, ValueError):  # some builtins: nothing to check against
            self.sig = None
        self.offset = offset
        self.min_args = self.max_args = -1
        if self.sig is not None:
            params = list(self.sig.parameters.values())
            positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
            if all(p.kind in positional for p in params):
                self.max_args = len(params) - offset
                self.min_args = sum(1 for p in params if p.default is p.empty) - offset

    def check(self, func: Any, args: tuple, kwargs: dict) -> None:
        if self.sig is None or (not kwargs and self.min_args <= len(args) <= self.max_args):
            return
        try:
            if self.offset:
                self.sig.bind(func.__self__, *args, **kwargs)
            else:
                self.sig.bind(*args, **kwargs)
        except TypeError as exc:
            raise TypeError(f"add_task({self.name}, ...): the arguments do not match its signature: {exc}") from None


# Keyed by a weak reference to the function (an entry leaves when its function is collected, so a lambda per
# request does not grow the table); bound methods have their own table, as their signature skips ``self``. A
# plain dict of weak references rather than a WeakKeyDictionary: the lookup stays in C, and ``add_task`` is on
# the request path.
_callees: dict["weakref.ref[Any]", _Callee] = {}
_method_callees: dict["weakref.ref[Any]", _Callee] = {}


def _callee(func: Any) -> _Callee:
    """The :class:`_Callee` of ``func``, cached for functions and bound methods (computed each time for
    partials and callable objects, which may change). Raises TypeError for what is not a task function."""
    kind = type(func)
    if kind is types.FunctionType or kind is types.MethodType:
        method = kind is types.MethodType
        target = func.__func__ if method else func
        table = _method_callees if method else _callees
        try:
            return table[weakref.ref(target)]
        except (KeyError, TypeError):  # not seen yet; TypeError: a method of an object without weak references
            pass
        callee = _Callee(func, target, 1 if method else 0)
        if type(target) is types.FunctionType:
            table[weakref.ref(target, functools.partial(_forget, table))] = callee
        return callee
    if inspect.iscoroutine(func) or inspect.isawaitable(func):
        raise TypeError(
            "add_task() needs the function itself, not a coroutine object: write "
            "add_task(send_email, to, subject), not add_task(send_email(to, subject))"
        )
    if not callable(func):
        raise TypeError(f"add_task() needs a callable (function, method or object), got {type(func).__name__}")
    return _Callee(func, func, 0)


def _forget(table: dict, ref: "weakref.ref[Any]") -> None:
    """Drop a collected function's entry (a weak reference's callback)."""
    table.pop(ref, None)


def _is_async(func: Any) -> bool:
    while isinstance(func, functools.partial):
        func = func.func
    if inspect.iscoroutinefunction(func):
        return True
    call = getattr(type(func), "__call__", None)
    return not inspect.isroutine(func) and not isinstance(func, type) and inspect.iscoroutinefunction(call)


def _name(func: Any) -> str:
    while isinstance(func, functools.partial):
        func = func.func
    name = getattr(func, "__qualname__", None) or getattr(type(func), "__qualname__", None)
    return name or repr(func)


_DURABLE_ONLY = ("delay", "at", "job_id", "result_ttl", "failure_ttl")


class BackgroundTask:
    """One call to make after the response: ``func(*args, **kwargs)``, with its options.

    Options are set with :meth:`with_options`, never through ``**kwargs``, so they cannot collide with the
    task's own keyword arguments.
    """

    __slots__ = ("func", "args", "kwargs", "is_async", "name", "timeout", "retries", "retry_delay", "backend",
                 "delay", "at", "job_id", "result_ttl", "failure_ttl")

    def __init__(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        self._setup(func, args, kwargs, None)

    @classmethod
    def create(
        cls, func: Callable[..., Any], args: tuple, kwargs: dict, backend: Any, durable: bool | None = None
    ) -> "BackgroundTask":
        """A task that is durable on ``backend`` (None: in-process) unless ``func`` was marked otherwise;
        ``durable=False`` keeps it in-process whatever the backend or mark (and skips the durable checks)."""
        task = cls.__new__(cls)
        task._setup(func, args, kwargs, None if durable is False else backend, durable is False)
        return task

    def _setup(self, func: Callable[..., Any], args: tuple, kwargs: dict, backend: Any, local: bool = False) -> None:
        callee = _callee(func)
        callee.check(func, args, kwargs)
        self.func = func
        self.args = args
        self.kwargs = kwargs
        self.is_async = callee.is_async
        self.name = callee.name
        self.timeout: float | None = None
        self.retries = 0
        self.retry_delay = 0.5
        self.delay: float | Any = None
        self.at: Any = None
        self.job_id: str | None = None
        self.result_ttl: int | None = None
        self.failure_ttl: int | None = None
        marked = getattr(func, "__tachyon_backend__", None)
        if marked is not None and not local:
            backend = marked[0]
        self.backend = backend
        if backend is not None:
            backend.check(func, args, kwargs)
        if marked is not None:  # the mark's defaults; in-process, those that only mean something in RQ drop
            self.with_options(**{k: v for k, v in marked[1].items() if backend is not None or k not in _DURABLE_ONLY})

    def with_options(
        self,
        *,
        name: str | None = None,
        timeout: float | None = None,
        retries: int | None = None,
        retry_delay: float | None = None,
        delay: float | Any = None,
        at: Any = None,
        job_id: str | None = None,
        result_ttl: int | None = None,
        failure_ttl: int | None = None,
        durable: bool | None = None,
    ) -> "BackgroundTask":
        """Set per-task options and return the task, so they chain onto ``add_task(...)``.

        ``durable=False`` runs this task in-process after the response even in an app whose tasks are durable
        (or for a function marked ``@backend.task()``): for cheap work whose loss is acceptable, which must not
        turn a request into a 503 while the task backend is down. The durable-only options set so far are
        dropped. ``durable=True`` insists on a durable task (``ValueError`` if there is no backend).

        ``timeout`` (seconds): an async task is cancelled when it passes it; a sync task cannot be stopped, so
        it is reported as overrun (logged, counted in ``timed_out``) and awaited. ``retries``: how many more
        attempts a failing task gets, after ``retry_delay * 2**n`` seconds with jitter. ``name``: used in logs,
        error hooks and stats instead of the function's qualified name.

        Durable tasks only (see ``backends/rq.py``): ``delay`` (seconds or timedelta) or ``at`` (a datetime)
        to run later, ``job_id`` to de-duplicate, ``result_ttl`` and ``failure_ttl`` in seconds.
        """
        if durable is not None:
            if durable and self.backend is None:
                raise ValueError("durable=True needs a durable backend (Tachyon(task_backend=...) or @backend.task())")
            if not durable and self.backend is not None:
                self.backend = None
                for key in _DURABLE_ONLY:  # they mean nothing in-process (given with durable=False: an error below)
                    setattr(self, key, None)
        durable_only = zip(_DURABLE_ONLY, (delay, at, job_id, result_ttl, failure_ttl))
        given = {key: value for key, value in durable_only if value is not None}
        if given:
            if self.backend is None:
                need = "need a durable task (Tachyon(task_backend=...) or @backend.task())"
                raise ValueError(f"{', '.join(given)} {need}")
            self.backend.check_options(given)
        for key, value in given.items():
            setattr(self, key, value)
        if name is not None:
            self.name = name
        if timeout is not None:
            if timeout <= 0:
                raise ValueError("timeout must be positive")
            self.timeout = timeout
        if retries is not None:
            if not isinstance(retries, int) or isinstance(retries, bool):
                raise TypeError(f"retries must be an int, got {retries!r}")
            if retries < 0:
                raise ValueError("retries cannot be negative")
            self.retries = retries
        if retry_delay is not None:
            if retry_delay < 0:
                raise ValueError("retry_delay cannot be negative")
            self.retry_delay = retry_delay
        return self

    async def __call__(self) -> None:
        """Run the task now, in the caller's context, with its options (Starlette compatibility)."""
        await _standalone_runner().run_batch([self], "", "")

    def __repr__(self) -> str:
        return f"<BackgroundTask {self.name}>"


class BackgroundTasks:
    """The tasks one request collects. Inject it by annotating a parameter ``BackgroundTasks``.

    One instance is shared by the endpoint and all its dependencies. It is always truthy, so the seed's
    ``if background_tasks: background_tasks.add_task(...)`` adds the task whenever the object was injected.
    """

    __slots__ = ("_tasks", "_backend")

    def __init__(self, tasks: Sequence[BackgroundTask] | None = None, *, backend: Any = None) -> None:
        self._tasks: list[BackgroundTask] = [] if tasks is None else list(tasks)
        self._backend = backend

    def add_task(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> BackgroundTask:
        """Queue ``func(*args, **kwargs)`` to run after the response; returns the task for ``with_options``.

        With a durable backend (the app's ``task_backend``, or a function marked ``@backend.task()``) the
        function must be importable and its arguments serialisable: checked here, ``TypeError`` otherwise.
        """
        task = BackgroundTask.create(func, args, kwargs, self._backend)
        self._tasks.append(task)
        return task

    def with_options(self, *, durable: bool | None = None, **options: Any) -> "TaskOptions":
        """Options for the next ``add_task``: ``background_tasks.with_options(durable=False).add_task(...)``.

        The options are those of :meth:`BackgroundTask.with_options`. Given here, ``durable=False`` applies
        before ``add_task`` checks the call, so even a lambda or a closure can run in-process in an app whose
        tasks are durable.
        """
        unknown = set(options) - _TASK_OPTIONS
        if unknown:
            raise TypeError(f"with_options() got unexpected option(s): {', '.join(sorted(unknown))}")
        return TaskOptions(self, durable, options)

    @property
    def tasks(self) -> tuple[BackgroundTask, ...]:
        return tuple(self._tasks)

    def __iter__(self) -> Iterator[BackgroundTask]:
        return iter(self._tasks)

    def __len__(self) -> int:
        return len(self._tasks)

    def __bool__(self) -> bool:
        return True

    async def run_tasks(self) -> None:
        """Run every task now, in order, each isolated from the others' failures."""
        await _standalone_runner().run_batch(self._tasks, "", "")

    __call__ = run_tasks

    def __repr__(self) -> str:
        return f"<BackgroundTasks {[t.name for t in self._tasks]}>"


class TaskOptions:
    """What ``BackgroundTasks.with_options(...)`` returns: ``add_task`` with those options preset."""

    __slots__ = ("_tasks", "_durable", "_options")

    def __init__(self, tasks: BackgroundTasks, durable: bool | None, options: dict[str, Any]) -> None:
        self._tasks = tasks
        self._durable = durable
        self._options = options

    def add_task(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> BackgroundTask:
        """Add ``func(*args, **kwargs)`` to the request's tasks with these options; returns the task."""
        task = BackgroundTask.create(func, args, kwargs, self._tasks._backend, self._durable)
        task.with_options(durable=self._durable, **self._options)
        self._tasks._tasks.append(task)
        return task


_TASK_OPTIONS = frozenset(inspect.signature(BackgroundTask.with_options).parameters) - {"self", "durable"}


def collect(*sources: BackgroundTask | BackgroundTasks | None) -> list[BackgroundTask]:
    """Flatten response and injected tasks, in that order, into one batch."""
    batch: list[BackgroundTask] = []
    for source in sources:
        if source is None:
            continue
        if isinstance(source, BackgroundTasks):
            batch.extend(source._tasks)
        elif isinstance(source, BackgroundTask):
            batch.append(source)
        elif callable(source):  # another framework's task object (e.g. Starlette's): run it as is
            batch.append(BackgroundTask(source))
        else:
            raise TypeError(f"background= takes a BackgroundTask or BackgroundTasks, got {type(source).__name__}")
    return batch


def has_durable(tasks: list[BackgroundTask]) -> bool:
    for task in tasks:
        if task.backend is not None:
            return True
    return False


async def store_durable(
    tasks: list[BackgroundTask], connection: "HTTPConnection", method: str, credentials: "Credentials | None" = None
) -> list[BackgroundTask]:
    """Store the durable tasks in their backends (before the response is sent); return the in-process rest.

    ``connection`` is the request (or the WebSocket, whose ``method`` is ``"WEBSOCKET"``) that added them;
    ``credentials`` says where its route's requests carry credentials (see ``idempotency.py``).

    The request's ``Idempotency-Key`` header, if any, is passed on with what makes the request this one: its
    client's scope (every credential it carries, or the backend's ``idempotency_scope``: other clients' keys are
    other keys) and a fingerprint of what it asks (method, path, query, body: the same key with another request
    is refused). So a retried request stores its tasks once, and a reused key never swallows another request's
    tasks. Raises ``TaskBackendUnavailable`` (503: nothing stored), ``TaskOutcomeUnknown`` (503: maybe stored)
    or ``IdempotencyKeyReused`` (422: nothing stored).
    """
    durable: dict[Any, list[BackgroundTask]] = {}
    local: list[BackgroundTask] = []
    for task in tasks:
        if task.backend is None:
            local.append(task)
        else:
            durable.setdefault(task.backend, []).append(task)
    key = connection.headers.get("idempotency-key")
    client, digest = "", b""
    if key is not None:
        digest = await fingerprint(connection, method)
    path = connection.scope["path"]
    for backend, group in durable.items():
        if key is not None:
            client = await client_scope(connection, credentials, getattr(backend, "idempotency_scope", None))
        await backend.store(group, method, path, key, client=client, fingerprint=digest)
    return local


class TaskFailure(msgspec.Struct, frozen=True):
    """What an error hook receives: the task, its final exception, and the request that added it."""

    task: "BackgroundTask"
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

    @property
    def duration_mean(self) -> float:
        return self.duration_total / self.duration_count if self.duration_count else 0.0


# Duration histogram bounds in seconds: 50 us to about 14 minutes, four buckets per doubling, so a percentile
# read from the histogram is within 10% of the true value. Fixed bounds keep memory per task name constant
# whatever the traffic.
DURATION_BOUNDS: tuple[float, ...] = tuple(0.00005 * 2 ** (i / 4) for i in range(97))
OUTCOMES = ("succeeded", "failed", "retried", "timed_out", "dropped")
_OTHER_NAMES = "(other)"
# Task names longer than this are cut (ending in "...") in statistics and metrics: a name built from request data
# would otherwise make every dashboard read and Prometheus scrape as large as the client wants.
MAX_NAME_LENGTH = 100


def _stat_name(name: str) -> str:
    return name if len(name) <= MAX_NAME_LENGTH else name[: MAX_NAME_LENGTH - 3] + "..."


# Outcome indexes into the count lists below (the order of OUTCOMES).
SUCCEEDED, FAILED, RETRIED, TIMED_OUT, DROPPED = range(len(OUTCOMES))


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
        name = _stat_name(name)
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
        """An outcome without a duration of its own (``timed_out``, ``dropped``)."""
        self.totals[outcome] += n
        if self.per_name:
            self._of(name).counts[outcome] += n

    def failure(self, name: str, method: str, path: str, attempts: int, exc: BaseException) -> None:
        if not self.per_name:
            return
        self.failures.append({
            "name": _stat_name(name),
            "method": method,
            "path": path,
            "attempts": attempts,
            "time": time.time(),
            "error": f"{type(exc).__name__}: {exc}",
            "traceback": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
        })

    def rows(self) -> list[tuple[str, list[int], list[int], float]]:
        """A copy of the per-name data: (name, counts by outcome, histogram buckets, total seconds)."""
        return [(name, list(m.counts), list(m.buckets), m.total) for name, m in self.by_name.items()]

    def snapshot(self) -> dict[str, Any]:
        """JSON-ready: per-name rows and failures (newest first)."""
        names = []
        for name, m in sorted(self.by_name.items()):
            row: dict[str, Any] = {"name": name}
            row.update(zip(OUTCOMES, m.counts))
            row["count"] = sum(m.buckets)
            row["duration_total"] = m.total
            row.update((f"p{q}", m.percentile(q / 100)) for q in (50, 95, 99))
            names.append(row)
        return {"names": names, "failures": list(reversed(self.failures))}


def _on_loop(loop: Any, coro: Any) -> Any:
    """From a worker thread: run ``coro`` on ``loop`` and wait for it (nothing to do if the loop is gone)."""
    try:
        future = asyncio.run_coroutine_threadsafe(coro, loop)
    except RuntimeError:  # the loop is closed
        coro.close()
        return None
    return future.result()


def _being_cancelled() -> bool:
    """Whether the current asyncio task was asked to cancel (not just hit by a CancelledError from inside)."""
    task = asyncio.current_task()
    cancelling = getattr(task, "cancelling", None)  # Python 3.11+
    return bool(cancelling()) if cancelling is not None else False


async def _awaited(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


def _call_in_thread(task: BackgroundTask, loop: Any) -> None:
    """Call a sync task in a worker thread; what a sync callable returns to be awaited is run on ``loop``."""
    result = task.func(*task.args, **task.kwargs)
    if result is not None and inspect.isawaitable(result):
        _on_loop(loop, _awaited(result))


async def _captured(call: Awaitable[Any]) -> BaseException | None:
    """Await ``call`` and return its exception instead of raising it.

    ``wait_for`` may run the awaitable as a Task of its own, and a Task lets ``KeyboardInterrupt`` and
    ``SystemExit`` escape to the event loop, which would stop the server; captured here, they are handled
    like any other task failure.
    """
    try:
        await call
    except asyncio.CancelledError:
        raise
    except BaseException as exc:  # noqa: BLE001
        return exc
    return None


_TASK_CONTEXT = sys.version_info >= (3, 11)  # create_task(..., context=) exists


class _Batch:
    """One request's tasks on their way through the runner. Its ``index``/``attempt``/``since``/``running``
    say which task runs now, since when: the runner's list of running tasks is read from its batches."""

    __slots__ = ("tasks", "method", "path", "context", "index", "attempt", "since", "running", "threaded",
                 "abandoned", "loop")

    def __init__(self, tasks: list[BackgroundTask], method: str, path: str, context: contextvars.Context) -> None:
        self.tasks = tasks
        self.method = method
        self.path = path
        self.context = context
        self.index = 0  # the task running, or the next one to run
        self.attempt = 1
        self.since = 0.0  # time.perf_counter() when the running attempt started
        self.running = False
        # Only sync tasks without timeout or retries: the whole batch runs in one worker thread, in one hop.
        threaded = True
        for task in tasks:
            if task.is_async or task.timeout is not None or task.retries:
                threaded = False
                break
        self.threaded = threaded
        self.abandoned = False
        self.loop: asyncio.AbstractEventLoop | None = None


ErrorHook = Callable[[TaskFailure], Awaitable[None] | None]


class BackgroundRunner:
    """Owns the app's background tasks: queue, limits, threads, retries, errors, stats and shutdown.

    Threads: the runner's state lives on the event loop, except what a worker thread running a batch of plain
    sync tasks touches, under ``_lock``: the statistics, its batch's progress, and the set of threaded batches
    it leaves when done. A worker calls back into the loop after a batch only when someone there waits for a
    batch to end (:meth:`join`, shutdown, a queued batch, a request waiting for room); otherwise a request's
    tasks cost the loop nothing after the hand-over.
    """

    def __init__(
        self,
        *,
        concurrency: int = 64,
        queue_size: int = 1_000,
        overflow: str = "wait",
        threads: int = 16,
        shutdown_timeout: float = 25.0,
        statistics: bool = True,
    ) -> None:
        if overflow not in ("wait", "drop"):
            raise ValueError("overflow must be 'wait' or 'drop'")
        if concurrency < 1 or queue_size < 0:
            raise ValueError("concurrency must be at least 1 and queue_size not negative")
        self.concurrency = concurrency
        self.queue_size = queue_size
        self.overflow = overflow
        self.shutdown_timeout = shutdown_timeout
        self.pool = ThreadPool(threads, "tachyon-task")
        self.hooks: list[ErrorHook] = []
        self.started = False
        self._closed = False
        self._cancelling = False
        self._active: dict[asyncio.Task, _Batch] = {}
        self._pending: deque[_Batch] = deque()
        self._room_waiters: deque[asyncio.Future] = deque()
        self._idle_waiters: list[asyncio.Future] = []
        self._inline: set[_Batch] = set()  # batches running in their request (no lifespan, or a test client)
        self._threaded: set[_Batch] = set()  # batches posted to the thread pool and not finished
        self._drain_scheduled = False  # a worker asked the loop to run _drain and it has not run yet
        self._lock = threading.Lock()  # for what worker threads touch (see the class docstring)
        self._scheduled = self._queued = self._waiting = 0
        self._deadline: float | None = None  # loop time at which shutdown cancels what is left
        self._closing: asyncio.Future | None = None  # resolved when shutdown starts: wakes retry backoffs
        # Per-name statistics can be switched off (``statistics=False``), only to measure what they cost (see
        # bench/README.md); the totals of stats() are always counted.
        self.metrics = TaskMetrics(per_name=statistics)

    # --- public ----------------------------------------------------------------------------------------
    def on_error(self, hook: ErrorHook) -> ErrorHook:
        """Register ``hook(failure: TaskFailure)`` (sync or async), called for every task that finally fails."""
        self.hooks.append(hook)
        return hook

    def stats(self) -> TaskStats:
        metrics = self.metrics
        with self._lock:
            totals = list(metrics.totals)
            count, total, longest = metrics.duration_count, metrics.duration_total, metrics.duration_max
            running = sum(1 for batch in self._batches() if batch.running)
        return TaskStats(
            scheduled=self._scheduled,
            queued=self._queued,
            running=running,
            succeeded=totals[SUCCEEDED],
            failed=totals[FAILED],
            retried=totals[RETRIED],
            timed_out=totals[TIMED_OUT],
            dropped=totals[DROPPED],
            duration_count=count,
            duration_total=total,
            duration_max=longest,
            waiting=self._waiting,
        )

    def unfinished(self) -> list[str]:
        """``"name (METHOD /path)"`` for every task admitted and not done: running, waiting to retry, queued."""
        with self._lock:
            batches = [*self._active.values(), *self._threaded, *self._pending]
        return [f"{task.name} ({batch.method} {batch.path})" for batch in batches for task in batch.tasks[batch.index :]]

    def snapshot(self) -> dict[str, Any]:
        """Everything the dashboard shows, JSON-ready: the totals of :meth:`stats`, plus per-name counts and
        duration percentiles, the tasks running now with their age, and the last failures with tracebacks."""
        now = time.perf_counter()
        with self._lock:
            detail = self.metrics.snapshot()
            running = sorted(
                (batch.since, _stat_name(batch.tasks[batch.index].name), batch.method, batch.path, batch.attempt)
                for batch in self._batches() if batch.running
            ) if self.metrics.per_name else []
        stats = self.stats()
        totals = msgspec.structs.asdict(stats)
        totals["duration_mean"] = stats.duration_mean
        detail["running"] = [
            {"name": name, "method": method, "path": path, "age": now - since, "attempt": attempt}
            for since, name, method, path, attempt in running
        ]
        return {"totals": totals, **detail}

    @property
    def idle(self) -> bool:
        return not self._active and not self._threaded and not self._pending and not self._inline

    async def join(self, timeout: float | None = None) -> bool:
        """Wait until no task is running or queued; False if ``timeout`` passed first."""
        with self._lock:  # so a worker finishing the last batch now sees this waiter (and wakes it)
            if self.idle:
                return True
            waiter = asyncio.get_running_loop().create_future()
            self._idle_waiters.append(waiter)
        try:
            await asyncio.wait_for(asyncio.shield(waiter), timeout)
            return True
        except asyncio.TimeoutError:
            return False

    def start(self) -> None:
        """Detach batches from requests from now on (called at lifespan startup)."""
        self.started = True
        self._closed = False
        self._cancelling = False
        with self._lock:  # a drain asked of a previous loop that stopped before running it must not block this one
            self._drain_scheduled = False

    async def admit(self, tasks: list[BackgroundTask], method: str, path: str) -> bool:
        """Before the response is sent: wait while the runner is full, so overload slows clients down.

        Returns False when the tasks were dropped (``overflow="drop"``). The wait lasts at most
        ``shutdown_timeout``; after it the batch is admitted past the limit rather than lost. Requests admitted
        at the same moment may exceed ``queue_size`` by the number of responses being sent.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.shutdown_timeout
        while self.full:
            if self.overflow == "drop":
                self._scheduled += len(tasks)
                self._drop(tasks, method, path, "the background queue is full")
                return False
            with self._lock:  # so a worker freeing room now sees this waiter (and wakes it)
                if not self.full:
                    break
                waiter = loop.create_future()
                self._room_waiters.append(waiter)
            try:
                await asyncio.wait_for(waiter, max(deadline - loop.time(), 0))
            except asyncio.TimeoutError:
                logger.warning(
                    "No room in the background queue for request %s %s within %.1fs; queueing past the limit",
                    method, path, self.shutdown_timeout,
                )
                break
        return True

    @property
    def full(self) -> bool:
        """True when a new batch would have to wait for room (see :meth:`admit`)."""
        return (
            self.started and not self._closed
            and len(self._active) + len(self._threaded) + len(self._pending) >= self.concurrency + self.queue_size
        )

    def submit(
        self, tasks: list[BackgroundTask], method: str, path: str, *, wait: bool = False
    ) -> Awaitable[None] | None:
        """Hand one request's tasks over, after its response was sent (see the module docstring).

        Never waits for room (``admit`` did, before the response). Returns an awaitable the caller must await
        when the batch runs in the caller: when there is no lifespan to own it, or when ``wait`` asks for that
        (the test clients do); otherwise None.
        """
        self._scheduled += len(tasks)
        if self._closed:
            self._drop(tasks, method, path, "the app is shutting down")
            return None
        batch = _Batch(tasks, method, path, contextvars.copy_context())
        if wait or not self.started:
            return self.run_batch(tasks, method, path, batch)
        self._launch_or_queue(batch)
        return None

    async def shutdown(self, timeout: float | None = None) -> None:
        """Stop taking tasks, let the others finish until the deadline, then cancel and log what is lost."""
        self._closed = True
        for waiter in self._room_waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._room_waiters.clear()
        deadline = self.shutdown_timeout if timeout is None else timeout
        loop = asyncio.get_running_loop()
        self._deadline = loop.time() + deadline
        if self._closing is not None and not self._closing.done():
            self._closing.set_result(None)  # backoffs now end by the deadline (see _backoff)
        if not await self.join(deadline):
            stats = self.stats()
            logger.error(
                "Shutdown deadline of %.1fs passed with %d background task(s) running, %d waiting to retry and "
                "%d queued; cancelling",
                deadline,
                stats.running,
                stats.waiting,
                stats.queued,
            )
            while self._pending:
                batch = self._pending.popleft()
                self._queued -= len(batch.tasks)
                self._drop(batch.tasks, batch.method, batch.path, "not started before the shutdown deadline")
            self._cancelling = True
            self._abandon_threaded()
            active = list(self._active)
            for task in active:
                task.cancel()
            await asyncio.gather(*active, return_exceptions=True)
        # Back to the state before start(): batches run in their request again (a later bare ASGI call, or a
        # test client without a lifespan, must not lose its tasks).
        self.started = False
        self._closed = False
        self._cancelling = False
        self._deadline = self._closing = None

    def _abandon_threaded(self) -> None:
        """At the deadline: threads cannot be stopped, so give up on their batches and log what is lost."""
        with self._lock:
            batches = list(self._threaded)
        for batch in batches:
            with self._lock:
                batch.abandoned = True
                self._threaded.discard(batch)
                running = batch.tasks[batch.index] if batch.running else None
                lost = batch.tasks[batch.index + 1 :] if batch.running else batch.tasks[batch.index :]
            if running is not None:
                reason = "still running in a thread at the shutdown deadline (a thread cannot be stopped)"
                self._drop([running], batch.method, batch.path, reason)
            self._drop(lost, batch.method, batch.path, "not started before the shutdown deadline")

    async def run_batch(
        self, tasks: list[BackgroundTask], method: str, path: str, batch: _Batch | None = None
    ) -> None:
        """Run tasks in order in the current asyncio task (the inline path, and ``BackgroundTasks.run_tasks``)."""
        batch = batch or _Batch(tasks, method, path, contextvars.copy_context())
        self._inline.add(batch)
        try:
            await self._run(batch)
        finally:
            self._inline.discard(batch)
            self._check_idle()

    # --- internals -------------------------------------------------------------------------------------
    def _batches(self) -> Iterator[_Batch]:
        """Every batch started and not finished (call it under the lock)."""
        yield from self._active.values()
        yield from self._threaded
        yield from self._inline

    def _launch_or_queue(self, batch: _Batch) -> None:
        """Start ``batch`` if fewer than ``concurrency`` batches run, else queue it (on the loop)."""
        with self._lock:  # a worker leaving _threaded now either freed the slot or sees the queued batch
            if len(self._active) + len(self._threaded) >= self.concurrency:
                self._pending.append(batch)
                self._queued += len(batch.tasks)
                return
            if batch.threaded:
                self._threaded.add(batch)
        if batch.threaded:
            batch.loop = asyncio.get_running_loop()
            self.pool.post(batch.context, self._run_in_thread, batch)
            return
        loop = asyncio.get_running_loop()
        if _TASK_CONTEXT:  # the batch's context itself: no second copy, no Context.run around the call
            task = loop.create_task(self._run(batch), context=batch.context)
        else:
            task = batch.context.run(loop.create_task, self._run(batch))
        self._active[task] = batch
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task) -> None:
        self._active.pop(task, None)
        self._after_batch()

    def _drain(self) -> None:
        """On the loop, when a worker finished a batch while someone waited: see :meth:`_after_batch`."""
        with self._lock:
            self._drain_scheduled = False
        self._after_batch()

    def _after_batch(self) -> None:
        """Batches ended: start queued ones in the free slots, wake requests waiting for room, and ``join``
        callers if nothing is left."""
        while self._pending and len(self._active) + len(self._threaded) < self.concurrency:
            batch = self._pending.popleft()
            self._queued -= len(batch.tasks)
            self._launch_or_queue(batch)
        if self._room_waiters:  # as many waiting requests as there is room for (each takes one batch's room)
            if self.started and not self._closed:
                room = self.concurrency + self.queue_size - len(self._active) - len(self._threaded) - len(self._pending)
            else:
                room = len(self._room_waiters)
            while self._room_waiters and room > 0:
                waiter = self._room_waiters.popleft()
                if not waiter.done():
                    waiter.set_result(None)
                    room -= 1
        self._check_idle()

    def _check_idle(self) -> None:
        if self.idle and self._idle_waiters:
            for waiter in self._idle_waiters:
                if not waiter.done():
                    waiter.set_result(None)
            self._idle_waiters.clear()

    def _drop(self, tasks: list[BackgroundTask], method: str, path: str, reason: str) -> None:
        with self._lock:
            for task in tasks:
                self.metrics.count(task.name, DROPPED)
        for task in tasks:
            logger.error("Background task %s lost (request %s %s): %s", task.name, method, path, reason)

    async def _run(self, batch: _Batch) -> None:
        try:
            for index, task in enumerate(batch.tasks):
                batch.index = index
                await self._run_task(task, batch)
        except asyncio.CancelledError:
            reason = "cancelled at the shutdown deadline" if self._cancelling else "cancelled"
            self._drop(batch.tasks[batch.index :], batch.method, batch.path, reason)
            raise

    def _run_in_thread(self, batch: _Batch) -> None:
        """In a worker thread, in the batch's context: run a batch of plain sync tasks, in order."""
        lock = self._lock
        method, path = batch.method, batch.path
        try:
            for index, task in enumerate(batch.tasks):
                started = time.perf_counter()
                with lock:
                    if batch.abandoned:  # the shutdown deadline passed; shutdown logged the rest
                        return
                    batch.index, batch.since, batch.running = index, started, True
                error: BaseException | None = None
                span = task_span(task.name, 1, method, path)
                try:
                    if span is None:
                        _call_in_thread(task, batch.loop)
                    else:
                        with span:
                            _call_in_thread(task, batch.loop)
                except BaseException as exc:  # noqa: BLE001 - a task must never take the runner down
                    error = exc
                failure = self._attempt_ended(task, batch, 1, error)
                if batch.abandoned:  # the shutdown deadline passed; shutdown logged the rest
                    return
                if failure is not None and self.hooks:  # part of the batch: join() and shutdown wait for the hooks
                    _on_loop(batch.loop, self._notify(failure))
        finally:
            with lock:
                self._threaded.discard(batch)
                wake = not self._drain_scheduled and bool(self._pending or self._room_waiters or self._idle_waiters)
                if wake:
                    self._drain_scheduled = True
            if wake:
                try:
                    batch.loop.call_soon_threadsafe(self._drain)  # type: ignore[union-attr]
                except RuntimeError:  # the loop is gone
                    pass

    def _attempt_ended(
        self, task: BackgroundTask, batch: _Batch, attempt: int, error: BaseException | None, final: bool = True
    ) -> TaskFailure | None:
        """Count one attempt of ``task`` (on the loop, or in the worker thread of a threaded batch), and log it
        if it finally failed. Nothing is counted for a batch abandoned at the shutdown deadline: shutdown
        counted its tasks as lost."""
        duration = time.perf_counter() - batch.since
        outcome = SUCCEEDED if error is None else FAILED if final else RETRIED
        with self._lock:
            batch.running = False
            if batch.abandoned:
                return None
            if outcome != RETRIED:
                batch.index += 1  # done with it: neither running nor lost any more
            self.metrics.record(task.name, outcome, duration)
            if outcome == FAILED:
                self.metrics.failure(task.name, batch.method, batch.path, attempt, error)  # type: ignore[arg-type]
        if outcome != FAILED:
            return None
        logger.error("Background task %s failed (request %s %s)", task.name, batch.method, batch.path, exc_info=error)
        return TaskFailure(task, error, attempt, batch.method, batch.path)  # type: ignore[arg-type]

    async def _run_task(self, task: BackgroundTask, batch: _Batch) -> None:
        attempt = 0
        while True:
            attempt += 1
            batch.attempt, batch.since, batch.running = attempt, time.perf_counter(), True
            span = task_span(task.name, attempt, batch.method, batch.path)
            try:
                if span is not None:
                    with span:
                        await self._execute(task)
                elif task.is_async and task.timeout is None:  # the common case, without a layer
                    await task.func(*task.args, **task.kwargs)
                else:
                    await self._execute(task)
            except asyncio.CancelledError as exc:
                if self._cancelling or _being_cancelled():  # the batch itself: _run logs what is lost
                    batch.running = False
                    raise
                failure = self._attempt_ended(task, batch, attempt, exc)  # raised by the task itself
                await self._notify(failure)  # type: ignore[arg-type]
                return
            except BaseException as exc:  # noqa: BLE001 - a task must never take the runner down
                final = attempt > task.retries
                failure = self._attempt_ended(task, batch, attempt, exc, final)
                if final:
                    await self._notify(failure)  # type: ignore[arg-type]
                    return
                delay = task.retry_delay * 2 ** (attempt - 1)
                delay = random.uniform(delay / 2, delay)
                logger.warning(
                    "Background task %s failed (attempt %d of %d, request %s %s): %r; retrying in %.2fs",
                    task.name, attempt, task.retries + 1, batch.method, batch.path, exc, delay,
                )
                await self._backoff(delay)
            else:
                self._attempt_ended(task, batch, attempt, None)
                return

    async def _backoff(self, delay: float) -> None:
        """Wait ``delay`` before a retry, counted as waiting. During shutdown a wait never outlasts the drain
        deadline: a retry that would start after it starts now instead, while it can still finish."""
        loop = asyncio.get_running_loop()
        end = loop.time() + delay
        self._waiting += 1
        try:
            if self._deadline is None:  # not shutting down (yet): sleep, unless shutdown starts meanwhile
                if self._closing is None or self._closing.done() or self._closing.get_loop() is not loop:
                    self._closing = loop.create_future()
                await asyncio.wait({self._closing}, timeout=delay)
            if self._deadline is not None and end > self._deadline:
                return
            await asyncio.sleep(end - loop.time())
        finally:
            self._waiting -= 1

    async def _execute(self, task: BackgroundTask) -> None:
        if task.is_async:
            call = task.func(*task.args, **task.kwargs)
            if task.timeout is None:
                await call
                return
            try:
                error = await asyncio.wait_for(_captured(call), task.timeout)
            except asyncio.TimeoutError:
                with self._lock:
                    self.metrics.count(task.name, TIMED_OUT)
                raise asyncio.TimeoutError(f"{task.name} timed out after {task.timeout}s") from None
            if error is not None:
                raise error
            return
        future = self.pool.submit(contextvars.copy_context(), task.func, task.args, task.kwargs)
        if task.timeout is not None:
            done, _ = await asyncio.wait({future}, timeout=task.timeout)
            if not done:
                with self._lock:
                    self.metrics.count(task.name, TIMED_OUT)
                logger.warning(
                    "Background task %s overran its timeout of %ss; a thread cannot be stopped, still waiting for it",
                    task.name, task.timeout,
                )
        result = await future
        if inspect.isawaitable(result):  # a sync callable that returned a coroutine
            await result

    async def _notify(self, failure: TaskFailure) -> None:
        for hook in self.hooks:
            try:
                if inspect.iscoroutinefunction(hook):
                    await hook(failure)
                else:
                    result = await self.pool.run(hook, failure)
                    if inspect.isawaitable(result):
                        await result
            except Exception:
                logger.exception("Background task error hook %s failed", _name(hook))


_standalone: BackgroundRunner | None = None


def _standalone_runner() -> BackgroundRunner:
    """The runner for tasks run outside an app (``await BackgroundTasks().run_tasks()``)."""
    global _standalone
    if _standalone is None:
        _standalone = BackgroundRunner()
    return _standalone
