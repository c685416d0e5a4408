"""1 000 WebSocket clients resume across a restart of the market server.

Starts a throwaway PostgreSQL cluster and ``qubix serve`` on it (per-token rate limit off: the
clients share a few tokens), then ``--processes`` child processes of ``--clients`` asyncio
clients in all (``ws_swarm``), each subscribed to ``marketplace``. Then:

1. registers ``--events`` workers (each a PROVIDER_REGISTERED on ``marketplace``) and waits for
   them to arrive; registers as many again and at once stops the server with SIGTERM (a graceful
   stop: clients get 1001 and start reconnecting), so some are still in flight;
2. starts the server again and, as soon as it answers (``t_up``: its port accepts a connection),
   and health says ok, registers as many again while the clients are still reconnecting;
3. each client reconnects and resubscribes with ``sinceSeq`` = its last seq.

Figures: per client, SUBSCRIBED-after-restart minus ``t_up`` → p50/p99/max (target p99 ≤ 2 s);
PROVIDER_REGISTERED frames missed (target 0), received twice, RESYNCs. Baseline in the same
run: the server's own restart (SIGTERM → its port accepting again), which no client can beat.
Prints one JSON line.

    python benchmarks/ws_reconnect.py [--clients 1000] [--processes 2] [--events 20]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from market_process import MarketServer, cpu_seconds, register_worker, seed_for, sign_in
from ws_swarm import Swarms, percentiles

from qubix_jupyter.db import migrate
from qubix_jupyter.db.pg_cluster import PgCluster


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--events", type=int, default=20, help="registrations per phase")
    parser.add_argument("--tokens", type=int, default=4)
    args = parser.parse_args(argv)

    with PgCluster() as cluster, tempfile.TemporaryDirectory() as tmp:
        url = cluster.create_database("reconnect")
        migrate.upgrade(url)
        server = MarketServer(url, Path(tmp), {"rate_limit_per_minute": 0})
        swarms = None
        try:
            server.start()
            tokens = [sign_in(server.base, seed_for(i))[0] for i in range(args.tokens)]
            owner, address = sign_in(server.base, seed_for(10_000))
            swarms = Swarms(server.events_url, tokens, args.clients, args.processes)
            connected = swarms.wait_ready(timeout=300)

            def register(phase: str) -> list[str]:
                ids = [f"{phase}-{i}" for i in range(args.events)]
                for worker_id in ids:
                    register_worker(server.base, owner, address, worker_id)
                return ids

            before = register("before")
            time.sleep(1.0)  # these arrive live
            in_flight = register("in-flight")
            stopped_at = time.monotonic()
            stop_code = server.stop(timeout=300)  # graceful, however loaded the machine
            t_up = server.start()
            cpu_at_up = cpu_seconds(server.pid)
            cold_start_s = t_up - stopped_at
            after = register("after")
            figures = swarms.expect(before + in_flight + after, timeout=300)
            server_cpu_s = cpu_seconds(server.pid) - cpu_at_up
        finally:
            if swarms is not None:
                swarms.kill()
            server.stop()

    resubscribed = [
        max(at) - t_up
        for f in figures
        for at in f["subscribed_at"]
        if len(at) >= 2  # subscribed before the restart and again after it
    ]
    seconds = percentiles(resubscribed)
    result = {
        "benchmark": "ws_reconnect",
        "clients": args.clients,
        "processes": args.processes,
        "connected_before_restart": connected,
        "events": 3 * args.events,
        "resubscribed": len(resubscribed),
        "resubscribe_after_up_s": seconds,
        "missed_events": sum(f["missing"] for f in figures),
        "duplicate_events": sum(f["duplicates"] for f in figures),
        "resyncs": sum(f["resyncs"] for f in figures),
        "error_frames": sum(f["errors"] for f in figures),
        "connects": sum(f["connects"] for f in figures),
        "baseline_server_restart_s": round(cold_start_s, 2),
        "stop_exit_code": stop_code,
        # the server's CPU from health answering to every client resumed (and the 20 events):
        # what the wave costs it whatever else shares the machine
        "server_cpu_s_for_the_wave": round(server_cpu_s, 2),
        "server_cpu_ms_per_client": round(1000 * server_cpu_s / max(1, args.clients), 2),
        "target": {"resubscribe_p99_s": 2, "missed_events": 0},
        "meets_target": (
            len(resubscribed) == args.clients
            and seconds["p99"] is not None
            and seconds["p99"] <= 2
            and sum(f["missing"] for f in figures) == 0
        ),
    }
    result["load_average_1_5_15"] = [round(x, 1) for x in os.getloadavg()]
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
