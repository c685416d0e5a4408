"""A process of WebSocket clients for the socket benchmarks (``ws_clients``, ``ws_reconnect``).

:func:`swarm` runs in a child process (``multiprocessing`` spawn): ``clients`` asyncio clients
(tornado ``websocket_connect``), each signed in with one of ``tokens`` (``Authorization:
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
import json
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from market_process import raise_open_files
from tornado.httpclient import HTTPRequest
from tornado.websocket import WebSocketClientConnection, websocket_connect


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
    ws: WebSocketClientConnection | None = None
    #: set on every SUBSCRIBED and PROVIDER_REGISTERED: what the process's waits wait for
    progress: asyncio.Event = field(default_factory=asyncio.Event)


async def _session(url: str, client: Client, gate: asyncio.Semaphore) -> bool:
    """One connection: connect, subscribe, read until it closes. False: could not connect."""
    async with gate:
        try:
            ws = await websocket_connect(
                HTTPRequest(
                    url,
                    headers={"Authorization": f"Bearer {client.token}"},
                    connect_timeout=30,
                    request_timeout=30,
                ),
                ping_interval=None,
            )
        except Exception:
            return False
        client.ws = ws
        client.connects += 1
        request: dict[str, Any] = {"type": "subscribe", "channel": "marketplace"}
        if client.last_seq is not None:
            request["sinceSeq"] = client.last_seq
        try:
            await ws.write_message(json.dumps(request))
        except Exception:
            return True
    while True:
        message = await ws.read_message()
        if message is None:
            client.ws = None
            return True
        now_ms = time.time() * 1000
        frame = json.loads(message)
        kind = frame.get("type")
        if kind in ("error", "ERROR"):
            # the subscribe was refused (e.g. 503 while the server's database pool is
            # exhausted): as a real client, drop the connection and resume on a new one
            client.errors += 1
            ws.close()
            client.ws = None
            return True
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
