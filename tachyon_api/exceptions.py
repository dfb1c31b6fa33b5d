"""Exceptions a handler raises on purpose, and the errors the framework raises about a request.

Every one of them is turned into a response in one place, :meth:`tachyon_api.applications.Tachyon.
handle_exception`, chosen by class hierarchy.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = [
    "HTTPException",
    "RequestError",
    "RequestValidationError",
    "ResponseValidationError",
    "TaskNotFound",
    "TaskAlreadyFinished",
]


class HTTPException(Exception):
    """Stop the request with ``status_code``; the client receives ``{"detail": detail}`` and ``headers``."""

    def __init__(
        self,
        status_code: int,
        detail: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.status_code = status_code
        self.detail = detail
        self.headers = dict(headers) if headers else None
        super().__init__(status_code, detail)

    def __str__(self) -> str:
        return str(self.detail)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(status_code={self.status_code!r}, detail={self.detail!r})"


class RequestError(Exception):
    """A request the framework cannot serve as sent: answered with a 4xx (or 503) and the error body

    ``{"success": false, "error": <summary>, "code": <code>, "errors": [...]}``.
    """

    status_code = 400
    code = "BAD_REQUEST"
    #: Seconds after which a retry may succeed, sent as ``Retry-After`` (a 503 the client can simply wait out).
    retry_after: int | None = None

    def __init__(self, error: str, errors: list[dict[str, Any]] | None = None) -> None:
        self.error = error
        self.errors = errors or []
        super().__init__(error)

    def body(self) -> dict[str, Any]:
        return {"success": False, "error": self.error, "code": self.code, "errors": self.errors}

    def headers(self) -> dict[str, str] | None:
        """The response's extra headers: ``Retry-After`` when the error says when to come back."""
        return None if self.retry_after is None else {"retry-after": str(self.retry_after)}


class RequestValidationError(RequestError):
    """One or more request fields are missing or invalid (422). ``errors`` lists every failing field."""

    status_code = 422
    code = "VALIDATION_ERROR"

    def __init__(self, errors: list[dict[str, Any]], error: str | None = None) -> None:
        unique: dict[str, dict[str, Any]] = {}
        for item in errors:  # a field read by a dependency and by the endpoint is reported once
            unique.setdefault(repr((item.get("loc"), item.get("type"))), item)
        errors = list(unique.values())
        super().__init__(error or _summary(errors), errors)


class RequestTooLarge(RequestError):
    """The body is larger than ``Tachyon(max_body_size=...)``; raised before it is buffered (413)."""

    status_code = 413
    code = "PAYLOAD_TOO_LARGE"

    def __init__(self, limit: int) -> None:
        super().__init__(f"Request body too large (max {limit} bytes)")


class TaskBackendUnavailable(RequestError):
    """The task backend is down: a durable background task could not be stored (so no 2xx lies), or a task's
    status could not be read or changed (``app.tasks`` and the status routes). 503 with ``Retry-After``.

    The client may simply retry: nothing of the request was stored, or the status was not read (a cancellation
    asked twice is harmless). ``error`` says which of them failed.
    """

    status_code = 503
    code = "TASK_BACKEND_UNAVAILABLE"
    retry_after = 5

    def __init__(self, error: str = "Background task could not be stored; try again later") -> None:
        super().__init__(error)


class IdempotencyKeyReused(RequestError):
    """The request's ``Idempotency-Key`` was used before, by the same client on the same route, for another
    payload (the IETF Idempotency-Key draft's 422): its durable tasks are not stored. Nothing of this request
    was stored; the client sends a new key for a new request."""

    status_code = 422
    code = "IDEMPOTENCY_KEY_REUSED"

    def __init__(self) -> None:
        super().__init__("This Idempotency-Key was already used for a different request; use a new key")


class TaskOutcomeUnknown(RequestError):
    """The durable tasks were sent to the backend but its answer was lost: they may or may not be stored.

    Still a 503 (the request did not complete), with its own code, because a plain retry could store the tasks
    twice: retry with the same ``Idempotency-Key`` header, which stores them once.
    """

    status_code = 503
    code = "TASK_OUTCOME_UNKNOWN"
    retry_after = 5

    def __init__(self) -> None:
        super().__init__(
            "Background task may or may not have been stored (the task backend did not answer); "
            "retry with the same Idempotency-Key header"
        )


class TaskNotFound(RequestError):
    """No task with this id: unknown, expired, or another principal's. One answer for the three, so an id
    cannot be probed."""

    status_code = 404
    code = "TASK_NOT_FOUND"

    def __init__(self) -> None:
        super().__init__("No such task")


class TaskAlreadyFinished(RequestError):
    """Cancelling a task that had already finished (409): nothing was changed."""

    status_code = 409
    code = "TASK_FINISHED"

    def __init__(self, state: str) -> None:
        super().__init__(f"The task has already finished ({state}); nothing to cancel")


class ResponseValidationError(Exception):
    """The endpoint's return value does not fit its ``response_model`` (a server bug: 500, logged)."""


def _summary(errors: list[dict[str, Any]]) -> str:
    """One line for humans: the first error, and how many more there are."""
    if not errors:
        return "Validation failed"
    first = errors[0]
    loc = [str(part) for part in first.get("loc") or ()]
    if not loc:
        where = "request"
    elif loc[0] == "body":
        where = "body" if len(loc) == 1 else f"body field '{'.'.join(loc[1:])}'"
    else:
        where = f"{loc[0]} parameter '{'.'.join(loc[1:])}'"
    if first.get("type") == "missing":
        summary = f"Missing required {where}"
    else:
        summary = f"Invalid {where}: {first.get('msg', 'invalid value')}"
    if len(errors) > 1:
        summary += f" (and {len(errors) - 1} more error{'s' if len(errors) > 2 else ''})"
    return summary
