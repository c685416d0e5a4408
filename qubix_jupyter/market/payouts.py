"""Payout domain: states, the transition table, what a user may know about a payout, limits.

Pure data and rules, no I/O. Both sides of a payout use it: ``settlement`` (which moves payouts
onto the chain) and ``db`` (which stores them in the ``payout_outbox``); neither imports the other.

Payout states (one table, :data:`PAYOUT_TRANSITIONS`)::

    queued ──sign──▶ signed ──broadcast ok──▶ broadcast ──archive shows moneyFlew──▶ confirmed
      ▲                │                         │
      └── not included by its target tick / included without moving money ──┘
    (any non-terminal) ──too many misses──▶ failed (the debit is refunded)

``delayed`` is a flag beside the state: the chain could not be reached on the last try, the
payout waits in the queue and the user sees "payment delayed".
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
from typing import Any, Protocol

from .errors import AmountTooLarge
from .money import require_amount

#: The largest amount one Qubic transaction may carry (10^15 QU). The same number as
#: ``qubix_jupyter.settlement.transaction.MAX_AMOUNT``; settlement refuses to import if they differ.
MAX_TRANSFER_AMOUNT = 10**15

#: The longest payout key (the client's idempotency key for one payout); the outbox column's width.
MAX_PAYOUT_KEY_LENGTH = 150


class PayoutState(enum.StrEnum):
    QUEUED = "queued"  # debited, waiting for its turn on the source identity
    SIGNED = "signed"  # a signed transaction is stored; broadcast not yet acknowledged
    BROADCAST = "broadcast"  # peers accepted it; waiting for its target tick to be archived
    CONFIRMED = "confirmed"  # the archive shows it with moneyFlew: paid
    FAILED = "failed"  # given up after max misses; the wallet debit was refunded

    @property
    def terminal(self) -> bool:
        return self in (PayoutState.CONFIRMED, PayoutState.FAILED)

    @property
    def in_flight(self) -> bool:
        """A transaction of this payout may still be included: nothing else may be signed."""
        return self in (PayoutState.SIGNED, PayoutState.BROADCAST)


#: from → allowed next states.
PAYOUT_TRANSITIONS: dict[PayoutState, frozenset[PayoutState]] = {
    PayoutState.QUEUED: frozenset({PayoutState.SIGNED, PayoutState.FAILED}),
    PayoutState.SIGNED: frozenset(
        {PayoutState.BROADCAST, PayoutState.QUEUED, PayoutState.CONFIRMED, PayoutState.FAILED}
    ),
    PayoutState.BROADCAST: frozenset(
        {PayoutState.CONFIRMED, PayoutState.QUEUED, PayoutState.FAILED}
    ),
    PayoutState.CONFIRMED: frozenset(),
    PayoutState.FAILED: frozenset(),
}


def check_payout_transition(current: PayoutState, target: PayoutState) -> None:
    """Raise ``RuntimeError`` (a bug, never a client's fault) unless ``current → target`` is in
    :data:`PAYOUT_TRANSITIONS`."""
    if target not in PAYOUT_TRANSITIONS[current]:
        raise RuntimeError(f"a {current.value} payout cannot become {target.value}")


def require_payout_amount(amount: object) -> int:
    """Return ``amount`` if one Qubic transfer can carry it (integer QU, 0 < amount ≤ 10^15)."""
    value = require_amount(amount)
    if value > MAX_TRANSFER_AMOUNT:
        raise AmountTooLarge(
            f"one Qubic transfer carries at most {MAX_TRANSFER_AMOUNT} QU",
            field="amount",
            max=MAX_TRANSFER_AMOUNT,
        )
    return value


class PayoutRecord(Protocol):
    """What :meth:`PayoutStatus.from_record` reads of a stored payout (an outbox row)."""

    payout_key: str
    user_id: str
    destination_identity: str
    amount: int
    status: PayoutState | str
    attempts: int
    delayed: bool
    tx_id: str | None
    target_tick: int | None
    confirmed_tick: int | None
    last_error: str | None
    created_at: dt.datetime | None
    updated_at: dt.datetime | None


@dataclasses.dataclass(frozen=True, slots=True)
class PayoutStatus:
    """What a user (and the operator) may know about one payout."""

    payout_key: str
    user_id: str
    destination: str
    amount: int
    state: PayoutState
    attempts: int  # transactions signed for it so far
    delayed: bool
    tx_id: str | None = None  # the current (or confirming) transaction
    target_tick: int | None = None
    confirmed_tick: int | None = None
    last_error: str | None = None
    created_at: dt.datetime | None = None
    updated_at: dt.datetime | None = None

    @classmethod
    def from_record(cls, row: PayoutRecord) -> PayoutStatus:
        return cls(
            payout_key=row.payout_key,
            user_id=row.user_id,
            destination=row.destination_identity,
            amount=row.amount,
            state=PayoutState(row.status),
            attempts=row.attempts,
            delayed=row.delayed,
            tx_id=row.tx_id,
            target_tick=row.target_tick,
            confirmed_tick=row.confirmed_tick,
            last_error=row.last_error,
            created_at=row.created_at,
            updated_at=row.updated_at,
        )

    @property
    def display(self) -> str:
        """The word the UI shows."""
        if self.state is PayoutState.CONFIRMED:
            return "paid"
        if self.state is PayoutState.FAILED:
            return "failed (refunded)"
        if self.delayed:
            return "payment delayed"
        return "sending" if self.state.in_flight else "queued"

    def to_json(self) -> dict[str, Any]:
        return {
            "payoutKey": self.payout_key,
            "userId": self.user_id,
            "destination": self.destination,
            "amount": self.amount,
            "state": self.state.value,
            "status": self.display,
            "attempts": self.attempts,
            "delayed": self.delayed,
            "txId": self.tx_id,
            "targetTick": self.target_tick,
            "confirmedTick": self.confirmed_tick,
            "lastError": self.last_error,
            "createdAt": self.created_at.isoformat() if self.created_at else None,
            "updatedAt": self.updated_at.isoformat() if self.updated_at else None,
        }


__all__ = [
    "MAX_PAYOUT_KEY_LENGTH",
    "MAX_TRANSFER_AMOUNT",
    "PAYOUT_TRANSITIONS",
    "PayoutRecord",
    "PayoutState",
    "PayoutStatus",
    "check_payout_transition",
    "require_payout_amount",
]
