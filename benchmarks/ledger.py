"""Ledger throughput on PostgreSQL against pgbench's TPC-B on the same cluster.

Starts a throwaway PostgreSQL cluster (fsync on, default durability), then for 1, 8 and 32
concurrent clients measures

* ``ledger_tps``: escrow-lock and charge transactions per second through :class:`Ledger` (each
  lock or charge counts one), every client a consumer settling its own jobs with its own
  provider, a 2.5 % platform fee on every charge;
* ``pgbench_tps``: pgbench's built-in TPC-B script (one small write transaction) with the same
  client count, the physical reference.

Prints one JSON line, including ``ratio_at_8`` (target ≥ 0.5) and the ledger audit after the run.

    python benchmarks/ledger.py [--seconds 5] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import time

from sqlalchemy import insert

from qubix_jupyter.db import migrate
from qubix_jupyter.db import repositories as repo
from qubix_jupyter.db.engine import make_engine, make_sessionmaker
from qubix_jupyter.db.ledger import Ledger, audit
from qubix_jupyter.db.models import Account, Job, new_id, utcnow
from qubix_jupyter.db.pg_cluster import PgCluster
from qubix_jupyter.market.states import AccountKind, JobStatus, escrow_account_id

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


async def prepare(sessionmaker, clients: int, per_client: int, tag: str) -> dict[str, list[str]]:
    """Per client: a funded consumer, a provider of its own and ``per_client`` RUNNING jobs
    assigned to it, written in bulk (not timed)."""
    now = utcnow()
    jobs: dict[str, list[str]] = {}
    async with sessionmaker() as s, s.begin():
        ledger_accounts, job_rows = [], []
        for c in range(clients):
            consumer = await repo.create_user(s, f"C{tag}{c:04d}".ljust(60, "C"))
            owner = await repo.create_user(s, f"P{tag}{c:04d}".ljust(60, "P"))
            provider = await repo.create_provider(
                s, owner.id, worker_id=f"bench-{tag}-{c}", price_per_hour=PRICE
            )
            jobs[consumer.id] = []
            for _ in range(per_client):
                job_id = new_id()
                jobs[consumer.id].append(job_id)
                job_rows.append(
                    {"id": job_id, "user_id": consumer.id, "provider_id": provider.id,
                     "model_type": "benchmark", "compute_seconds": 3600, "input_data": {},
                     "constraints": {}, "max_price": PRICE, "price_per_hour": PRICE,
                     "status": JobStatus.RUNNING, "progress": 0, "reassignments": 0,
                     "estimated_cost": PRICE, "created_at": now, "assigned_at": now,
                     "started_at": now}
                )  # fmt: skip
                ledger_accounts.append(
                    {"id": escrow_account_id(job_id), "kind": AccountKind.ESCROW,
                     "job_id": job_id, "balance": 0, "created_at": now}
                )  # fmt: skip
        await s.execute(insert(Job), job_rows)
        await s.execute(insert(Account), ledger_accounts)
    return jobs


async def ledger_tps(url: str, clients: int, seconds: float, per_client: int, tag: str) -> float:
    engine = make_engine(url, pool_size=clients, max_overflow=4)
    sessionmaker = make_sessionmaker(engine)
    ledger = Ledger(sessionmaker, platform_fee_bps=250)
    try:
        jobs = await prepare(sessionmaker, clients, per_client, tag)
        for consumer in jobs:
            await ledger.deposit(consumer, 10**12, idempotency_key=f"bench-dep-{consumer}")

        done = 0
        stop_at = 0.0

        async def client(consumer: str) -> None:
            nonlocal done
            for job_id in jobs[consumer]:
                if time.perf_counter() >= stop_at:
                    return
                await ledger.lock_escrow(job_id, PRICE, idempotency_key=f"lock-{job_id}")
                await ledger.charge(job_id, seconds=1800, idempotency_key=f"charge-{job_id}")
                done += 2
            raise RuntimeError("benchmark ran out of prepared jobs; raise --jobs-per-client")

        start = time.perf_counter()
        stop_at = start + seconds
        await asyncio.gather(*(client(c) for c in jobs))
        return done / (time.perf_counter() - start)
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
    parser.add_argument("--seconds", type=float, default=5.0, help="per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; medians kept")
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
        # Ledger and pgbench runs alternate, and each figure is the median of its rounds, so a
        # passing disturbance on the machine touches both sides alike.
        samples: dict[str, list[float]] = {}
        for round_ in range(args.rounds):
            for clients in CLIENTS:
                reference = pgbench_tps(cluster, clients, int(args.seconds))
                per_client = args.jobs_per_client or int(reference * args.seconds / clients) + 100
                measured = asyncio.run(
                    ledger_tps(url, clients, args.seconds, per_client, f"{round_}{clients:02d}")
                )
                samples.setdefault(f"pgbench_tps_{clients}", []).append(reference)
                samples.setdefault(f"ledger_tps_{clients}", []).append(measured)
        for clients in CLIENTS:
            ledger_median = statistics.median(samples[f"ledger_tps_{clients}"])
            pgbench_median = statistics.median(samples[f"pgbench_tps_{clients}"])
            result[f"ledger_tps_{clients}"] = round(ledger_median, 1)
            result[f"pgbench_tps_{clients}"] = round(pgbench_median, 1)
            result[f"ratio_{clients}"] = round(ledger_median / pgbench_median, 3)
        result["rounds"] = args.rounds
        result["ratio_at_8"] = result["ratio_8"]
        result["target_ratio_at_8"] = 0.5
        result["meets_target"] = result["ratio_8"] >= 0.5  # type: ignore[operator]
        result["audit"] = asyncio.run(audit_ok(url))
    print(json.dumps(result))
    return 0 if result["audit"]["ok"] else 1  # type: ignore[index]


if __name__ == "__main__":
    sys.exit(main())
