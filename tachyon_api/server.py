"""Serving an app from Python: ``run(app, host=..., port=...)`` (tachyon-api 1.3's ``tachyon_api.server``).

``tachyon run`` is the command-line way; both use uvicorn with uvloop and httptools when they are installed
(the ``speed`` extra), through :class:`ServerConfig`, which gives uvicorn what the loaded app asks of it:

- **WebSocket messages are bounded before they are buffered.** uvicorn reads a whole message (16 MiB by
  default) before the app sees it and can apply a route's ``max_message_size``. Its ``ws_max_size`` is set to
  the app's largest limit (:func:`websocket_message_limit`), so a larger message is refused with 1009 as soon
  as its frame header announces it.
- **A client cannot page anyone with bad text frames.** uvicorn's WebSocket implementation logs invalid UTF-8
  in a text frame at ERROR with a traceback (the close code, 1007, is right); that one record becomes a
  WARNING line without traceback.
"""

from __future__ import annotations

import importlib.util
import inspect
import logging
import sys
from typing import Any

import uvicorn

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as TachyonHTTPProtocol
except ImportError:  # httptools is not installed: uvicorn's pure-Python h11 protocol
    from uvicorn.protocols.http.h11_impl import H11Protocol as TachyonHTTPProtocol  # type: ignore[assignment]

__all__ = ["ServerConfig", "TachyonHTTPProtocol", "run", "serve", "server_options", "websocket_message_limit"]

STARTUP_FAILURE = 3  # uvicorn's exit status when the app fails to start


def server_options() -> dict[str, Any]:
    """The fastest uvicorn loop and HTTP protocol available here."""
    return {
        "loop": "uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
        "http": "httptools" if importlib.util.find_spec("httptools") else "h11",
    }


def find_app(app: Any) -> Any:
    """The :class:`~tachyon_api.Tachyon` app inside ASGI wrappers (uvicorn's, or middleware that keep the
    wrapped app as ``.app``); None if there is none."""
    from .applications import Tachyon

    while app is not None and not isinstance(app, Tachyon):
        app = getattr(app, "app", None)
    return app


def websocket_message_limit(app: Any) -> int | None:
    """The largest WebSocket message (bytes) any route of ``app`` accepts: its routes' ``max_message_size``,
    or the app's ``websocket_max_size`` for the routes without one. None if some route has no limit.

    Give it to a server that reads whole messages before the app sees them (uvicorn: ``ws_max_size``), so a
    message over every limit is refused before it is held in memory."""
    limits = [
        route.max_message_size if route.max_message_size is not None else app.websocket_max_size
        for route in app.websocket_routes
    ] or [app.websocket_max_size]
    return None if None in limits else max(limits)


class _QuietInvalidUTF8(logging.Filter):
    """uvicorn's record for a text frame that is not UTF-8, as a WARNING line without traceback."""

    MESSAGE = "Invalid UTF-8 sequence received from client."

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg == self.MESSAGE and record.levelno > logging.WARNING:
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.msg = "Invalid UTF-8 in a WebSocket text frame from the client: closed with 1007"
            record.exc_info = record.exc_text = None
        return True


def quiet_invalid_utf8() -> None:
    """Install the filter on uvicorn's error logger (once)."""
    server_logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _QuietInvalidUTF8) for f in server_logger.filters):
        server_logger.addFilter(_QuietInvalidUTF8())


class ServerConfig(uvicorn.Config):
    """uvicorn's configuration; once the app is loaded (in each worker process), ``ws_max_size`` becomes the
    app's largest WebSocket message limit unless given here, and the invalid UTF-8 record is quieted.

    Routes added after the app is imported (in a startup handler) are not counted."""

    def __init__(self, app: Any, ws_max_size: int | None = None, **kwargs: Any) -> None:
        self.app_ws_max_size = ws_max_size is None  # else the caller's choice stands
        if ws_max_size is not None:
            kwargs["ws_max_size"] = ws_max_size
        super().__init__(app, **kwargs)

    def load(self) -> None:
        super().load()
        quiet_invalid_utf8()
        app = find_app(self.loaded_app)
        if self.app_ws_max_size and app is not None:
            limit = websocket_message_limit(app)
            if limit is not None:
                self.ws_max_size = limit


def serve(config: uvicorn.Config, server: uvicorn.Server | None = None) -> uvicorn.Server:
    """Run ``config`` as ``uvicorn.run`` does: one server in this process, or uvicorn's reload or workers
    supervisor (each child loads the app with ``config``, so a :class:`ServerConfig` applies in every one)."""
    from uvicorn.supervisors import ChangeReload, Multiprocess

    if (config.reload or config.workers > 1) and not isinstance(config.app, str):
        logging.getLogger("uvicorn.error").warning(
            "You must pass the application as an import string to enable 'reload' or 'workers'."
        )
        sys.exit(STARTUP_FAILURE)
    server = server or uvicorn.Server(config)
    if config.should_reload:
        ChangeReload(config, target=server.run, sockets=[config.bind_socket()]).run()
    elif config.workers > 1:
        # Recent uvicorn versions build the server in each worker; older ones take its ``run`` as ``target``.
        extra = {"target": server.run} if "target" in inspect.signature(Multiprocess).parameters else {}
        Multiprocess(config, sockets=[config.bind_socket()], **extra).run()
    else:
        server.run()
    return server


def run(app: Any, **uvicorn_kwargs: Any) -> None:
    """Serve ``app`` (an app or a ``"module:app"`` string) as ``uvicorn.run`` would; keyword arguments are
    uvicorn's and override the defaults (``server_options()``)."""
    config = ServerConfig(app, **{**server_options(), **uvicorn_kwargs})
    server = serve(config)
    if not server.started and not config.should_reload and config.workers == 1:
        sys.exit(STARTUP_FAILURE)
