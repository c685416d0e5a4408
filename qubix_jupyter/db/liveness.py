"""Database side of provider liveness: batched heartbeat writes, the stale-provider sweep, the
metrics history and its retention. Each function runs in the caller's session/transaction."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Collection, Sequence

from sqlalchemy import bindparam, case, delete, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from ..market.states import JobStatus
from .chunks import chunks
from .models import Job, Provider, ProviderMetric, new_id


@dataclasses.dataclass(frozen=True, slots=True)
class ProviderFlags:
    provider_id: str
    worker_id: str
    is_online: bool
    is_available: bool
    #: The job the market assigned it (the market's own column: heartbeats never write it).
    current_job_id: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class HeartbeatWrite:
    """One provider's row after its latest heartbeat (``current_job_id`` is not a heartbeat's
    to write: the market sets it at assignment and clears it when the job ends)."""

    provider_id: str
    last_heartbeat: dt.datetime
    is_online: bool
    is_available: bool


@dataclasses.dataclass(frozen=True, slots=True)
class MetricSample:
    provider_id: str
    timestamp: dt.datetime
    cpu_percent: float
    ram_percent: float
    gpu_percent: float | None
    gpu_temp: float | None
    gpu_mem_used: float | None


async def flags_of(session: AsyncSession, provider_ids: Sequence[str]) -> dict[str, ProviderFlags]:
    """The current online/available flags of these providers (unknown ids are left out)."""
    found: dict[str, ProviderFlags] = {}
    for chunk in chunks(provider_ids):
        rows = await session.execute(
            select(
                Provider.id,
                Provider.worker_id,
                Provider.is_online,
                Provider.is_available,
                Provider.current_job_id,
            ).where(Provider.id.in_(chunk))
        )
        for row in rows:
            found[row[0]] = ProviderFlags(*row)
    return found


_PG_WRITE_HEARTBEATS = text(
    """
    UPDATE providers AS p
    SET last_heartbeat = v.last_heartbeat,
        is_online = v.is_online,
        is_available = CASE WHEN p.current_job_id IS NULL THEN v.is_available
                            ELSE p.is_available END
    FROM unnest(CAST(:ids AS VARCHAR[]), CAST(:beats AS TIMESTAMPTZ[]),
                CAST(:online AS BOOLEAN[]), CAST(:available AS BOOLEAN[]))
         AS v(id, last_heartbeat, is_online, is_available)
    WHERE p.id = v.id
    """
)


async def write_heartbeats(session: AsyncSession, writes: Sequence[HeartbeatWrite]) -> None:
    """One UPDATE for every row: over arrays on PostgreSQL, executed per row (``executemany``)
    elsewhere.

    A row that holds a job when the UPDATE runs keeps ``is_available`` as it is: an
    assignment committed between the flush's read of the flags and this write must not be
    undone by a heartbeat sent before the worker knew of it.
    """
    if not writes:
        return
    if session.get_bind().dialect.name == "postgresql":
        # One statement over four arrays: executemany of a thousand rows costs the server's
        # event loop tens of milliseconds of parameter handling, every flush.
        await session.execute(
            _PG_WRITE_HEARTBEATS,
            {
                "ids": [w.provider_id for w in writes],
                "beats": [w.last_heartbeat for w in writes],
                "online": [w.is_online for w in writes],
                "available": [w.is_available for w in writes],
            },
        )
        return
    table = Provider.__table__
    statement = (
        update(table)
        .where(table.c.id == bindparam("b_id"))
        .values(
            last_heartbeat=bindparam("b_last_heartbeat"),
            is_online=bindparam("b_is_online"),
            is_available=case(
                (table.c.current_job_id.is_(None), bindparam("b_is_available")),
                else_=table.c.is_available,
            ),
        )
    )
    await session.execute(
        statement,
        [
            {
                "b_id": w.provider_id,
                "b_last_heartbeat": w.last_heartbeat,
                "b_is_online": w.is_online,
                "b_is_available": w.is_available,
            }
            for w in writes
        ],
        execution_options={"synchronize_session": False},
    )


async def add_samples(session: AsyncSession, samples: Sequence[MetricSample]) -> None:
    if samples:
        await session.execute(
            ProviderMetric.__table__.insert(),
            [{"id": new_id(), **dataclasses.asdict(s)} for s in samples],
        )


async def take_offline_stale(
    session: AsyncSession, cutoff: dt.datetime, *, spare: Collection[str] = ()
) -> list[str]:
    """Mark offline every online provider whose last heartbeat is before ``cutoff`` (or never
    came), except the ``spare`` ids (their fresh heartbeat is on its way to the database).
    Returns the ids taken offline."""
    stale = (
        await session.scalars(
            select(Provider.id).where(
                Provider.is_online.is_(True),
                (Provider.last_heartbeat.is_(None)) | (Provider.last_heartbeat < cutoff),
            )
        )
    ).all()
    taken = [provider_id for provider_id in stale if provider_id not in spare]
    for chunk in chunks(taken):
        await session.execute(
            update(Provider)
            .where(Provider.id.in_(chunk))
            .values(is_online=False)
            .execution_options(synchronize_session=False)
        )
    return taken


async def providers_by_id(session: AsyncSession, provider_ids: Sequence[str]) -> list[Provider]:
    found: list[Provider] = []
    for chunk in chunks(provider_ids):
        found += (await session.scalars(select(Provider).where(Provider.id.in_(chunk)))).all()
    return found


async def prune_samples(session: AsyncSession, before: dt.datetime) -> int:
    """Delete the metrics history older than ``before``; how many rows went."""
    result = await session.execute(
        delete(ProviderMetric)
        .where(ProviderMetric.timestamp < before)
        .execution_options(synchronize_session=False)
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


async def metrics_history(
    session: AsyncSession,
    provider_id: str,
    *,
    since: dt.datetime | None,
    until: dt.datetime | None,
    limit: int,
) -> list[ProviderMetric]:
    """The newest ``limit`` samples within ``[since, until]``, oldest first."""
    query = select(ProviderMetric).where(ProviderMetric.provider_id == provider_id)
    if since is not None:
        query = query.where(ProviderMetric.timestamp >= since)
    if until is not None:
        query = query.where(ProviderMetric.timestamp <= until)
    rows = (
        await session.scalars(
            query.order_by(ProviderMetric.timestamp.desc(), ProviderMetric.id.desc()).limit(limit)
        )
    ).all()
    return list(reversed(rows))


@dataclasses.dataclass(frozen=True, slots=True)
class AssignedJob:
    id: str
    model_type: str
    compute_seconds: int
    created_at: dt.datetime


#: Built once: the heartbeat's read runs thousands of times a second under load, and building
#: the statement each time cost as much as executing it.
_ASSIGNED_JOBS = (
    select(Job.provider_id, Job.id, Job.model_type, Job.compute_seconds, Job.created_at)
    .where(
        Job.provider_id.in_(bindparam("provider_ids", expanding=True)),
        Job.status == JobStatus.ASSIGNED,
    )
    .order_by(Job.created_at, Job.id)
)


async def assigned_jobs(
    session: AsyncSession, provider_ids: Collection[str]
) -> dict[str, list[AssignedJob]]:
    """Each provider's jobs waiting for it to start them, oldest first (none: absent)."""
    found: dict[str, list[AssignedJob]] = {}
    for chunk in chunks(sorted(provider_ids)):
        rows = await session.execute(_ASSIGNED_JOBS, {"provider_ids": list(chunk)})
        for provider_id, *job in rows:
            found.setdefault(provider_id, []).append(AssignedJob(*job))
    return found
