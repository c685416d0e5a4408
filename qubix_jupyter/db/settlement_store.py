"""Persistence for the Qubic settlement backend: payout outbox, deposit addresses, scan state.

Every write is a short transaction. Decisions about what a payout source may sign are taken while
holding that source's lock row (:meth:`SettlementStore.source_locked`): ``SELECT … FOR UPDATE``
on PostgreSQL, and SQLite's database write lock (our engines begin every transaction with
``BEGIN IMMEDIATE``). So however many processes run the payout loop, at most one transaction per
source is in flight — and the partial unique index ``uq_payout_outbox_in_flight_source`` makes the
database refuse a second one even if that logic were wrong.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ..market.payouts import PayoutState, PayoutStatus
from .models import utcnow
from .settlement_models import (
    ChainScanState,
    DepositAddress,
    PayoutAttempt,
    PayoutOutbox,
    SettlementLock,
)

_OPEN = (PayoutState.QUEUED, PayoutState.SIGNED, PayoutState.BROADCAST)
_IN_FLIGHT = (PayoutState.SIGNED, PayoutState.BROADCAST)


def payout_status(row: PayoutOutbox) -> PayoutStatus:
    return PayoutStatus.from_record(row)


def _insert(session: AsyncSession):  # type: ignore[no-untyped-def]
    return pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert


class SettlementStore:
    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
        self._sessionmaker = sessionmaker

    # ------------------------------------------------------------------ locking

    @asynccontextmanager
    async def source_locked(self, source: str) -> AsyncIterator[AsyncSession]:
        """A transaction that holds the lock row of payout source ``source`` until it ends."""
        name = f"payout-source:{source}"
        async with self._sessionmaker() as session, session.begin():
            await session.execute(
                _insert(session)(SettlementLock)
                .values(name=name, locked_at=None)
                .on_conflict_do_nothing(index_elements=["name"])
            )
            lock = (
                await session.execute(
                    select(SettlementLock).where(SettlementLock.name == name).with_for_update()
                )
            ).scalar_one()
            lock.locked_at = utcnow()
            yield session

    # ------------------------------------------------------------------ payouts

    @staticmethod
    async def insert_payout(
        session: AsyncSession,
        *,
        payout_key: str,
        user_id: str,
        source: str,
        destination: str,
        amount: int,
    ) -> None:
        """Queue a payout inside the caller's transaction (the ledger's withdrawal)."""
        session.add(
            PayoutOutbox(
                payout_key=payout_key,
                user_id=user_id,
                source_identity=source,
                destination_identity=destination,
                amount=amount,
                status=PayoutState.QUEUED,
                attempts=0,
                misses=0,
                delayed=False,
            )
        )
        await session.flush()

    async def payout(self, payout_key: str) -> PayoutOutbox | None:
        async with self._sessionmaker() as session:
            return (
                await session.execute(
                    select(PayoutOutbox).where(PayoutOutbox.payout_key == payout_key)
                )
            ).scalar_one_or_none()

    async def payouts_for_user(self, user_id: str) -> Sequence[PayoutOutbox]:
        async with self._sessionmaker() as session:
            return (
                (
                    await session.execute(
                        select(PayoutOutbox)
                        .where(PayoutOutbox.user_id == user_id)
                        .order_by(PayoutOutbox.id.desc())
                    )
                )
                .scalars()
                .all()
            )

    async def in_flight(
        self, source: str, session: AsyncSession | None = None
    ) -> PayoutOutbox | None:
        """The payout whose transaction from ``source`` may still be included, if any."""
        query = select(PayoutOutbox).where(
            PayoutOutbox.source_identity == source, PayoutOutbox.status.in_(_IN_FLIGHT)
        )
        if session is not None:
            return (await session.execute(query.with_for_update())).scalar_one_or_none()
        async with self._sessionmaker() as own:
            return (await own.execute(query)).scalar_one_or_none()

    @staticmethod
    async def next_queued(session: AsyncSession, source: str) -> PayoutOutbox | None:
        return (
            await session.execute(
                select(PayoutOutbox)
                .where(
                    PayoutOutbox.source_identity == source,
                    PayoutOutbox.status == PayoutState.QUEUED,
                )
                .order_by(PayoutOutbox.id)
                .limit(1)
                .with_for_update()
            )
        ).scalar_one_or_none()

    @staticmethod
    async def reload(session: AsyncSession, payout_id: int) -> PayoutOutbox:
        return (
            await session.execute(
                select(PayoutOutbox)
                .where(PayoutOutbox.id == payout_id)
                .with_for_update()
                .execution_options(populate_existing=True)
            )
        ).scalar_one()

    @staticmethod
    def add_attempt(session: AsyncSession, payout: PayoutOutbox) -> None:
        if payout.tx_id is None or payout.target_tick is None:
            raise ValueError("an attempt needs the payout's signed transaction")
        session.add(
            PayoutAttempt(
                payout_id=payout.id,
                attempt=payout.attempts,
                tx_id=payout.tx_id,
                target_tick=payout.target_tick,
            )
        )

    @staticmethod
    async def resolve_attempt(session: AsyncSession, tx_id: str, outcome: str) -> None:
        await session.execute(
            update(PayoutAttempt)
            .where(PayoutAttempt.tx_id == tx_id)
            .values(outcome=outcome, resolved_at=utcnow())
        )

    @staticmethod
    async def attempt_outcome(session: AsyncSession, tx_id: str) -> str | None:
        return (
            await session.execute(select(PayoutAttempt.outcome).where(PayoutAttempt.tx_id == tx_id))
        ).scalar_one_or_none()

    async def attempts(self, payout_key: str) -> Sequence[PayoutAttempt]:
        async with self._sessionmaker() as session:
            return (
                (
                    await session.execute(
                        select(PayoutAttempt)
                        .join(PayoutOutbox, PayoutOutbox.id == PayoutAttempt.payout_id)
                        .where(PayoutOutbox.payout_key == payout_key)
                        .order_by(PayoutAttempt.attempt)
                    )
                )
                .scalars()
                .all()
            )

    async def mark_delayed(self, source: str, error: str) -> list[PayoutOutbox]:
        """Flag every open payout of ``source`` "payment delayed"; return those newly flagged."""
        async with self._sessionmaker() as session, session.begin():
            rows = (
                (
                    await session.execute(
                        select(PayoutOutbox)
                        .where(
                            PayoutOutbox.source_identity == source,
                            PayoutOutbox.status.in_(_OPEN),
                        )
                        .with_for_update()
                    )
                )
                .scalars()
                .all()
            )
            newly = [row for row in rows if not row.delayed]
            for row in rows:
                row.delayed = True
                row.last_error = error
            return newly

    async def clear_queued_delays(self, source: str) -> None:
        """The chain answers again: queued payouts are merely waiting their turn."""
        async with self._sessionmaker() as session, session.begin():
            await session.execute(
                update(PayoutOutbox)
                .where(
                    PayoutOutbox.source_identity == source,
                    PayoutOutbox.status == PayoutState.QUEUED,
                    PayoutOutbox.delayed.is_(True),
                )
                .values(delayed=False, updated_at=utcnow())
            )

    # ------------------------------------------------------------------ deposits

    async def deposit_address(self, user_id: str) -> DepositAddress | None:
        async with self._sessionmaker() as session:
            return await session.get(DepositAddress, user_id)

    async def add_deposit_address(
        self, user_id: str, identity: str, start_tick: int
    ) -> DepositAddress:
        """Record the user's deposit identity; a concurrent twin's row wins and is returned."""
        async with self._sessionmaker() as session, session.begin():
            await session.execute(
                _insert(session)(DepositAddress)
                .values(user_id=user_id, identity=identity, start_tick=start_tick)
                .on_conflict_do_nothing(index_elements=["user_id"])
            )
        found = await self.deposit_address(user_id)
        assert found is not None
        return found

    async def deposit_addresses(self) -> Sequence[DepositAddress]:
        async with self._sessionmaker() as session:
            return (
                (await session.execute(select(DepositAddress).order_by(DepositAddress.user_id)))
                .scalars()
                .all()
            )

    async def scan_position(self, identity: str) -> int | None:
        async with self._sessionmaker() as session:
            row = await session.get(ChainScanState, identity)
            return None if row is None else row.last_scanned_tick

    async def set_scan_position(self, identity: str, tick: int) -> None:
        """Record that every tick ≤ ``tick`` was scanned for ``identity`` (never moves back)."""
        async with self._sessionmaker() as session, session.begin():
            await session.execute(
                _insert(session)(ChainScanState)
                .values(identity=identity, last_scanned_tick=tick)
                .on_conflict_do_nothing(index_elements=["identity"])
            )
            await session.execute(
                update(ChainScanState)
                .where(ChainScanState.identity == identity, ChainScanState.last_scanned_tick < tick)
                .values(last_scanned_tick=tick, updated_at=utcnow())
            )

    async def reset_scan_position(self, identity: str, tick: int) -> None:
        """Move the scan position (back) to ``tick``: an operator's rescan."""
        async with self._sessionmaker() as session, session.begin():
            await session.execute(
                _insert(session)(ChainScanState)
                .values(identity=identity, last_scanned_tick=tick)
                .on_conflict_do_update(
                    index_elements=["identity"],
                    set_={"last_scanned_tick": tick, "updated_at": utcnow()},
                )
            )


__all__ = ["SettlementStore", "payout_status"]
