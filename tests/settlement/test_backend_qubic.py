"""The qubic backend end to end: real databases (SQLite and PostgreSQL), the real RPC client, and
the local fake of Qubic's HTTP APIs misbehaving on purpose."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from qubix_jupyter.db import repositories as repo
from qubix_jupyter.db.engine import make_engine, make_sessionmaker
from qubix_jupyter.db.ledger import Ledger
from qubix_jupyter.db.models import Transaction as LedgerEntry
from qubix_jupyter.db.settlement_models import PayoutOutbox
from qubix_jupyter.db.settlement_store import SettlementStore
from qubix_jupyter.market.errors import IdempotencyConflict, InsufficientFunds
from qubix_jupyter.market.states import EntryType
from qubix_jupyter.settlement.backends import (
    InvalidDestination,
    PayoutState,
    SettlementNotConfigured,
    UnknownPayout,
    make_backend,
)
from qubix_jupyter.settlement.backends.base import ChainUnavailable
from qubix_jupyter.settlement.backends.memory import derived_identity
from qubix_jupyter.settlement.backends.qubic import QubicBackend, derive_deposit_seed
from qubix_jupyter.settlement.keys import KeyPair
from qubix_jupyter.settlement.rpc import QubicRpcClient, RetryPolicy
from qubix_jupyter.settlement.transaction import Transaction

from ..conftest import Database
from .fake_rpc import FakeQubicRpc

FAST = RetryPolicy(retries=3, base_delay=0.001, max_delay=0.005)
PLATFORM_SEED = "qubixplatformwalletseedfortestsonly" + "q" * 20
PLATFORM = KeyPair.from_seed(PLATFORM_SEED).identity
DEPOSIT_SECRET = "a deposit master secret used only in tests"
OFFSET = 3


@pytest.fixture
async def fake() -> AsyncIterator[FakeQubicRpc]:
    async with FakeQubicRpc() as server:
        yield server


def _backend(database: Database, fake: FakeQubicRpc, **options: object) -> QubicBackend:
    rpc = QubicRpcClient(fake.live_url, fake.query_url, timeout=2.0, retry=FAST)
    options.setdefault("tick_offset", OFFSET)
    return QubicBackend(
        database.ledger,
        SettlementStore(database.sessionmaker),
        rpc,
        platform_seed=PLATFORM_SEED,
        deposit_seed=DEPOSIT_SECRET,
        **options,  # type: ignore[arg-type]
    )


@pytest.fixture
async def backend(database: Database, fake: FakeQubicRpc) -> AsyncIterator[QubicBackend]:
    b = _backend(database, fake)
    yield b
    await b.aclose()


async def _user(db: Database, name: str, *, funds: int = 0) -> str:
    async with db.sessionmaker() as session, session.begin():
        user = await repo.create_user(session, derived_identity("login", name))
    if funds:
        await db.ledger.deposit(user.id, funds, idempotency_key=f"test-funds:{user.id}")
    return user.id


async def _rounds(backend: QubicBackend, fake: FakeQubicRpc, n: int) -> None:
    for _ in range(n):
        fake.advance(1)
        await backend.process_payouts()


DEST = derived_identity("destination", "1")
DEST2 = derived_identity("destination", "2")
DEST3 = derived_identity("destination", "3")


# ------------------------------------------------------------------------ configuration


async def test_make_backend_builds_a_configured_qubic_backend(
    database: Database, fake: FakeQubicRpc
) -> None:
    backend = make_backend(
        "qubic",
        ledger=database.ledger,
        store=SettlementStore(database.sessionmaker),
        live_url=fake.live_url,
        query_url=fake.query_url,
        platform_seed=PLATFORM_SEED,
    )
    assert isinstance(backend, QubicBackend)
    assert backend.platform_identity == PLATFORM
    assert (await backend.chain_status()).tick == fake.tick
    await backend.aclose()


@pytest.mark.parametrize(
    ("config", "field"),
    [
        ({"platform_seed": PLATFORM_SEED}, "URL"),
        ({"rpc_url": "http://127.0.0.1:9", "platform_seed": "short"}, "seed"),
        ({"rpc_url": "http://127.0.0.1:9"}, "seed"),
    ],
)
async def test_the_qubic_backend_refuses_to_start_half_configured(
    database: Database, config: dict, field: str
) -> None:
    with pytest.raises(SettlementNotConfigured, match=field):
        make_backend(
            "qubic", ledger=database.ledger, store=SettlementStore(database.sessionmaker), **config
        )


async def test_the_qubic_backend_needs_its_store_passed_in(database: Database) -> None:
    # settlement imports no database code: the caller composes backend and store
    with pytest.raises(SettlementNotConfigured, match="store=SettlementStore"):
        make_backend(
            "qubic",
            ledger=database.ledger,
            sessionmaker=database.sessionmaker,
            rpc_url="http://127.0.0.1:9",
            platform_seed=PLATFORM_SEED,
        )


def test_deposit_seeds_are_stable_distinct_and_valid() -> None:
    a, b = derive_deposit_seed("s", "user-1"), derive_deposit_seed("s", "user-2")
    assert a == derive_deposit_seed("s", "user-1")
    assert a != b != derive_deposit_seed("t", "user-1")
    assert len(a) == 55
    assert a.isalpha()
    assert a.islower()
    assert KeyPair.from_seed(a).identity != KeyPair.from_seed(b).identity


async def test_chain_status_reports_an_unreachable_chain(
    backend: QubicBackend, fake: FakeQubicRpc
) -> None:
    fake.down = True
    status = await backend.chain_status()
    assert not status.reachable
    assert "503" in (status.error or "")


# ------------------------------------------------------------------------ deposits


async def test_a_deposit_seen_twice_is_credited_once(
    database: Database, backend: QubicBackend, fake: FakeQubicRpc
) -> None:
    alice = await _user(database, "alice")
    identity = await backend.deposit_identity_for(alice)
    assert identity == await backend.deposit_identity_for(alice)
    assert identity == KeyPair.from_seed(derive_deposit_seed(DEPOSIT_SECRET, alice)).identity
    tx_id = fake.seed_incoming(identity, 1_500)
    fake.advance(1)

    (credit,) = await backend.scan_deposits()
    assert (credit.user_id, credit.tx_id, credit.amount) == (alice, tx_id, 1_500)
    assert await backend.scan_deposits() == []
    await backend.store.reset_scan_position(identity, 0)  # an operator's full rescan
    assert await backend.scan_deposits() == []
    assert await database.ledger.wallet_balance(alice) == 1_500

    async with database.sessionmaker() as session:
        entries = (
            (
                await session.execute(
                    select(LedgerEntry).where(LedgerEntry.type == EntryType.DEPOSIT)
                )
            )
            .scalars()
            .all()
        )
    assert [(e.amount, e.qubic_tx_hash, e.idempotency_key) for e in entries] == [
        (1_500, tx_id, f"qubic-deposit:{tx_id}")
    ]


async def test_a_deposit_that_moved_no_money_is_not_credited(
    database: Database, backend: QubicBackend, fake: FakeQubicRpc
) -> None:
    alice = await _user(database, "alice")
    identity = await backend.deposit_identity_for(alice)
    fake.seed_incoming(identity, 900, money_flew=False)
    real = fake.seed_incoming(identity, 40)
    fake.advance(1)
    assert [c.tx_id for c in await backend.scan_deposits()] == [real]
    assert await database.ledger.wallet_balance(alice) == 40


async def test_deposits_are_scanned_page_by_page_from_where_the_last_scan_stopped(
    database: Database, fake: FakeQubicRpc
) -> None:
    backend = _backend(database, fake, page_size=10)
    alice, bob = await _user(database, "alice"), await _user(database, "bob")
    ia, ib = await backend.deposit_identity_for(alice), await backend.deposit_identity_for(bob)
    for i in range(23):
        fake.seed_incoming(ia, i + 1)
        if i % 4 == 0:
            fake.advance(1)
    fake.seed_incoming(ib, 7)
    fake.advance(1)
    credits = await backend.scan_deposits()
    assert len(credits) == 24
    assert await database.ledger.wallet_balance(alice) == sum(range(1, 24))
    assert await backend.store.scan_position(ia) == fake.last_processed_tick

    queries = len(fake.requests)
    assert await backend.scan_deposits() == []  # nothing new: no archive page is read
    assert len(fake.requests) == queries + 1  # only getLastProcessedTick
    late = fake.seed_incoming(ib, 3)
    fake.advance(1)
    assert [c.tx_id for c in await backend.scan_deposits()] == [late]
    assert await database.ledger.wallet_balance(bob) == 10
    await backend.aclose()


async def test_a_deposit_is_credited_only_once_the_archive_has_processed_its_tick(
    database: Database,
) -> None:
    async with FakeQubicRpc(archive_lag=2) as fake:
        backend = _backend(database, fake)
        alice = await _user(database, "alice")
        identity = await backend.deposit_identity_for(alice)
        fake.seed_incoming(identity, 5)
        for _ in range(2):  # the network includes it, the archive lags two ticks behind
            fake.advance(1)
            assert await backend.scan_deposits() == []
        assert fake.balance(identity) == 5
        fake.advance(1)
        assert [c.amount for c in await backend.scan_deposits()] == [5]
        await backend.aclose()


async def test_an_unreachable_archive_makes_the_scan_fail_cleanly(
    database: Database, backend: QubicBackend, fake: FakeQubicRpc
) -> None:
    alice = await _user(database, "alice")
    identity = await backend.deposit_identity_for(alice)
    fake.seed_incoming(identity, 5)
    fake.advance(1)
    fake.down = True
    with pytest.raises(ChainUnavailable):
        await backend.scan_deposits()
    fake.down = False
    assert [c.amount for c in await backend.scan_deposits()] == [5]


async def test_an_assigned_watch_only_identity_is_scanned_from_its_start_tick(
    database: Database, backend: QubicBackend, fake: FakeQubicRpc
) -> None:
    alice = await _user(database, "alice")
    watched = derived_identity("watch-only", "alice")
    fake.seed_incoming(watched, 100)  # before the start tick: not ours to credit
    fake.advance(2)
    assert await backend.assign_deposit_identity(alice, watched) == watched
    fake.seed_incoming(watched, 8)
    fake.advance(1)
    assert [c.amount for c in await backend.scan_deposits()] == [8]
    with pytest.raises(IdempotencyConflict):
        await backend.assign_deposit_identity(alice, DEST)
    with pytest.raises(InvalidDestination):
        await backend.assign_deposit_identity(alice, "A" * 60)


async def test_without_a_deposit_seed_identities_must_be_assigned(
    database: Database, fake: FakeQubicRpc
) -> None:
    rpc = QubicRpcClient(fake.live_url, fake.query_url, retry=FAST)
    store = SettlementStore(database.sessionmaker)
    backend = QubicBackend(database.ledger, store, rpc, platform_seed=PLATFORM_SEED)
    alice = await _user(database, "alice")
    with pytest.raises(SettlementNotConfigured, match="deposit_seed"):
        await backend.deposit_identity_for(alice)
    await backend.aclose()


# ------------------------------------------------------------------------ payouts


async def test_a_payout_is_debited_with_its_outbox_row_and_confirmed_by_tick(
    database: Database, backend: QubicBackend, fake: FakeQubicRpc
) -> None:
    fake.balances[PLATFORM] = 10_000
    alice = await _user(database, "alice", funds=1_000)
    status = await backend.request_payout("w-1", alice, DEST, 600)
    assert status.state is PayoutState.QUEUED
    assert await database.ledger.wallet_balance(alice) == 400

    (sent,) = await backend.process_payouts()
    assert sent.state is PayoutState.BROADCAST
    assert sent.target_tick == fake.tick + OFFSET
    assert sent.tx_id in fake.pending
    row = await backend.store.payout("w-1")
    assert row is not None
    assert row.signed_tx is not None
    tx = Transaction.from_bytes(row.signed_tx)
    assert tx.tx_id == sent.tx_id
    assert tx.verify_signature()
    assert (tx.amount, tx.tick) == (600, sent.target_tick)
    assert tx.source_public_key == KeyPair.from_seed(PLATFORM_SEED).public_key

    await _rounds(backend, fake, OFFSET - 1)
    assert (await backend.payout_status("w-1")).state is PayoutState.BROADCAST
    await _rounds(backend, fake, 1)
    paid = await backend.payout_status("w-1")
    assert paid.state is PayoutState.CONFIRMED
    assert paid.display == "paid"
    assert paid.confirmed_tick == sent.target_tick
    assert [t.amount for t in fake.paid(PLATFORM, DEST)] == [600]
    assert [a.outcome for a in await backend.store.attempts("w-1")] == ["confirmed"]
    assert [p.payout_key for p in await backend.payouts_for_user(alice)] == ["w-1"]


async def test_payout_requests_are_validated_and_idempotent(
    database: Database, backend: QubicBackend, fake: FakeQubicRpc
) -> None:
    alice = await _user(database, "alice", funds=100)
    with pytest.raises(InsufficientFunds):
        await backend.request_payout("too-much", alice, DEST, 101)
    with pytest.raises(UnknownPayout):
        await backend.payout_status("too-much")  # the debit and the row rolled back together
    with pytest.raises(InvalidDestination):
        await backend.request_payout("self", alice, PLATFORM, 1)
    with pytest.raises(InvalidDestination):
        await backend.request_payout("bad", alice, "NOTANIDENTITY", 1)

    first = await backend.request_payout("k", alice, DEST, 30)
    assert await backend.request_payout("k", alice, DEST, 30) == first
    with pytest.raises(IdempotencyConflict):
        await backend.request_payout("k", alice, DEST2, 30)
    twins = await asyncio.gather(*(backend.request_payout("t", alice, DEST2, 5) for _ in range(4)))
    assert len({t.payout_key for t in twins}) == 1
    assert await database.ledger.wallet_balance(alice) == 65
    async with database.sessionmaker() as session:
        keys = (await session.execute(select(PayoutOutbox.payout_key))).scalars().all()
    assert sorted(keys) == ["k", "t"]
    assert fake.requests == []  # requesting a payout never touches the network


async def test_a_dropped_transaction_is_re_signed_for_a_new_tick_and_paid_once(
    database: Database, backend: QubicBackend, fake: FakeQubicRpc
) -> None:
    fake.balances[PLATFORM] = 5_000
    alice = await _user(database, "alice", funds=1_000)
    await backend.request_payout("w", alice, DEST, 700)
    fake.drop_next(1)
    (first,) = await backend.process_payouts()
    await _rounds(backend, fake, OFFSET)  # its tick passes; the archive does not have it
    again = await backend.payout_status("w")
    assert again.state is PayoutState.BROADCAST
    assert again.attempts == 2
    assert again.tx_id != first.tx_id
    assert again.target_tick is not None
    assert first.target_tick is not None
    assert again.target_tick > first.target_tick
    await _rounds(backend, fake, OFFSET)
    assert (await backend.payout_status("w")).state is PayoutState.CONFIRMED
    assert [t.amount for t in fake.paid(PLATFORM, DEST)] == [700]
    assert first.tx_id in fake.never_included
    assert fake.pending_violations == []
    attempts = await backend.store.attempts("w")
    assert [(a.attempt, a.outcome) for a in attempts] == [(1, "not_included"), (2, "confirmed")]


async def test_an_rpc_outage_queues_the_payout_as_delayed_and_pays_it_when_back(
    database: Database, backend: QubicBackend, fake: FakeQubicRpc
) -> None:
    fake.balances[PLATFORM] = 5_000
    alice = await _user(database, "alice", funds=500)
    await backend.request_payout("w", alice, DEST, 200)
    fake.down = True
    (delayed,) = await backend.process_payouts()
    assert delayed.state is PayoutState.QUEUED
    assert delayed.delayed
    assert delayed.display == "payment delayed"
    assert delayed.last_error is not None
    assert "unreachable" in delayed.last_error
    fake.advance(5)
    assert await backend.process_payouts() == []  # still down: nothing new to report
    assert fake.broadcasts == []
    fake.down = False
    (sent,) = await backend.process_payouts()
    assert sent.state is PayoutState.BROADCAST
    assert not sent.delayed
    await _rounds(backend, fake, OFFSET)
    assert (await backend.payout_status("w")).state is PayoutState.CONFIRMED
    assert [t.amount for t in fake.paid(PLATFORM, DEST)] == [200]


async def test_a_broadcast_that_fails_keeps_the_signed_transaction_and_resends_it(
    database: Database, backend: QubicBackend, fake: FakeQubicRpc
) -> None:
    fake.balances[PLATFORM] = 5_000
    alice = await _user(database, "alice", funds=500)
    await backend.request_payout("w", alice, DEST, 250)
    fake.fail_next(FAST.retries + 1, status=503, path="broadcast")
    (stored,) = await backend.process_payouts()
    # signed and stored before the broadcast, which never reached the network
    assert stored.state is PayoutState.SIGNED
    assert stored.delayed
    assert stored.tx_id is not None
    assert fake.broadcasts == []
    row = await backend.store.payout("w")
    assert row is not None
    assert row.signed_tx is not None
    assert Transaction.from_bytes(row.signed_tx).tx_id == stored.tx_id

    # a new process (after a crash) sends the same bytes: no second signature
    fresh = _backend(database, fake)
    (resent,) = await fresh.process_payouts()
    assert resent.state is PayoutState.BROADCAST
    assert resent.tx_id == stored.tx_id
    assert resent.attempts == 1
    await _rounds(fresh, fake, OFFSET)
    assert (await fresh.payout_status("w")).state is PayoutState.CONFIRMED
    assert len(fake.paid(PLATFORM, DEST)) == 1
    await fresh.aclose()


async def test_refused_connections_delay_payouts_like_a_down_service(
    database: Database, backend: QubicBackend, fake: FakeQubicRpc
) -> None:
    fake.balances[PLATFORM] = 5_000
    alice = await _user(database, "alice", funds=500)
    await backend.request_payout("w", alice, DEST, 100)
    await fake.refuse_connections()
    (delayed,) = await backend.process_payouts()
    assert delayed.delayed
    await fake.accept_connections()
    await backend.process_payouts()
    await _rounds(backend, fake, OFFSET)
    assert (await backend.payout_status("w")).state is PayoutState.CONFIRMED


async def test_a_payout_aimed_into_an_epoch_change_is_re_signed_after_it(
    database: Database, backend: QubicBackend, fake: FakeQubicRpc
) -> None:
    fake.balances[PLATFORM] = 5_000
    alice = await _user(database, "alice", funds=500)
    await backend.request_payout("w", alice, DEST, 120)
    (first,) = await backend.process_payouts()
    fake.epoch_transition(4, gap=10)  # the target tick falls into the skipped ticks
    for _ in range(3):
        fake.advance(1)
        await backend.process_payouts()
        status = await backend.payout_status("w")
        assert status.tx_id == first.tx_id  # nothing new is signed during the pause
        assert fake.broadcasts == [first.tx_id]
    fake.advance(1)  # the new epoch starts past the target tick
    assert not fake.in_epoch_transition
    (resent,) = await backend.process_payouts()
    assert resent.tx_id != first.tx_id
    assert resent.attempts == 2
    await _rounds(backend, fake, OFFSET)
    paid = await backend.payout_status("w")
    assert paid.state is PayoutState.CONFIRMED
    assert paid.attempts == 2
    assert [t.amount for t in fake.paid(PLATFORM, DEST)] == [120]
    assert fake.pending_violations == []


async def test_an_epoch_change_before_confirmation_delays_it_without_re_signing(
    database: Database, backend: QubicBackend, fake: FakeQubicRpc
) -> None:
    fake.balances[PLATFORM] = 5_000
    alice = await _user(database, "alice", funds=500)
    await backend.request_payout("w", alice, DEST, 90)
    (sent,) = await backend.process_payouts()
    fake.advance(OFFSET)  # included on chain, not yet confirmed by us
    fake.epoch_transition(3)
    (waiting,) = await backend.process_payouts()
    assert waiting.state is PayoutState.BROADCAST
    assert waiting.delayed
    assert waiting.last_error is not None
    assert "epoch change" in waiting.last_error
    await _rounds(backend, fake, 3)
    paid = await backend.payout_status("w")
    assert paid.state is PayoutState.CONFIRMED
    assert paid.tx_id == sent.tx_id
    assert paid.attempts == 1
    assert not paid.delayed


async def test_never_two_pending_transactions_from_the_platform_wallet(
    database: Database, fake: FakeQubicRpc
) -> None:
    """Two backend instances (as two server processes) process the same outbox concurrently."""
    fake.balances[PLATFORM] = 50_000
    alice = await _user(database, "alice", funds=3_000)
    one, two = _backend(database, fake), _backend(database, fake)
    for key, dest in (("a", DEST), ("b", DEST2), ("c", DEST3)):
        await one.request_payout(key, alice, dest, 1_000)
    for _ in range(4 * (OFFSET + 1)):
        await asyncio.gather(one.process_payouts(), two.process_payouts(), one.process_payouts())
        fake.advance(1)
    for key in "abc":
        assert (await one.payout_status(key)).state is PayoutState.CONFIRMED
    assert fake.pending_violations == []
    paid = sorted(fake.archive.values(), key=lambda t: t.tick)
    assert [t.destination for t in paid if t.source == PLATFORM] == [DEST, DEST2, DEST3]
    for dest in (DEST, DEST2, DEST3):
        assert len(fake.paid(PLATFORM, dest)) == 1
    await one.aclose()
    await two.aclose()


async def test_the_database_refuses_a_second_in_flight_payout_per_source(
    database: Database, backend: QubicBackend
) -> None:
    alice = await _user(database, "alice", funds=100)
    await backend.request_payout("a", alice, DEST, 10)
    await backend.request_payout("b", alice, DEST2, 10)
    store = SettlementStore(database.sessionmaker)
    for n, key in enumerate(("a", "b")):
        async with store.source_locked(PLATFORM) as session:
            row = (
                await session.execute(select(PayoutOutbox).where(PayoutOutbox.payout_key == key))
            ).scalar_one()
            row.status = PayoutState.SIGNED
            row.signed_tx, row.tx_id, row.target_tick = b"x", "a" * 59 + str(n), 1
            if key == "b":
                with pytest.raises(IntegrityError):
                    await session.flush()
                await session.rollback()
                break


async def test_a_payout_the_platform_wallet_cannot_cover_is_retried_then_paid(
    database: Database, backend: QubicBackend, fake: FakeQubicRpc
) -> None:
    fake.balances[PLATFORM] = 10
    alice = await _user(database, "alice", funds=500)
    await backend.request_payout("w", alice, DEST, 300)
    await _rounds(backend, fake, OFFSET + 1)
    status = await backend.payout_status("w")
    assert status.attempts == 2  # the first was included but moved nothing
    assert status.state is PayoutState.BROADCAST
    fake.balances[PLATFORM] = 1_000  # the operator tops the wallet up
    await _rounds(backend, fake, OFFSET + 1)
    assert (await backend.payout_status("w")).state is PayoutState.CONFIRMED
    assert [t.money_flew for t in fake.archive.values() if t.destination == DEST] == [False, True]


async def test_a_payout_that_keeps_missing_fails_and_is_refunded_once(
    database: Database, fake: FakeQubicRpc
) -> None:
    backend = _backend(database, fake, max_misses=2)
    alice = await _user(database, "alice", funds=500)
    await backend.request_payout("w", alice, DEST, 400)
    fake.drop_next(10)
    await _rounds(backend, fake, 3 * (OFFSET + 1))
    status = await backend.payout_status("w")
    assert status.state is PayoutState.FAILED
    assert status.display == "failed (refunded)"
    assert status.attempts == 2
    assert await database.ledger.wallet_balance(alice) == 500
    await _rounds(backend, fake, 2)
    assert await database.ledger.wallet_balance(alice) == 500
    assert fake.paid(PLATFORM, DEST) == []
    await backend.aclose()


async def test_a_signed_payout_survives_a_database_restart(
    database: Database, fake: FakeQubicRpc, request: pytest.FixtureRequest
) -> None:
    """**Feature: qubix-enterprise-upgrade, Property 5: For any data write operation, a
    subsequent read should return the same data even after server restart** — the outbox row
    with its signed transaction outlives the database server and the market process."""
    fake.balances[PLATFORM] = 5_000
    alice = await _user(database, "alice", funds=500)
    before = _backend(database, fake)
    await before.request_payout("w", alice, DEST, 75)
    fake.fail_next(FAST.retries + 1, status=503, path="broadcast")
    (stored,) = await before.process_payouts()
    assert stored.state is PayoutState.SIGNED
    await before.aclose()
    await database.engine.dispose()
    if database.kind == "postgresql":
        request.getfixturevalue("pg_cluster").restart()

    engine = make_engine(database.url)
    try:
        sessionmaker = make_sessionmaker(engine)
        rpc = QubicRpcClient(fake.live_url, fake.query_url, retry=FAST)
        after = QubicBackend(
            Ledger(sessionmaker),
            SettlementStore(sessionmaker),
            rpc,
            platform_seed=PLATFORM_SEED,
            tick_offset=OFFSET,
        )
        survived = await after.payout_status("w")
        assert (survived.state, survived.tx_id, survived.target_tick) == (
            PayoutState.SIGNED,
            stored.tx_id,
            stored.target_tick,
        )
        await after.process_payouts()
        await _rounds(after, fake, OFFSET)
        paid = await after.payout_status("w")
        assert paid.state is PayoutState.CONFIRMED
        assert paid.tx_id == stored.tx_id
        assert await Ledger(sessionmaker).wallet_balance(alice) == 425
        await after.aclose()
    finally:
        await engine.dispose()


@pytest.mark.parametrize("status", [400, 429, 500])
async def test_an_rpc_error_answer_delays_the_round_and_decides_nothing(
    database: Database, backend: QubicBackend, fake: FakeQubicRpc, status: int
) -> None:
    fake.balances[PLATFORM] = 5_000
    alice = await _user(database, "alice", funds=500)
    await backend.request_payout("w", alice, DEST, 60)
    (sent,) = await backend.process_payouts()
    fake.advance(OFFSET)
    fake.fail_next(1, status=status, path="getTransactionByHash")
    (waiting,) = await backend.process_payouts()
    assert waiting.state is PayoutState.BROADCAST  # neither confirmed nor re-signed
    assert waiting.delayed
    assert waiting.tx_id == sent.tx_id
    (paid,) = await backend.process_payouts()
    assert paid.state is PayoutState.CONFIRMED
    assert paid.attempts == 1
