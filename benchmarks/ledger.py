"""Ledger throughput on PostgreSQL against pgbench's TPC-B on the same cluster.

Starts a throwaway PostgreSQL cluster (fsync on, default durability), then for 1, 8 and 32
concurrent clients measures

* ``ledger_tps``: escrow-lock and charge transactions per second through :class:`Ledger` (each
  lock or charge counts one), every client settling its own jobs end to end;
* ``pgbench_tps``: pgbench's built-in TPC-B script (one small write transaction) with the same
  client count, the physical reference.

Prints one JSON line, including ``ratio_at_8`` (target ≥ 0.5) and the ledger audit after the run.

    python benchmarks/ledger.py [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import time

from qubix_jupyter.db import migrate
from qubix_jupyter.db import repositories as repo
from qubix_jupyter.db.engine import make_engine, make_sessionmaker
from qubix_jupyter.db.ledger import Ledger, audit
from qubix_jupyter.db.models import Provider
from qubix_jupyter.db.pg_cluster import PgCluster
from qubix_jupyter.market.states import JobStatus

CLIENTS = (1, 8, 32)
PRICE = 3600


def pgbench_tps(cluster: PgCluster, clients: int, seconds: int) -> float:
    command = [
        str(cluster.bindir / "pgbench"),
        "-h", "127.0.0.1", "-p", str(cluster.port), "-U", "postgres",
        "-b", "tpcb-like", "-n",
        "-c", str(clients), "-j", str(min(clients, os.cpu_count() or 1)),
        "-T", str(seconds),
        "pgbench",
    ]  # fmt: skip
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    match = re.search(r"tps = ([0-9.]+) \(without initial connection time\)", out)
    if match is None:
        raise RuntimeError(f"unexpected pgbench output:\n{out}")
    return float(match.group(1))


async def prepare_jobs(sessionmaker, users: list[str], provider_id: str, per_user: int):
    """``per_user`` RUNNING jobs for each user, assigned to the provider (not timed)."""
    jobs: dict[str, list[str]] = {}
    async with sessionmaker() as s, s.begin():
        provider = await s.get(Provider, provider_id)
        for user in users:
            jobs[user] = []
            for _ in range(per_user):
                job = await repo.create_job(
                    s, user, model_type="benchmark", compute_seconds=3600, max_price=PRICE
                )
                await repo.assign_job(s, job.id, provider, status=JobStatus.RUNNING)
                jobs[user].append(job.id)
    return jobs


async def ledger_tps(url: str, clients: int, seconds: float, per_user: int) -> dict[str, float]:
    engine = make_engine(url, pool_size=clients, max_overflow=4)
    sessionmaker = make_sessionmaker(engine)
    ledger = Ledger(sessionmaker, platform_fee_bps=250)
    try:
        async with sessionmaker() as s, s.begin():
            users = [
                (await repo.create_user(s, f"U{clients:03d}{i:056d}")).id for i in range(clients)
            ]
            owner = await repo.create_user(s, f"P{clients:03d}" + "P" * 56)
            provider = await repo.create_provider(
                s, owner.id, worker_id=f"bench-{clients}", price_per_hour=PRICE
            )
        for user in users:
            await ledger.deposit(user, 10**12, idempotency_key=f"bench-dep-{user}")
        jobs = await prepare_jobs(sessionmaker, users, provider.id, per_user)

        done = 0
        stop_at = 0.0

        async def client(user: str) -> None:
            nonlocal done
            for job_id in jobs[user]:
                if time.perf_counter() >= stop_at:
                    return
                await ledger.lock_escrow(job_id, PRICE, idempotency_key=f"lock-{job_id}")
                await ledger.charge(job_id, seconds=1800, idempotency_key=f"charge-{job_id}")
                done += 2
            raise RuntimeError("benchmark ran out of prepared jobs; raise --jobs-per-client")

        start = time.perf_counter()
        stop_at = start + seconds
        await asyncio.gather(*(client(u) for u in users))
        elapsed = time.perf_counter() - start
        return {"tps": done / elapsed, "transactions": done, "seconds": elapsed}
    finally:
        await engine.dispose()


async def audit_ok(url: str) -> dict[str, object]:
    engine = make_engine(url)
    try:
        async with make_sessionmaker(engine)() as s:
            report = await audit(s)
        return {"ok": report.ok, "entries": report.entries, "violations": list(report.violations)}
    finally:
        await engine.dispose()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="per measurement")
    parser.add_argument("--jobs-per-client", type=int, default=0, help="0: sized automatically")
    args = parser.parse_args()

    with PgCluster() as cluster:  # fsync on: the default durability
        url = cluster.create_database("ledger_bench")
        migrate.upgrade(url)
        cluster.create_database("pgbench")
        subprocess.run(
            [str(cluster.bindir / "pgbench"), "-h", "127.0.0.1", "-p", str(cluster.port),
             "-U", "postgres", "-i", "-q", "-s", "1", "pgbench"],
            check=True, capture_output=True,
        )  # fmt: skip
        result: dict[str, object] = {
            "benchmark": "ledger",
            "postgres": subprocess.run(
                [str(cluster.bindir / "postgres"), "--version"], capture_output=True, text=True
            ).stdout.strip(),
            "cpus": os.cpu_count(),
            "seconds_per_run": args.seconds,
        }
        for clients in CLIENTS:
            reference = pgbench_tps(cluster, clients, int(args.seconds))
            per_user = args.jobs_per_client or max(50, int(reference * args.seconds / clients) + 50)
            measured = asyncio.run(ledger_tps(url, clients, args.seconds, per_user))
            result[f"ledger_tps_{clients}"] = round(measured["tps"], 1)
            result[f"pgbench_tps_{clients}"] = round(reference, 1)
            result[f"ratio_{clients}"] = round(measured["tps"] / reference, 3)
        result["ratio_at_8"] = result["ratio_8"]
        result["target_ratio_at_8"] = 0.5
        result["meets_target"] = result["ratio_8"] >= 0.5  # type: ignore[operator]
        result["audit"] = asyncio.run(audit_ok(url))
    print(json.dumps(result))
    return 0 if result["audit"]["ok"] else 1  # type: ignore[index]


if __name__ == "__main__":
    sys.exit(main())
