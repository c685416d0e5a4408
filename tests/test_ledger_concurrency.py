"""Concurrent money movement on PostgreSQL: 20 tasks, hundreds of operations, shared keys, races.

Every task starts at the same moment; the same idempotency key is sent by several tasks at once,
and each job's charge races its refund. Afterwards the invariants hold, every key moved money
once, and each job was settled exactly one way.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Awaitable, Callable

from sqlalchemy import func, select

from qubix_jupyter.db import repositories as repo
from qubix_jupyter.db.engine import make_engine, make_sessionmaker
from qubix_jupyter.db.ledger import Ledger, Receipt, audit
from qubix_jupyter.db.models import Transaction
from qubix_jupyter.db.pg_cluster import PgCluster
from qubix_jupyter.market.errors import InsufficientFunds, InvalidState
from qubix_jupyter.market.states import EntryType, JobStatus

TASKS = 20
CONSUMERS = 8
JOBS = 40


async def test_concurrent_operations_apply_once_and_keep_invariants(pg_cluster: PgCluster):
    url = pg_cluster.create_database("concurrency", template="qubix_template")
    engine = make_engine(url, pool_size=TASKS, max_overflow=10)
    sessionmaker = make_sessionmaker(engine)
    ledger = Ledger(sessionmaker, platform_fee_bps=500)
    rng = random.Random(20261128)
    try:
        async with sessionmaker() as s, s.begin():
            consumers = [(await repo.create_user(s, f"C{i:059d}")).id for i in range(CONSUMERS)]
            owner = await repo.create_user(s, "P" * 60)
            provider = await repo.create_provider(s, owner.id, worker_id="w", price_per_hour=3600)
            jobs = []
            for i in range(JOBS):
                job = await repo.create_job(
                    s,
                    consumers[i % CONSUMERS],
                    model_type="python",
                    compute_seconds=600,
                    max_price=3600,
                )
                await repo.assign_job(s, job.id, provider, status=JobStatus.RUNNING)
                jobs.append(job)
        for c in consumers:
            await ledger.deposit(c, 50_000, idempotency_key=f"seed-{c}")

        # The plan: (task, operation). Shared keys are planned into several tasks on purpose.
        plan: list[list[Callable[[], Awaitable[Receipt]]]] = [[] for _ in range(TASKS)]
        shared_deposits = {f"shared-dep-{i}": (consumers[i % CONSUMERS], 10 + i) for i in range(10)}
        for key, (user, amount) in shared_deposits.items():
            for task in rng.sample(range(TASKS), 4):  # four tasks send the same request
                plan[task].append(
                    lambda u=user, a=amount, k=key: ledger.deposit(u, a, idempotency_key=k)
                )
        for job in jobs:
            lock_key = f"lock-{job.id}"
            for task in rng.sample(range(TASKS), 3):  # the same escrow lock, three times at once
                plan[task].append(
                    lambda j=job.id, k=lock_key: ledger.lock_escrow(j, 600, idempotency_key=k)
                )
        for i, job in enumerate(jobs):
            charger, refunder = rng.sample(range(TASKS), 2)
            plan[charger].append(
                lambda j=job.id: ledger.charge(j, seconds=300, idempotency_key=f"charge-{j}")
            )
            plan[refunder].append(
                lambda j=job.id, i=i: ledger.refund(
                    j, idempotency_key=f"refund-{j}",
                    final_status=JobStatus.CANCELLED if i % 2 else JobStatus.FAILED,
                )
            )  # fmt: skip
        for n in range(60):
            user = consumers[n % CONSUMERS]
            plan[n % TASKS].append(
                lambda u=user, n=n: ledger.withdraw(u, 7_000 + n, idempotency_key=f"wd-{n}")
            )
        for ops in plan:
            rng.shuffle(ops)
        total_ops = sum(map(len, plan))
        assert total_ops >= 200

        start = asyncio.Event()
        outcomes: list[tuple[str, object]] = []

        async def worker(ops: list[Callable[[], Awaitable[Receipt]]]) -> None:
            await start.wait()
            for op in ops:
                try:
                    outcomes.append(("ok", await op()))
                except (InvalidState, InsufficientFunds) as exc:
                    outcomes.append((type(exc).__name__, exc))

        tasks = [asyncio.create_task(worker(ops)) for ops in plan]
        start.set()
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=240)
        assert len(outcomes) == total_ops

        async with sessionmaker() as s:
            report = await audit(s)
            entries_per_key = dict(
                (
                    await s.execute(
                        select(Transaction.idempotency_key, func.count()).group_by(
                            Transaction.idempotency_key
                        )
                    )
                ).all()
            )
            deposits_per_key = dict(
                (
                    await s.execute(
                        select(Transaction.idempotency_key, func.sum(Transaction.amount))
                        .where(Transaction.type == EntryType.DEPOSIT)
                        .group_by(Transaction.idempotency_key)
                    )
                ).all()
            )
        assert report.ok, report.violations

        # Each shared deposit moved its amount once, however many tasks sent it.
        for key, (_, amount) in shared_deposits.items():
            assert deposits_per_key[key] == amount
        # Each escrow lock, sent three times, is one entry.
        for job in jobs:
            assert entries_per_key.get(f"lock-{job.id}", 0) in (0, 1)

        # Each job was settled one way: the charge or the refund, never both.
        for job in jobs:
            charged = f"charge-{job.id}" in entries_per_key or any(
                kind == "ok" and r.idempotency_key == f"charge-{job.id}" for kind, r in outcomes
            )
            refunded = any(
                kind == "ok" and r.idempotency_key == f"refund-{job.id}" for kind, r in outcomes
            )
            assert charged != refunded, job.id
            assert await ledger.escrow_balance(job.id) == 0

        replays = Counter(r.operation for kind, r in outcomes if kind == "ok" and r.replayed)
        # Shared requests really did race: most of their duplicates were answered as replays.
        assert replays["deposit"] + replays["lock_escrow"] > 0
    finally:
        await engine.dispose()
        pg_cluster.drop_database("concurrency")
