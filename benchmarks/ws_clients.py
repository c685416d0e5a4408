"""10 000 real WebSocket clients on the market's event stream: receive latency and memory.

Starts a throwaway PostgreSQL cluster and ``qubix serve`` on it (per-token rate limit off: the
clients share ``--tokens`` market tokens), then ``--processes`` child processes (``ws_swarm``)
holding ``--clients`` asyncio clients in all, each signed in and subscribed to ``marketplace``.
Then ``--events`` workers are registered through the API (``POST providers/quick-register``),
one every ``--interval`` seconds; each registration broadcasts a PROVIDER_REGISTERED (and a
MARKETPLACE_UPDATE) to every client. Figures:

* receive latency of each PROVIDER_REGISTERED at each client: client wall clock − the
  envelope's ``ts`` (stamped by the hub as it broadcasts; same machine, same clock) → p50/p99
  (target p99 ≤ 1 s);
* server memory per connection: the server's RSS (``/proc``) after every client subscribed,
  minus before any connected, over the clients (target ≤ 20 KiB).

Baseline in the same run, with the same clients: a plain tornado WebSocket broadcast server
(``--baseline-server``: no auth, no hub; a subscribe is answered SUBSCRIBED, ``POST /publish``
writes the same two frames per event to every socket). Prints one JSON line.

    python benchmarks/ws_clients.py [--clients 10000] [--processes 8] [--events 20]
                                    [--interval 0.5] [--tokens 8]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from market_process import (
    MarketServer,
    cpu_seconds,
    free_port,
    raise_open_files,
    register_worker,
    rss_bytes,
    seed_for,
    sign_in,
)
from ws_swarm import Swarms, percentiles

from qubix_jupyter.db import migrate
from qubix_jupyter.db.pg_cluster import PgCluster

# ------------------------------------------------------------------ the baseline server


def baseline_server(port: int) -> None:
    """A plain tornado WebSocket broadcast server: the floor for the same fan-out."""
    import tornado.web
    import tornado.websocket

    sockets: set[tornado.websocket.WebSocketHandler] = set()
    state = {"seq": 0}

    def envelope(kind: str, data: Any) -> str:
        state["seq"] += 1
        return json.dumps(
            {
                "type": kind,
                "channel": "marketplace",
                "seq": state["seq"],
                "ts": int(time.time() * 1000),
                "data": data,
            },
            separators=(",", ":"),
        )

    class Events(tornado.websocket.WebSocketHandler):
        def check_origin(self, origin: str) -> bool:
            return True

        def on_message(self, message: str | bytes) -> None:
            sockets.add(self)
            self.write_message(envelope("SUBSCRIBED", {"since": None}))

        def on_close(self) -> None:
            sockets.discard(self)

    class Publish(tornado.web.RequestHandler):
        def post(self) -> None:
            offer = json.loads(self.request.body)
            for frame in (
                envelope("PROVIDER_REGISTERED", offer),
                envelope("MARKETPLACE_UPDATE", {"providers": [offer]}),
            ):
                for ws in list(sockets):
                    try:
                        ws.write_message(frame)
                    except tornado.websocket.WebSocketClosedError:
                        sockets.discard(ws)

    class Health(tornado.web.RequestHandler):
        def get(self) -> None:
            self.write({"status": "ok"})

    async def serve() -> None:
        app = tornado.web.Application(
            [(r"/events", Events), (r"/publish", Publish), (r"/health", Health)]
        )
        app.listen(port, "127.0.0.1")
        await asyncio.Event().wait()

    raise_open_files()
    asyncio.run(serve())


# ------------------------------------------------------------------ one side of the run


def measure(
    *,
    events_url: str,
    pid: int,
    tokens: list[str],
    publish: Any,
    args: argparse.Namespace,
) -> dict[str, Any]:
    rss_before = rss_bytes(pid)
    cpu_before = cpu_seconds(pid)
    swarms = Swarms(events_url, tokens, args.clients, args.processes)
    try:
        t0 = time.monotonic()
        connected = swarms.wait_ready(timeout=900)
        connect_s = time.monotonic() - t0
        time.sleep(2)  # let the server settle (buffers freed, handshakes done)
        rss_after = rss_bytes(pid)
        cpu_connected = cpu_seconds(pid)
        ids = []
        for i in range(args.events):
            ids.append(f"w-{i}")
            publish(ids[-1])
            time.sleep(args.interval)
        figures = swarms.expect(ids, timeout=600)
        cpu_done = cpu_seconds(pid)
    finally:
        swarms.kill()
    latencies = [ms for f in figures for ms in f["latencies_ms"]]
    return {
        "connected": connected,
        "connect_all_s": round(connect_s, 1),
        "deliveries": len(latencies),
        "missed": sum(f["missing"] for f in figures),
        "error_frames": sum(f["errors"] for f in figures),
        "receive_latency_ms": percentiles(latencies),
        "rss_before_mib": round(rss_before / 2**20, 1),
        "rss_after_mib": round(rss_after / 2**20, 1),
        "bytes_per_connection": round((rss_after - rss_before) / max(1, args.clients)),
        # server CPU (whatever else shares the machine): per client connected and subscribed,
        # and per event (its request and its fan-out to every client)
        "server_cpu_ms_per_connect": round(1000 * (cpu_connected - cpu_before) / args.clients, 3),
        "server_cpu_ms_per_event": round(1000 * (cpu_done - cpu_connected) / args.events, 1),
    }


def run_market(url: str, tmp: Path, args: argparse.Namespace) -> dict[str, Any]:
    server = MarketServer(url, tmp, {"rate_limit_per_minute": 0})
    try:
        server.start()
        tokens = [sign_in(server.base, seed_for(i))[0] for i in range(args.tokens)]
        owner, address = sign_in(server.base, seed_for(10_000))
        register_worker(server.base, owner, address, "warm-up")  # first request paths warm
        return measure(
            events_url=server.events_url,
            pid=server.pid,
            tokens=tokens,
            publish=lambda worker_id: register_worker(server.base, owner, address, worker_id),
            args=args,
        )
    finally:
        server.stop()


def run_baseline(args: argparse.Namespace) -> dict[str, Any]:
    port = free_port()
    process = subprocess.Popen([sys.executable, __file__, "--baseline-server", str(port)])
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(base + "/health", timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

        def publish(worker_id: str) -> None:
            body = json.dumps({"workerId": worker_id, "gpuModel": "RTX 4090", "pricePerHour": 40})
            request = urllib.request.Request(base + "/publish", data=body.encode(), method="POST")
            with urllib.request.urlopen(request, timeout=30):
                pass

        return measure(
            events_url=f"ws://127.0.0.1:{port}/events",
            pid=process.pid,
            tokens=["unused"],
            publish=publish,
            args=args,
        )
    finally:
        process.kill()
        process.wait(10)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=10_000)
    parser.add_argument("--processes", type=int, default=8)
    parser.add_argument("--events", type=int, default=20)
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between events")
    parser.add_argument("--tokens", type=int, default=8)
    parser.add_argument("--baseline-server", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.baseline_server:
        baseline_server(args.baseline_server)
        return 0
    raise_open_files()

    with PgCluster() as cluster, tempfile.TemporaryDirectory() as tmp:
        url = cluster.create_database("ws_clients")
        migrate.upgrade(url)
        market = run_market(url, Path(tmp), args)
    baseline = run_baseline(args)
    p99 = market["receive_latency_ms"]["p99"]
    result = {
        "benchmark": "ws_clients",
        "clients": args.clients,
        "processes": args.processes,
        "events": args.events,
        "interval_s": args.interval,
        "market": market,
        "baseline": baseline,
        "target": {"receive_p99_ms": 1000, "bytes_per_connection": 20 * 1024},
        "meets_target": {
            "latency": p99 is not None and p99 <= 1000 and market["missed"] == 0,
            "memory": market["bytes_per_connection"] <= 20 * 1024,
        },
    }
    result["load_average_1_5_15"] = [round(x, 1) for x in os.getloadavg()]
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
