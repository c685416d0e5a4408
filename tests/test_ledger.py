"""Ledger operations on real PostgreSQL and SQLite: each rule, each error, each replay."""

from __future__ import annotations

import pytest

from qubix_jupyter.db import repositories as repo
from qubix_jupyter.db.ledger import InvalidIdempotencyKey, Ledger, audit
from qubix_jupyter.market.errors import (
    AmountTooLarge,
    IdempotencyConflict,
    InsufficientFunds,
    InvalidAmount,
    InvalidState,
    UnknownAccount,
    UnknownJob,
)
from qubix_jupyter.market.money import INT64_MAX
from qubix_jupyter.market.states import EntryType, JobStatus

from .conftest import Database


async def _market(db: Database, *, price: int = 3600, escrow_seconds: int = 3600):
    """A consumer with 10 000 QU, a provider at ``price`` QU/h, and an assigned job."""
    async with db.sessionmaker() as s, s.begin():
        consumer = await repo.create_user(s, "C" * 60)
        owner = await repo.create_user(s, "P" * 60)
        provider = await repo.create_provider(s, owner.id, worker_id="w-1", price_per_hour=price)
        job = await repo.create_job(
            s, consumer.id, model_type="python", compute_seconds=escrow_seconds, max_price=price
        )
        await repo.assign_job(s, job.id, provider, status=JobStatus.RUNNING)
    await db.ledger.deposit(consumer.id, 10_000, idempotency_key="dep-1")
    return consumer, owner, provider, job


async def _assert_audit(db: Database) -> None:
    async with db.sessionmaker() as s:
        report = await audit(s)
    assert report.ok, report.violations


async def test_deposit_and_withdraw_move_money_between_wallet_and_chain(database: Database):
    async with database.sessionmaker() as s, s.begin():
        user = await repo.create_user(s, "A" * 60)
    r = await database.ledger.deposit(user.id, 500, idempotency_key="d1", qubic_tx_hash="x" * 60)
    assert r.amounts == {"amount": 500, "balance": 500}
    w = await database.ledger.withdraw(user.id, 200, idempotency_key="w1")
    assert w.amounts == {"amount": 200, "balance": 300}
    assert await database.ledger.wallet_balance(user.id) == 300
    with pytest.raises(InsufficientFunds) as err:
        await database.ledger.withdraw(user.id, 301, idempotency_key="w2")
    assert err.value.details["balance"] == 300
    assert await database.ledger.wallet_balance(user.id) == 300
    await _assert_audit(database)


async def test_charge_pays_provider_fee_and_refunds_the_rest(database: Database):
    consumer, owner, provider, job = await _market(database, price=3600)
    ledger = Ledger(database.sessionmaker, platform_fee_bps=1000)  # 10 %
    await ledger.lock_escrow(job.id, 3600, idempotency_key="lock")
    assert await ledger.wallet_balance(consumer.id) == 6400
    # 100.5 s is not a whole second: the API takes seconds; 101 s at 3600 QU/h → 101 QU.
    r = await ledger.charge(job.id, seconds=101, idempotency_key="charge")
    assert r.amounts == {"cost": 101, "provider": 91, "fee": 10, "refund": 3499}
    assert await ledger.wallet_balance(owner.id) == 91
    assert await ledger.wallet_balance(consumer.id) == 6400 + 3499
    assert await ledger.balance("platform:fees") == 10
    assert await ledger.escrow_balance(job.id) == 0
    async with database.sessionmaker() as s:
        stored = await s.get(type(job), job.id)
        refreshed = await s.get(type(provider), provider.id)
    assert stored.status == JobStatus.COMPLETED
    assert stored.actual_cost == 101
    assert refreshed.total_earnings == 91
    assert refreshed.total_jobs == 1
    await _assert_audit(database)


async def test_charge_rounds_up_and_never_exceeds_the_escrow(database: Database):
    _consumer, owner, _, job = await _market(database, price=7)
    await database.ledger.lock_escrow(job.id, 5, idempotency_key="lock")
    # 1 s at 7 QU/h is 7/3600 QU: rounds up to 1.
    # 10 h would be 70 QU, capped at the 5 QU locked.
    r = await database.ledger.charge(job.id, seconds=36_000, idempotency_key="charge")
    assert r.amounts["cost"] == 5
    assert r.amounts["refund"] == 0
    assert await database.ledger.wallet_balance(owner.id) == 5
    await _assert_audit(database)


async def test_refund_returns_everything_and_ends_the_job(database: Database):
    consumer, _, _, job = await _market(database)
    await database.ledger.lock_escrow(job.id, 1000, idempotency_key="lock")
    await database.ledger.lock_escrow(job.id, 500, idempotency_key="top-up")
    r = await database.ledger.refund(job.id, idempotency_key="refund", error="unassignable")
    assert r.amounts == {"refund": 1500}
    assert await database.ledger.wallet_balance(consumer.id) == 10_000
    with pytest.raises(InvalidState):
        await database.ledger.charge(job.id, seconds=1, idempotency_key="late-charge")
    with pytest.raises(InvalidState):
        await database.ledger.lock_escrow(job.id, 1, idempotency_key="late-lock")
    await _assert_audit(database)


async def test_release_escrow_gives_part_back(database: Database):
    _consumer, _, _, job = await _market(database)
    await database.ledger.lock_escrow(job.id, 1000, idempotency_key="lock")
    await database.ledger.release_escrow(job.id, 400, idempotency_key="release")
    assert await database.ledger.escrow_balance(job.id) == 600
    with pytest.raises(InsufficientFunds):
        await database.ledger.release_escrow(job.id, 601, idempotency_key="too-much")
    await _assert_audit(database)


