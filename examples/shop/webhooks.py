"""Signing and verifying webhook bodies: HMAC-SHA256 of the exact bytes sent, in ``X-Shop-Signature``.

The header reads ``sha256=<hex digest>``. The receiver recomputes the digest over the raw body it received
(never over re-encoded JSON) and compares in constant time.
"""

from __future__ import annotations

import hashlib
import hmac

SIGNATURE_HEADER = "X-Shop-Signature"
DELIVERY_HEADER = "X-Shop-Delivery"
EVENT_HEADER = "X-Shop-Event"


def sign(body: bytes, secret: str) -> str:
    """The header value for ``body``: ``sha256=`` and the hex HMAC-SHA256 digest."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify(body: bytes, signature: str | None, secret: str) -> bool:
    """True if ``signature`` (the header value, possibly missing) is the signature of ``body``."""
    if not signature or not signature.startswith("sha256="):
        return False
    return hmac.compare_digest(sign(body, secret), signature.strip())
