"""Defensive response headers (nosniff, framing, referrer policy; HSTS and CSP when configured)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from .core import with_headers

__all__ = ["SecurityHeadersMiddleware"]


class SecurityHeadersMiddleware:
    """Add security headers to every HTTP response, streaming ones included.

    A header the response already has is left as the endpoint set it; ``None`` leaves a header out. ``hsts``
    is the value of ``Strict-Transport-Security`` (e.g. ``"max-age=63072000; includeSubDomains"``), ``csp``
    of ``Content-Security-Policy``; ``extra_headers`` adds any other, as a mapping or as ``(name, value)``
    pairs (tachyon-api 1.3's form).
    """

    def __init__(
        self,
        app: Any,
        x_content_type_options: str | None = "nosniff",
        x_frame_options: str | None = "DENY",
        referrer_policy: str | None = "strict-origin-when-cross-origin",
        x_permitted_cross_domain_policies: str | None = "none",
        hsts: str | None = None,
        csp: str | None = None,
        extra_headers: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
    ) -> None:
        self.app = app
        extra = extra_headers.items() if isinstance(extra_headers, Mapping) else extra_headers or ()
        wanted = {
            "x-content-type-options": x_content_type_options,
            "x-frame-options": x_frame_options,
            "referrer-policy": referrer_policy,
            "x-permitted-cross-domain-policies": x_permitted_cross_domain_policies,
            "strict-transport-security": hsts,
            "content-security-policy": csp,
            **{name.lower(): value for name, value in extra},
        }
        for name, value in wanted.items():
            if value is not None and any(ch in value for ch in "\r\n\0"):
                raise ValueError(f"The value of {name} must not contain line breaks or NUL")
        self.headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in wanted.items() if v is not None]

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                present = {key.lower() for key, _ in message.get("headers", ())}
                message = with_headers(message, [h for h in self.headers if h[0] not in present])
            await send(message)

        await self.app(scope, receive, send_with_headers)
