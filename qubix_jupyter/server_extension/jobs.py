"""The job service: create, escrow, assign, progress, complete, cancel; built once per server.

Every state change is checked against ``market.states`` first; every movement of money is one
idempotent ledger operation whose key derives from the request's key (create, complete, cancel)
or from the job and its step (assignment, timeout), so a retried request or a sweep that runs
twice moves money once.

Who calls what:

* the endpoints (``jobs_endpoints``): :meth:`JobService.create`, :meth:`cancel`, the reads, and
  the worker's :meth:`progress` and :meth:`complete`;
* the background assigner (:meth:`start` … :meth:`stop`, run by the extension): :meth:`sweep`
  retries every PENDING job and fails those nobody could take within ``assign_timeout``;
* the Dask dispatcher: registers ``on_assigned`` hooks (called with the job row and its
  provider once a job is ASSIGNED and committed: submit it pinned to that provider's worker) and
  ``on_finished`` hooks (called once a job is terminal: stop its task if it still runs), and
  reports through :meth:`progress` / :meth:`complete` like a polling worker does;
* the result endpoint: :meth:`finished` holds a request until the job ends (woken by the
  settlement, which stores the result in the transaction that ends the job).

Assignments are made one at a time in this process (an asyncio lock), and each takes the
provider's row lock, so two jobs never take one provider and a job is never assigned and timed
out at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import functools
import inspect
import json
import logging
import random
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ..db import jobs as db
from ..db.auth_store import WorkerOwner
from ..db.engine import autocommit_engine, autocommit_sessions, driver_connection
from ..db.idempotency_store import Claim
from ..db.ledger import Condition, Ledger, Receipt, Skipped
from ..db.models import Job, Provider, utcnow
from ..market.errors import InsufficientFunds, InvalidState
from ..market.events import MARKETPLACE, EventType, job_channel
from ..market.jobs import (
    ResultTooLarge,
    charged_seconds,
    excess_at_assignment,
    reported_progress,
)
from ..market.jobs import assigned_escrow as escrow_at_price
from ..market.matching import Assign, Decision, Fail, JobConstraints, Wait, decide_assignment, rank
from ..market.states import (
    OPEN_JOB_STATES,
    TERMINAL_JOB_STATES,
    JobStatus,
    check_transition,
)
from . import jobs_models as m
from . import periodic
from .errors import Forbidden
from .events import EventHub
from .marketplace_endpoints import offer_out

log = logging.getLogger(__name__)

Hook = Callable[[Job], Awaitable[None] | None]
#: An ``on_assigned`` hook: the job and the provider it was given to.
AssignedHook = Callable[[Job, Provider], Awaitable[None] | None]
#: Job ids are derived from the request key, so a retried create finds the job it made.
_JOB_IDS = uuid.UUID("7a0c9d7e-5d2b-4c53-9a51-2f6f0c1b4e11")
#: Tries of a create's transaction that failed for a transient reason (deadlock, …).
CREATE_ATTEMPTS = 20
#: PENDING jobs looked at per sweep.
SWEEP_BATCH = 500


def on_run(job: Job, provider_id: str, step: int) -> bool:
    """Whether the job is still open on that provider, on that run (its ``reassignments``)."""
    return (
        job.status in OPEN_JOB_STATES
        and job.provider_id == provider_id
        and job.reassignments == step
    )


async def _take_free(
    session: AsyncSession, constraints: JobConstraints, offers: list[Provider]
) -> Provider | None:
    """The best of ``offers`` that is still free and matching, its row locked; else None."""
    for offer in rank(constraints, offers):
        fresh = await db.lock_free_provider(session, offer.id)
        if fresh is not None and constraints.accepts(fresh):
            return fresh
    return None


def _give(job: Job, provider: Provider, now: dt.datetime) -> None:
    """The job is the provider's now, at its price (the escrow it needs at that price)."""
    job.status = JobStatus.ASSIGNED
    job.provider_id = provider.id
    job.price_per_hour = provider.price_per_hour
    job.estimated_cost = escrow_at_price(provider.price_per_hour, job.compute_seconds)
    job.assigned_at = now
    provider.is_available = False
    provider.current_job_id = job.id
    provider.last_assigned_at = now


@dataclasses.dataclass(frozen=True, slots=True)
class _Assignment:
    """What one assignment decided: the provider taken (if any) and the QU given back."""

    decision: Decision
    taken: Provider | None = None
    released: int = 0


