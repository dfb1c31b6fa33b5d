"""Traces across the response: each background task runs in a span of its own, tied to the request's span.

Active only when ``opentelemetry-api`` is installed (the ``tracing`` extra) and an SDK's tracer provider is
set; otherwise nothing is imported (no API) or no span is made (no SDK: it would record nothing), and every
helper here costs a check or two. Spans go wherever the app's OpenTelemetry SDK sends them.

- In-process tasks run in a span **linked** to the request's span (the span current when the request's tasks
  were handed over, e.g. the one OpenTelemetry's ASGI middleware opens): the request has ended when its tasks
  run, and a child span would stretch it in a trace view.
- Durable tasks carry the request's W3C ``traceparent`` in their RQ job's ``meta``; the worker's job span
  **continues** that trace (its parent is the request's span), since the job is the request's work done
  elsewhere. ``tachyon worker`` uses :func:`traced_job_class`; a plain ``rq worker`` gets the same with
  ``--job-class tachyon_api.backends.rq.TracedJob``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from typing import Any

__all__ = ["ENABLED", "task_span", "job_span", "traceparent"]

ENABLED = importlib.util.find_spec("opentelemetry") is not None
if ENABLED:  # imported once here, so a task attempt pays no import lookups
    from opentelemetry import context as _context
    from opentelemetry import trace as _trace
    from opentelemetry.propagate import extract as _extract
    from opentelemetry.propagate import inject as _inject

    # Follows the provider the app sets, even after this import (a proxy tracer until then).
    _tracer = _trace.get_tracer("tachyon_api.background")
    _PROVIDER_FROM_ENV = "OTEL_PYTHON_TRACER_PROVIDER" in os.environ


def _configured() -> bool:
    """Whether an SDK is set up (a tracer provider was set). The API alone records nothing, yet a span through
    it costs about as much as the rest of a task's bookkeeping: skip it then.

    Checked for every task attempt, so it reads the API's global provider (set once, never unset) instead of
    calling ``get_tracer_provider()``, which looks the environment up on each call while none is set (2 us);
    a provider named by ``OTEL_PYTHON_TRACER_PROVIDER`` is loaded by that call, so it is made when the variable
    was set at import."""
    if _trace._TRACER_PROVIDER is not None:
        return True
    return _PROVIDER_FROM_ENV and not isinstance(_trace.get_tracer_provider(), _trace.ProxyTracerProvider)


def task_span(name: str, attempt: int, method: str, path: str) -> Any:
    """A span for one attempt of an in-process task, linked to the request's span (call it in the batch's
    context, where the request's span is current); None when tracing is off, so the runner calls the task
    without a context manager around it."""
    if not ENABLED or not _configured():
        return None
    request_span = _trace.get_current_span().get_span_context()
    return _tracer.start_as_current_span(
        f"task {name}",
        context=_context.Context(),  # a trace of its own, linked below: see the module docstring
        kind=_trace.SpanKind.CONSUMER,
        links=[_trace.Link(request_span)] if request_span.is_valid else [],
        attributes={
            "tachyon.task.name": name,
            "tachyon.task.attempt": attempt,
            "http.request.method": method,
            "url.path": path,
        },
    )


def traceparent() -> str | None:
    """The current span as a W3C ``traceparent`` header value, or None (no span, or tracing not installed)."""
    if not ENABLED or not _configured():
        return None
    carrier: dict[str, str] = {}
    _inject(carrier)
    return carrier.get("traceparent")


def job_span(name: str, parent: str | None, job_id: str) -> Any:
    """In a worker: the span of a durable job, a child of the request's span when ``parent`` is its
    ``traceparent``."""
    if not ENABLED or not _configured():
        return contextlib.nullcontext()
    return _tracer.start_as_current_span(
        f"task {name}",
        context=_extract({"traceparent": parent}) if parent else None,
        kind=_trace.SpanKind.CONSUMER,
        attributes={"tachyon.task.name": name, "messaging.message.id": job_id, "messaging.system": "rq"},
    )
