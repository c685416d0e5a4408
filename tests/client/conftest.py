"""A real market for the client: ``qubix serve`` in a subprocess, which a test may stop and start
again on the same port and database (the client's reconnect and resume need a real restart)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from qubix_jupyter.client import MarketClient
from qubix_jupyter.settlement.keys import KeyPair

from ..conftest import DatabaseURL

QUBIX = str(Path(sys.executable).with_name("qubix"))
SEED_ALICE = "a" * 55
SEED_BOB = "b" * 55


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Market:
    """One ``qubix serve`` on a fixed port and database; ``stop()``/``start()`` restart it."""

    def __init__(self, tmp_path: Path, database_url: str, *extra: str) -> None:
        self.tmp_path = tmp_path
        self.database_url = database_url
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.extra = extra
        self.process: subprocess.Popen[str] | None = None
        self.log = tmp_path / "serve.log"

    def _environ(self) -> dict[str, str]:
        env = dict(os.environ)
        for name in ("JUPYTER_CONFIG_DIR", "JUPYTER_DATA_DIR", "JUPYTER_RUNTIME_DIR"):
            env[name] = str(self.tmp_path / name.lower())
        for name in ("QUBIX_DATABASE_URL", "QUBIX_MARKET_URL", "QUBIX_TOKEN", "QUBIX_SEED_FILE"):
            env.pop(name, None)
        return env

    def start(self, timeout: float = 60) -> None:
        command = [
            QUBIX,
            "serve",
            "--port",
            str(self.port),
            "--database-url",
            self.database_url,
            *self.extra,
        ]
        if os.geteuid() == 0:
            command.append("--allow-root")
        with self.log.open("a") as log:
            self.process = subprocess.Popen(
                command,
                cwd=self.tmp_path,
                env=self._environ(),
                stdout=log,
                stderr=subprocess.STDOUT,
                text=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log.read_text()[-3000:]
            try:
                with urllib.request.urlopen(self.url + "qubix/api/health", timeout=2) as answer:
                    if answer.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError):
                pass
            time.sleep(0.1)
        raise AssertionError(f"the market did not start: {self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.process = None


def sqlite_copy(folder: Path, template: Path) -> str:
    path = folder / "qubix.db"
    shutil.copyfile(template, path)
    return f"sqlite:///{path}"


@pytest.fixture(scope="module")
def market(tmp_path_factory: pytest.TempPathFactory, sqlite_template: Path) -> Iterator[Market]:
    """One market on SQLite per test module (tests use their own users and worker ids); the
    server's own tests cover both databases, ``market_on_both`` a few of the client's."""
    folder = tmp_path_factory.mktemp("market")
    server = Market(folder, sqlite_copy(folder, sqlite_template))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def market_on_both(tmp_path: Path, database_url: DatabaseURL) -> Iterator[Market]:
    """A market on SQLite and on PostgreSQL."""
    server = Market(tmp_path, database_url.url)
    server.start()
    yield server
    server.stop()


def identity(seed: str) -> str:
    return KeyPair.from_seed(seed).identity


def signed_in(market: Market, seed: str) -> MarketClient:
    client = MarketClient(market.url, seed=seed, retries=1)
    client.sign_in()
    return client


@pytest.fixture
def alice(market: Market) -> Iterator[MarketClient]:
    client = signed_in(market, SEED_ALICE)
    yield client
    client.close()


@pytest.fixture
def bob(market: Market) -> Iterator[MarketClient]:
    client = signed_in(market, SEED_BOB)
    yield client
    client.close()


GPU = {"type": "native", "vendor": "NVIDIA", "model": "RTX 4090", "vram": 24, "count": 1}
