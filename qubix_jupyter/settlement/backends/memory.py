"""The default settlement backend: a simulated Qubic chain in this process.

Nothing leaves the machine, yet the chain keeps the rules a real payout has to live with:

* amounts are integers with ``0 < amount ≤ 10^15``; a source cannot send more than it holds;
* a source has at most one pending transaction; it is scheduled for a *target tick* in the future
  and applied only when that tick is processed;
* a transaction not included by its target tick has expired for good (see :meth:`drop_next`).

Ticks advance on demand (:meth:`SimulatedChain.advance`, :meth:`MemoryBackend.advance`) or on a
timer (:meth:`MemoryBackend.start`). Deposits come from :meth:`MemoryBackend.simulate_deposit`, the
demo stand-in for somebody sending QU from outside; :meth:`MemoryBackend.scan_deposits` credits
them to the ledger and sweeps the deposit identity into the platform wallet that pays payouts.
Payout bookkeeping lives in memory, like the chain it settles on.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import hashlib
import itertools
from collections.abc import Iterable

from ...market.errors import IdempotencyConflict, QubixError
from ..identity import identity_from_public_key, is_valid_identity
from .base import (
    MAX_TRANSFER_AMOUNT,
    ChainStatus,
    DepositCredit,
    LedgerPort,
    PayoutState,
    PayoutStatus,
    SettlementBackend,
    UnknownPayout,
    check_payout_transition,
    payout_idempotency_key,
    refund_idempotency_key,
    utcnow,
    validate_payout,
)


class ChainRuleError(QubixError):
    """The simulated chain refused a transaction, naming the rule."""

    code = "chain_rule"
    status = 409


class Overdraft(ChainRuleError):
    code = "chain_overdraft"


class SourceBusy(ChainRuleError):
    code = "chain_source_busy"


class TickPassed(ChainRuleError):
    code = "chain_tick_passed"


class InvalidTransfer(ChainRuleError):
    code = "chain_invalid_transfer"
    status = 422


class Outcome(enum.StrEnum):
    PENDING = "pending"
    INCLUDED = "included"
    EXPIRED = "expired"


@dataclasses.dataclass(slots=True)
class SimTransfer:
    tx_id: str
    source: str
    destination: str
    amount: int
    tick: int
    outcome: Outcome = Outcome.PENDING
    money_flew: bool = False


def derived_identity(*parts: str | bytes) -> str:
    """A well-formed identity from a hash of ``parts`` (a watch-only address: no key exists)."""
    h = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        h.update(len(data).to_bytes(4, "little") + data)
    return identity_from_public_key(h.digest())


OUTSIDE_IDENTITY = derived_identity("qubix-simulated-outside-world")


class SimulatedChain:
    """Balances, pending transactions and ticks, with Qubic's transfer rules."""

    def __init__(self, *, tick: int = 1, max_amount: int = MAX_TRANSFER_AMOUNT) -> None:
        self._tick = tick
        self.max_amount = max_amount
        self._balances: dict[str, int] = {}
        self._transfers: dict[str, SimTransfer] = {}
        self._pending_by_source: dict[str, str] = {}
        self._drop_next = 0
        self._ids = itertools.count(1)
        self.minted = 0

    @property
    def tick(self) -> int:
        return self._tick

    def balance(self, identity: str) -> int:
        return self._balances.get(identity, 0)

    def balances(self) -> dict[str, int]:
        return {k: v for k, v in self._balances.items() if v}

    @property
    def total_supply(self) -> int:
        return sum(self._balances.values())

    def transfer(self, tx_id: str) -> SimTransfer | None:
        return self._transfers.get(tx_id)

    def transfers(self) -> list[SimTransfer]:
        return list(self._transfers.values())

    def pending_from(self, source: str) -> SimTransfer | None:
        tx_id = self._pending_by_source.get(source)
        return self._transfers[tx_id] if tx_id else None

    def _new_id(self, *fields: object) -> str:
        digest = hashlib.sha256(repr((next(self._ids), *fields)).encode()).digest()
        return identity_from_public_key(digest, lowercase=True)

    def _check_amount(self, amount: object) -> int:
        if isinstance(amount, bool) or not isinstance(amount, int):
            raise InvalidTransfer("an amount is an integer number of QU", field="amount")
        if not 0 < amount <= self.max_amount:
            raise InvalidTransfer(
                f"an amount is between 1 and {self.max_amount} QU", field="amount", value=amount
            )
        return amount

    def mint(self, destination: str, amount: int, *, source: str = OUTSIDE_IDENTITY) -> str:
        """QU arriving from outside the simulation, included at the current tick."""
        self._check_amount(amount)
        if not is_valid_identity(destination):
            raise InvalidTransfer("not an identity", field="destination")
        tx = SimTransfer(
            self._new_id("mint", destination, amount),
            source,
            destination,
            amount,
            self._tick,
            Outcome.INCLUDED,
            money_flew=True,
        )
        self._balances[destination] = self.balance(destination) + amount
        self.minted += amount
        self._transfers[tx.tx_id] = tx
        return tx.tx_id

    def submit(self, source: str, destination: str, amount: int, target_tick: int) -> SimTransfer:
        """Schedule a transfer for ``target_tick``; raise the rule it breaks, if any."""
        self._check_amount(amount)
        for field, identity in (("source", source), ("destination", destination)):
            if not is_valid_identity(identity):
                raise InvalidTransfer(f"the {field} is not an identity", field=field)
        if target_tick <= self._tick:
            raise TickPassed(
                f"target tick {target_tick} is not after the current tick {self._tick}",
                target_tick=target_tick,
                tick=self._tick,
            )
        if source in self._pending_by_source:
            raise SourceBusy(
                "the source already has a pending transaction",
                pending=self._pending_by_source[source],
            )
        if amount > self.balance(source):
            raise Overdraft(
                f"the source holds {self.balance(source)} QU, {amount} QU needed",
                balance=self.balance(source),
                needed=amount,
            )
        tx = SimTransfer(
            self._new_id(source, destination, amount, target_tick),
            source,
            destination,
            amount,
            target_tick,
        )
        self._transfers[tx.tx_id] = tx
        self._pending_by_source[source] = tx.tx_id
        if self._drop_next:
            self._drop_next -= 1
            tx.outcome = Outcome.EXPIRED  # decided now, known to nobody until its tick passes
        return tx

    def drop_next(self, n: int = 1) -> None:
        """The next ``n`` submitted transactions will not be included (they expire)."""
        self._drop_next += n

    def advance(self, n: int = 1) -> list[SimTransfer]:
        """Process the next ``n`` ticks; return the transactions whose tick came."""
        done: list[SimTransfer] = []
        for _ in range(n):
            self._tick += 1
            for source, tx_id in list(self._pending_by_source.items()):
                tx = self._transfers[tx_id]
                if tx.tick != self._tick:
                    continue
                del self._pending_by_source[source]
                if tx.outcome is Outcome.EXPIRED:
                    done.append(tx)
                    continue
                tx.outcome = Outcome.INCLUDED
                tx.money_flew = tx.amount <= self.balance(source)
                if tx.money_flew:
                    self._balances[source] -= tx.amount
                    self._balances[tx.destination] = self.balance(tx.destination) + tx.amount
                done.append(tx)
        return done

    def incoming(self, identity: str, *, after_tick: int) -> list[SimTransfer]:
        """Included transfers to ``identity`` in ticks ``> after_tick``, oldest first."""
        return [
            t
            for t in self._transfers.values()
            if t.destination == identity
            and t.outcome is Outcome.INCLUDED
            and t.tick > after_tick
            and t.source != identity
        ]


