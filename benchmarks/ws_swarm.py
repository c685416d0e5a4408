"""A process of WebSocket clients for the socket benchmarks (``ws_clients``, ``ws_reconnect``).

:func:`swarm` runs in a child process (``multiprocessing`` spawn): ``clients`` asyncio clients
(a lean RFC 6455 client, :class:`_Wire`), each signed in with one of ``tokens`` (``Authorization:
Bearer``), subscribed to ``marketplace``. A client that loses its connection reconnects (a
short jittered retry) and resubscribes with ``sinceSeq`` = the ``seq`` of the last frame it
received, as the events API asks. Per client it records the ``workerId`` of every
PROVIDER_REGISTERED frame, that frame's receive latency (client wall clock − the envelope's
``ts``; same machine, same clock), when each SUBSCRIBED arrived (monotonic, comparable across
processes), RESYNC frames and error frames.

The parent drives it through two queues: the child puts ``("ready", index, connected)`` once
every client has subscribed; the parent puts ``("expect", worker_ids, timeout)``; the child
waits until every client has received them all (or the timeout), puts ``("result", index,
figures)`` and exits.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import random
import struct
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

from market_process import raise_open_files

_WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 §1.3


@dataclass
class Client:
    token: str
    last_seq: int | None = None
    worker_ids: list[str] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)
    subscribed_at: list[float] = field(default_factory=list)
    resyncs: int = 0
    errors: int = 0
    connects: int = 0
    ws: _Wire | None = None
    #: set on every SUBSCRIBED and PROVIDER_REGISTERED: what the process's waits wait for
    progress: asyncio.Event = field(default_factory=asyncio.Event)


class _Wire(asyncio.Protocol):
    """One client connection on the wire: the RFC 6455 handshake, then frames, parsed in
    ``data_received`` as they arrive.

    A load generator that holds thousands of sockets on the same cores as the server must cost
    little per frame, or its own backlog is what the latencies measure: tornado's client reads
    each frame through several coroutine steps; this reads a whole ``recv`` of frames in one
    callback. Server frames are unmasked (§5.1); the client's own frames (the subscribe, pongs,
    the close) are masked. Pings are answered, so the server's liveness checks pass.
    """

    def __init__(self, request: bytes, accept: str, on_text: Any) -> None:
        self._request = request
        self._accept = accept
        self._on_text = on_text
        self._buffer = bytearray()
        self._upgraded = False
        self._fragments: list[bytes] = []
        self.transport: asyncio.Transport | None = None
        loop = asyncio.get_running_loop()
        #: resolved once the server answered 101 (an exception otherwise)
        self.opened: asyncio.Future[None] = loop.create_future()
        #: resolved when the connection is gone, whoever closed it
        self.closed: asyncio.Future[None] = loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.transport.write(self._request)  # type: ignore[union-attr]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(ConnectionError("closed during the handshake"))
        if not self.closed.done():
            self.closed.set_result(None)

    def send_text(self, text: str) -> None:
        self._send(0x1, text.encode())

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self._send(0x8, struct.pack("!H", 1000))
            self.transport.close()

    def _send(self, opcode: int, payload: bytes) -> None:
        size = len(payload)
        if size < 126:
            head = struct.pack("!BB", 0x80 | opcode, 0x80 | size)
        elif size <= 0xFFFF:
            head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, size)
        else:
            head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, size)
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        assert self.transport is not None
        self.transport.write(head + mask + masked)

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        if not self._upgraded:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buffer[:end]).decode("latin-1").split("\r\n")
            del buffer[: end + 4]
            lines = (line.partition(":") for line in head[1:])
            headers = {k.strip().lower(): v.strip() for k, _, v in lines}
            status = head[0].split(" ", 2)
            accepted = len(status) > 1 and status[1] == "101"
            if not accepted or headers.get("sec-websocket-accept") != self._accept:
                self.opened.set_exception(ConnectionError(f"handshake refused: {head[0]}"))
                assert self.transport is not None
                self.transport.close()
                return
            self._upgraded = True
            self.opened.set_result(None)
        position = 0
        size = len(buffer)
        while size - position >= 2:
            first, second = buffer[position], buffer[position + 1]
            length = second & 0x7F
            start = position + 2
            if length == 126:
                if size - position < 4:
                    break
                (length,) = struct.unpack_from("!H", buffer, start)
                start += 2
            elif length == 127:
                if size - position < 10:
                    break
                (length,) = struct.unpack_from("!Q", buffer, start)
                start += 8
            if second & 0x80:  # servers never mask (§5.1)
                self.close()
                return
            if size - start < length:
                break
            payload = bytes(buffer[start : start + length])
            position = start + length
            opcode = first & 0x0F
            if opcode in (0x1, 0x0):
                if not first & 0x80:  # a fragment: keep it until the final one
                    self._fragments.append(payload)
                    continue
                if self._fragments:
                    payload = b"".join([*self._fragments, payload])
                    self._fragments.clear()
                self._on_text(payload)
            elif opcode == 0x9:
                self._send(0xA, payload)
            elif opcode == 0x8:
                self.close()
                return
        del buffer[:position]


async def _connect(url: str, token: str, on_text: Any) -> _Wire:
    """Open a WebSocket to ``url`` with ``Authorization: Bearer token``; raise if refused."""
    parts = urllib.parse.urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    key = base64.b64encode(os.urandom(16)).decode()
    accept = base64.b64encode(hashlib.sha1((key + _WS_GUID).encode()).digest()).decode()
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        f"Authorization: Bearer {token}\r\n\r\n"
    ).encode()
    loop = asyncio.get_running_loop()
    _, wire = await asyncio.wait_for(
        loop.create_connection(lambda: _Wire(request, accept, on_text), host, port), 30
    )
    try:
        await asyncio.wait_for(asyncio.shield(wire.opened), 30)
    except BaseException:
        wire.close()
        raise
    return wire


async def _session(url: str, client: Client, gate: asyncio.Semaphore) -> bool:
    """One connection: connect, subscribe, read until it closes. False: could not connect."""

    def on_text(payload: bytes) -> None:
        now_ms = time.time() * 1000
        frame = json.loads(payload)
        kind = frame.get("type")
        if kind in ("error", "ERROR"):
            # the subscribe was refused (e.g. 503 while the server's database pool is
            # exhausted): as a real client, drop the connection and resume on a new one
            client.errors += 1
            wire.close()
            return
        client.last_seq = frame["seq"]
        if kind == "SUBSCRIBED":
            client.subscribed_at.append(time.monotonic())
            client.progress.set()
        elif kind == "PROVIDER_REGISTERED":
            client.worker_ids.append(frame["data"]["workerId"])
            client.latencies_ms.append(now_ms - frame["ts"])
            client.progress.set()
        elif kind == "RESYNC":
            client.resyncs += 1

    async with gate:
        try:
            wire = await _connect(url, client.token, on_text)
        except Exception:
            return False
        client.ws = wire
        client.connects += 1
        request: dict[str, Any] = {"type": "subscribe", "channel": "marketplace"}
        if client.last_seq is not None:
            request["sinceSeq"] = client.last_seq
        wire.send_text(json.dumps(request))
    await wire.closed
    client.ws = None
    return True


async def _client(url: str, client: Client, gate: asyncio.Semaphore, stop: asyncio.Event) -> None:
    while not stop.is_set():
        connected = await _session(url, client, gate)
        if stop.is_set():
            return
        # reconnect as a real client would: soon, with jitter so they do not come in lockstep
        await asyncio.sleep(random.uniform(0.01, 0.05) if connected else random.uniform(0.02, 0.1))


async def _until(swarm: list[Client], done: Any, deadline: float | None) -> None:
    """Wait until ``done(client)`` holds for every client (or the monotonic ``deadline``)."""
    for client in swarm:
        while not done(client):
            client.progress.clear()
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return
            try:
                await asyncio.wait_for(client.progress.wait(), left)
            except TimeoutError:
                return


async def _run(
    index: int,
    url: str,
    tokens: list[str],
    clients: int,
    concurrency: int,
    commands: Any,
    results: Any,
) -> None:
    loop = asyncio.get_running_loop()
    inbox: asyncio.Queue[Any] = asyncio.Queue()

    def read_commands() -> None:
        while True:
            command = commands.get()
            loop.call_soon_threadsafe(inbox.put_nowait, command)
            if command[0] == "expect":
                return

    threading.Thread(target=read_commands, daemon=True).start()
    stop = asyncio.Event()
    gate = asyncio.Semaphore(concurrency)
    swarm = [Client(token=tokens[i % len(tokens)]) for i in range(clients)]
    tasks = [asyncio.create_task(_client(url, c, gate, stop)) for c in swarm]
    await _until(swarm, lambda c: bool(c.subscribed_at), None)
    results.put(("ready", index, sum(1 for c in swarm if c.ws is not None)))
    _, expected, timeout = await inbox.get()
    wanted = set(expected)
    await _until(swarm, lambda c: wanted <= set(c.worker_ids), time.monotonic() + timeout)
    stop.set()
    for c in swarm:
        if c.ws is not None:
            c.ws.close()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    figures = {
        "clients": clients,
        "latencies_ms": [ms for c in swarm for ms in c.latencies_ms],
        "subscribed_at": [c.subscribed_at for c in swarm],
        "missing": sum(len(wanted - set(c.worker_ids)) for c in swarm),
        "duplicates": sum(len(c.worker_ids) - len(set(c.worker_ids)) for c in swarm),
        "resyncs": sum(c.resyncs for c in swarm),
        "errors": sum(c.errors for c in swarm),
        "connects": sum(c.connects for c in swarm),
    }
    results.put(("result", index, figures))


def swarm(
    index: int,
    url: str,
    tokens: list[str],
    clients: int,
    concurrency: int,
    commands: Any,
    results: Any,
) -> None:
    """The child process's entry point."""
    raise_open_files()
    asyncio.run(_run(index, url, tokens, clients, concurrency, commands, results))


