"""The PostgreSQL job functions of migration 0007 against the Python rules they stand for.

``qubix_create_job`` must give a job the provider ``market.matching.choose_provider`` chooses
(over random markets and random constraints), lock and give back exactly the QU the Python path
would, under the ledger's own keys and request hashes; ``qubix_end_job`` must settle as
``Ledger.charge`` / ``refund`` do, store the result and free the provider in the same call.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from qubix_jupyter.db import jobs as db
from qubix_jupyter.db import repositories as repo
from qubix_jupyter.db.engine import make_engine, make_sessionmaker
from qubix_jupyter.db.ledger import Ledger, audit
from qubix_jupyter.db.models import Account, Job, Provider
from qubix_jupyter.db.pg_cluster import PgCluster
from qubix_jupyter.market.errors import UnknownJob
from qubix_jupyter.market.jobs import assigned_escrow, unassigned_escrow
from qubix_jupyter.market.matching import JobConstraints, choose_provider
from qubix_jupyter.market.states import JobStatus, escrow_account_id, wallet_account_id

from .conftest import TEMPLATE_DB

NOW = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)
FUNDS = 10**12
HOUR = dt.timedelta(hours=1)

MOSTLY_TRUE = st.sampled_from([True, True, True, True, False])
OFFERS = st.fixed_dictionaries(
    {
        # Few values, so that ties on price, performance and last assignment are common.
        "price": st.sampled_from([0, 10, 20]),
        "perf": st.sampled_from([None, 1.0, 2.5]),
        "last": st.sampled_from([None, NOW - HOUR, NOW - 2 * HOUR, NOW - 2 * HOUR]),
        "vram": st.sampled_from([8.0, 16.0, 24.0]),
        "model": st.sampled_from(["RTX 4090", "rtx 4090", "A100", "CPU only"]),
        # Mostly free and listed, so that several offers compete for most jobs.
        "online": MOSTLY_TRUE,
        "available": MOSTLY_TRUE,
        "listed": MOSTLY_TRUE,
        "busy": MOSTLY_TRUE.map(lambda v: not v),
    }
)
CONSTRAINTS = st.builds(
    JobConstraints,
    max_price=st.sampled_from([0, 15, 25]),
    gpu_models=st.lists(st.sampled_from(["RTX 4090", "a100", "H100"]), max_size=2, unique=True).map(
        tuple
    ),
    min_vram=st.sampled_from([None, 16.0]),
)


@pytest.fixture(scope="module")
def pg_url(pg_cluster: PgCluster) -> Iterator[str]:
    name = f"job_functions_{uuid.uuid4().hex[:8]}"
    yield pg_cluster.create_database(name, template=TEMPLATE_DB)
    pg_cluster.drop_database(name)


@pytest.fixture(scope="module")
def runner() -> Iterator[asyncio.Runner]:
    with asyncio.Runner() as running:
        yield running


@pytest.fixture(scope="module")
def sessions(pg_url: str, runner: asyncio.Runner) -> Iterator[Any]:
    engine = make_engine(pg_url)
    yield make_sessionmaker(engine)
    runner.run(engine.dispose())


async def _market(session: Any, offers: list[dict[str, Any]]) -> tuple[str, list[Provider]]:
    """A funded consumer and the offers (each its own owner), in the session's transaction."""
    tag = uuid.uuid4().hex[:10]
    consumer = await repo.create_user(session, f"C{tag}".upper())
    wallet = await session.get(Account, wallet_account_id(consumer.id))
    wallet.balance = FUNDS  # within the transaction the test rolls back
    providers = []
    for n, o in enumerate(offers):
        owner = await repo.create_user(session, f"P{n}{tag}".upper())
        provider = await repo.create_provider(
            session,
            owner.id,
            worker_id=f"w{n}-{tag}",
            price_per_hour=o["price"],
            gpu_model=o["model"],
            gpu_vram=o["vram"],
            performance_tflops=o["perf"],
            last_assigned_at=o["last"],
            is_online=o["online"],
            is_available=o["available"],
            is_listed=o["listed"],
        )
        if o["busy"]:  # an open job of its own, whatever its flags say
            other = await repo.create_job(
                session, owner.id, max_price=o["price"], compute_seconds=60, model_type="python"
            )
            other.status = JobStatus.RUNNING
            other.provider_id = provider.id
        providers.append(provider)
    await session.flush()
    return consumer.id, providers