@dataclasses.dataclass(slots=True)
class _Payout:
    key: str
    user_id: str
    destination: str
    amount: int
    seq: int
    state: PayoutState = PayoutState.QUEUED
    attempts: int = 0
    misses: int = 0
    delayed: bool = False
    tx_id: str | None = None
    target_tick: int | None = None
    confirmed_tick: int | None = None
    last_error: str | None = None
    created_at: dt.datetime | None = None
    updated_at: dt.datetime | None = None

    def status(self) -> PayoutStatus:
        return PayoutStatus(
            payout_key=self.key,
            user_id=self.user_id,
            destination=self.destination,
            amount=self.amount,
            state=self.state,
            attempts=self.attempts,
            delayed=self.delayed,
            tx_id=self.tx_id,
            target_tick=self.target_tick,
            confirmed_tick=self.confirmed_tick,
            last_error=self.last_error,
            created_at=self.created_at,
            updated_at=self.updated_at,
        )

    def move(self, state: PayoutState) -> None:
        check_payout_transition(self.state, state)
        self.state = state
        self.updated_at = utcnow()


class MemoryBackend(SettlementBackend):
    """Settlement against :class:`SimulatedChain`.

    ``tick_offset``: how many ticks ahead a payout transaction is scheduled. ``max_misses``: how
    many transactions of one payout may fail to pay before it is failed and refunded (0: never).
    ``platform_balance``: QU the simulated platform wallet starts with (beyond swept deposits).
    """

    name = "memory"

    def __init__(
        self,
        ledger: LedgerPort,
        *,
        chain: SimulatedChain | None = None,
        tick_offset: int = 3,
        max_misses: int = 5,
        platform_balance: int = 0,
        sweep_deposits: bool = True,
        advance_on_run: bool = True,
    ) -> None:
        if tick_offset < 1:
            raise ValueError("tick_offset must be at least 1")
        self.ledger = ledger
        self.chain = chain or SimulatedChain()
        self.tick_offset = tick_offset
        self.max_misses = max_misses
        self.sweep_deposits = sweep_deposits
        self.advance_on_run = advance_on_run
        self.platform_identity = derived_identity("qubix-simulated-platform-wallet")
        if platform_balance:
            self.chain.mint(self.platform_identity, platform_balance)
        self._deposit_identities: dict[str, str] = {}
        self._scanned_tick: dict[str, int] = {}
        self._payouts: dict[str, _Payout] = {}
        self._seq = itertools.count(1)

    # ------------------------------------------------------------------ chain

    def advance(self, n: int = 1) -> None:
        self.chain.advance(n)

    async def run_once(self) -> None:
        if self.advance_on_run:
            self.chain.advance(1)
        await super().run_once()

    async def chain_status(self) -> ChainStatus:
        t = self.chain.tick
        return ChainStatus(reachable=True, tick=t, epoch=0, last_processed_tick=t)

    # ------------------------------------------------------------------ deposits

    async def deposit_identity_for(self, user_id: str) -> str:
        identity = self._deposit_identities.get(user_id)
        if identity is None:
            identity = derived_identity("qubix-simulated-deposit", user_id)
            self._deposit_identities[user_id] = identity
            self._scanned_tick.setdefault(identity, self.chain.tick - 1)
        return identity

    async def simulate_deposit(
        self, user_id: str, amount: int, *, source: str = OUTSIDE_IDENTITY
    ) -> str:
        """Demo/test helper: ``amount`` QU arrive at the user's deposit identity from outside.
        Returns the chain transaction id; :meth:`scan_deposits` credits it."""
        return self.chain.mint(await self.deposit_identity_for(user_id), amount, source=source)

    async def scan_deposits(self) -> list[DepositCredit]:
        credits: list[DepositCredit] = []
        for user_id, identity in list(self._deposit_identities.items()):
            seen_to = self._scanned_tick[identity]
            now = self.chain.tick
            # Rescan the last scanned tick: a simulated deposit lands in the current tick, which
            # may already have been scanned. The ledger's idempotency key makes that harmless.
            for tx in self.chain.incoming(identity, after_tick=seen_to - 1):
                if not tx.money_flew:
                    continue
                credit = await self._credit_deposit(user_id, tx.tx_id, tx.amount, tx.tick)
                if credit is not None:
                    credits.append(credit)
            self._scanned_tick[identity] = max(seen_to, now)
            self._sweep(identity)
        return credits

    def _sweep(self, identity: str) -> None:
        held = self.chain.balance(identity)
        if not self.sweep_deposits or not held or self.chain.pending_from(identity):
            return
        amount = min(held, self.chain.max_amount)
        self.chain.submit(identity, self.platform_identity, amount, self.chain.tick + 1)

    # ------------------------------------------------------------------ payouts

    async def request_payout(
        self, payout_key: str, user_id: str, destination_identity: str, amount: int
    ) -> PayoutStatus:
        validate_payout(payout_key, destination_identity, amount)
        existing = self._payouts.get(payout_key)
        if existing is None:
            await self.ledger.withdraw(
                user_id, amount, idempotency_key=payout_idempotency_key(payout_key)
            )
            # No await between this check and the insert: a concurrent twin that also passed
            # the ledger (as a replay) finds the payout here instead of queuing a second one.
            existing = self._payouts.get(payout_key)
            if existing is None:
                now = utcnow()
                existing = _Payout(
                    payout_key,
                    user_id,
                    destination_identity,
                    amount,
                    next(self._seq),
                    created_at=now,
                    updated_at=now,
                )
                self._payouts[payout_key] = existing
        if (existing.user_id, existing.destination, existing.amount) != (
            user_id,
            destination_identity,
            amount,
        ):
            raise IdempotencyConflict(
                f"payout key {payout_key!r} was already used for a different payout",
                key=payout_key,
            )
        return existing.status()

    def _in_flight(self) -> _Payout | None:
        return next((p for p in self._payouts.values() if p.state.in_flight), None)

    def _queued(self) -> Iterable[_Payout]:
        return sorted(
            (p for p in self._payouts.values() if p.state is PayoutState.QUEUED),
            key=lambda p: p.seq,
        )

    async def process_payouts(self) -> list[PayoutStatus]:
        changed: dict[str, _Payout] = {}
        current = self._in_flight()
        if current is not None and current.tx_id is not None:
            tx = self.chain.transfer(current.tx_id)
            assert tx is not None
            if tx.tick <= self.chain.tick:  # its tick has been processed: the outcome is final
                if tx.outcome is Outcome.INCLUDED and tx.money_flew:
                    current.move(PayoutState.CONFIRMED)
                    current.confirmed_tick = tx.tick
                    current.delayed = False
                    current.last_error = None
                else:
                    current.misses += 1
                    current.last_error = (
                        "included without moving money"
                        if tx.outcome is Outcome.INCLUDED
                        else f"not included by its target tick {tx.tick}"
                    )
                    await self._retry_or_fail(current)
                changed[current.key] = current
                current = None
        if current is None:
            for payout in self._queued():
                try:
                    tx = self.chain.submit(
                        self.platform_identity,
                        payout.destination,
                        payout.amount,
                        self.chain.tick + self.tick_offset,
                    )
                except Overdraft as exc:
                    # The platform wallet waits for swept deposits; the payout keeps its place.
                    if not payout.delayed or payout.last_error != exc.message:
                        payout.delayed, payout.last_error = True, exc.message
                        changed[payout.key] = payout
                    break
                payout.move(PayoutState.SIGNED)
                payout.move(PayoutState.BROADCAST)
                payout.attempts += 1
                payout.tx_id, payout.target_tick = tx.tx_id, tx.tick
                payout.delayed = False
                changed[payout.key] = payout
                break
        return [p.status() for p in changed.values()]

    async def _retry_or_fail(self, payout: _Payout) -> None:
        if self.max_misses and payout.misses >= self.max_misses:
            payout.move(PayoutState.FAILED)
            await self.ledger.deposit(
                payout.user_id, payout.amount, idempotency_key=refund_idempotency_key(payout.key)
            )
        else:
            payout.move(PayoutState.QUEUED)

    async def payout_status(self, payout_key: str) -> PayoutStatus:
        payout = self._payouts.get(payout_key)
        if payout is None:
            raise UnknownPayout(f"no payout {payout_key!r}", payout_key=payout_key)
        return payout.status()

    async def payouts_for_user(self, user_id: str) -> list[PayoutStatus]:
        mine = [p for p in self._payouts.values() if p.user_id == user_id]
        return [p.status() for p in sorted(mine, key=lambda p: p.seq, reverse=True)]


__all__ = [
    "OUTSIDE_IDENTITY",
    "ChainRuleError",
    "InvalidTransfer",
    "MemoryBackend",
    "Outcome",
    "Overdraft",
    "SimTransfer",
    "SimulatedChain",
    "SourceBusy",
    "TickPassed",
    "derived_identity",
]
