"""What ``add_task`` builds and checks: :class:`BackgroundTask` (one call and its options), the request's
:class:`BackgroundTasks`, :class:`TaskOptions` and :func:`collect`, which makes one batch of a response's and an
endpoint's tasks.

A call is checked at once, inside the request: a coroutine object, a non-callable or arguments that do not bind
to the function's signature raise ``TypeError`` where the mistake is, rather than later in a log.
"""

from __future__ import annotations

import datetime as dt
import functools
import inspect
import os
import types
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, ParamSpec

from .._utils import callable_name, is_async_callable
from .runner import BackgroundRunner

if TYPE_CHECKING:
    from ..backends.base import TaskBackend
    from .records import Tracker

__all__ = ["BackgroundTask", "BackgroundTasks", "TaskOptions", "collect"]

P = ParamSpec("P")  # add_task(func, *args, **kwargs): type checkers hold the arguments to func's parameters


class _Callee:
    """What ``add_task`` needs to know about a callable, worked out once per function or method.

    ``check(args, kwargs)`` raises TypeError when the arguments do not bind. Plain positional calls, the usual
    case, are checked by counting; anything else goes through ``Signature.bind``.
    """

    __slots__ = ("sig", "offset", "min_args", "max_args", "is_async", "name")

    def __init__(self, func: Any, target: Any, offset: int) -> None:
        self.is_async = is_async_callable(func)
        self.name = callable_name(func)
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

    def check(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
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
_callees: dict[weakref.ref[Any], _Callee] = {}
_method_callees: dict[weakref.ref[Any], _Callee] = {}


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


def _forget(table: dict[weakref.ref[Any], _Callee], ref: weakref.ref[Any]) -> None:
    """Drop a collected function's entry (a weak reference's callback)."""
    table.pop(ref, None)


_DURABLE_ONLY = ("job_id", "result_ttl", "failure_ttl")


def _taken() -> None:
    """A task's handle was taken: from now on requests look for held tasks (``BackgroundTask.held``). Set once:
    writing a class attribute invalidates the interpreter's caches of the class's attributes."""
    BackgroundTask.held = True


_standalone: BackgroundRunner | None = None


def standalone_runner() -> BackgroundRunner:
    """The runner for tasks run outside an app (``await BackgroundTasks().run_tasks()``, ``await task()``)."""
    global _standalone
    if _standalone is None:
        _standalone = BackgroundRunner()
    return _standalone


class BackgroundTask:
    """One call to make after the response: ``func(*args, **kwargs)``, with its options; also the handle of a
    task you can hold (:attr:`id`, see ``status.py``).

    Options are set with :meth:`with_options`, never through ``**kwargs``, so they cannot collide with the
    task's own keyword arguments.
    """

    __slots__ = (
        "func",
        "args",
        "kwargs",
        "is_async",
        "name",
        "timeout",
        "retries",
        "retry_delay",
        "backend",
        "delay",
        "at",
        "job_id",
        "result_ttl",
        "failure_ttl",
        "on_end",
        "_id",
        "owner",
        "keep_result",
        "tracker",
    )

    # Set once any task's handle is taken (its id read, keep_result or owner set): until then no request needs
    # to look for held tasks before its response (see TaskControl.accept).
    held = False

    def __init__(self, func: Callable[P, Any], *args: P.args, **kwargs: P.kwargs) -> None:
        self._setup(func, args, kwargs, None)

    @classmethod
    def create(
        cls,
        func: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        backend: TaskBackend | None,
        durable: bool | None = None,
    ) -> BackgroundTask:
        """A task that is durable on ``backend`` (None: in-process) unless ``func`` was marked otherwise;
        ``durable=False`` keeps it in-process whatever the backend or mark (and skips the durable checks)."""
        task = cls.__new__(cls)
        task._setup(func, args, kwargs, None if durable is False else backend, durable is False)
        return task

    def _setup(
        self,
        func: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        backend: TaskBackend | None,
        local: bool = False,
    ) -> None:
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
        self.delay: float | dt.timedelta | None = None
        self.at: dt.datetime | None = None
        self.job_id: str | None = None
        self.result_ttl: int | None = None
        self.failure_ttl: int | None = None
        # Told the task's final outcome ("succeeded", "failed" or "lost"), from the loop or a worker thread: how
        # the scheduler follows a periodic run (see schedule.py).
        self.on_end: Callable[[str], None] | None = None
        self._id: str | None = None  # made when first read: a task whose id nobody reads never gets one
        self.owner: str | None = None
        self.keep_result: bool | None = None  # None: the app's default (Tachyon(task_results=...))
        self.tracker: Tracker | None = None  # its in-process status record, once it has one (see status.py)
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
        delay: float | dt.timedelta | None = None,
        at: dt.datetime | None = None,
        job_id: str | None = None,
        result_ttl: int | None = None,
        failure_ttl: int | None = None,
        keep_result: bool | None = None,
        owner: str | int | None = None,
        durable: bool | None = None,
    ) -> BackgroundTask:
        """Set per-task options and return the task, so they chain onto ``add_task(...)``.

        ``durable=False`` runs this task in-process after the response even in an app whose tasks are durable
        (or for a function marked ``@backend.task()``): for cheap work whose loss is acceptable, which must not
        turn a request into a 503 while the task backend is down. The durable-only options set so far are
        dropped. ``durable=True`` insists on a durable task (``ValueError`` if there is no backend).

        ``timeout`` (seconds): an async task is cancelled when it passes it; a sync task cannot be stopped, so
        it is reported as overrun (logged, counted in ``timed_out``) and awaited. ``retries``: how many more
        attempts a failing task gets, after ``retry_delay * 2**n`` seconds with jitter. ``name``: used in logs,
        error hooks and stats instead of the function's qualified name.

        ``delay`` (seconds or a timedelta) or ``at`` (a datetime; a naive one is local time): start no earlier
        than that. In-process, a timer of the runner holds the task until then (see ``timers.py``); durable, the
        backend's scheduler does.

        Durable tasks only (see ``backends/rq.py``): ``job_id`` to de-duplicate (and the task's :attr:`id`),
        ``result_ttl`` and ``failure_ttl`` in seconds.

        Status (see docs/task-status.md): ``keep_result=True`` keeps the return value in the task's status
        record (JSON, size-limited); ``owner`` binds the task to a principal (a ``str`` or an ``int``): the
        status routes then show it only to that principal. Either gives an in-process task a status record.
        """
        if durable is not None:
            if durable and self.backend is None:
                raise ValueError("durable=True needs a durable backend (Tachyon(task_backend=...) or @backend.task())")
            if not durable and self.backend is not None:
                self.backend = None
                for key in _DURABLE_ONLY:  # they mean nothing in-process (given with durable=False: an error below)
                    setattr(self, key, None)
        if delay is not None and (isinstance(delay, bool) or not isinstance(delay, (int, float, dt.timedelta))):
            raise TypeError(f"with_options(delay={delay!r}): seconds (a number) or a datetime.timedelta")
        if at is not None and not isinstance(at, dt.datetime):
            raise TypeError(f"with_options(at={at!r}): a datetime.datetime")
        durable_only = zip(_DURABLE_ONLY, (job_id, result_ttl, failure_ttl), strict=True)
        given: dict[str, Any] = {key: value for key, value in durable_only if value is not None}
        if given and self.backend is None:
            need = "need a durable task (Tachyon(task_backend=...) or @backend.task())"
            raise ValueError(f"{', '.join(given)} {need}")
        given.update((key, value) for key, value in (("delay", delay), ("at", at)) if value is not None)
        if given and self.backend is not None:
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
        if job_id is not None:
            self._id = job_id
        if keep_result is not None:
            if not isinstance(keep_result, bool):
                raise TypeError(f"keep_result must be a bool, got {keep_result!r}")
            self.keep_result = keep_result
            if not BackgroundTask.held:
                _taken()
        if owner is not None:
            if isinstance(owner, bool) or not isinstance(owner, (str, int)):
                raise TypeError(f"owner must be a str or an int (the principal's id), got {type(owner).__name__}")
            self.owner = str(owner)
            if not BackgroundTask.held:
                _taken()
        return self

    @property
    def id(self) -> str:
        """The task's id: 128 random bits as 32 hex characters (in durable mode the RQ job id; a ``job_id``
        given to :meth:`with_options` is used as is). Reading it makes an in-process task one you can hold:
        it gets a status record when its request hands it over."""
        if self._id is None:
            self._id = os.urandom(16).hex()  # 128 bits from the operating system's random source
            if not BackgroundTask.held:
                _taken()
        return self._id

    @property
    def known_id(self) -> str | None:
        """The task's id if it has one already (read, or given as ``job_id``), else None: asking does not make
        one."""
        return self._id

    async def __call__(self) -> None:
        """Run the task now, in the caller's context, with its options (Starlette compatibility)."""
        await standalone_runner().run_batch([self], "", "")

    def __repr__(self) -> str:
        return f"<BackgroundTask {self.name}>"


