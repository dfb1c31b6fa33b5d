"""Every setting of the shop, read from ``SHOP_*`` environment variables.

The web process and the workers (durable mode) read the same variables, so both find the same database,
mailbox and SMTP server. ``SHOP_TASK_BACKEND=postgresql://...`` puts the task queue *and* the shop's tables
in that PostgreSQL database (``SHOP_DB``, the SQLite file, is then unused). Relative paths are resolved
against the current directory when first read.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path


def _env(name: str, default: str) -> str:
    value = os.environ.get(name, "").strip()
    return value or default


@dataclass(frozen=True)
class Settings:
    data_dir: Path
    db_path: Path
    mailbox_dir: Path
    upload_dir: Path
    smtp_host: str | None  # None: the app runs its own mailbox SMTP server on 127.0.0.1:smtp_port
    smtp_port: int
    smtp_user: str | None
    smtp_password: str | None
    smtp_tls: str  # "none", "starttls" or "ssl"
    mail_from: str
    webhook_secret: str
    webhook_retries: int
    webhook_retry_delay: float
    reset_token_ttl: int
    max_upload_bytes: int
    task_backend: str  # "inprocess", "rq" or "postgres"
    postgres_url: str | None  # for "postgres": the database of the task queue and of the shop's data
    redis_url: str
    queue: str
    shutdown_timeout: float
    commit_grace: float  # seconds a task waits for the row of its request's commit (not on PostgreSQL)

    @property
    def local_smtp(self) -> bool:
        """True when the app serves the mailbox itself (no SHOP_SMTP_HOST)."""
        return self.smtp_host is None

    @classmethod
    def from_env(cls) -> Settings:
        data_dir = Path(_env("SHOP_DATA_DIR", "var")).resolve()
        smtp_tls = _env("SHOP_SMTP_TLS", "none").lower()
        if smtp_tls not in ("none", "starttls", "ssl"):
            raise ValueError(f"SHOP_SMTP_TLS must be none, starttls or ssl, not {smtp_tls!r}")
        backend = _env("SHOP_TASK_BACKEND", "inprocess")
        postgres_url = None
        if backend.startswith(("postgres://", "postgresql://")):  # the URL of the database to queue tasks in
            backend, postgres_url = "postgres", backend
        backend = backend.lower()
        if backend not in ("inprocess", "rq", "postgres"):
            raise ValueError(f"SHOP_TASK_BACKEND must be inprocess, rq or a postgresql:// URL, not {backend!r}")
        return cls(
            data_dir=data_dir,
            db_path=Path(_env("SHOP_DB", str(data_dir / "shop.sqlite3"))).resolve(),
            mailbox_dir=Path(_env("SHOP_MAILBOX_DIR", str(data_dir / "mailbox"))).resolve(),
            upload_dir=Path(_env("SHOP_UPLOAD_DIR", str(data_dir / "uploads"))).resolve(),
            smtp_host=os.environ.get("SHOP_SMTP_HOST", "").strip() or None,
            smtp_port=int(_env("SHOP_SMTP_PORT", "8025")),
            smtp_user=os.environ.get("SHOP_SMTP_USER") or None,
            smtp_password=os.environ.get("SHOP_SMTP_PASSWORD") or None,
            smtp_tls=smtp_tls,
            mail_from=_env("SHOP_MAIL_FROM", "Tachyon Shop <shop@example.com>"),
            webhook_secret=_env("SHOP_WEBHOOK_SECRET", "dev-secret-change-me"),
            webhook_retries=int(_env("SHOP_WEBHOOK_RETRIES", "5")),
            webhook_retry_delay=float(_env("SHOP_WEBHOOK_RETRY_DELAY", "1.0")),
            reset_token_ttl=int(_env("SHOP_RESET_TOKEN_TTL", "3600")),
            max_upload_bytes=int(_env("SHOP_MAX_UPLOAD_BYTES", str(20 * 1024 * 1024))),
            task_backend=backend,
            postgres_url=postgres_url,
            redis_url=_env("SHOP_REDIS_URL", "redis://127.0.0.1:6379/0"),
            queue=_env("SHOP_QUEUE", "shop"),
            shutdown_timeout=float(_env("SHOP_SHUTDOWN_TIMEOUT", "25")),
            commit_grace=float(_env("SHOP_COMMIT_GRACE", "5")),
        )


@functools.lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The settings of this process, read once."""
    return Settings.from_env()
