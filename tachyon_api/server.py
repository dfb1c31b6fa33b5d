"""Serving an app from Python: ``run(app, host=..., port=...)`` (tachyon-api 1.3's ``tachyon_api.server``).

``tachyon run`` is the command-line way; both use uvicorn with uvloop and httptools when they are installed
(the ``speed`` extra).
"""

from __future__ import annotations

import importlib.util
from typing import Any

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as TachyonHTTPProtocol
except ImportError:  # httptools is not installed: uvicorn's pure-Python h11 protocol
    from uvicorn.protocols.http.h11_impl import H11Protocol as TachyonHTTPProtocol  # type: ignore[assignment]

__all__ = ["TachyonHTTPProtocol", "run", "server_options"]


def server_options() -> dict[str, Any]:
    """The fastest uvicorn loop and HTTP protocol available here."""
    return {
        "loop": "uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
        "http": "httptools" if importlib.util.find_spec("httptools") else "h11",
    }


def run(app: Any, **uvicorn_kwargs: Any) -> None:
    """Serve ``app`` (an app or a ``"module:app"`` string) with ``uvicorn.run``; keyword arguments are
    uvicorn's and override the defaults (``server_options()``)."""
    import uvicorn

    uvicorn.run(app, **{**server_options(), **uvicorn_kwargs})
