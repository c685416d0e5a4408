"""A real market server for the socket benchmarks: ``qubix serve`` in a subprocess.

* :class:`MarketServer`: starts ``qubix serve`` on a database with extra ``QubixExtension``
  config (written to the Jupyter config dir it alone reads), waits for health, stops it with
  SIGTERM (a graceful stop), reports its resident memory from ``/proc``;
* :func:`sign_in`: challenge → SchnorrQ signature → ``wallet/connect``, the market token;
* :func:`register_worker`: ``POST providers/quick-register`` (publishes on ``marketplace``);
* :func:`raise_open_files`: lift ``RLIMIT_NOFILE`` to its hard limit (thousands of sockets).

Plain ``urllib`` for HTTP so it runs from any process and thread.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from qubix_jupyter.settlement.keys import KeyPair
from qubix_jupyter.settlement.wallet import challenge_digest

QUBIX = str(Path(sys.executable).with_name("qubix"))


def raise_open_files() -> int:
    """Lift the soft limit on open files to the hard one; return it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rss_bytes(pid: int) -> int:
    """Resident set size of a process, from /proc/<pid>/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) a process has used, from /proc/<pid>/stat: what a figure costs
    the server whatever else shares the machine."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class MarketServer:
    """``qubix serve`` on ``database_url`` with ``config`` for ``QubixExtension``."""

    def __init__(self, database_url: str, workdir: Path, config: dict[str, Any] | None = None):
        self.database_url = database_url
        self.workdir = workdir
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}/qubix/api"
        self.events_url = f"ws://127.0.0.1:{self.port}/qubix/api/events"
        self.process: subprocess.Popen[str] | None = None
        self.env = dict(os.environ)
        for name in ("JUPYTER_CONFIG_DIR", "JUPYTER_DATA_DIR", "JUPYTER_RUNTIME_DIR"):
            self.env[name] = str(workdir / name.lower())
            Path(self.env[name]).mkdir(parents=True, exist_ok=True)
        self.env.pop("QUBIX_DATABASE_URL", None)
        config_file = Path(self.env["JUPYTER_CONFIG_DIR"]) / "jupyter_server_config.json"
        config_file.write_text(json.dumps({"QubixExtension": config or {}}))
        self._log = workdir / "server.log"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self, timeout: float = 120) -> float:
        """Start and wait until health answers 200; return the monotonic time the port first
        accepted a connection (the server answering again: clients may be in before health)."""
        command = [QUBIX, "serve", "--port", str(self.port), "--database-url", self.database_url]
        if os.geteuid() == 0:
            command.append("--allow-root")
        log = self._log.open("a")
        self.process = subprocess.Popen(
            command,
            cwd=self.workdir,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
            preexec_fn=raise_open_files,
        )
        log.close()
        listening = self.wait_listening(timeout)
        self.wait_healthy(timeout)
        return listening

    def wait_listening(self, timeout: float = 120, interval: float = 0.005) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"qubix serve exited early:\n{self.log_tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return time.monotonic()
            except OSError:
                time.sleep(interval)
        raise RuntimeError(f"port {self.port} did not open in {timeout} s")

    def wait_healthy(self, timeout: float = 120, interval: float = 0.02) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"qubix serve exited early:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.base + "/health", timeout=2) as response:
                    if response.status == 200:
                        return time.monotonic()
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(interval)
        raise RuntimeError(f"{self.base}/health did not answer in {timeout} s")

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM (the graceful stop) and wait; return the exit code."""
        process = self.process
        if process is None:
            return 0
        self.process = None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                return process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                return process.wait(10)
        return process.returncode

    def log_tail(self, chars: int = 4000) -> str:
        return self._log.read_text()[-chars:] if self._log.exists() else ""

    def __enter__(self) -> MarketServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _post(url: str, body: Any, token: str | None = None) -> Any:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers=headers, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        raise RuntimeError(f"POST {url}: {exc.code} {exc.read()[:500]!r}") from None


def seed_for(index: int) -> str:
    """A distinct wallet seed (55 lowercase letters) per index."""
    letters = []
    for _ in range(55):
        index, digit = divmod(index, 26)
        letters.append(chr(ord("a") + digit))
    return "".join(reversed(letters))


def sign_in(base: str, seed: str) -> tuple[str, str]:
    """(market token, Qubic address) of the wallet with this seed."""
    keys = KeyPair.from_seed(seed)
    address = keys.identity
    challenge = _post(base + "/auth/challenge", {"qubicAddress": address})["challenge"]
    signature = keys.sign(challenge_digest(challenge)).hex()
    connected = _post(
        base + "/wallet/connect",
        {"qubicAddress": address, "challenge": challenge, "signature": signature},
    )
    return str(connected["token"]), address


def register_worker(base: str, token: str, address: str, worker_id: str, price: int = 40) -> Any:
    body = {
        "type": "native",
        "gpu": {"type": "native", "vendor": "NVIDIA", "model": "RTX 4090", "vram": 24, "count": 1},
        "workerId": worker_id,
        "qubicAddress": address,
        "pricePerHour": price,
        "location": "EU",
        "cpuModel": "Ryzen 9",
        "cpuCores": 16,
        "ramTotal": 64,
    }
    return _post(base + "/providers/quick-register", body, token)