def offer(**changes: Any) -> dict[str, Any]:
    """A free, listed, online 24 GB A100 at 10 QU/h, never assigned, unmeasured; then changes."""
    base = {"price": 10, "perf": None, "last": None, "vram": 24.0, "model": "A100"}
    return base | {"online": True, "available": True, "listed": True, "busy": False} | changes


ANY_OFFER = JobConstraints(max_price=25)


# Each tie-breaker of the matcher's order, decided by it alone (the random markets below
# reach these only now and then).
@example(offers=[offer(price=20), offer(price=10)], constraints=ANY_OFFER)
@example(offers=[offer(perf=1.0), offer(perf=2.5), offer()], constraints=ANY_OFFER)
@example(offers=[offer(last=NOW - HOUR), offer(last=NOW - 2 * HOUR)], constraints=ANY_OFFER)
@example(offers=[offer(last=NOW - 2 * HOUR), offer()], constraints=ANY_OFFER)
@example(offers=[offer(), offer(), offer()], constraints=ANY_OFFER)
@example(offers=[offer(busy=True), offer(price=20)], constraints=ANY_OFFER)
@example(
    offers=[offer(model="a100"), offer(price=0, model="A 100"), offer(price=5, vram=8.0)],
    constraints=JobConstraints(max_price=25, gpu_models=("A100",), min_vram=16.0),
)
@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(offers=st.lists(OFFERS, max_size=8), constraints=CONSTRAINTS)
def test_create_job_takes_the_provider_the_matcher_chooses(
    sessions: Any, runner: asyncio.Runner, offers: list[dict[str, Any]], constraints: JobConstraints
) -> None:
    """One call inserts the job, locks ceil(maxPrice × budget / 3600), and gives the job the
    offer ``choose_provider`` picks among the free ones (the escrow above its price back), or
    leaves it PENDING with the whole escrow when none may take it."""

    async def check() -> None:
        async with sessions() as session, session.begin():
            consumer, providers = await _market(session, offers)
            free = [p for p, o in zip(providers, offers, strict=True) if not o["busy"]]
            expected = choose_provider(constraints, free)
            job_id = str(uuid.uuid4())
            seconds = 1800
            done = await db.create_job_native(
                session,
                job_id,
                consumer,
                model_type="python",
                compute_seconds=seconds,
                constraints=constraints,
                input_data={"x": [1, 2]},
                lock_key=f"{job_id}:escrow",
                release_key=f"job:{job_id}:assign:0:release",
                created_at=NOW,
                now=NOW,
            )
            job = await session.get(Job, job_id, populate_existing=True)
            escrow = await session.get(Account, escrow_account_id(job_id), populate_existing=True)
            locked = unassigned_escrow(constraints.max_price, seconds)
            assert done.fresh
            assert done.locked == locked
            assert job.input_data == {"x": [1, 2]}
            assert job.constraints == constraints.to_json()
            if expected is None:
                assert done.provider_id is None
                assert done.released == 0
                assert job.status is JobStatus.PENDING
                assert escrow.balance == locked
            else:
                assert done.provider_id == expected.id
                cost = assigned_escrow(expected.price_per_hour, seconds)
                assert done.released == locked - cost
                assert job.status is JobStatus.ASSIGNED
                assert job.provider_id == expected.id
                assert job.price_per_hour == expected.price_per_hour
                assert job.estimated_cost == cost == escrow.balance
                taken = await session.get(Provider, expected.id, populate_existing=True)
                assert taken.current_job_id == job_id
                assert not taken.is_available
                assert taken.last_assigned_at == NOW
            await session.rollback()

    runner.run(check())


