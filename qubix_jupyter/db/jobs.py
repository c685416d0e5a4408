"""Job rows and the provider rows they take, inside the caller's session and transaction.

The job service (``server_extension.jobs``) composes these with the ledger; what the rules mean
is in ``market.jobs`` and ``market.matching``. Money never moves here: only the ledger moves it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import re
from collections.abc import Sequence
from typing import Any, TypeVar

from sqlalchemy import case, func, literal, select, text, update
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.ext.asyncio import AsyncSession

from ..market.errors import UnknownJob
from ..market.jobs import unassigned_escrow
from ..market.matching import JobConstraints
from ..market.states import OPEN_JOB_STATES, AccountKind, JobStatus, escrow_account_id
from .engine import Then, pipelined
from .idempotency_store import CLAIMING, Claim, ClaimTaken
from .ledger import Condition, Receipt, request_hash
from .models import Account, IdempotencyKey, Job, Provider

#: Offers loaded per assignment: the cheapest this many that pass the SQL filter.
CANDIDATES = 200

_Row = TypeVar("_Row", Job, Provider)
#: OPEN_JOB_STATES as the driver's statements take them (``status = ANY(%s)``).
_OPEN_STATES = [state.value for state in OPEN_JOB_STATES]


def _has_active_job() -> Any:
    # A provider with an open job (OPEN_JOB_STATES) is busy, whatever its flags say: the jobs
    # table is the market's own record, the flags (which a provider may also change by hand)
    # only mirror it.
    return (
        select(Job.id)
        .where(Job.provider_id == Provider.id, Job.status.in_(OPEN_JOB_STATES))
        .exists()
    )


def _may_exist(job_id: str) -> bool:
    # PostgreSQL text cannot hold NUL: no job id has one, and asking would be an error.
    return "\x00" not in job_id


async def get_job(session: AsyncSession, job_id: str, *, lock: bool = False) -> Job:
    job = None
    if _may_exist(job_id):
        job = await session.get(Job, job_id, with_for_update=lock, populate_existing=lock)
    if job is None:
        raise UnknownJob(f"no job {job_id!r}", job_id=job_id)
    return job


async def insert_job(
    session: AsyncSession,
    job_id: str,
    user_id: str,
    *,
    model_type: str,
    compute_seconds: int,
    constraints: JobConstraints,
    input_data: Any,
) -> Job:
    """The PENDING job ``job_id`` with its escrow account; the row already there on a retry."""
    existing = await session.get(Job, job_id)
    if existing is not None:
        return existing
    job = Job(
        id=job_id,
        user_id=user_id,
        model_type=model_type,
        compute_seconds=compute_seconds,
        max_price=constraints.max_price,
        input_data=input_data,
        constraints=constraints.to_json(),
        estimated_cost=unassigned_escrow(constraints.max_price, compute_seconds),
    )
    session.add(job)
    await session.flush()
    session.add(Account(id=escrow_account_id(job_id), kind=AccountKind.ESCROW, job_id=job_id))
    await session.flush()
    return job


@dataclasses.dataclass(frozen=True, slots=True)
class NativeCreate:
    """What ``qubix_create_job`` did: whether the job was new or still PENDING (``fresh``; a
    retried create of a job past PENDING is not), the QU it locked in escrow and gave back, and
    the provider it was given to (None: it waits, or was not fresh)."""

    fresh: bool
    locked: int = 0
    released: int = 0
    provider_id: str | None = None


_CREATE_JOB_SQL = (
    "SELECT qubix_create_job(:job, :user, :model_type, :seconds, :max_price, "
    "CAST(:input AS json), CAST(:constraints AS json), :escrow, :lock_key, :lock_hash, "
    "CAST(:models AS text[]), CAST(:min_vram AS double precision), :release_key, "
    ":created, :now)"
)
_CREATE_JOB = text(_CREATE_JOB_SQL)
#: The same call in the driver's own parameter style (:func:`create_job_on`).
_CREATE_JOB_DRIVER = re.sub(r":(\w+)", r"%(\1)s", _CREATE_JOB_SQL)
#: The call made only if the statement's claim of the request's key took it (a CASE evaluates
#: only the branch it takes, and the function is volatile: never evaluated ahead).
_CLAIM_AND_CREATE = (
    CLAIMING
    + "SELECT CASE WHEN EXISTS (SELECT 1 FROM claim) THEN "
    + _CREATE_JOB_DRIVER.removeprefix("SELECT ")
    + " END"
)


async def create_job_native(
    session: AsyncSession, job_id: str, user_id: str, **fields: Any
) -> NativeCreate:
    """PostgreSQL: insert, escrow and assign a job in one call (migration 0007). The escrow
    keys are the ledger's: ``lock_key`` for the lock, ``release_key`` for the excess (the
    fields: :func:`_create_args`)."""
    args = _create_args(job_id, user_id, **fields)
    return _created((await session.execute(_CREATE_JOB, args)).scalar_one())


async def create_job_on(
    driver: Any, job_id: str, user_id: str, *, claim: Claim | None = None, **fields: Any
) -> tuple[NativeCreate, Job, Provider | None]:
    """:func:`create_job_native` on a psycopg connection (:func:`.engine.driver_connection`),
    and the job and its provider as they stand after it (:func:`job_with_provider_on`), read
    in the same round trip.

    With ``claim``, the same statement claims the request's Idempotency-Key first and creates
    only if the key was free; else nothing is done and :class:`ClaimTaken` is raised."""
    args = _create_args(job_id, user_id, **fields)
    if claim is None:
        create: tuple[str, Any] = (_CREATE_JOB_DRIVER, args)
    else:
        create = (_CLAIM_AND_CREATE, args | claim.params())
    created, read = await pipelined(driver, create, (_JOB_WITH_PROVIDER, (job_id,)))
    if created[0] is None:
        assert claim is not None  # only a claim's CASE gives no answer
        raise ClaimTaken(claim.key)
    return (_created(created[0]), *job_with_provider_of(read, job_id))


def _create_args(
    job_id: str,
    user_id: str,
    *,
    model_type: str,
    compute_seconds: int,
    constraints: JobConstraints,
    input_data: Any,
    lock_key: str,
    release_key: str,
    created_at: dt.datetime,
    now: dt.datetime,
) -> dict[str, Any]:
    escrow = unassigned_escrow(constraints.max_price, compute_seconds)
    return {
        "job": job_id,
        "user": user_id,
        "model_type": model_type,
        "seconds": compute_seconds,
        "max_price": constraints.max_price,
        "input": json.dumps(input_data),
        "constraints": json.dumps(constraints.to_json()),
        "escrow": escrow,
        "lock_key": lock_key,
        "lock_hash": request_hash("lock_escrow", {"job_id": job_id, "amount": escrow}),
        "models": sorted(constraints.folded_models) or None,
        "min_vram": constraints.min_vram,
        "release_key": release_key,
        "created": created_at,
        "now": now,
    }


def _created(data: dict[str, Any]) -> NativeCreate:
    if not data["fresh"]:
        return NativeCreate(fresh=False)
    return NativeCreate(True, int(data["locked"]), int(data["released"]), data["provider"])


def _columns(model: type) -> tuple[tuple[str, Any], ...]:
    """(attribute, column) of each mapped column of ``model``, in table order."""
    return tuple((prop.key, prop.columns[0]) for prop in sa_inspect(model).column_attrs)


_JOB_COLUMNS = _columns(Job)
_PROVIDER_COLUMNS = _columns(Provider)
_JOB_WITH_PROVIDER = (
    "SELECT "
    + ", ".join(
        [f'j."{column.name}"' for _, column in _JOB_COLUMNS]
        + [f'p."{column.name}"' for _, column in _PROVIDER_COLUMNS]
    )
    + " FROM jobs AS j LEFT JOIN providers AS p ON p.id = j.provider_id WHERE j.id = %s"
)


def _loaded(model: type[_Row], columns: tuple[tuple[str, Any], ...], values: Any) -> _Row:
    """A row the driver read, as the object a session's read would give (detached)."""
    fields = {}
    for (key, column), value in zip(columns, values, strict=True):
        kind = getattr(column.type, "enum_class", None)
        fields[key] = kind(value) if kind is not None and value is not None else value
    return model(**fields)