async def test_same_key_same_request_moves_money_once(database: Database):
    _consumer, _, _, job = await _market(database)
    first = await database.ledger.lock_escrow(job.id, 700, idempotency_key="lock")
    again = await database.ledger.lock_escrow(job.id, 700, idempotency_key="lock")
    assert again.replayed
    assert not first.replayed
    assert again.entry_ids == first.entry_ids
    assert again.amounts == first.amounts
    assert await database.ledger.escrow_balance(job.id) == 700
    await _assert_audit(database)


async def test_same_key_other_request_is_a_conflict(database: Database):
    consumer, _, _, job = await _market(database)
    await database.ledger.lock_escrow(job.id, 700, idempotency_key="lock")
    with pytest.raises(IdempotencyConflict):
        await database.ledger.lock_escrow(job.id, 701, idempotency_key="lock")
    with pytest.raises(IdempotencyConflict):
        await database.ledger.deposit(consumer.id, 700, idempotency_key="lock")
    assert await database.ledger.escrow_balance(job.id) == 700


async def test_failed_request_can_be_retried_with_its_key(database: Database):
    consumer, _, _, job = await _market(database)
    with pytest.raises(InsufficientFunds):
        await database.ledger.lock_escrow(job.id, 10_001, idempotency_key="lock")
    await database.ledger.deposit(consumer.id, 1, idempotency_key="top")
    r = await database.ledger.lock_escrow(job.id, 10_001, idempotency_key="lock")
    assert not r.replayed
    assert await database.ledger.wallet_balance(consumer.id) == 0


@pytest.mark.parametrize("amount", [0, -1, 1.5, "10", True, None])
async def test_amounts_must_be_positive_integers(database: Database, amount):
    with pytest.raises(InvalidAmount):
        await database.ledger.deposit("nobody", amount, idempotency_key="k")


async def test_amounts_above_int64_are_refused(database: Database):
    async with database.sessionmaker() as s, s.begin():
        user = await repo.create_user(s, "A" * 60)
    with pytest.raises(AmountTooLarge):
        await database.ledger.deposit(user.id, INT64_MAX + 1, idempotency_key="big")
    await database.ledger.deposit(user.id, INT64_MAX, idempotency_key="max")
    with pytest.raises(AmountTooLarge):
        await database.ledger.deposit(user.id, 1, idempotency_key="over")
    assert await database.ledger.wallet_balance(user.id) == INT64_MAX


async def test_unknown_accounts_and_jobs(database: Database):
    with pytest.raises(UnknownAccount):
        await database.ledger.deposit("no-such-user", 5, idempotency_key="k")
    with pytest.raises(UnknownJob):
        await database.ledger.lock_escrow("no-such-job", 5, idempotency_key="k2")
    with pytest.raises(UnknownAccount):
        await database.ledger.wallet_balance("no-such-user")
    with pytest.raises(UnknownAccount):
        await database.ledger.wallet_balances(["no-such-user"])


async def test_wallet_balances_are_read_together(database: Database):
    consumer, owner, _, job = await _market(database, price=3600)
    await database.ledger.lock_escrow(job.id, 3600, idempotency_key="l1")
    await database.ledger.charge(job.id, seconds=600, idempotency_key="c1")
    balances = await database.ledger.wallet_balances([consumer.id, owner.id])
    assert balances == {consumer.id: 10_000 - 600, owner.id: 600}
    assert balances[consumer.id] == await database.ledger.wallet_balance(consumer.id)
    assert await database.ledger.wallet_balances([]) == {}


@pytest.mark.parametrize("key", ["", "k" * 201, None])
async def test_idempotency_keys_are_checked(database: Database, key):
    with pytest.raises(InvalidIdempotencyKey):
        await database.ledger.deposit("u", 5, idempotency_key=key)


async def test_charge_needs_an_assigned_provider(database: Database):
    async with database.sessionmaker() as s, s.begin():
        user = await repo.create_user(s, "A" * 60)
        job = await repo.create_job(
            s, user.id, model_type="python", compute_seconds=60, max_price=10
        )
    await database.ledger.deposit(user.id, 100, idempotency_key="d")
    await database.ledger.lock_escrow(job.id, 10, idempotency_key="l")
    with pytest.raises(InvalidState):
        await database.ledger.charge(job.id, seconds=1, idempotency_key="c")
    r = await database.ledger.refund(job.id, idempotency_key="r", final_status=JobStatus.CANCELLED)
    assert r.amounts == {"refund": 10}


async def test_entries_name_types_and_accounts(database: Database):
    consumer, owner, _, job = await _market(database, price=3600)
    await database.ledger.lock_escrow(job.id, 100, idempotency_key="l")
    await database.ledger.charge(job.id, seconds=50, idempotency_key="c")
    from sqlalchemy import select

    from qubix_jupyter.db.models import Transaction

    async with database.sessionmaker() as s:
        rows = (await s.execute(select(Transaction).where(Transaction.job_id == job.id))).scalars()
        moves = sorted((r.type, r.debit_account_id, r.credit_account_id, r.amount) for r in rows)
    assert moves == sorted(
        [
            (EntryType.ESCROW_LOCK, f"wallet:{consumer.id}", f"escrow:{job.id}", 100),
            (EntryType.EARNING, f"escrow:{job.id}", f"wallet:{owner.id}", 50),
            (EntryType.ESCROW_RELEASE, f"escrow:{job.id}", f"wallet:{consumer.id}", 50),
        ]
    )
