"""A throwaway PostgreSQL cluster: initdb into a temporary folder, pg_ctl on a free port.

Used by the test suite, the benchmarks and ``qubix demo --postgres``. When run as root (as in CI
containers) the server runs as the ``postgres`` system user through ``runuser``, because
PostgreSQL refuses to run as root.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

import psycopg


class PostgresNotFound(RuntimeError):
    """No PostgreSQL server binaries on this machine."""


def find_bindir() -> Path:
    """The newest PostgreSQL ``bin`` folder: $QUBIX_PG_BINDIR, then PATH, then Debian's layout."""
    explicit = os.environ.get("QUBIX_PG_BINDIR")
    if explicit:
        return Path(explicit)
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0,
    )
    if candidates:
        return Path(candidates[-1]).parent
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).resolve().parent
    raise PostgresNotFound(
        "PostgreSQL server binaries (initdb, pg_ctl, postgres) were not found: install them "
        "(Debian/Ubuntu: `apt-get install postgresql`) or set QUBIX_PG_BINDIR"
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PgCluster:
    """One PostgreSQL server owned by this process; ``stop()`` removes every trace of it."""

    def __init__(
        self,
        *,
        settings: dict[str, str] | None = None,
        base_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self.bindir = find_bindir()
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="qubix-pg-", dir=base_dir))
        self.datadir = self.root / "data"
        self.sockdir = self.root / "sock"
        self.logfile = self.root / "server.log"
        self.settings = {
            "listen_addresses": "127.0.0.1",
            "port": str(self.port),
            "unix_socket_directories": str(self.sockdir),
            "max_connections": "300",
            **(settings or {}),
        }
        self._as_postgres = os.geteuid() == 0
        self.running = False

    # ---------------------------------------------------------------- process control

    def _run(self, args: Sequence[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        command = [str(a) for a in args]
        if self._as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        return subprocess.run(command, check=True, capture_output=True, text=True, **kwargs)  # type: ignore[call-overload]

    def init(self) -> PgCluster:
        self.sockdir.mkdir(parents=True)
        if self._as_postgres:
            shutil.chown(self.root, "postgres", "postgres")
            shutil.chown(self.sockdir, "postgres", "postgres")
        self._run(
            [
                self.bindir / "initdb",
                "-D",
                self.datadir,
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--no-locale",
                "--no-instructions",
            ]
        )
        return self

    def start(self) -> PgCluster:
        options = " ".join(f"-c {k}={v}" for k, v in self.settings.items())
        try:
            self._run(
                [
                    self.bindir / "pg_ctl",
                    "-D",
                    self.datadir,
                    "-l",
                    self.logfile,
                    "-o",
                    options,
                    "-w",
                    "-t",
                    "60",
                    "start",
                ]
            )
        except subprocess.CalledProcessError as exc:
            log = self.logfile.read_text() if self.logfile.exists() else ""
            raise RuntimeError(f"PostgreSQL did not start: {exc.stderr}\n{log}") from exc
        self.running = True
        return self

    def stop(self, mode: str = "fast") -> None:
        if self.running:
            self._run([self.bindir / "pg_ctl", "-D", self.datadir, "-m", mode, "-w", "stop"])
            self.running = False

    def restart(self) -> None:
        self.stop()
        self.start()

    def destroy(self) -> None:
        try:
            self.stop("immediate")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PgCluster:
        return self.init().start()

    def __exit__(self, *exc: object) -> None:
        self.destroy()

    # ---------------------------------------------------------------- databases

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def admin(self) -> psycopg.Connection:
        return psycopg.connect(self.url(), autocommit=True)

    def create_database(self, name: str, *, template: str | None = None) -> str:
        with self.admin() as conn:
            sql = f'CREATE DATABASE "{name}"'
            if template:
                sql += f' TEMPLATE "{template}"'
            conn.execute(sql)  # type: ignore[arg-type]
        return self.url(name)

    def drop_database(self, name: str) -> None:
        with self.admin() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')  # type: ignore[arg-type]