async def job_with_provider_on(driver: Any, job_id: str) -> tuple[Job, Provider | None]:
    """:func:`job_with_provider` on a psycopg connection (:func:`.engine.driver_connection`)."""
    row = None
    if _may_exist(job_id):
        row = await (await driver.execute(_JOB_WITH_PROVIDER, (job_id,))).fetchone()
    return job_with_provider_of(row, job_id)


def read_job_with_provider(job_id: str) -> Then:
    """:func:`job_with_provider_on`'s read, to send behind another statement (the row for
    :func:`job_with_provider_of`)."""
    return Then(_JOB_WITH_PROVIDER, (job_id,))


def job_with_provider_of(row: Any, job_id: str) -> tuple[Job, Provider | None]:
    """The job and its provider from a row of :func:`read_job_with_provider`'s read."""
    if row is None:
        raise UnknownJob(f"no job {job_id!r}", job_id=job_id)
    split = len(_JOB_COLUMNS)
    job = _loaded(Job, _JOB_COLUMNS, row[:split])
    provider = None if row[split] is None else _loaded(Provider, _PROVIDER_COLUMNS, row[split:])
    return job, provider


async def job_with_provider(session: AsyncSession, job_id: str) -> tuple[Job, Provider | None]:
    """The job and its provider (None while unassigned), in one read."""
    row = None
    if _may_exist(job_id):
        row = (
            await session.execute(
                select(Job, Provider)
                .outerjoin(Provider, Provider.id == Job.provider_id)
                .where(Job.id == job_id)
            )
        ).first()
    if row is None:
        raise UnknownJob(f"no job {job_id!r}", job_id=job_id)
    return row[0], row[1]


