"""Composing and sending email with the standard library (``email`` and ``smtplib``).

Sending is blocking network I/O, so the tasks that call :func:`send` are plain ``def`` functions: the
in-process runner runs them in its own thread pool, and an RQ worker runs them in its work horse.
"""

from __future__ import annotations

import smtplib
import ssl
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

from .settings import Settings, get_settings


def compose(to: str, subject: str, text: str, settings: Settings | None = None) -> EmailMessage:
    settings = settings or get_settings()
    message = EmailMessage()
    message["From"] = settings.mail_from
    message["To"] = to
    message["Subject"] = subject
    message["Date"] = formatdate(localtime=True)
    message["Message-ID"] = make_msgid(domain="shop.example.com")
    message.set_content(text)
    return message


def send(message: EmailMessage, settings: Settings | None = None) -> None:
    """Deliver ``message`` to the configured SMTP server (the app's own mailbox server by default).

    Raises on any SMTP or network error, so the task fails and its retries apply.
    """
    settings = settings or get_settings()
    host = settings.smtp_host or "127.0.0.1"
    timeout = 10
    if settings.smtp_tls == "ssl":
        smtp: smtplib.SMTP = smtplib.SMTP_SSL(
            host, settings.smtp_port, timeout=timeout, context=ssl.create_default_context()
        )
    else:
        smtp = smtplib.SMTP(host, settings.smtp_port, timeout=timeout)
    with smtp:
        if settings.smtp_tls == "starttls":
            smtp.starttls(context=ssl.create_default_context())
        if settings.smtp_user:
            smtp.login(settings.smtp_user, settings.smtp_password or "")
        smtp.send_message(message)