class BackgroundTasks:
    """The tasks one request collects. Inject it by annotating a parameter ``BackgroundTasks``.

    One instance is shared by the endpoint and all its dependencies. It is always truthy, so the seed's
    ``if background_tasks: background_tasks.add_task(...)`` adds the task whenever the object was injected.
    """

    __slots__ = ("_tasks", "_backend")

    def __init__(self, tasks: Sequence[BackgroundTask] | None = None, *, backend: TaskBackend | None = None) -> None:
        self._tasks: list[BackgroundTask] = [] if tasks is None else list(tasks)
        self._backend = backend

    def add_task(self, func: Callable[P, Any], *args: P.args, **kwargs: P.kwargs) -> BackgroundTask:
        """Queue ``func(*args, **kwargs)`` to run after the response; returns the task for ``with_options``.

        With a durable backend (the app's ``task_backend``, or a function marked ``@backend.task()``) the
        function must be importable and its arguments serialisable: checked here, ``TypeError`` otherwise.
        """
        task = BackgroundTask.create(func, args, kwargs, self._backend)
        self._tasks.append(task)
        return task

    def with_options(self, *, durable: bool | None = None, **options: Any) -> TaskOptions:
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

    def batch(self) -> list[BackgroundTask]:
        """A new list of the tasks, in order: what the framework hands to the runner after the response (the
        endpoint cannot change it any more)."""
        return self._tasks[:]

    def __iter__(self) -> Iterator[BackgroundTask]:
        return iter(self._tasks)

    def __len__(self) -> int:
        return len(self._tasks)

    def __bool__(self) -> bool:
        return True

    async def run_tasks(self) -> None:
        """Run every task now, in order, each isolated from the others' failures."""
        await standalone_runner().run_batch(self._tasks, "", "")

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

    def add_task(self, func: Callable[P, Any], *args: P.args, **kwargs: P.kwargs) -> BackgroundTask:
        """Add ``func(*args, **kwargs)`` to the request's tasks with these options; returns the task."""
        task = BackgroundTask.create(func, args, kwargs, self._tasks._backend, self._durable)
        task.with_options(durable=self._durable, **self._options)
        self._tasks._tasks.append(task)
        return task


_TASK_OPTIONS = frozenset(inspect.signature(BackgroundTask.with_options).parameters) - {"self", "durable"}


def collect(*sources: BackgroundTask | BackgroundTasks | Callable[[], Any] | None) -> list[BackgroundTask]:
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