async def advance_progress(
    session: AsyncSession, job_id: str, provider_id: str, percent: int, *, now: dt.datetime
) -> int | None:
    """A progress report of ``provider_id``'s worker, as one statement: an ASSIGNED job becomes
    RUNNING (started now), its progress never goes down. The progress stored, or None when
    the job is not open on that provider (nothing changed)."""
    stored: int | None = await session.scalar(
        update(Job)
        .where(
            Job.id == job_id,
            Job.provider_id == provider_id,
            Job.status.in_(OPEN_JOB_STATES),
        )
        .values(
            status=JobStatus.RUNNING,
            started_at=case(
                (Job.status == JobStatus.ASSIGNED, literal(now, Job.__table__.c.started_at.type)),
                else_=Job.started_at,
            ),
            progress=case((Job.progress > percent, Job.progress), else_=percent),
        )
        .returning(Job.progress)
        .execution_options(synchronize_session=False)
    )
    return stored


_ADVANCE_PROGRESS = (
    "UPDATE jobs SET status = %(running)s, "
    "started_at = CASE WHEN status = %(assigned)s THEN %(now)s ELSE started_at END, "
    "progress = GREATEST(progress, %(percent)s) "
    "WHERE id = %(job)s AND provider_id = %(provider)s AND status = ANY(%(open)s) "
    "RETURNING progress, started_at"
)


async def advance_progress_on(
    driver: Any, job_id: str, provider_id: str, percent: int, *, now: dt.datetime
) -> tuple[int, dt.datetime] | None:
    """:func:`advance_progress` on a psycopg connection (:func:`.engine.driver_connection`);
    the progress stored and the job's start (this report's ``now`` if it started the job)."""
    if not _may_exist(job_id):
        return None
    row = await (
        await driver.execute(
            _ADVANCE_PROGRESS,
            {
                "running": JobStatus.RUNNING.value,
                "assigned": JobStatus.ASSIGNED.value,
                "open": _OPEN_STATES,
                "now": now,
                "percent": percent,
                "job": job_id,
                "provider": provider_id,
            },
        )
    ).fetchone()
    return None if row is None else (int(row[0]), row[1])


def on_run_condition(job_id: str, provider_id: str, step: int) -> Condition:
    """The job is still open on that provider, on that run (its ``reassignments``): checked,
    and the job's row locked, in the statement that ends it (``Ledger.end_job(only_if=)``)."""
    return Condition(
        "EXISTS (SELECT 1 FROM jobs WHERE id = %s AND provider_id = %s AND reassignments = %s "
        "AND status = ANY(%s) FOR UPDATE)",
        (job_id, provider_id, step, _OPEN_STATES),
    )


async def escrow_held(session: AsyncSession, job_id: str, *, lock: bool = False) -> int:
    statement = select(Account.balance).where(Account.id == escrow_account_id(job_id))
    if lock:
        statement = statement.with_for_update()
    return int(await session.scalar(statement) or 0)


async def candidates(session: AsyncSession, constraints: JobConstraints) -> Sequence[Provider]:
    """Free offers within the job's price and VRAM, cheapest first; the matcher orders them."""
    statement = (
        select(Provider)
        .where(
            Provider.is_listed.is_(True),
            Provider.is_online.is_(True),
            Provider.is_available.is_(True),
            Provider.current_job_id.is_(None),
            Provider.price_per_hour <= constraints.max_price,
            ~_has_active_job(),
        )
        .order_by(Provider.price_per_hour, Provider.id)
        .limit(CANDIDATES)
    )
    if constraints.min_vram is not None:
        statement = statement.where(Provider.gpu_vram >= constraints.min_vram)
    if constraints.folded_models:
        statement = statement.where(func.lower(Provider.gpu_model).in_(constraints.folded_models))
    return (await session.scalars(statement)).all()


