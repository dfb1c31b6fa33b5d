"""What ``tachyon worker`` knows of a job it claimed: how to run it, its state while it runs, and its outcome.

RQ's ``Job`` is built only on the rare paths (a failure, a retry, callbacks): reading one per job costs more
than the rest of the claim, so the claim returns the few fields a run needs and :class:`JobSpec` reads them.
"""

from __future__ import annotations

import asyncio
import threading
import time
import zlib
from collections.abc import Callable
from typing import Any, ClassVar

import msgspec
from rq.exceptions import DeserializationError
from rq.executions import Execution
from rq.queue import Queue
from rq.utils import import_attribute, parse_timeout

from ..tasks.records import CANCELLED, FAILED, RETRYING, SUCCEEDED, TaskError, encode_result
from .redis_status import JobTracker, changes

__all__ = ["WorkHorseKilled", "ChildFailed", "Stopped", "JobSpec", "RunningJob", "Outcome"]


class WorkHorseKilled(Exception):
    """The forked child running a job (``fork=True``) ended without reporting a result: killed, or crashed."""


class ChildFailed(Exception):
    """A job that raised in its forked child; ``exc_string`` is the child's traceback."""

    def __init__(self, exc_string: str) -> None:
        super().__init__(exc_string.strip().splitlines()[-1] if exc_string.strip() else "failed")
        self.exc_string = exc_string


class Stopped(Exception):
    """A job stopped by RQ's stop-job command."""


class JobSpec:
    """What running a job needs, read from the fields the claim returns."""

    __slots__ = (
        "id",
        "origin",
        "func_name",
        "instance",
        "args",
        "kwargs",
        "description",
        "timeout",
        "meta",
        "result_ttl",
        "retries_left",
        "error",
    )

    _functions: ClassVar[dict[str, Callable[..., Any]]] = {}  # imported task functions, by name (bounded)

    def __init__(self, job_id: str, origin: str, fields: list[Any], serializer: Any) -> None:
        data, description, timeout, meta, result_ttl, retries_left = fields
        self.id = job_id
        self.origin = origin
        self.description: str | None = description.decode() if description else None
        self.timeout: int | None = parse_timeout(timeout.decode()) if timeout else None
        self.result_ttl = int(result_ttl) if result_ttl else None
        self.retries_left = int(retries_left) if retries_left else None
        self.error: Exception | None = None  # unreadable data: raised when the job runs, recorded as its failure
        self.func_name: str | None = None
        self.instance: Any = None
        self.args: tuple[Any, ...] | list[Any] = ()
        self.kwargs: dict[str, Any] = {}
        self.meta: dict[str, Any] = {}
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
        assert self.func_name is not None  # set whenever the data could be read
        if self.instance is not None:
            method: Callable[..., Any] = getattr(self.instance, self.func_name)
            return method
        func = self._functions.get(self.func_name)
        if func is None:
            func = import_attribute(self.func_name)
            if len(self._functions) < 4096:
                self._functions[self.func_name] = func
        return func

    @property
    def name(self) -> str:
        return self.description or self.func_name or self.id


class RunningJob:
    """A claimed job, from its claim to the moment its outcome is recorded in Redis."""

    __slots__ = (
        "job",
        "queue",
        "execution",
        "composite",
        "plain",
        "started",
        "task",
        "thread",
        "pid",
        "lock",
        "lost",
        "stopped",
        "tries",
        "tracker",
        "skip",
    )

    def __init__(self, job: JobSpec, queue: Queue, execution: Execution, plain: bool) -> None:
        self.job = job
        self.queue = queue
        self.execution = execution
        self.composite = f"{job.id}:{execution.id}"
        self.plain = plain  # a success can be recorded by the FINISH script (no callback, dependents, repeat...)
        self.started = time.time()
        self.task: asyncio.Task[None] | None = None
        self.thread: int | None = None  # the pool thread running a sync job, while it runs it
        self.pid = 0  # the child running it (fork mode)
        self.lock = threading.Lock()
        self.lost = False  # its lease was taken over (a warning was logged)
        self.stopped = False  # stopped by RQ's stop-job command
        self.tries = 0  # attempts at recording its outcome (more than one after a lost reply)
        self.tracker: JobTracker | None = None  # its status record (report_progress, cancelled, its end)
        self.skip = False  # cancelled while it waited (its record says so): not run


class Outcome:
    """How a run ended, and what the job's status record says of it."""

    __slots__ = ("running", "value", "error", "exc_string", "state", "result", "failure")

    def __init__(
        self, running: RunningJob, value: Any = None, error: BaseException | None = None, exc_string: str = ""
    ) -> None:
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

    def record_status(self) -> None:
        """The end of a job recorded with RQ's code, in its status record too (redis_status.py's ADVANCE)."""
        tracker = self.running.tracker
        if tracker is None:
            return
        fields = changes(self.state)
        fields += [
            name
            for pair in (
                ("tachyon_result", self.result),
                ("tachyon_error", self.failure),
                ("tachyon_progress", tracker.pending_progress()),
            )
            if pair[1]
            for name in pair
        ]
        tracker.advance(self.state, fields)
