"""What a round trip to another process costs after a pause, against the same one warm.

The job round trip's idle phase (``job_roundtrip.py --gap``) waits before each job, and every
process the job passes through has gone idle by then. This measures, on a throwaway PostgreSQL,
one autocommit ``INSERT`` (the shape of the market's claim and ledger calls) and one TCP
ping-pong with a second Python process, each right after a pause of ``--gaps`` seconds; the
baseline is the same round trip again at once (warm). Prints one JSON line.

    python benchmarks/idle_wakeup.py [--rounds 40] [--gaps 0 0.001 0.01 0.1 0.3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import time
import uuid
from typing import Any

import psycopg

from qubix_jupyter.db.pg_cluster import PgCluster


def _ms(samples: list[float]) -> dict[str, float]:
    median, worst = statistics.median(samples), max(samples)
    return {"p50": round(median * 1000, 3), "max": round(worst * 1000, 3)}


async def _postgres(url: str, gaps: list[float], rounds: int) -> dict[str, Any]:
    conn = await psycopg.AsyncConnection.connect(url, autocommit=True)
    try:
        await conn.execute("CREATE TABLE wakeup (k text PRIMARY KEY)")

        async def insert() -> float:
            start = time.perf_counter()
            await conn.execute("INSERT INTO wakeup VALUES (%s)", (uuid.uuid4().hex,))
            return time.perf_counter() - start

        figures = {}
        for gap in gaps:
            first, warm = [], []
            for _ in range(rounds):
                await asyncio.sleep(gap)
                first.append(await insert())
                warm.append(await insert())
            figures[str(gap)] = {"after_gap_ms": _ms(first), "warm_ms": _ms(warm)}
        return figures
    finally:
        await conn.close()


def _ping_pong(gaps: list[float], rounds: int) -> dict[str, Any]:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    child = os.fork()
    if child == 0:  # the echo process
        peer, _ = listener.accept()
        peer.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while data := peer.recv(64):
            peer.sendall(data)
        os._exit(0)
    listener.close()
    conn = socket.create_connection(("127.0.0.1", port))
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def once() -> float:
        start = time.perf_counter()
        conn.sendall(b"x" * 32)
        conn.recv(64)
        return time.perf_counter() - start

    try:
        figures = {}
        for gap in gaps:
            first, warm = [], []
            for _ in range(rounds):
                time.sleep(gap)
                first.append(once())
                warm.append(once())
            figures[str(gap)] = {"after_gap_ms": _ms(first), "warm_ms": _ms(warm)}
        return figures
    finally:
        conn.close()
        os.waitpid(child, 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--gaps", type=float, nargs="+", default=[0, 0.001, 0.01, 0.1, 0.3])
    args = parser.parse_args()
    figures: dict[str, Any] = {"rounds": args.rounds, "cpus": os.cpu_count()}
    figures["tcp_ping_pong"] = _ping_pong(args.gaps, args.rounds)
    with PgCluster() as cluster:
        url = cluster.create_database("wakeup")
        figures["postgres_insert"] = asyncio.run(_postgres(url, args.gaps, args.rounds))
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