async def lock_free_provider(session: AsyncSession, provider_id: str) -> Provider | None:
    """The provider row, locked and read fresh, if it has no job now; else None.

    Every assignment takes this lock before it looks, so two never give one provider a job.
    """
    provider = await session.get(
        Provider, provider_id, with_for_update=True, populate_existing=True
    )
    if provider is None or provider.current_job_id is not None:
        return None
    busy = await session.scalar(
        select(func.count())
        .select_from(Job)
        .where(Job.provider_id == provider_id, Job.status.in_(OPEN_JOB_STATES))
    )
    return None if busy else provider


async def any_free_provider(session: AsyncSession) -> bool:
    """Whether any listed provider is online, available and without a job now."""
    found = await session.scalar(
        select(Provider.id)
        .where(
            Provider.is_listed.is_(True),
            Provider.is_online.is_(True),
            Provider.is_available.is_(True),
            Provider.current_job_id.is_(None),
            ~_has_active_job(),
        )
        .limit(1)
    )
    return found is not None


async def pending_jobs(session: AsyncSession, *, limit: int) -> Sequence[tuple[Job, int]]:
    """PENDING jobs, oldest first, each with the QU its escrow holds."""
    rows = await session.execute(
        select(Job, func.coalesce(Account.balance, 0))
        .outerjoin(Account, (Account.job_id == Job.id) & (Account.kind == AccountKind.ESCROW))
        .where(Job.status == JobStatus.PENDING)
        .order_by(Job.created_at, Job.id)
        .limit(limit)
    )
    return [(job, int(held)) for job, held in rows.all()]


async def free_provider(session: AsyncSession, job_id: str) -> Provider | None:
    """Make the provider that ran ``job_id`` available again, if it still holds that job."""
    await session.flush()  # changes of this session first: the statement goes around them
    return await session.scalar(
        update(Provider)
        .where(Provider.current_job_id == job_id)
        .values(current_job_id=None, is_available=True)
        .returning(Provider)
        .execution_options(populate_existing=True, synchronize_session=False)
    )


async def keep_result(session: AsyncSession, job_id: str, result: Any) -> Job:
    """Store a job's result (one statement), the job as it then stands."""
    await session.flush()
    job = await session.scalar(
        update(Job)
        .where(Job.id == job_id)
        .values(result=result)
        .returning(Job)
        .execution_options(populate_existing=True, synchronize_session=False)
    )
    if job is None:
        raise UnknownJob(f"no job {job_id!r}", job_id=job_id)
    return job


async def prior_receipt(session: AsyncSession, key: str) -> Receipt | None:
    """The receipt the ledger stored under ``key``, if that operation already ran."""
    row = await session.get(IdempotencyKey, key)
    if row is None or row.response is None:
        return None
    return Receipt.from_json(row.response, replayed=True)


async def jobs_of(
    session: AsyncSession,
    user_id: str,
    *,
    status: JobStatus | None,
    offset: int,
    limit: int,
) -> tuple[Sequence[Job], int]:
    """A consumer's jobs, newest first, and how many there are in all."""
    where = [Job.user_id == user_id]
    if status is not None:
        where.append(Job.status == status)
    total = await session.scalar(select(func.count()).select_from(Job).where(*where))
    items = (
        await session.scalars(
            select(Job)
            .where(*where)
            .order_by(Job.created_at.desc(), Job.id.desc())
            .offset(offset)
            .limit(limit)
        )
    ).all()
    return items, int(total or 0)


async def assigned_to(session: AsyncSession, provider_id: str) -> Sequence[Job]:
    """Jobs waiting for the provider's worker to start them, oldest first."""
    return (
        await session.scalars(
            select(Job)
            .where(Job.provider_id == provider_id, Job.status == JobStatus.ASSIGNED)
            .order_by(Job.assigned_at, Job.id)
        )
    ).all()


async def provider(session: AsyncSession, provider_id: str) -> Provider | None:
    return await session.get(Provider, provider_id)


def utc(moment: dt.datetime) -> dt.datetime:
    # SQLite hands timestamps back without their offset; every one we store is UTC.
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=dt.UTC)
