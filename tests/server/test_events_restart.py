"""Event stream clients resume across a restart of a real market server (``qubix serve``).

A graceful stop (SIGTERM) hands the hub's head, floor and buffered frames to the next process
through the database; a client reconnects with ``sinceSeq`` = the last seq it received and gets
exactly what it missed, before and after the restart. After a crash nothing is handed over and
the client is asked to RESYNC.
"""

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
from typing import Any

from tornado.httpclient import HTTPRequest
from tornado.websocket import WebSocketClientConnection, websocket_connect

from qubix_jupyter.settlement.keys import KeyPair
from qubix_jupyter.settlement.wallet import challenge_digest

from ..conftest import DatabaseURL
from .conftest import SEED_ALICE

QUBIX = str(Path(sys.executable).with_name("qubix"))


class Server:
    """``qubix serve`` on one port and database, started and stopped as the test says."""

    def __init__(self, tmp_path: Path, database_url: str) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = int(sock.getsockname()[1])
        self.base = f"http://127.0.0.1:{self.port}/qubix/api"
        self.tmp_path = tmp_path
        self.database_url = database_url
        self.env = dict(os.environ)
        for name in ("JUPYTER_CONFIG_DIR", "JUPYTER_DATA_DIR", "JUPYTER_RUNTIME_DIR"):
            self.env[name] = str(tmp_path / name.lower())
        self.env.pop("QUBIX_DATABASE_URL", None)
        self.process: subprocess.Popen[str] | None = None

    def start(self) -> None:
        command = [QUBIX, "serve", "--port", str(self.port), "--database-url", self.database_url]
        if os.geteuid() == 0:
            command.append("--allow-root")
        self.process = subprocess.Popen(
            command,
            cwd=self.tmp_path,
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert self.process.poll() is None, "qubix serve exited early"
            try:
                with urllib.request.urlopen(self.base + "/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError):
                pass
            time.sleep(0.2)
        raise AssertionError("the market did not answer health in time")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.send_signal(sig)
            assert process.wait(60) is not None

    def post(self, path: str, body: Any, token: str | None = None) -> Any:
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        request = urllib.request.Request(
            f"{self.base}/{path}", data=json.dumps(body).encode(), headers=headers, method="POST"
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    def sign_in(self, seed: str) -> tuple[str, str]:
        keys = KeyPair.from_seed(seed)
        issued = self.post("auth/challenge", {"qubicAddress": keys.identity})["challenge"]
        signature = keys.sign(challenge_digest(issued)).hex()
        body = {"qubicAddress": keys.identity, "challenge": issued, "signature": signature}
        return self.post("wallet/connect", body)["token"], keys.identity

    def register(self, token: str, address: str, worker_id: str) -> None:
        gpu = {"type": "native", "vendor": "NVIDIA", "model": "RTX 4090", "vram": 24, "count": 1}
        body = {
            "type": "native",
            "gpu": gpu,
            "workerId": worker_id,
            "qubicAddress": address,
            "pricePerHour": 40,
        }
        self.post("providers/quick-register", body, token)

    async def subscribe(
        self, token: str, since: int | None = None
    ) -> tuple[WebSocketClientConnection, list[dict[str, Any]]]:
        """A connection subscribed to ``marketplace``, and the frames up to its SUBSCRIBED."""
        ws = await websocket_connect(
            HTTPRequest(
                f"ws://127.0.0.1:{self.port}/qubix/api/events",
                headers={"Authorization": f"Bearer {token}"},
            )
        )
        request: dict[str, Any] = {"type": "subscribe", "channel": "marketplace"}
        if since is not None:
            request["sinceSeq"] = since
        await ws.write_message(json.dumps(request))
        frames = []
        while not frames or frames[-1]["type"] != "SUBSCRIBED":
            frames.append(await _recv(ws))
        return ws, frames


async def _recv(ws: WebSocketClientConnection) -> dict[str, Any]:
    message = await ws.read_message()
    assert message is not None, "the connection closed"
    return json.loads(message)  # type: ignore[no-any-return]


async def _until_registered(ws: WebSocketClientConnection, worker_id: str) -> int:
    """Read until ``worker_id``'s PROVIDER_REGISTERED; return its seq."""
    while True:
        frame = await _recv(ws)
        if frame["type"] == "PROVIDER_REGISTERED" and frame["data"]["workerId"] == worker_id:
            return int(frame["seq"])


def _registered(frames: list[dict[str, Any]]) -> list[str]:
    return [f["data"]["workerId"] for f in frames if f["type"] == "PROVIDER_REGISTERED"]


async def test_a_client_resumes_across_a_graceful_restart_with_exactly_what_it_missed(
    tmp_path: Path, database_url: DatabaseURL
) -> None:
    server = Server(tmp_path, database_url.url)
    server.start()
    try:
        token, address = server.sign_in(SEED_ALICE)
        ws, _ = await server.subscribe(token)
        server.register(token, address, "seen")
        position = await _until_registered(ws, "seen")
        ws.close()
        server.register(token, address, "missed-before-stop")
        server.stop()  # SIGTERM: the hub hands over
        server.start()
        server.register(token, address, "missed-after-start")

        resumed, frames = await server.subscribe(token, since=position)
        assert [f["type"] for f in frames].count("RESYNC") == 0
        assert _registered(frames) == ["missed-before-stop", "missed-after-start"]
        seqs = [f["seq"] for f in frames[:-1]]
        assert seqs == sorted(set(seqs))  # in order, once each
        assert seqs[0] > position
        # and live frames follow the replay
        server.register(token, address, "live")
        assert await _until_registered(resumed, "live") > frames[-1]["seq"]
        resumed.close()

        # A crash hands nothing over: the same position now gets a RESYNC.
        server.stop(signal.SIGKILL)
        server.start()
        crashed, frames = await server.subscribe(token, since=position)
        assert [f["type"] for f in frames] == ["RESYNC", "SUBSCRIBED"]
        assert frames[0]["data"] == {"reason": "expired", "since": position}
        crashed.close()
    finally:
        server.stop()
