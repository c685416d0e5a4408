"""The memory backend: the simulated chain's rules, and deposits/payouts against the real ledger.

The property tests run random sequences of transfers, payouts, dropped transactions and ticks and
check after every step that QU is conserved on the chain and between chain and ledger.
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qubix_jupyter.db import repositories as repo
from qubix_jupyter.db.engine import make_engine, make_sessionmaker
from qubix_jupyter.db.ledger import Ledger, audit
from qubix_jupyter.market.errors import (
    AmountTooLarge,
    IdempotencyConflict,
    InsufficientFunds,
    InvalidAmount,
)
from qubix_jupyter.settlement.backends import (
    InvalidDestination,
    MemoryBackend,
    PayoutState,
    SimulatedChain,
    UnknownPayout,
    make_backend,
)
from qubix_jupyter.settlement.backends.base import SettlementNotConfigured
from qubix_jupyter.settlement.backends.memory import (
    InvalidTransfer,
    Outcome,
    Overdraft,
    SourceBusy,
    TickPassed,
    derived_identity,
)
from qubix_jupyter.settlement.transaction import MAX_AMOUNT

from ..conftest import Database, DatabaseURL

IDS = [derived_identity("test-identity", str(i)) for i in range(4)]
A, B, C, D = IDS


# ----------------------------------------------------------------------- the chain's rules


def test_amounts_are_integers_between_one_and_the_maximum() -> None:
    chain = SimulatedChain()
    chain.mint(A, MAX_AMOUNT)
    for bad in (0, -1, MAX_AMOUNT + 1, 1.0, True, "5"):
        with pytest.raises(InvalidTransfer):
            chain.submit(A, B, bad, chain.tick + 1)  # type: ignore[arg-type]
    chain.submit(A, B, MAX_AMOUNT, chain.tick + 1)
    chain.advance()
    assert chain.balance(B) == MAX_AMOUNT


def test_no_overdraft() -> None:
    chain = SimulatedChain()
    chain.mint(A, 100)
    with pytest.raises(Overdraft):
        chain.submit(A, B, 101, chain.tick + 1)
    assert chain.pending_from(A) is None
    assert chain.balances() == {A: 100}


def test_one_pending_transaction_per_source() -> None:
    chain = SimulatedChain()
    chain.mint(A, 100)
    first = chain.submit(A, B, 10, chain.tick + 3)
    with pytest.raises(SourceBusy):
        chain.submit(A, C, 10, chain.tick + 1)
    chain.advance(2)
    assert first.outcome is Outcome.PENDING  # applied only at its own tick
    assert chain.balance(B) == 0
    chain.advance(1)
    assert first.outcome is Outcome.INCLUDED
    assert first.money_flew
    assert chain.balances() == {A: 90, B: 10}
    chain.submit(A, C, 10, chain.tick + 1)  # the source is free again


def test_a_target_tick_must_be_in_the_future() -> None:
    chain = SimulatedChain(tick=50)
    chain.mint(A, 10)
    for tick in (49, 50):
        with pytest.raises(TickPassed):
            chain.submit(A, B, 1, tick)


def test_a_dropped_transaction_expires_at_its_tick_and_moves_nothing() -> None:
    chain = SimulatedChain()
    chain.mint(A, 10)
    chain.drop_next()
    tx = chain.submit(A, B, 10, chain.tick + 2)
    chain.advance(2)
    assert tx.outcome is Outcome.EXPIRED
    assert not tx.money_flew
    assert chain.balances() == {A: 10}
    assert chain.pending_from(A) is None


CHAIN_OPS = st.lists(
    st.one_of(
        st.tuples(st.just("mint"), st.sampled_from(IDS), st.integers(1, 10**6)),
        st.tuples(
            st.just("submit"),
            st.sampled_from(IDS),
            st.sampled_from(IDS),
            st.integers(-5, 2 * 10**6),
            st.integers(-2, 6),
        ),
        st.tuples(st.just("drop"), st.integers(1, 2)),
        st.tuples(st.just("advance"), st.integers(1, 4)),
    ),
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(ops=CHAIN_OPS)
def test_random_transfers_conserve_qu_and_keep_the_rules(ops: list[tuple]) -> None:
    """Conservation and the transfer rules, over random sequences on the simulated chain."""
    chain = SimulatedChain(tick=10)
    outgoing: dict[str, int] = {}
    for op in ops:
        if op[0] == "mint":
            chain.mint(op[1], op[2])
        elif op[0] == "drop":
            chain.drop_next(op[1])
        elif op[0] == "advance":
            chain.advance(op[1])
        else:
            _, src, dst, amount, offset = op
            target = chain.tick + offset
            if not 0 < amount <= MAX_AMOUNT:
                expected: type[Exception] | None = InvalidTransfer
            elif target <= chain.tick:
                expected = TickPassed
            elif chain.pending_from(src) is not None:
                expected = SourceBusy
            elif amount > chain.balance(src):
                expected = Overdraft
            else:
                expected = None
            if expected is None:
                chain.submit(src, dst, amount, target)
            else:
                with pytest.raises(expected):
                    chain.submit(src, dst, amount, target)
        # invariants after every step
        assert chain.total_supply == chain.minted
        assert all(v >= 0 for v in chain.balances().values())
        pending = [t for t in chain.transfers() if t.outcome is Outcome.PENDING]
        assert len({t.source for t in pending}) == len(pending)
        assert all(t.tick > chain.tick for t in pending)
    # every balance is exactly what flew in minus what flew out; expired transfers moved nothing
    received = dict.fromkeys(IDS, 0)
    for tx in chain.transfers():
        if tx.outcome is Outcome.EXPIRED:
            assert not tx.money_flew
        if tx.money_flew:
            received[tx.destination] += tx.amount
            if tx.source in IDS:
                outgoing[tx.source] = outgoing.get(tx.source, 0) + tx.amount
    for i in IDS:
        assert chain.balance(i) == received[i] - outgoing.get(i, 0)


# ----------------------------------------------------------------------- against the ledger


async def _user(db: Database, name: str) -> str:
    async with db.sessionmaker() as session, session.begin():
        user = await repo.create_user(session, derived_identity("wallet", name))
        return user.id


async def _audit_ok(db: Database) -> None:
    async with db.sessionmaker() as session:
        report = await audit(session)
    assert report.ok, report.violations


async def _settle(backend: MemoryBackend, rounds: int) -> None:
    for _ in range(rounds):
        backend.advance()
        await backend.scan_deposits()
        await backend.process_payouts()


def test_make_backend_builds_the_memory_backend_by_default() -> None:
    backend = make_backend(ledger=object())
    assert isinstance(backend, MemoryBackend)
    with pytest.raises(SettlementNotConfigured, match="unknown settlement backend"):
        make_backend("paypal")


async def test_a_deposit_is_credited_once_however_often_it_is_scanned(database: Database) -> None:
    backend = MemoryBackend(database.ledger)
    alice = await _user(database, "alice")
    identity = await backend.deposit_identity_for(alice)
    assert identity == await backend.deposit_identity_for(alice)
    tx_id = await backend.simulate_deposit(alice, 700)
    first = await backend.scan_deposits()
    assert [(c.user_id, c.tx_id, c.amount) for c in first] == [(alice, tx_id, 700)]
    assert await backend.scan_deposits() == []
    backend._scanned_tick[identity] = 0  # forget the scan position: the tx is seen again
    assert await backend.scan_deposits() == []
    assert await database.ledger.wallet_balance(alice) == 700
    # a second deposit in the tick that was just scanned is still found
    second = await backend.simulate_deposit(alice, 5)
    assert [c.tx_id for c in await backend.scan_deposits()] == [second]
    assert await database.ledger.wallet_balance(alice) == 705
    await _audit_ok(database)


async def test_a_payout_is_debited_at_once_and_paid_at_its_target_tick(database: Database) -> None:
    backend = MemoryBackend(database.ledger, tick_offset=3, platform_balance=10_000)
    alice = await _user(database, "alice")
    await backend.simulate_deposit(alice, 1_000)
    await backend.scan_deposits()

    status = await backend.request_payout("p1", alice, D, 600)
    assert status.state is PayoutState.QUEUED
    assert status.display == "queued"
    assert await database.ledger.wallet_balance(alice) == 400

    (sent,) = await backend.process_payouts()
    assert sent.state is PayoutState.BROADCAST
    assert sent.display == "sending"
    assert sent.target_tick == backend.chain.tick + 3
    assert sent.attempts == 1
    await _settle(backend, 2)
    assert (await backend.payout_status("p1")).state is PayoutState.BROADCAST
    assert backend.chain.balance(D) == 0
    await _settle(backend, 1)
    paid = await backend.payout_status("p1")
    assert paid.state is PayoutState.CONFIRMED
    assert paid.display == "paid"
    assert paid.confirmed_tick == sent.target_tick
    assert backend.chain.balance(D) == 600
    assert [p.payout_key for p in await backend.payouts_for_user(alice)] == ["p1"]
    await _audit_ok(database)


async def test_payout_requests_are_validated_and_idempotent(database: Database) -> None:
    backend = MemoryBackend(database.ledger, platform_balance=10_000)
    alice = await _user(database, "alice")
    await backend.simulate_deposit(alice, 100)
    await backend.scan_deposits()
    with pytest.raises(InsufficientFunds):
        await backend.request_payout("big", alice, D, 101)
    with pytest.raises(UnknownPayout):
        await backend.payout_status("big")  # nothing was queued
    with pytest.raises(InvalidDestination):
        await backend.request_payout("bad", alice, D.lower(), 1)
    with pytest.raises(InvalidAmount):
        await backend.request_payout("zero", alice, D, 0)
    with pytest.raises(AmountTooLarge):
        await backend.request_payout("huge", alice, D, MAX_AMOUNT + 1)

    first = await backend.request_payout("k", alice, D, 60)
    again = await backend.request_payout("k", alice, D, 60)
    assert again == first
    with pytest.raises(IdempotencyConflict):
        await backend.request_payout("k", alice, D, 61)
    twins = await asyncio.gather(*(backend.request_payout("t", alice, C, 10) for _ in range(5)))
    assert len({s.payout_key for s in twins}) == 1
    assert await database.ledger.wallet_balance(alice) == 30
    await _settle(backend, 10)
    assert backend.chain.balance(D) == 60
    assert backend.chain.balance(C) == 10


async def test_a_dropped_payout_transaction_is_resent_and_paid_once(database: Database) -> None:
    backend = MemoryBackend(database.ledger, tick_offset=2, platform_balance=500)
    alice = await _user(database, "alice")
    await backend.simulate_deposit(alice, 500)
    await backend.scan_deposits()
    await backend.request_payout("p", alice, D, 300)
    backend.chain.drop_next()
    (first,) = await backend.process_payouts()
    await _settle(backend, 2)  # the first transaction's tick passes without it
    status = await backend.payout_status("p")
    assert status.state is PayoutState.BROADCAST
    assert status.attempts == 2
    assert status.tx_id != first.tx_id
    assert status.target_tick is not None
    assert first.target_tick is not None
    assert status.target_tick > first.target_tick
    await _settle(backend, 3)
    assert (await backend.payout_status("p")).state is PayoutState.CONFIRMED
    assert backend.chain.balance(D) == 300
    assert sum(t.amount for t in backend.chain.transfers() if t.destination == D) == 600
    assert [t.money_flew for t in backend.chain.transfers() if t.destination == D] == [False, True]


async def test_an_underfunded_platform_wallet_delays_payouts_until_deposits_are_swept(
    database: Database,
) -> None:
    backend = MemoryBackend(database.ledger, tick_offset=2)
    alice = await _user(database, "alice")
    await backend.simulate_deposit(alice, 80)
    await backend.scan_deposits()  # credits, and sweeps the deposit to the platform wallet
    await backend.request_payout("p", alice, D, 80)
    (status,) = await backend.process_payouts()
    assert status.state is PayoutState.QUEUED
    assert status.delayed
    assert status.display == "payment delayed"
    await _settle(backend, 5)
    paid = await backend.payout_status("p")
    assert paid.state is PayoutState.CONFIRMED
    assert not paid.delayed
    assert backend.chain.balance(D) == 80
    assert backend.chain.balance(backend.platform_identity) == 0


async def test_a_payout_that_never_lands_fails_and_is_refunded(database: Database) -> None:
    backend = MemoryBackend(database.ledger, tick_offset=1, max_misses=2, platform_balance=100)
    alice = await _user(database, "alice")
    await backend.simulate_deposit(alice, 50)
    await backend.scan_deposits()
    await backend.request_payout("p", alice, D, 50)
    backend.chain.drop_next(5)
    await _settle(backend, 6)
    status = await backend.payout_status("p")
    assert status.state is PayoutState.FAILED
    assert status.display == "failed (refunded)"
    assert status.attempts == 2
    assert await database.ledger.wallet_balance(alice) == 50
    assert backend.chain.balance(D) == 0
    await _audit_ok(database)


# ----------------------------------------------------------------------- property


@dataclass
class World:
    runner: asyncio.Runner
    ledger: Ledger
    sessionmaker: object


BACKEND_OPS = st.lists(
    st.one_of(
        st.tuples(st.just("deposit"), st.integers(0, 2), st.integers(1, 5_000)),
        st.tuples(st.just("payout"), st.integers(0, 2), st.integers(1, 6_000)),
        st.tuples(st.just("drop"), st.integers(1, 2)),
        st.tuples(st.just("tick"), st.integers(1, 3)),
        st.tuples(st.just("scan")),
        st.tuples(st.just("process")),
    ),
    max_size=20,
)
_run = itertools.count()


def test_memory_settlement_conserves_qu(database_url: DatabaseURL) -> None:
    """**Feature: qubix-enterprise-upgrade, Property 8: For any job payment, funds should remain
    in escrow until job completion or failure, never lost** — for settlement: random deposits,
    payouts, dropped transactions and ticks never create or lose QU between chain and ledger,
    and no payout is paid twice."""

    with asyncio.Runner() as runner:
        engine = make_engine(database_url.url)
        world = World(runner, Ledger(make_sessionmaker(engine)), make_sessionmaker(engine))
        try:

            @settings(
                max_examples=100,
                deadline=None,
                suppress_health_check=[HealthCheck.too_slow],
            )
            @given(ops=BACKEND_OPS)
            def check(ops: list[tuple]) -> None:
                runner.run(_conservation_scenario(world, ops, next(_run)))

            check()
        finally:
            runner.run(engine.dispose())


async def _conservation_scenario(world: World, ops: list[tuple], run: int) -> None:
    ledger = world.ledger
    backend = MemoryBackend(ledger, tick_offset=2, max_misses=3, advance_on_run=False)
    users = []
    async with world.sessionmaker() as session, session.begin():  # type: ignore[operator]
        for i in range(3):
            users.append((await repo.create_user(session, derived_identity(f"r{run}", str(i)))).id)
    destinations = []
    requested = refunded_expected = 0
    for n, op in enumerate(ops):
        if op[0] == "deposit":
            await backend.simulate_deposit(users[op[1]], op[2])
        elif op[0] == "payout":
            user, amount = users[op[1]], op[2]
            dest = derived_identity(f"r{run}-dest", str(n))
            try:
                await backend.request_payout(f"r{run}-{n}", user, dest, amount)
            except InsufficientFunds:
                continue
            destinations.append((f"r{run}-{n}", dest, amount))
            requested += amount
        elif op[0] == "drop":
            backend.chain.drop_next(op[1])
        elif op[0] == "tick":
            backend.advance(op[1])
        elif op[0] == "scan":
            await backend.scan_deposits()
        else:
            await backend.process_payouts()
        await _check_conservation(backend, ledger, users, destinations)
    # let everything settle: each payout lands or fails within a bounded number of rounds
    for _ in range(60):
        backend.advance()
        await backend.scan_deposits()
        await backend.process_payouts()
        if all(p.state.terminal for p in backend._payouts.values()):
            break
    await backend.scan_deposits()
    await _check_conservation(backend, ledger, users, destinations)
    for key, dest, amount in destinations:
        status = await backend.payout_status(key)
        assert status.state.terminal, status
        paid = backend.chain.balance(dest)
        assert paid == (amount if status.state is PayoutState.CONFIRMED else 0)
        refunded_expected += amount if status.state is PayoutState.FAILED else 0
    credited = sum(
        t.amount
        for t in backend.chain.transfers()
        if t.destination in [backend._deposit_identities.get(u) for u in users]
        and t.money_flew
        and t.source not in backend._deposit_identities.values()
    )
    wallets = sum([await ledger.wallet_balance(u) for u in users])
    assert wallets == credited - requested + refunded_expected


async def _check_conservation(
    backend: MemoryBackend, ledger: Ledger, users: list[str], destinations: list
) -> None:
    chain = backend.chain
    assert chain.total_supply == chain.minted
    assert all(v >= 0 for v in chain.balances().values())
    for _key, dest, amount in destinations:
        assert chain.balance(dest) in (0, amount)  # never paid twice, never partly
    in_flight = [s for s in backend._payouts.values() if s.state.in_flight]
    assert len(in_flight) <= 1
    # What users own (wallets, plus payouts debited but not yet paid out on chain) is backed by
    # QU the platform holds on chain (its wallet and the deposit identities).
    owed = 0
    for p in backend._payouts.values():
        tx = chain.transfer(p.tx_id) if p.tx_id else None
        if not p.state.terminal and not (tx is not None and tx.money_flew):
            owed += p.amount
    wallets = sum([await ledger.wallet_balance(u) for u in users])
    held = chain.balance(backend.platform_identity) + sum(
        chain.balance(i) for i in backend._deposit_identities.values()
    )
    # Equality once every deposit is scanned; more while some are not yet credited; never less.
    assert held >= wallets + owed


async def test_the_background_loop_ticks_credits_and_pays_on_its_own(database: Database) -> None:
    backend = MemoryBackend(database.ledger, tick_offset=1)
    alice = await _user(database, "alice")
    await backend.simulate_deposit(alice, 50)
    backend.start(0.001)
    backend.start(0.001)  # a second start is a no-op, not a second loop

    async def until(check) -> None:
        for _ in range(2_000):
            if await check():
                return
            await asyncio.sleep(0.002)
        raise AssertionError("the loop did not get there")

    async def credited() -> bool:
        return await database.ledger.wallet_balance(alice) == 50

    async def paid() -> bool:
        return (await backend.payout_status("p")).state is PayoutState.CONFIRMED

    try:
        await until(credited)
        await backend.request_payout("p", alice, D, 50)
        await until(paid)
    finally:
        await backend.aclose()
    assert backend.chain.balance(D) == 50
    assert (await backend.chain_status()).reachable
    tick = backend.chain.tick
    await asyncio.sleep(0.01)
    assert backend.chain.tick == tick  # stopped
