"""What a user's wallet has seen: ledger entries from the user's side, and a provider's earnings.

An entry names the user whose history shows it (``transactions.user_id``); its amount is signed
here from that user's point of view: positive when it credits the user's wallet, negative when it
debits it. Earnings are the ``EARNING`` entries that paid the user's providers, bucketed by UTC day.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Sequence

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from ..market.states import EntryType, wallet_account_id
from .models import Job, Transaction


def _utc(moment: dt.datetime) -> dt.datetime:
    # SQLite hands timestamps back without their offset; every one we store is UTC.
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=dt.UTC)


@dataclasses.dataclass(frozen=True, slots=True)
class WalletEntry:
    id: str
    type: EntryType
    amount: int  # signed: + into the user's wallet, - out of it
    job_id: str | None
    qubic_tx_hash: str | None
    status: str
    created_at: dt.datetime


@dataclasses.dataclass(frozen=True, slots=True)
class EntryPage:
    entries: list[WalletEntry]
    total: int


async def wallet_entries(
    session: AsyncSession,
    user_id: str,
    *,
    offset: int,
    limit: int,
    types: Sequence[EntryType] = (),
) -> EntryPage:
    """The user's entries, newest first (ties by id, so pages never overlap)."""
    where = [Transaction.user_id == user_id]
    if types:
        where.append(Transaction.type.in_(list(types)))
    total = (await session.execute(select(func.count()).where(*where))).scalar_one()
    rows = (
        await session.execute(
            select(Transaction)
            .where(*where)
            .order_by(Transaction.created_at.desc(), Transaction.id.desc())
            .offset(offset)
            .limit(limit)
        )
    ).scalars()
    wallet = wallet_account_id(user_id)
    entries = [
        WalletEntry(
            id=row.id,
            type=row.type,
            amount=row.amount if row.credit_account_id == wallet else -row.amount,
            job_id=row.job_id,
            qubic_tx_hash=row.qubic_tx_hash,
            status=row.status.value,
            created_at=_utc(row.created_at),
        )
        for row in rows
    ]
    return EntryPage(entries, int(total))


@dataclasses.dataclass(frozen=True, slots=True)
class EarningDay:
    date: dt.date
    amount: int
    job_count: int


@dataclasses.dataclass(frozen=True, slots=True)
class Earnings:
    total: int
    today: int
    this_week: int
    this_month: int
    history: list[EarningDay]  # one per day of the window, oldest first, zero days included


def _day_start(moment: dt.datetime) -> dt.datetime:
    return moment.astimezone(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)


async def earnings(
    session: AsyncSession,
    user_id: str,
    *,
    now: dt.datetime,
    days: int,
    provider_id: str | None = None,
) -> Earnings:
    """The user's earnings: all time, since today's / this ISO week's (Monday) / this month's
    start (UTC), and per day over the last ``days`` days including today. ``provider_id``: only
    what jobs on that provider earned."""
    where = [Transaction.user_id == user_id, Transaction.type == EntryType.EARNING]
    if provider_id is not None:
        where.append(Transaction.job_id.in_(select(Job.id).where(Job.provider_id == provider_id)))
    today = _day_start(now)
    week = today - dt.timedelta(days=today.weekday())
    month = today.replace(day=1)
    first_day = today - dt.timedelta(days=days - 1)
    total = (
        await session.execute(select(func.coalesce(func.sum(Transaction.amount), 0)).where(*where))
    ).scalar_one()
    since = min(first_day, week, month)
    rows = (
        await session.execute(
            select(Transaction.created_at, Transaction.amount, Transaction.job_id).where(
                *where, Transaction.created_at >= since
            )
        )
    ).all()
    by_day: dict[dt.date, list[int]] = {}
    jobs_by_day: dict[dt.date, set[str]] = {}
    today_sum = week_sum = month_sum = 0
    for created_at, amount, job_id in rows:
        moment = _utc(created_at)
        if moment >= today:
            today_sum += amount
        if moment >= week:
            week_sum += amount
        if moment >= month:
            month_sum += amount
        if moment >= first_day:
            day = moment.date()
            by_day.setdefault(day, []).append(amount)
            if job_id is not None:
                jobs_by_day.setdefault(day, set()).add(job_id)
    history = []
    for n in range(days):
        day = (first_day + dt.timedelta(days=n)).date()
        history.append(EarningDay(day, sum(by_day.get(day, ())), len(jobs_by_day.get(day, ()))))
    return Earnings(int(total), today_sum, week_sum, month_sum, history)


__all__ = ["EarningDay", "Earnings", "EntryPage", "WalletEntry", "earnings", "wallet_entries"]