@dataclasses.dataclass(frozen=True, slots=True)
class Payment:
    """How a finished job's escrow was settled: ``cost = providerEarning + platformFee``."""

    cost: int
    provider_earning: int
    platform_fee: int
    refund: int

    @classmethod
    def of(cls, receipt: Receipt) -> Payment:
        a = receipt.amounts
        return cls(a.get("cost", 0), a.get("provider", 0), a.get("fee", 0), a.get("refund", 0))

    def out(self) -> m.PaymentInfo:
        return m.PaymentInfo(
            cost=self.cost,
            providerEarning=self.provider_earning,
            platformFee=self.platform_fee,
            refund=self.refund,
        )


@dataclasses.dataclass(frozen=True, slots=True)
class RunClock:
    """What a run's dispatcher knows of its job's charge: the time it is charged from (its
    start as stored, else its assignment) and its budget in seconds."""

    since: dt.datetime
    budget_seconds: int

    @classmethod
    def of(cls, job: Job) -> RunClock | None:
        """The job's as its row has it; None for a job never assigned."""
        since = job.started_at or job.assigned_at
        return None if since is None else cls(since, job.compute_seconds)


class JobWatch:
    """Waits for one job to end: registered at once (the job may not exist yet), so an end
    committed any time after is seen. A context manager; :meth:`close` ends the watch."""

    def __init__(self, service: JobService, job_id: str) -> None:
        self._service = service
        self.job_id = job_id
        self._ended: asyncio.Future[tuple[Job, str | None]] = (
            asyncio.get_running_loop().create_future()
        )
        service._finish_waiters.setdefault(job_id, set()).add(self._ended)

    async def end(self, seconds: float) -> tuple[Job, str | None]:
        """The job as it ended and its worker, the moment it ends; after ``seconds``,
        the job as it stands then (ended elsewhere, or not)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                # The watch's own future (a timeout cancels nothing another request waits on),
                # not shielded: its end wakes this request's task in the very next turn.
                return await self._ended
        job, provider = await self._service.get(self.job_id)
        return job, None if provider is None else provider.worker_id

    def close(self) -> None:
        waiters = self._service._finish_waiters
        watching = waiters.get(self.job_id)
        if watching is None:
            return
        watching.discard(self._ended)
        if not watching:
            del waiters[self.job_id]

    def __enter__(self) -> JobWatch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class JobService:
    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        ledger: Ledger,
        events: EventHub,
        *,
        assign_timeout_seconds: float = 30.0,
        max_result_bytes: int = 1024 * 1024,
        max_reassignments: int = 2,
        sweep_interval_seconds: float = 1.0,
        clock: Callable[[], dt.datetime] = utcnow,
    ) -> None:
        self._sessionmaker = sessionmaker
        #: Plain reads (no locks): without a transaction around them.
        self._reads = autocommit_sessions(sessionmaker)
        #: On PostgreSQL the statements on a job's way (its create, the reads of it) run on the
        #: driver's connection (:func:`driver_connection`); elsewhere through a session.
        self._driver = autocommit_engine(sessionmaker.kw["bind"]) if ledger.native else None
        self._ledger = ledger
        self._events = events
        self.assign_timeout = dt.timedelta(seconds=assign_timeout_seconds)
        self.max_result_bytes = max_result_bytes
        self.max_reassignments = max_reassignments
        self.sweep_interval = sweep_interval_seconds
        self._clock = clock
        #: Called with the job once it is ASSIGNED (committed): the dispatcher submits it.
        self.on_assigned: list[AssignedHook] = []
        #: Called with the job once it is terminal (COMPLETED, FAILED, CANCELLED).
        self.on_finished: list[Hook] = []
        self._assigning = asyncio.Lock()
        self._wake = asyncio.Event()
        #: Whether a PENDING job may be waiting: set by a create or an assignment that left one
        #: waiting and by a sweep that found one, cleared as a sweep begins. A job's end wakes
        #: the assigner only then; a job created by another market process is found by the
        #: next periodic sweep.
        self._pending_seen = True
        self._runner: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._hook_tasks: set[asyncio.Task[None]] = set()
        #: job id → the requests waiting for it to end (``finished``), answered with the job.
        self._finish_waiters: dict[str, set[asyncio.Future[tuple[Job, str | None]]]] = {}

    # ------------------------------------------------------------------ reads

    async def get(self, job_id: str) -> tuple[Job, Provider | None]:
        """The job and its provider (None while unassigned)."""
        if self._driver is not None:
            async with driver_connection(self._driver) as driver:
                return await db.job_with_provider_on(driver, job_id)
        async with self._reads() as session:
            return await db.job_with_provider(session, job_id)

    async def _job(self, job_id: str) -> Job:
        if self._driver is not None:
            return (await self.get(job_id))[0]
        async with self._reads() as session:
            return await db.get_job(session, job_id)

    async def visible_to(self, job_id: str, user_id: str) -> tuple[Job, Provider | None]:
        """The job, if ``user_id`` is its consumer or owns its provider; else 403."""
        job, provider = await self.get(job_id)
        if job.user_id != user_id and (provider is None or provider.user_id != user_id):
            raise Forbidden("this job is neither yours nor on your provider", jobId=job_id)
        return job, provider

    async def finished(self, job_id: str, user_id: str, *, wait: float = 0) -> Job:
        """The consumer's job, once it is terminal or ``wait`` seconds have passed (403 for
        anyone else's). The watch starts before the job is read, so an end committed in
        between is not missed; it is woken after the end is committed."""
        with self.watch(job_id) as watch:
            job = await self._job(job_id)
            if job.user_id != user_id:
                raise Forbidden("only the job's consumer may read its result", jobId=job.id)
            if job.status in TERMINAL_JOB_STATES or wait <= 0:
                return job
            ended, _ = await watch.end(wait)
            return ended

    def watch(self, job_id: str) -> JobWatch:
        """Watch for the end of a job (see :class:`JobWatch`); it may not exist yet."""
        return JobWatch(self, job_id)

    def _wake_waiters(self, job: Job, worker_id: str | None) -> bool:
        """Answer the requests waiting for the job's end; whether there were any."""
        woke = False
        for ended in self._finish_waiters.get(job.id, ()):
            if not ended.done():
                ended.set_result((job, worker_id))
                woke = True
        return woke

    async def of_consumer(
        self, user_id: str, *, status: JobStatus | None, offset: int, limit: int
    ) -> tuple[list[tuple[Job, str | None]], int]:
        async with self._sessionmaker() as session:
            jobs, total = await db.jobs_of(
                session, user_id, status=status, offset=offset, limit=limit
            )
            out = []
            for job in jobs:
                provider = None
                if job.provider_id is not None:
                    provider = await db.provider(session, job.provider_id)
                out.append((job, None if provider is None else provider.worker_id))
            return out, total

    async def pending_for(self, worker: WorkerOwner, worker_id: str) -> list[Job]:
        """ASSIGNED jobs waiting for the calling worker (the seed's polling route)."""
        if worker_id != worker.worker_id:
            raise Forbidden("a worker may poll only its own jobs", workerId=worker_id)
        async with self._sessionmaker() as session:
            return list(await db.assigned_to(session, worker.provider_id))

    # ------------------------------------------------------------------ create

    @staticmethod
    def job_id_of(request_key: str) -> str:
        """The id of the job a create of that request key makes (the same on its retries)."""
        return str(uuid.uuid5(_JOB_IDS, request_key))

    async def create(
        self,
        user_id: str,
        *,
        request_key: str,
        model_type: str,
        compute_seconds: int,
        constraints: JobConstraints,
        input_data: Any,
        claim: Claim | None = None,
    ) -> tuple[Job, Provider | None]:
        """A PENDING job with its escrow locked (ceil(maxPrice × budget / 3600)), assigned at
        once if an offer matches (the escrow above that offer's price given back): the job and
        its provider (None while it waits). All of it is one transaction, so a wallet that
        cannot pay is a 402 with nothing left behind.

        An assigned job is handed to the ``on_assigned`` hooks (dispatched) before the wallet
        events are read and sent: those are not on the job's way to its worker.

        ``claim``: the request's Idempotency-Key claim, made by the create's own statement
        (PostgreSQL); :class:`ClaimTaken` when the key was taken (nothing was created)."""
        job_id = self.job_id_of(request_key)
        fields = {
            "model_type": model_type,
            "compute_seconds": compute_seconds,
            "constraints": constraints,
            "input_data": input_data,
        }
        if self._ledger.native:
            create = functools.partial(self._create_native, claim=claim)
        else:
            assert claim is None, "only PostgreSQL's create makes the claim"
            create = self._create
        for attempt in range(CREATE_ATTEMPTS):
            try:
                async with self._assigning:
                    created = await create(job_id, user_id, request_key, **fields)
                break
            except Exception as error:
                domain = self._ledger.native_error(error)
                if domain is not None:
                    raise domain from None
                if attempt == CREATE_ATTEMPTS - 1 or not Ledger.retryable(error):
                    raise
            await asyncio.sleep(random.uniform(0, 0.002 * 2**attempt))
        job, assignment, locked = created
        if assignment is None:  # a retried create: the job as it stands
            return await self.get(job_id)
        await self._assigned(job, assignment)
        await self._balances_changed(
            job_id,
            (user_id, -locked, "escrow_lock"),
            (user_id, assignment.released, "escrow_release"),
        )
        if isinstance(assignment.decision, Fail):
            return await self.get(job_id)
        return job, assignment.taken

    async def _create(
        self, job_id: str, user_id: str, request_key: str, **fields: Any
    ) -> tuple[Job, _Assignment | None, int]:
        """One try of :meth:`create`'s transaction: the job, what its assignment decided (None
        for a job past PENDING already) and the QU this try locked in escrow."""
        async with self._sessionmaker() as session, session.begin():
            job = await db.insert_job(session, job_id, user_id, **fields)
            if job.status is not JobStatus.PENDING:
                return job, None, 0
            locked = 0
            if job.estimated_cost > 0:
                receipt = await self._ledger.lock_escrow(
                    job_id,
                    job.estimated_cost,
                    idempotency_key=f"{request_key}:escrow",
                    session=session,
                )
                locked = 0 if receipt.replayed else job.estimated_cost
            held = await db.escrow_held(session, job_id, lock=True)
            return job, await self._assign_in(session, job, held, self._clock()), locked

    async def _create_native(
        self,
        job_id: str,
        user_id: str,
        request_key: str,
        *,
        constraints: JobConstraints,
        claim: Claim | None = None,
        **fields: Any,
    ) -> tuple[Job, _Assignment | None, int]:
        """:meth:`_create` on PostgreSQL: the same transaction as one call of
        ``qubix_create_job`` (same escrow keys, same order of offers; the request's claim in
        the same statement), and the read of the job behind it in the same round trip."""
        created_at = utcnow()  # as the row's default would be, then the assignment's clock
        now = self._clock()
        assert self._driver is not None  # the native path is PostgreSQL's
        async with driver_connection(self._driver) as driver:
            done, job, provider = await db.create_job_on(
                driver,
                job_id,
                user_id,
                constraints=constraints,
                lock_key=f"{request_key}:escrow",
                release_key=f"job:{job_id}:assign:0:release",
                created_at=created_at,
                now=now,
                claim=claim,
                **fields,
            )
        if not done.fresh:
            return job, None, 0
        if provider is not None:
            return job, _Assignment(Assign(provider), provider, done.released), done.locked
        decision = decide_assignment(
            constraints, [], created_at=job.created_at, now=now, timeout=self.assign_timeout
        )
        return job, _Assignment(decision), done.locked

    # ------------------------------------------------------------------ assignment

    async def assign(self, job_id: str, *, now: dt.datetime | None = None) -> Decision | None:
        """Try to give a PENDING job a provider (or fail it past the timeout).

        Returns what was decided, or None when the job is not PENDING any more.
        """
        async with self._assigning, self._sessionmaker() as session, session.begin():
            job = await db.get_job(session, job_id, lock=True)
            if job.status is not JobStatus.PENDING:
                return None
            held = await db.escrow_held(session, job_id, lock=True)
            assignment = await self._assign_in(session, job, held, now or self._clock())
        await self._assigned(job, assignment)
        if assignment.released:
            await self._balance_changed(job.user_id, assignment.released, "escrow_release", job_id)
        return assignment.decision

    async def _assign_in(
        self, session: AsyncSession, job: Job, held: int, now: dt.datetime
    ) -> _Assignment:
        """Decide for a PENDING job (locked in ``session``) whose escrow holds ``held``: give it
        the best free matching provider (its row locked, then taken), and the escrow above that
        provider's price back to the wallet, in the caller's transaction."""
        constraints = JobConstraints.from_json(job.constraints, max_price=job.max_price)
        funded = held >= job.estimated_cost
        offers = list(await db.candidates(session, constraints)) if funded else []
        decision = decide_assignment(
            constraints, offers, created_at=job.created_at, now=now, timeout=self.assign_timeout
        )
        if not isinstance(decision, Assign):
            return _Assignment(decision)
        taken = await _take_free(session, constraints, offers)
        if taken is None:  # every candidate was taken meanwhile: try again next sweep
            return _Assignment(Wait(db.utc(job.created_at) + self.assign_timeout))
        check_transition(job.status, JobStatus.ASSIGNED)
        _give(job, taken, now)
        excess = excess_at_assignment(held, taken.price_per_hour, job.compute_seconds)
        released = 0
        if excess:
            receipt = await self._ledger.release_escrow(
                job.id,
                excess,
                idempotency_key=f"job:{job.id}:assign:{job.reassignments}:release",
                session=session,
            )
            released = 0 if receipt.replayed else excess
        return _Assignment(Assign(taken), taken, released)

    async def _assigned(self, job: Job, assignment: _Assignment) -> None:
        """After the assignment's commit: dispatch the job and tell everyone (or fail it)."""
        if isinstance(assignment.decision, Wait):
            self._pending_seen = True  # a provider that frees wakes the assigner for it
        elif isinstance(assignment.decision, Fail):
            await self._fail_unassignable(job)
        elif assignment.taken is not None:
            self._run_hooks(self.on_assigned, job, assignment.taken)
            # The dispatcher's hook starts first: it is the job's way to its worker, the events
            # and the wallets' read after it are not.
            await asyncio.sleep(0)
            self._publish_job(EventType.JOB_ASSIGNED, job, assignment.taken.worker_id)
            self._publish_offer(assignment.taken)

    async def provider_lost(self, job_id: str, *, reason: str = "provider_lost") -> Decision | None:
        """The job's provider went away (worker lost, hardware fault) before it finished.

        The job moves to another matching provider (ASSIGNED again, at that provider's price,
        its escrow topped up or partly released to match) up to ``max_reassignments`` times;
        past that, or with no provider to take it, or a wallet that cannot pay the top-up, it
        fails with ``reason`` and a full refund: a provider's fault costs the consumer nothing.
        Returns the decision, or None when the job was not ASSIGNED or RUNNING any more.
        """
        async with self._assigning:
            now = self._clock()
            taken: Provider | None = None
            async with self._sessionmaker() as session, session.begin():
                job = await db.get_job(session, job_id, lock=True)
                if job.status not in OPEN_JOB_STATES:
                    return None
                lost = job.provider_id
                held = await db.escrow_held(session, job_id, lock=True)
                constraints = JobConstraints.from_json(job.constraints, max_price=job.max_price)
                if job.reassignments < self.max_reassignments:
                    offers = [o for o in await db.candidates(session, constraints) if o.id != lost]
                    taken = await _take_free(session, constraints, offers)
                if taken is not None:
                    check_transition(job.status, JobStatus.ASSIGNED)
                    await db.free_provider(session, job_id)
                    _give(job, taken, now)
                    job.started_at = None
                    job.reassignments += 1
                    step = job.reassignments
            if taken is None:
                await self._fail(job, reason, key=f"job:{job_id}:lost:{job.reassignments}")
                return Fail(reason)
            difference = job.estimated_cost - held
            try:
                if difference > 0:
                    await self._ledger.lock_escrow(
                        job_id, difference, idempotency_key=f"job:{job_id}:assign:{step}:top-up"
                    )
                elif difference < 0:
                    await self._ledger.release_escrow(
                        job_id, -difference, idempotency_key=f"job:{job_id}:assign:{step}:release"
                    )
            except InsufficientFunds:
                await self._fail(job, reason, key=f"job:{job_id}:lost:{step}")
                return Fail(reason)
            except InvalidState:
                return None  # cancelled meanwhile: its settlement gave the escrow back
            if difference:
                await self._balance_changed(job.user_id, -difference, "escrow_reassign", job_id)
        self._publish_job(EventType.JOB_REASSIGNED, job, taken.worker_id)
        self._publish_offer(taken)
        self._run_hooks(self.on_assigned, job, taken)
        return Assign(taken)

    async def _fail(self, job: Job, error: str, *, key: str) -> None:
        """End an open job FAILED with its whole escrow refunded (nobody's time is charged)."""
        check_transition(job.status, JobStatus.FAILED)
        with contextlib.suppress(InvalidState):  # settled meanwhile
            await self._end(job.id, key=key, status=JobStatus.FAILED, error=error)

    async def _fail_unassignable(self, job: Job) -> None:
        check_transition(job.status, JobStatus.FAILED)
        with contextlib.suppress(InvalidState):  # cancelled meanwhile
            await self._end(
                job.id,
                key=f"job:{job.id}:unassignable",
                status=JobStatus.FAILED,
                error="unassignable",
            )

    async def sweep(self, *, now: dt.datetime | None = None) -> list[Decision]:
        """One pass of the assigner over the PENDING jobs, oldest first."""
        now = now or self._clock()
        self._pending_seen = False
        async with self._reads() as session:
            pending = await db.pending_jobs(session, limit=SWEEP_BATCH)
            self._pending_seen = self._pending_seen or bool(pending)
            anyone_free = bool(pending) and await db.any_free_provider(session)
        # With every provider busy only a job past its deadline has anything to decide: skip
        # the others rather than run a transaction each, every second.
        due = now - self.assign_timeout
        decisions = []
        for job, _held in pending:
            if not anyone_free and db.utc(job.created_at) > due:
                continue
            decision = await self.assign(job.id, now=now)
            if decision is not None:
                decisions.append(decision)
        return decisions

    def start(self) -> None:
        """Run :meth:`sweep` every ``sweep_interval`` seconds (sooner when a provider frees)."""
        if self._runner is None:
            self._stopping = asyncio.Event()
            self._runner = asyncio.get_running_loop().create_task(self._run(self._stopping))

    async def stop(self) -> None:
        """End the sweeps; a pass under way finishes first (see :mod:`.periodic`)."""
        runner, self._runner = self._runner, None
        if runner is not None:
            self._stopping.set()
            self._wake.set()
            await periodic.finish(runner)

    async def _run(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            try:
                await self.sweep()
            except Exception:  # one bad pass must not stop the assigner; it is logged
                log.exception("QUBIX job assigner: sweep failed")
            if stopping.is_set():
                return
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.sweep_interval)

    # ------------------------------------------------------------------ the worker's reports

    @staticmethod
    def _require_worker(job: Job, worker: WorkerOwner, worker_id: str) -> None:
        if worker_id != worker.worker_id or job.provider_id != worker.provider_id:
            raise Forbidden("this job is not assigned to your worker", jobId=job.id)

    async def progress(
        self, job_id: str, worker: WorkerOwner, *, worker_id: str, reported: float
    ) -> tuple[int, dt.datetime | None]:
        """Store a progress report: RUNNING from the first one; never lower; within 0..100.

        The progress stored, and on PostgreSQL the job's start as stored (None elsewhere)."""
        percent = reported_progress(reported)
        if worker_id != worker.worker_id:
            raise Forbidden("this job is not assigned to your worker", jobId=job_id)
        check_transition(JobStatus.ASSIGNED, JobStatus.RUNNING)  # what the statement does
        # One conditional statement (no lock held across round trips): it applies only to an
        # open job of this provider, so a late or foreign report changes nothing.
        started = None
        if self._driver is not None:
            async with driver_connection(self._driver) as driver:
                advanced = await db.advance_progress_on(
                    driver, job_id, worker.provider_id, percent, now=self._clock()
                )
            stored, started = (None, None) if advanced is None else advanced
        else:
            async with self._reads() as session, session.begin():
                stored = await db.advance_progress(
                    session, job_id, worker.provider_id, percent, now=self._clock()
                )
        if stored is None:
            job = await self._job(job_id)  # only to say why it was refused
            self._require_worker(job, worker, worker_id)
            raise InvalidState(
                f"a {job.status.value} job takes no progress reports",
                jobId=job_id,
                status=job.status.value,
            )
        self._events.publish(
            job_channel(job_id),
            EventType.JOB_PROGRESS,
            {"jobId": job_id, "progress": stored, "status": JobStatus.RUNNING.value},
        )
        return stored, started

    async def complete(
        self,
        job_id: str,
        worker: WorkerOwner,
        *,
        worker_id: str,
        succeeded: bool,
        result: Any,
        error: str | None,
        request_key: str,
        step: int | None = None,
        clock: RunClock | None = None,
    ) -> tuple[Job, Payment] | None:
        """Settle a job its worker finished: charge the seconds the market measured since it
        started (or was assigned), capped by the budget; pay the provider; refund the rest.

        A failed job (the consumer's code failed) is charged its time too. A result over
        ``max_result_bytes`` fails the job (charged its time, the rest refunded) and raises
        :class:`ResultTooLarge` (413). The result is stored in the transaction that ends the
        job, so a job is never seen COMPLETED without it.

        ``step``: the answer is of that run (the job's ``reassignments`` when it was sent): if
        the job is not open on that run any more, nothing is settled and None is returned.
        ``clock``: what the run's dispatcher knows of the job's charge (its start and budget):
        on PostgreSQL the run is then checked in the statement that ends the job, not read first.
        """
        key = f"{request_key}:charge"
        encoded = None if result is None else json.dumps(result, separators=(",", ":"))
        too_large = encoded is not None and len(encoded.encode()) > self.max_result_bytes
        if too_large:
            error = (
                f"the result is {len(encoded.encode())} bytes; the market keeps at most "  # type: ignore[union-attr]
                f"{self.max_result_bytes}"
            )
        target = JobStatus.COMPLETED if succeeded and not too_large else JobStatus.FAILED
        kept = None if too_large else result
        if step is not None and clock is not None and self._driver is not None:
            check_transition(JobStatus.RUNNING, target)  # from ASSIGNED through RUNNING too
            try:
                receipt, job = await self._charge(
                    job_id,
                    clock,
                    key=key,
                    status=target,
                    error=error,
                    result=kept,
                    only_if=db.on_run_condition(job_id, worker.provider_id, step),
                )
            except Skipped:
                return None  # an answer of an earlier run: settled (or lost) already
        else:
            job = await self._job(job_id)
            if step is not None and not on_run(job, worker.provider_id, step):
                return None  # an answer of an earlier run: settled (or lost) already
            self._require_worker(job, worker, worker_id)
            receipt = None
            if job.status in TERMINAL_JOB_STATES:  # a retry replays; else it is too late
                async with self._reads() as session:
                    receipt = await db.prior_receipt(session, key)
            if receipt is None:
                if job.status is JobStatus.ASSIGNED:
                    check_transition(job.status, JobStatus.RUNNING)
                    check_transition(JobStatus.RUNNING, target)
                else:
                    check_transition(job.status, target)
                receipt, job = await self._charge_job(
                    job, key=key, status=target, error=error, result=kept
                )
        if too_large:  # and a retry of it is told the same
            raise ResultTooLarge(error or "", limit=self.max_result_bytes, jobId=job_id)
        return job, Payment.of(receipt)

    # ------------------------------------------------------------------ the consumer's cancel

    async def cancel(self, job_id: str, user_id: str, *, request_key: str) -> tuple[Job, Payment]:
        """Cancel your job: a PENDING one gets its whole escrow back; an ASSIGNED or RUNNING one
        is charged the time it used (from its start, or its assignment) and refunded the rest."""
        key = f"{request_key}:cancel"
        async with self._assigning:  # an assignment in flight lands first, then is charged
            async with self._sessionmaker() as session:
                job = await db.get_job(session, job_id)
                if job.user_id != user_id:
                    raise Forbidden("only the job's consumer may cancel it", jobId=job_id)
                receipt = await db.prior_receipt(session, key)
            if receipt is not None:
                return job, Payment.of(receipt)
            check_transition(job.status, JobStatus.CANCELLED)
            if job.status is JobStatus.PENDING:
                receipt, ended = await self._end(job_id, key=key, status=JobStatus.CANCELLED)
            else:
                receipt, ended = await self._charge_job(job, key=key, status=JobStatus.CANCELLED)
        return ended, Payment.of(receipt)

    async def _charge_job(self, job: Job, **options: Any) -> tuple[Receipt, Job]:
        """:meth:`_charge` an ASSIGNED or RUNNING job by its row's clock."""
        clock = RunClock.of(job)
        assert clock is not None  # an ASSIGNED or RUNNING job has been assigned
        return await self._charge(job.id, clock, **options)

    async def _charge(
        self,
        job_id: str,
        clock: RunClock,
        *,
        key: str,
        status: JobStatus,
        error: str | None = None,
        result: Any = None,
        only_if: Condition | None = None,
    ) -> tuple[Receipt, Job]:
        """End a job as ``status``, charged the seconds the market measured since it started
        (or was assigned), capped by its budget (``clock``)."""
        seconds = charged_seconds(clock.since, self._clock(), budget_seconds=clock.budget_seconds)
        return await self._end(
            job_id,
            key=key,
            status=status,
            error=error,
            seconds=seconds,
            result=result,
            only_if=only_if,
        )

    # ------------------------------------------------------------------ after settlement

    async def _end(
        self,
        job_id: str,
        *,
        key: str,
        status: JobStatus,
        error: str | None = None,
        seconds: int | None = None,
        result: Any = None,
        only_if: Condition | None = None,
    ) -> tuple[Receipt, Job]:
        """End a job as ``status``: charged ``seconds`` (None: its whole escrow refunded). In the
        ledger's transaction the result is kept and the provider freed, so the end, the money,
        the result and the free provider commit together (on PostgreSQL as one call). Then
        everyone is told, once; the job as it ended is returned (as it stands, for an answer
        replayed). ``only_if`` (PostgreSQL): ended only if it holds, else :class:`Skipped`."""
        if self._driver is not None:  # the ledger's native path: one call, the read behind it
            read = db.read_job_with_provider(job_id)
            receipt = await self._ledger.end_job(
                job_id,
                operation="refund" if seconds is None else "charge",
                idempotency_key=key,
                final_status=status,
                error=error,
                seconds=seconds or 0,
                result=result,
                only_if=only_if,
                then=read,
            )
            job, provider = db.job_with_provider_of(read.row, job_id)
            if receipt.replayed:
                return receipt, job
            freed = provider if provider is not None and provider.current_job_id is None else None
            owner = None if provider is None else (provider.user_id, provider.worker_id)
            return await self._ended(receipt, job, owner, freed)
        ended: dict[str, Any] = {}

        async def within(session: AsyncSession) -> None:
            # The job's row is locked by the ledger's operation already.
            if result is None:
                job = await db.get_job(session, job_id)
            else:
                job = await db.keep_result(session, job_id, result)
            ended["freed"] = await db.free_provider(session, job_id)
            provider = None
            if job.provider_id is not None:
                provider = await db.provider(session, job.provider_id)
            ended["owner"] = None if provider is None else (provider.user_id, provider.worker_id)
            ended["job"] = job

        if seconds is None:
            receipt = await self._ledger.refund(
                job_id, idempotency_key=key, final_status=status, error=error, within=within
            )
        else:
            receipt = await self._ledger.charge(
                job_id,
                seconds=seconds,
                idempotency_key=key,
                final_status=status,
                error=error,
                within=within,
            )
        if receipt.replayed or "job" not in ended:
            job, _ = await self.get(job_id)
            return receipt, job
        return await self._ended(receipt, ended["job"], ended["owner"], ended["freed"])

    async def _ended(
        self,
        receipt: Receipt,
        job: Job,
        owner: tuple[str, str] | None,
        freed: Provider | None,
    ) -> tuple[Receipt, Job]:
        """A job has just ended (``receipt``): wake its result requests, tell everyone."""
        job_id = job.id
        if self._wake_waiters(job, None if owner is None else owner[1]):
            # Their answers are written first (each woken task runs in the next turn of the
            # loop): the events and the wallets' read after them are nobody's answer.
            await asyncio.sleep(0)
        kind = EventType.JOB_FAILED if job.status is JobStatus.FAILED else EventType.JOB_COMPLETED
        self._publish_job(kind, job, None if owner is None else owner[1])
        if freed is not None:
            self._publish_offer(freed)
        if job.provider_id is not None and self._pending_seen:
            self._wake.set()  # its provider may take a waiting job now
        self._run_hooks(self.on_finished, job)
        payment = Payment.of(receipt)
        await self._balances_changed(
            job_id,
            (job.user_id, payment.refund, "job_refund"),
            (None if owner is None else owner[0], payment.provider_earning, "job_earning"),
        )
        return receipt, job

    # ------------------------------------------------------------------ events and hooks

    async def _balance_changed(self, user_id: str, change: int, reason: str, job_id: str) -> None:
        await self._balances_changed(job_id, (user_id, change, reason))

    async def _balances_changed(self, job_id: str, *changes: tuple[str | None, int, str]) -> None:
        """BALANCE_CHANGED for each (user, change, reason) that moved money, in order; the
        wallets' balances as they stand now, in one read."""
        moved = [(user, change, reason) for user, change, reason in changes if user and change]
        if not moved:
            return
        balances = await self._ledger.wallet_balances({user for user, _, _ in moved})
        for user_id, change, reason in moved:
            data = {"balance": balances[user_id], "change": change, "reason": reason}
            self._events.publish(
                "wallet", EventType.BALANCE_CHANGED, data | {"jobId": job_id}, user_id=user_id
            )

    def _publish_job(self, kind: EventType, job: Job, worker_id: str | None) -> None:
        data = m.job_out(job, worker_id=worker_id).model_dump(mode="json")
        self._events.publish(job_channel(job.id), kind, {"jobId": job.id, "job": data})

    def _publish_offer(self, provider: Provider) -> None:
        offer = offer_out(provider).model_dump(mode="json", by_alias=True)
        self._events.publish(MARKETPLACE, EventType.MARKETPLACE_UPDATE, {"providers": [offer]})

    def _run_hooks(self, hooks: list[Any], job: Job, *more: Any) -> None:
        """Each hook runs as a task of its own: a request never waits on the dispatcher, and a
        hook may call back into this service (assign, cancel) without waiting on itself."""
        for hook in list(hooks):
            task = asyncio.get_running_loop().create_task(self._hook(hook, job, *more))
            self._hook_tasks.add(task)
            task.add_done_callback(self._hook_tasks.discard)

    @staticmethod
    async def _hook(hook: Callable[..., Any], job: Job, *more: Any) -> None:
        try:
            outcome = hook(job, *more)
            if inspect.isawaitable(outcome):
                await outcome
        except Exception:  # a hook's failure is its own; the job's state stands
            log.exception("QUBIX job hook %r failed for job %s", hook, job.id)
