"""`qubix serve` in a subprocess: it starts, answers health, and stops on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from qubix_jupyter.db import migrate

from ..conftest import DatabaseURL

QUBIX = str(Path(sys.executable).with_name("qubix"))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _environ(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    for name in ("JUPYTER_CONFIG_DIR", "JUPYTER_DATA_DIR", "JUPYTER_RUNTIME_DIR"):
        env[name] = str(tmp_path / name.lower())
    env.pop("QUBIX_DATABASE_URL", None)
    return env


def _serve(tmp_path: Path, *args: str) -> subprocess.Popen[str]:
    command = [QUBIX, "serve", *args]
    if os.geteuid() == 0:
        command.append("--allow-root")
    return subprocess.Popen(
        command,
        cwd=tmp_path,
        env=_environ(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _poll_health(url: str, process: subprocess.Popen[str], deadline: float) -> dict[str, object]:
    while time.monotonic() < deadline:
        assert process.poll() is None, "qubix serve exited early"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return json.loads(response.read())  # type: ignore[no-any-return]
        except (urllib.error.URLError, ConnectionError):
            pass
        time.sleep(0.2)
    raise AssertionError(f"{url} did not answer 200 in time")


def test_serve_starts_answers_health_and_stops_on_sigterm(
    tmp_path: Path, database_url: DatabaseURL
):
    port = _free_port()
    process = _serve(tmp_path, "--port", str(port), "--database-url", database_url.url)
    try:
        url = f"http://127.0.0.1:{port}/qubix/api/health"
        health = _poll_health(url, process, time.monotonic() + 60)
        assert health["status"] == "ok"
        assert health["database"] == {"reachable": True, "backend": database_url.kind}
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate(timeout=10)
    assert f"QUBIX market API: {url}" in output
    assert process.returncode == 0, output[-2000:]


def test_serve_refuses_an_old_schema(tmp_path: Path, database_url: DatabaseURL):
    migrate.downgrade(database_url.url, "0002")
    process = _serve(tmp_path, "--port", str(_free_port()), "--database-url", database_url.url)
    try:
        output, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate(timeout=10)
    assert process.returncode == 2, output[-2000:]
    assert "qubix db upgrade" in output
    assert "Traceback" not in output


def test_serve_help_names_its_options():
    result = subprocess.run([QUBIX, "serve", "--help"], capture_output=True, text=True, check=False)
    assert result.returncode == 0
    for option in ("--port", "--ip", "--database-url"):
        assert option in result.stdout
