"""Heartbeat ingest of the market server against GET health on the same server, same run.

Starts a throwaway PostgreSQL cluster, migrates it, starts the market as a real ``qubix serve``
subprocess (rate limit off through a Jupyter config file), then starts ``--processes`` load
generator processes. Each signs in its own wallet, registers ``--providers`` providers through
the API (each with its own worker token), and once all are ready sends, paced at
``--rate`` heartbeats/s in total, heartbeats round-robin over its providers for ``--seconds``
over ``--connections`` keep-alive connections (``raw_http``: a generator that costs the shared
CPUs far less than the server); then the same generators send GET health at the same pace for
the same time (the baseline: the server's floor for one authenticated-free request that touches
the database). Latency counts from the moment a request was due.

The measured heartbeats follow ``--warmup`` seconds of heartbeats at the same rate, reported
apart: they hold every provider's first contact (its token looked up, its status changed and
broadcast), a one-off wave like a market restart's, not the sustained load.

Prints one JSON line: achieved requests/s, p50/p99/max latency (ms) and errors for each phase,
and the staleness of the providers at the end of the heartbeat phase (now − last_heartbeat, read
from the database). Targets: ≥ 2,000 heartbeats/s sustained, p99 ≤ 100 ms, no provider more
than 2 s stale.

    python benchmarks/heartbeat_ingest.py [--seconds 60] [--processes 4] [--providers 250]
                                          [--rate 2000] [--connections 32]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psycopg
from raw_http import Pool, encode

from qubix_jupyter.db import migrate
from qubix_jupyter.db.pg_cluster import PgCluster, free_port
from qubix_jupyter.settlement.keys import KeyPair
from qubix_jupyter.settlement.wallet import challenge_digest

USAGE = {
    "cpuPercent": 21.0,
    "ramPercent": 35.0,
    "ramUsedGb": 11.2,
    "ramTotalGb": 32.0,
    "gpuPercent": 90.0,
    "gpuTemp": 70.0,
    "gpuMemUsedMb": 20000.0,
    "gpuMemTotalMb": 24000.0,
}


def _seed(index: int) -> str:
    letters = "abcdefghijklmnopqrstuvwxyz"
    return "".join(letters[(index * 7 + i) % 26] for i in range(55))


async def _register(client: httpx.AsyncClient, index: int, providers: int) -> list[tuple[str, str]]:
    pair = KeyPair.from_seed(_seed(index))
    issued = (await client.post("auth/challenge", json={"qubicAddress": pair.identity})).json()
    connected = await client.post(
        "wallet/connect",
        json={
            "qubicAddress": pair.identity,
            "challenge": issued["challenge"],
            "signature": pair.sign(challenge_digest(issued["challenge"])).hex(),
        },
    )
    connected.raise_for_status()
    auth = {"Authorization": f"Bearer {connected.json()['token']}"}
    workers = []
    for n in range(providers):
        worker_id = f"bench-{index}-{n}"
        answer = await client.post(
            "providers/quick-register",
            headers=auth,
            json={
                "type": "native",
                "gpu": {"type": "native", "vendor": "NVIDIA", "model": "RTX 4090", "vram": 24},
                "workerId": worker_id,
                "qubicAddress": pair.identity,
                "pricePerHour": 40,
            },
        )
        answer.raise_for_status()
        workers.append((worker_id, answer.json()["workerToken"]))
    return workers


async def _paced(rate: float, seconds: float, send: Any) -> dict[str, Any]:
    """Send ``rate`` requests/s for ``seconds`` (open loop); latencies of the answered ones,
    each from the moment it was due (a request waiting for a free connection is late)."""
    latencies: list[float] = []
    errors = 0
    in_flight: set[asyncio.Task[None]] = set()

    async def one(n: int, due: float) -> None:
        nonlocal errors
        try:
            status, _body = await send(n)
        except (OSError, asyncio.IncompleteReadError, ValueError):
            errors += 1
            return
        if status != 200:
            errors += 1
            return
        latencies.append((time.perf_counter() - due) * 1000)

    start = time.perf_counter()
    n = 0
    while (elapsed := time.perf_counter() - start) < seconds:
        due_count = int(elapsed * rate) + 1
        while n < due_count:
            task = asyncio.create_task(one(n, start + n / rate))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
            n += 1
        await asyncio.sleep(0.002)
    await asyncio.gather(*in_flight)
    return {
        "sent": n,
        "latencies": latencies,
        "errors": errors,
        "wall": time.perf_counter() - start,
    }


def _generator(
    base: str,
    index: int,
    providers: int,
    rate: float,
    seconds: float,
    warmup: float,
    connections: int,
    ready: Any,
    go: Any,
    out: Any,
) -> None:
    async def main() -> None:
        async with httpx.AsyncClient(base_url=base, timeout=30.0) as client:
            workers = await _register(client, index, providers)
        url = httpx.URL(base)
        host = f"{url.host}:{url.port}"
        pool = await Pool(url.host, url.port or 80, connections).open()
        ready.set()
        await asyncio.get_running_loop().run_in_executor(None, go.wait)

        async def heartbeat(n: int) -> tuple[int, bytes]:
            worker_id, token = workers[n % len(workers)]
            usage = {**USAGE, "timestamp": dt.datetime.now(dt.UTC).isoformat()}
            return await pool.send(
                encode(
                    "POST",
                    f"{url.path}providers/{worker_id}/heartbeat",
                    host,
                    body={"usage": usage, "status": "online"},
                    headers={"Authorization": f"Bearer {token}"},
                )
            )

        health_request = encode("GET", f"{url.path}health", host)

        async def health(n: int) -> tuple[int, bytes]:
            return await pool.send(health_request)

        first = await _paced(rate, warmup, heartbeat) if warmup > 0 else None
        out.put(("warmup", index, first, time.time()))
        beats = await _paced(rate, seconds, heartbeat)
        out.put(("heartbeat", index, beats, time.time()))
        baseline = await _paced(rate, seconds, health)
        out.put(("health", index, baseline, time.time()))
        pool.close()

    asyncio.run(main())


def _summary(parts: list[dict[str, Any]], seconds: float) -> dict[str, Any]:
    latencies = sorted(x for p in parts for x in p["latencies"])
    wall = max(p["wall"] for p in parts)
    cuts = (
        statistics.quantiles(latencies, n=100, method="inclusive")
        if len(latencies) > 1
        else [0] * 99
    )
    return {
        "sent": sum(p["sent"] for p in parts),
        "answered": len(latencies),
        "errors": sum(p["errors"] for p in parts),
        "per_second": round(len(latencies) / wall, 1),
        "p50_ms": round(cuts[49], 2),
        "p99_ms": round(cuts[98], 2),
        "max_ms": round(latencies[-1], 2) if latencies else None,
    }


def _wait_healthy(base: str, server: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"qubix serve exited with {server.returncode}")
        try:
            if httpx.get(base + "health", timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError("qubix serve did not answer GET health")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="each phase (default 60)")
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--providers", type=int, default=250, help="per process")
    parser.add_argument("--rate", type=float, default=2000.0, help="requests/s over all")
    parser.add_argument(
        "--connections", type=int, default=32, help="keep-alive connections per process"
    )
    parser.add_argument(
        "--warmup",
        type=float,
        default=5.0,
        help="seconds of heartbeats at the same rate before the measured ones (reported apart:"
        " every provider's first contact)",
    )
    args = parser.parse_args(argv)

    with PgCluster() as cluster, tempfile.TemporaryDirectory() as home:
        url = cluster.create_database("bench")
        migrate.upgrade(url)
        config_dir = Path(home) / "config"
        config_dir.mkdir()
        (config_dir / "jupyter_server_config.json").write_text(
            json.dumps({"QubixExtension": {"rate_limit_per_minute": 0}})
        )
        port = free_port()
        env = {**os.environ, "JUPYTER_CONFIG_DIR": str(config_dir), "JUPYTER_DATA_DIR": home}
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "qubix_jupyter.cli",
                "serve",
                "--port",
                str(port),
                "--database-url",
                url,
                "--allow-root",
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        base = f"http://127.0.0.1:{port}/qubix/api/"
        try:
            _wait_healthy(base, server)
            context = multiprocessing.get_context("spawn")
            go = context.Event()
            out = context.Queue()
            readies, workers = [], []
            for index in range(args.processes):
                ready = context.Event()
                readies.append(ready)
                process = context.Process(
                    target=_generator,
                    args=(
                        base,
                        index,
                        args.providers,
                        args.rate / args.processes,
                        args.seconds,
                        args.warmup,
                        args.connections,
                        ready,
                        go,
                        out,
                    ),
                )
                process.start()
                workers.append(process)
            for ready in readies:
                if not ready.wait(600):
                    raise RuntimeError("a load generator did not finish registering")
            go.set()
            results: dict[str, list[dict[str, Any]]] = {"warmup": [], "heartbeat": [], "health": []}
            staleness: dict[str, float] = {}
            for _ in range(3 * args.processes):
                phase, _index, part, _at = out.get(timeout=args.seconds * 4 + args.warmup + 120)
                if part is not None:
                    results[phase].append(part)
                if phase == "heartbeat" and len(results["heartbeat"]) == args.processes:
                    with psycopg.connect(url) as conn:
                        row = conn.execute(
                            "SELECT count(*), max(now() - last_heartbeat),"
                            " count(*) FILTER (WHERE last_heartbeat IS NULL OR is_online = false)"
                            " FROM providers"
                        ).fetchone()
                    assert row is not None
                    staleness = {
                        "providers": row[0],
                        "max_stale_s": round(row[1].total_seconds(), 3) if row[1] else None,
                        "never_or_offline": row[2],
                    }
            for process in workers:
                process.join(60)
        finally:
            server.terminate()
            server.wait(30)
    print(
        json.dumps(
            {
                "seconds": args.seconds,
                "processes": args.processes,
                "providers": args.processes * args.providers,
                "target_rate": args.rate,
                "connections": args.processes * args.connections,
                "warmup_seconds": args.warmup,
                "warmup": _summary(results["warmup"], args.warmup) if results["warmup"] else None,
                "heartbeat": _summary(results["heartbeat"], args.seconds),
                "baseline_health": _summary(results["health"], args.seconds),
                "staleness_at_end": staleness,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