def test_create_and_end_use_the_ledgers_keys(
    sessions: Any, runner: asyncio.Runner, pg_url: str
) -> None:
    """The escrow moves of a native create are the ledger's operations: the same key through
    ``Ledger`` replays them (same request hash) instead of conflicting; a retried create
    changes nothing; ``qubix_end_job`` charges like ``Ledger.charge``, keeps the result, frees
    the provider, and replays as a charge under its key."""
    ledger = Ledger(sessions)
    offer = {"price": 10, "perf": None, "last": None, "vram": 24.0, "model": "A100"}
    offer |= {"online": True, "available": True, "listed": True, "busy": False}
    constraints = JobConstraints(max_price=40)

    async def check() -> None:
        async with sessions() as session, session.begin():
            consumer, [provider] = await _market(session, [offer])
            # A real deposit, so that the audit holds over the committed data.
            wallet = await session.get(Account, wallet_account_id(consumer))
            wallet.balance = 0
        await ledger.deposit(consumer, 1000, idempotency_key=f"fund-{consumer}")
        job_id = str(uuid.uuid4())
        args: dict[str, Any] = {
            "model_type": "python",
            "compute_seconds": 3600,
            "constraints": constraints,
            "input_data": {},
            "lock_key": f"{job_id}:escrow",
            "release_key": f"job:{job_id}:assign:0:release",
            "created_at": NOW,
            "now": NOW,
        }
        async with sessions() as session, session.begin():
            done = await db.create_job_native(session, job_id, consumer, **args)
        assert (done.locked, done.released, done.provider_id) == (40, 30, provider.id)
        lock = await ledger.lock_escrow(job_id, 40, idempotency_key=f"{job_id}:escrow")
        release = await ledger.release_escrow(
            job_id, 30, idempotency_key=f"job:{job_id}:assign:0:release"
        )
        assert lock.replayed
        assert release.replayed
        async with sessions() as session, session.begin():
            again = await db.create_job_native(session, job_id, consumer, **args)
        assert not again.fresh
        assert await ledger.wallet_balance(consumer) == 1000 - 10

        result = {"kind": "pickle", "payload": "AAAA"}
        receipt = await ledger.end_job(
            job_id,
            operation="charge",
            idempotency_key=f"{job_id}:charge",
            final_status=JobStatus.COMPLETED,
            seconds=1800,
            result=result,
        )
        assert not receipt.replayed
        assert receipt.amounts == {"cost": 5, "provider": 5, "fee": 0, "refund": 5}
        async with sessions() as session:
            job = await session.get(Job, job_id)
            freed = await session.get(Provider, provider.id)
            assert job.status is JobStatus.COMPLETED
            assert job.result == result
            assert job.actual_cost == 5
            assert freed.current_job_id is None
            assert freed.is_available
            assert freed.total_jobs == 1
            assert freed.total_earnings == 5
        replay = await ledger.charge(
            job_id,
            seconds=1800,
            idempotency_key=f"{job_id}:charge",
            final_status=JobStatus.COMPLETED,
        )
        assert replay.replayed
        assert replay.amounts == receipt.amounts
        assert await ledger.wallet_balance(consumer) == 1000 - 5
        async with sessions() as session:
            report = await audit(session)
        assert report.ok, report

    runner.run(check())


def test_the_driver_statements_read_and_create_as_the_session_does(
    sessions: Any, runner: asyncio.Runner
) -> None:
    """The job's way on PostgreSQL runs on the driver's connection: its create is the same call,
    and its read (alone, or sent behind the create in the same round trip) gives the objects a
    session's read gives, every column alike (enums as enums, JSON as data, times with their
    zone), with its provider and without one."""
    from sqlalchemy import inspect as sa_inspect

    from qubix_jupyter.db.engine import autocommit_engine, driver_connection

    offer = {"price": 10, "perf": 2.5, "last": None, "vram": 24.0, "model": "Driver 1"}
    offer |= {"online": True, "available": True, "listed": True, "busy": False}
    engine = autocommit_engine(sessions.kw["bind"])

    def columns(row: Any) -> dict[str, Any]:
        return {p.key: getattr(row, p.key) for p in sa_inspect(type(row)).column_attrs}

    async def check() -> None:
        async with sessions() as session, session.begin():
            consumer, [provider] = await _market(session, [offer])
        ledger = Ledger(sessions)
        await ledger.deposit(consumer, 1000, idempotency_key=f"fund-driver-{consumer}")
        ids = [str(uuid.uuid4()), str(uuid.uuid4())]
        created = []  # the job as each create read it, behind its statement
        async with driver_connection(engine) as driver:
            for job_id in ids:  # the first takes the one offer, the second waits
                done, *as_created = await db.create_job_on(
                    driver,
                    job_id,
                    consumer,
                    model_type="python",
                    compute_seconds=3600,
                    constraints=JobConstraints(max_price=40, gpu_models=("Driver 1",)),
                    input_data={"kind": "python", "payload": "AAAA", "n": [1, 2.5, None]},
                    lock_key=f"{job_id}:escrow",
                    release_key=f"job:{job_id}:assign:0:release",
                    created_at=NOW,
                    now=NOW,
                )
                assert done.fresh
                assert done.provider_id == (None if as_created[1] is None else as_created[1].id)
                created.append(as_created)
            read = [await db.job_with_provider_on(driver, job_id) for job_id in ids]
            with pytest.raises(UnknownJob):
                await db.job_with_provider_on(driver, str(uuid.uuid4()))
            with pytest.raises(UnknownJob):
                await db.job_with_provider_on(driver, "no\x00job")
        async with sessions() as session:
            expected = [await db.job_with_provider(session, job_id) for job_id in ids]
        (assigned, taker), (waiting, nobody) = read
        assert assigned.status is JobStatus.ASSIGNED
        assert taker is not None
        assert taker.id == provider.id
        assert waiting.status is JobStatus.PENDING
        assert nobody is None
        assert assigned.created_at.tzinfo is not None
        for (job, by), (want_job, want_by) in zip(read + created, expected * 2, strict=True):
            assert columns(job) == columns(want_job)
            assert (by is None) == (want_by is None)
            if by is not None:
                assert columns(by) == columns(want_by)

    runner.run(check())


