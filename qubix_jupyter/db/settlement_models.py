"""Tables of the Qubic settlement backend, on the market's declarative ``Base``.

* ``payout_outbox``: one row per payout. The row is written in the same database transaction as
  the wallet debit; the signed transaction, its id and its target tick are stored *before* it is
  broadcast, so a crash never leaves a transaction on the network that the database forgot.
* ``payout_attempts``: every transaction signed for a payout and what became of it (audit).
* ``deposit_addresses``: the identity each user deposits to.
* ``chain_scan_state``: up to which tick the archive has been scanned for an identity.
* ``settlement_locks``: one row per payout source; holding its row lock is the right to sign a
  transaction from that source, which keeps at most one pending per source across processes.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Enum,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from ..market.payouts import MAX_PAYOUT_KEY_LENGTH, MAX_TRANSFER_AMOUNT, PayoutState
from .models import QU, Base, Timestamp, utcnow

IDENTITY = String(60)  # an uppercase identity, or a lowercase transaction id
_IN_FLIGHT = "status IN ('signed', 'broadcast')"


def _state_enum() -> Enum:
    # VARCHAR + CHECK, as the market's enums: portable and simple to extend in a migration.
    return Enum(
        PayoutState,
        name="payout_state",
        native_enum=False,
        create_constraint=True,
        length=16,
        values_callable=lambda e: [m.value for m in e],
        validate_strings=True,
    )


class PayoutOutbox(Base):
    __tablename__ = "payout_outbox"
    __table_args__ = (
        CheckConstraint(f"amount > 0 AND amount <= {MAX_TRANSFER_AMOUNT}", name="amount_range"),
        CheckConstraint("attempts >= 0 AND misses >= 0", name="counters_non_negative"),
        CheckConstraint(
            f"NOT ({_IN_FLIGHT}) OR (signed_tx IS NOT NULL AND tx_id IS NOT NULL "
            "AND target_tick IS NOT NULL)",
            name="in_flight_has_transaction",
        ),
        # The database itself refuses a second in-flight transaction from one source.
        Index(
            "uq_payout_outbox_in_flight_source",
            "source_identity",
            unique=True,
            postgresql_where=text(_IN_FLIGHT),
            sqlite_where=text(_IN_FLIGHT),
        ),
        Index(None, "source_identity", "status", "id"),
        Index(None, "user_id", "created_at"),
        Index(None, "tx_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    payout_key: Mapped[str] = mapped_column(String(MAX_PAYOUT_KEY_LENGTH), unique=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="RESTRICT"))
    source_identity: Mapped[str] = mapped_column(IDENTITY)
    destination_identity: Mapped[str] = mapped_column(IDENTITY)
    amount: Mapped[QU]
    status: Mapped[PayoutState] = mapped_column(_state_enum(), default=PayoutState.QUEUED)
    #: transactions signed for this payout so far
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    #: acknowledged transactions that did not pay (expired, or included without moving money)
    misses: Mapped[int] = mapped_column(Integer, default=0)
    #: the chain could not be reached on the last try: the user sees "payment delayed"
    delayed: Mapped[bool] = mapped_column(Boolean, default=False)
    signed_tx: Mapped[bytes | None] = mapped_column(LargeBinary)
    tx_id: Mapped[str | None] = mapped_column(IDENTITY)
    target_tick: Mapped[int | None] = mapped_column(BigInteger)
    confirmed_tick: Mapped[int | None] = mapped_column(BigInteger)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[Timestamp] = mapped_column(default=utcnow, server_default=func.now())
    updated_at: Mapped[Timestamp] = mapped_column(
        default=utcnow, onupdate=utcnow, server_default=func.now()
    )
    confirmed_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))


class PayoutAttempt(Base):
    __tablename__ = "payout_attempts"
    __table_args__ = (UniqueConstraint("payout_id", "attempt"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    payout_id: Mapped[int] = mapped_column(ForeignKey("payout_outbox.id", ondelete="CASCADE"))
    attempt: Mapped[int] = mapped_column(Integer)
    tx_id: Mapped[str] = mapped_column(IDENTITY, unique=True)
    target_tick: Mapped[int] = mapped_column(BigInteger)
    #: None while undecided; then confirmed, not_included, no_money_flew or rejected
    outcome: Mapped[str | None] = mapped_column(String(20))
    created_at: Mapped[Timestamp] = mapped_column(default=utcnow, server_default=func.now())
    resolved_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))


class DepositAddress(Base):
    __tablename__ = "deposit_addresses"

    user_id: Mapped[str] = mapped_column(
        ForeignKey("users.id", ondelete="RESTRICT"), primary_key=True
    )
    identity: Mapped[str] = mapped_column(IDENTITY, unique=True)
    #: the first tick that can hold a deposit to it (the tick when it was handed out)
    start_tick: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[Timestamp] = mapped_column(default=utcnow, server_default=func.now())


class ChainScanState(Base):
    __tablename__ = "chain_scan_state"

    identity: Mapped[str] = mapped_column(IDENTITY, primary_key=True)
    #: every tick ≤ this has been scanned and credited
    last_scanned_tick: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[Timestamp] = mapped_column(
        default=utcnow, onupdate=utcnow, server_default=func.now()
    )


class SettlementLock(Base):
    __tablename__ = "settlement_locks"

    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    locked_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))


__all__ = [
    "ChainScanState",
    "DepositAddress",
    "PayoutAttempt",
    "PayoutOutbox",
    "SettlementLock",
]