def percentiles(samples: list[float]) -> dict[str, float | None]:
    if not samples:
        return {"p50": None, "p99": None, "max": None}
    ordered = sorted(samples)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)

    return {"p50": at(0.50), "p99": at(0.99), "max": round(ordered[-1], 2)}


class Swarms:
    """``processes`` child processes of :func:`swarm`, ``clients`` in all."""

    def __init__(
        self, url: str, tokens: list[str], clients: int, processes: int, concurrency: int = 64
    ):
        import multiprocessing

        context = multiprocessing.get_context("spawn")
        self.results = context.Queue()
        self.commands = [context.Queue() for _ in range(processes)]
        shares = [
            clients // processes + (1 if i < clients % processes else 0) for i in range(processes)
        ]
        self.processes = [
            context.Process(
                target=swarm,
                args=(i, url, tokens, share, concurrency, self.commands[i], self.results),
                daemon=True,
            )
            for i, share in enumerate(shares)
        ]
        for process in self.processes:
            process.start()

    def wait_ready(self, timeout: float) -> int:
        """Block until every process has all its clients subscribed; return those connected."""
        connected = 0
        for _ in self.processes:
            kind, _, count = self.results.get(timeout=timeout)
            assert kind == "ready"
            connected += count
        return connected

    def expect(self, worker_ids: list[str], timeout: float) -> list[dict[str, Any]]:
        """Tell every process what to wait for; collect their figures."""
        for commands in self.commands:
            commands.put(("expect", worker_ids, timeout))
        figures = []
        for _ in self.processes:
            kind, _, result = self.results.get(timeout=timeout + 120)
            assert kind == "result"
            figures.append(result)
        for process in self.processes:
            process.join(30)
        return figures

    def kill(self) -> None:
        for process in self.processes:
            if process.is_alive():
                process.kill()