def test_end_job_refunds_and_refuses_what_the_ledger_refuses(
    sessions: Any, runner: asyncio.Runner
) -> None:
    """A refund through ``end_job`` returns the whole escrow (no result kept); ending a job
    twice under another key is the ledger's InvalidState; a non-end status is refused."""
    from qubix_jupyter.market.errors import InvalidState

    ledger = Ledger(sessions)
    offer = {"price": 10, "perf": None, "last": None, "vram": 24.0, "model": "Refund 1"}
    offer |= {"online": False, "available": True, "listed": True, "busy": False}

    async def check() -> None:
        async with sessions() as session, session.begin():
            consumer, _ = await _market(session, [offer])
            wallet = await session.get(Account, wallet_account_id(consumer))
            wallet.balance = 0
        await ledger.deposit(consumer, 100, idempotency_key=f"fund-{consumer}")
        job_id = str(uuid.uuid4())
        async with sessions() as session, session.begin():
            done = await db.create_job_native(
                session,
                job_id,
                consumer,
                model_type="python",
                compute_seconds=3600,
                constraints=JobConstraints(max_price=40, gpu_models=("Refund 1",)),
                input_data={},
                lock_key=f"{job_id}:escrow",
                release_key=f"job:{job_id}:assign:0:release",
                created_at=NOW,
                now=NOW,
            )
        assert done.provider_id is None  # the only offer is offline
        assert await ledger.wallet_balance(consumer) == 60
        receipt = await ledger.end_job(
            job_id,
            operation="refund",
            idempotency_key=f"{job_id}:cancel",
            final_status=JobStatus.CANCELLED,
        )
        assert receipt.amounts == {"refund": 40}
        assert await ledger.wallet_balance(consumer) == 100
        with pytest.raises(InvalidState):
            await ledger.end_job(
                job_id,
                operation="refund",
                idempotency_key=f"{job_id}:again",
                final_status=JobStatus.FAILED,
            )
        with pytest.raises(InvalidState):
            await ledger.end_job(
                job_id, operation="refund", idempotency_key="k", final_status=JobStatus.RUNNING
            )
        async with sessions() as session:
            statuses = (await session.scalars(select(Job.status).where(Job.id == job_id))).all()
        assert statuses == [JobStatus.CANCELLED]

    runner.run(check())


def test_pipelined_statements_commit_together_or_not_at_all(
    sessions: Any, runner: asyncio.Runner
) -> None:
    """``db.engine.pipelined``: the statements go in one round trip and one transaction. The one
    behind a write sees it; when one fails its error is raised and none of them commits; the
    connection is fit for the next statement after either."""
    import psycopg

    from qubix_jupyter.db.engine import autocommit_engine, driver_connection, pipelined

    engine = autocommit_engine(sessions.kw["bind"])
    table = f"pipelined_{uuid.uuid4().hex[:8]}"

    async def check() -> None:
        async with driver_connection(engine) as driver:
            await driver.execute(f"CREATE TABLE {table} (k text PRIMARY KEY)")
            insert = f"INSERT INTO {table} VALUES (%s)"
            count = (f"SELECT count(*) FROM {table}", ())
            written, seen, nothing = await pipelined(
                driver, (insert + " RETURNING k", ("a",)), count, (insert, ("b",))
            )
            assert written == ("a",)
            assert seen == (1,)  # the read behind the write sees it
            assert nothing is None  # a statement that returns no rows
            with pytest.raises(psycopg.errors.UniqueViolation):
                await pipelined(driver, (insert, ("c",)), (insert, ("a",)), count)
            # "c" went with the failed statement's transaction; the connection works on.
            [only] = await pipelined(driver, (f"SELECT array_agg(k ORDER BY k) FROM {table}", ()))
            assert only == (["a", "b"],)
            await driver.execute(f"DROP TABLE {table}")

    runner.run(check())
