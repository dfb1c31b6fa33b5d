"""A local SMTP server (aiosmtpd) that writes every message it receives to a folder as an ``.eml`` file.

The app starts one in its lifespan, on ``127.0.0.1:SHOP_SMTP_PORT``, unless ``SHOP_SMTP_HOST`` names a real
SMTP server. It runs on the app's own event loop: nothing to install or run besides the app, and every email
the shop sends can be opened with any mail client (or read as text) in ``SHOP_MAILBOX_DIR``.

``python -m examples.shop.mailserver`` runs it on its own, for set-ups with several web processes
(``tachyon run --workers 4``): start it once and set ``SHOP_SMTP_HOST=127.0.0.1`` for the app.
"""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from datetime import datetime, timezone
from pathlib import Path

from aiosmtpd.smtp import SMTP, Envelope, Session

logger = logging.getLogger("shop.mailserver")


class MailboxHandler:
    """aiosmtpd handler: one ``<UTC time>-<random>.eml`` file per message, written atomically."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def _write(self, content: bytes, recipients: list[str]) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%f")
        name = f"{stamp}-{uuid.uuid4().hex[:8]}.eml"
        partial = self.folder / f".{name}.tmp"
        # The envelope recipients are not always in the headers (Bcc): record them like a mail server does.
        header = "".join(f"X-Envelope-To: {rcpt}\r\n" for rcpt in recipients).encode()
        partial.write_bytes(header + content)
        os.replace(partial, self.folder / name)  # readers never see a half-written file
        return self.folder / name

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:  # noqa: N802 - aiosmtpd's name
        content = envelope.original_content or envelope.content
        assert isinstance(content, bytes)
        path = await asyncio.to_thread(self._write, content, list(envelope.rcpt_tos))
        logger.info("Stored a message for %s in %s", ", ".join(envelope.rcpt_tos), path)
        return "250 Message accepted for delivery"


async def start_mailbox_server(folder: Path, host: str = "127.0.0.1", port: int = 8025) -> asyncio.AbstractServer:
    """Listen on ``host:port`` on the running event loop; close the returned server to stop."""
    handler = MailboxHandler(folder)
    loop = asyncio.get_running_loop()

    def factory() -> SMTP:
        # hostname is given so that aiosmtpd does not look up the machine's FQDN (a DNS query) per connection.
        return SMTP(handler, hostname="localhost", ident="Tachyon shop mailbox", enable_SMTPUTF8=True, loop=loop)

    server = await loop.create_server(factory, host=host, port=port)
    logger.info("Mailbox SMTP server on %s:%d writes to %s", host, port, folder)
    return server


async def _main() -> None:
    from .settings import get_settings

    settings = get_settings()
    server = await start_mailbox_server(settings.mailbox_dir, "127.0.0.1", settings.smtp_port)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("mail.log").setLevel(logging.WARNING)  # aiosmtpd logs every SMTP command at INFO
    try:
        asyncio.run(_main())
    except KeyboardInterrupt:
        pass
