"""Running the market's jobs on the providers' Dask workers, and settling what comes back.

The execution service joins three things built elsewhere: the :class:`~.jobs.JobService`
(states and money), the market's Dask scheduler (:mod:`..dask_provider.scheduler`, embedded on
the server's loop or external) and the :class:`~..dask_provider.dispatch.Dispatcher`.

* A job ASSIGNED to a provider whose worker is connected is submitted pinned to that worker
  (once the worker connects, when it is not yet); the task's start makes the job RUNNING and
  the worker's progress reports are stored through :meth:`JobService.progress`. On the
  embedded scheduler a small result comes on the worker's own stream the moment the job's
  child returns it (:meth:`Dispatcher.relayed`), not after the task's end and a fetch.
* A result completes the job (charged the seconds the market measured, capped by the budget);
  it is kept as ``{"kind": "pickle", "payload": base64}``, which ``qubix.Job.result`` unpickles.
* The consumer's fault (its code raised, its budget ran out, its result is over the cap) fails
  the job, charged for the time used, with the error and traceback; the provider's fault (the
  job's process died, the worker left, the provider went silent) reassigns the job through
  :meth:`JobService.provider_lost`, which fails it with a full refund past
  ``max_reassignments``.
* A job that ends while its task runs (cancelled) has its task stopped.

Each run of a job is one *step* (its ``reassignments`` count at dispatch): its task key and the
idempotency key of its charge derive from the job id and the step, so a run is paid at most once
and a late answer from an earlier run settles nothing.

At start the service reconciles with the database: a job left ASSIGNED or RUNNING by a previous
process lost its run with that process's scheduler, so it is treated as a lost provider
(reassigned, or failed with a full refund); the lost run is charged to nobody.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Coroutine
from typing import Any
from urllib.parse import urlsplit

from distributed import Security
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ..dask_provider.dispatch import DispatchCallbacks, Dispatcher
from ..dask_provider.errors import JobExecutionError
from ..dask_provider.runners import JobLimits, JobResult
from ..dask_provider.scheduler import (
    MarketScheduler,
    SchedulerCallbacks,
    connect_scheduler,
    start_scheduler,
)
from ..db.auth_store import WorkerOwner
from ..db.models import Job, Provider
from ..market import payloads
from ..market.errors import QubixError, UnknownJob
from ..market.jobs import ResultTooLarge
from ..market.liveness import ProviderStatus
from ..market.states import OPEN_JOB_STATES
from .auth import AuthService
from .jobs import JobService, RunClock, on_run
from .liveness import HeartbeatBuffer, Usage
from .scheduler_directory import SchedulerDirectory
from .scheduler_endpoints import worker_validator

log = logging.getLogger(__name__)

#: The JSON wrapper around a pickled result ({"kind":"pickle","payload":"…"}) and base64's 4/3.
_WRAPPER_BYTES = 64
_TASK_PREFIX = "qubix-job-"
#: The tornado settings key of the running service (None where the market executes no jobs).
EXECUTION = "qubix_execution"


@dataclasses.dataclass(slots=True, eq=False)
class Run:
    """One dispatch of a job: on which provider, at which step.

    Its progress reports and its settlement are stored in the order they arrived (``order``):
    a job that reports 100 % and finishes at once still shows its 100 % before it completes. A
    burst of reports is stored as its latest (``reported``): the ones in between are moot.
    """

    job_id: str
    provider_id: str
    worker_id: str
    step: int
    #: The job's charge as this run knows it (its assignment, then its start once stored).
    clock: RunClock | None = None
    order: asyncio.Lock = dataclasses.field(default_factory=asyncio.Lock)
    reported: float = -1.0
    stored: float = -1.0

    @property
    def key(self) -> str:
        return f"{_TASK_PREFIX}{self.job_id}-{self.step}"

    @property
    def owner(self) -> WorkerOwner:
        # The market reports for the worker it watched: the job service checks the provider.
        return WorkerOwner(self.provider_id, self.worker_id, user_id="", token_id="")


def parse_listen(address: str) -> tuple[str, int]:
    """``tcp://host:port`` (or ``tls://``) → host and port of the scheduler's listener."""
    parts = urlsplit(address if "://" in address else f"tcp://{address}")
    return parts.hostname or "127.0.0.1", parts.port or 0


class ExecutionService:
    def __init__(
        self,
        jobs: JobService,
        liveness: HeartbeatBuffer,
        sessionmaker: async_sessionmaker[AsyncSession],
        auth: AuthService,
        directory: SchedulerDirectory,
        *,
        listen: str = "tcp://127.0.0.1:0",
        external_address: str = "",
        contact_address: str | None = None,
        security: Security | None = None,
        worker_ttl_s: float = 15.0,
        max_result_bytes: int = 1024 * 1024,
        memory_limit_bytes: int | None = None,
    ) -> None:
        self._jobs = jobs
        self._liveness = liveness
        self._sessionmaker = sessionmaker
        self._auth = auth
        self._directory = directory
        self._listen = listen
        self._external = external_address
        self._contact = contact_address
        self._security = security
        self._worker_ttl_s = worker_ttl_s
        # The market keeps the result as base64 in JSON: the pickle may be 3/4 of its cap.
        self._max_pickle_bytes = max(1, (max_result_bytes - _WRAPPER_BYTES) * 3 // 4)
        self._memory_limit = memory_limit_bytes
        self.market: MarketScheduler | None = None
        self.dispatcher: Dispatcher | None = None
        #: worker name (workerId) → its address, for the workers connected now.
        self.workers: dict[str, str] = {}
        #: job id → its run now on a worker (dispatched, not answered yet).
        self.runs: dict[str, Run] = {}
        #: workerId → runs waiting for that worker to connect.
        self._waiting: dict[str, list[Run]] = {}
        self._lost = asyncio.Lock()
        self._tasks: set[asyncio.Task[Any]] = set()
        self.ready = asyncio.Event()

    # ------------------------------------------------------------------ start / stop

    async def start(self) -> None:
        """Start (or connect to) the scheduler, wire the callbacks, reconcile open jobs."""
        if self._external:
            self.market = await connect_scheduler(self._external, security=self._security)
        else:
            host, port = parse_listen(self._listen)
            self.market = await start_scheduler(
                worker_validator(self._auth),
                SchedulerCallbacks(
                    worker_online=self._worker_online,
                    worker_offline=self._worker_offline,
                    task_transition=self._task_transition,
                    job_progress=self._job_progress,
                    job_result=self._job_result,
                ),
                host=host,
                port=port,
                security=self._security,
                worker_ttl_s=self._worker_ttl_s,
                contact_address=self._contact,
            )
        self._directory.address = self.market.worker_address
        self.dispatcher = Dispatcher(
            self.market.client,
            DispatchCallbacks(
                on_result=self._on_result,
                on_failure=self._on_failure,
                on_worker_lost=self._on_worker_lost,
            ),
            # The embedded scheduler takes small results on the workers' streams.
            relay_results=self.market.scheduler is not None,
        )
        self._jobs.on_assigned.append(self._assigned)
        self._jobs.on_finished.append(self._finished)
        self._liveness.on_offline.append(self._providers_offline)
        await self.reconcile()
        self.ready.set()
        log.info("QUBIX scheduler for workers at %s", self.market.worker_address)

    async def stop(self) -> None:
        for hooks, hook in (
            (self._jobs.on_assigned, self._assigned),
            (self._jobs.on_finished, self._finished),
            (self._liveness.on_offline, self._providers_offline),
        ):
            if hook in hooks:
                hooks.remove(hook)  # type: ignore[arg-type]
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        market, self.market = self.market, None
        self._directory.address = ""
        if market is not None:
            await market.close()

    def _spawn(self, work: Coroutine[Any, Any, Any]) -> None:
        """Scheduler and dispatcher callbacks are synchronous: their database work is a task."""
        task = asyncio.get_running_loop().create_task(self._logged(work))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _logged(work: Coroutine[Any, Any, Any]) -> None:
        try:
            await work
        except asyncio.CancelledError:
            raise
        except Exception:  # one job's trouble must not stop the others'; it is logged
            log.exception("QUBIX execution: a step failed")

    # ------------------------------------------------------------------ restart

    async def reconcile(self) -> list[str]:
        """Jobs a previous process left ASSIGNED or RUNNING: their run went with its scheduler,
        so each is reassigned as if its provider were lost (or failed, refunded whole)."""
        async with self._sessionmaker() as session:
            rows = (
                await session.execute(
                    select(Job.id, Job.provider_id).where(Job.status.in_(OPEN_JOB_STATES))
                )
            ).all()
        for job_id, provider_id in rows:
            await self._provider_lost(job_id, provider_id, reason="market_restarted")
        return [job_id for job_id, _ in rows]

    # ------------------------------------------------------------------ dispatch

    async def _assigned(self, job: Job, provider: Provider) -> None:
        run = Run(job.id, provider.id, provider.worker_id, job.reassignments, RunClock.of(job))
        address = self.workers.get(provider.worker_id)
        if address is None and self._external and self.market is not None:
            address = await self._external_address(provider.worker_id)
        if address is None:
            # Not connected (yet): dispatched when it joins; a provider that never does goes
            # offline after its missed heartbeats and the job moves on.
            self._waiting.setdefault(provider.worker_id, []).append(run)
            return
        await self._dispatch(run, job, address, gpu=provider.gpu_count > 0)

    async def _external_address(self, worker_id: str) -> str | None:
        assert self.market is not None
        info = await self.market.client.scheduler_info()  # type: ignore[misc]
        for address, worker in info.get("workers", {}).items():
            if str(worker.get("name")) == worker_id:
                return str(address)
        return None

    async def _dispatch(self, run: Run, job: Job, address: str, *, gpu: bool) -> None:
        assert self.dispatcher is not None
        try:
            payload = (
                payloads.python_call_bytes(job.input_data)
                if job.model_type == payloads.PYTHON
                else job.input_data
            )
        except QubixError as error:
            await self._settle(run, succeeded=False, result=None, error=error.message)
            return
        limits = JobLimits(
            time_budget_s=float(job.compute_seconds),
            memory_limit_bytes=self._memory_limit,
            max_result_bytes=self._max_pickle_bytes,
        )
        self.runs[run.job_id] = run
        self.dispatcher.dispatch(
            run.job_id,
            job.model_type,
            payload,
            worker_name=run.worker_id,
            worker_address=address,
            limits=limits,
            gpu=gpu,
            key=run.key,
        )

    async def _finished(self, job: Job) -> None:
        for waiting in self._waiting.values():
            waiting[:] = [r for r in waiting if r.job_id != job.id]
        if self.dispatcher is not None and job.id in self.dispatcher.running:
            await self.dispatcher.stop(job.id)

    # ------------------------------------------------------------------ the scheduler's word

    def _worker_online(self, name: str, address: str, resources: dict[str, float]) -> None:
        self.workers[name] = address
        self._spawn(self._joined(name))

    async def _joined(self, name: str) -> None:
        """An admitted worker is its provider online (the liveness path broadcasts it); the
        jobs that waited for it start now."""
        async with self._sessionmaker() as session:
            provider = (
                await session.scalars(select(Provider).where(Provider.worker_id == name))
            ).first()
        if provider is None:
            return
        self._liveness.record(provider.id, name, ProviderStatus.ONLINE, _NO_USAGE)
        for run in self._waiting.pop(name, []):
            address = self.workers.get(name)
            async with self._sessionmaker() as session:
                job = await session.get(Job, run.job_id)
            if address is None or job is None or not on_run(job, run.provider_id, run.step):
                continue
            await self._dispatch(run, job, address, gpu=provider.gpu_count > 0)

    def _worker_offline(self, name: str, address: str) -> None:
        if self.workers.get(name) == address:
            del self.workers[name]
        if self.dispatcher is not None:
            self.dispatcher.worker_offline(name)  # its runs answer on_worker_lost

    def _task_transition(self, key: str, start: str, finish: str) -> None:
        if finish != "processing" or not key.startswith(_TASK_PREFIX):
            return
        run = next((r for r in self.runs.values() if r.key == key), None)
        if run is not None:
            self._report(run, 0.0)  # on its worker now: RUNNING from here

    def _job_progress(self, job_id: str, fraction: float, worker_name: str) -> None:
        run = self.runs.get(job_id)
        if run is not None and run.worker_id == worker_name:
            self._report(run, fraction * 100)

    def _job_result(self, job_id: str, key: str, worker_name: str, result: JobResult) -> None:
        if self.dispatcher is not None:
            self.dispatcher.relayed(job_id, key, worker_name, result)

    def _report(self, run: Run, percent: float) -> None:
        run.reported = max(run.reported, percent)
        self._spawn(self._progress(run))

    async def _progress(self, run: Run) -> None:
        async with run.order:
            percent = run.reported
            if percent <= run.stored:
                return  # a report that came later was stored with this one
            run.stored = percent
            with contextlib.suppress(QubixError):  # a late report (finished, moved on) is moot
                _, started = await self._jobs.progress(
                    run.job_id, run.owner, worker_id=run.worker_id, reported=percent
                )
                if started is not None and run.clock is not None:
                    run.clock = RunClock(started, run.clock.budget_seconds)

    async def _providers_offline(self, worker_ids: list[str]) -> None:
        """Liveness took these providers offline (missed heartbeats): their jobs move on."""
        for name in worker_ids:
            if self.dispatcher is not None:
                self.dispatcher.worker_offline(name)
            async with self._sessionmaker() as session:
                rows = (
                    await session.execute(
                        select(Job.id, Job.provider_id)
                        .join(Provider, Job.provider_id == Provider.id)
                        .where(Provider.worker_id == name, Job.status.in_(OPEN_JOB_STATES))
                    )
                ).all()
            for job_id, provider_id in rows:
                await self._provider_lost(job_id, provider_id, reason="provider_lost")

    # ------------------------------------------------------------------ the dispatcher's word

    def _on_result(self, job_id: str, result: JobResult) -> None:
        run = self.runs.pop(job_id, None)
        if run is not None:
            data = payloads.pickled_result(result.data)
            self._spawn(self._settle(run, succeeded=True, result=data, error=None))

    def _on_failure(self, job_id: str, failure: JobExecutionError) -> None:
        run = self.runs.pop(job_id, None)
        if run is None or failure.details.get("stopped"):
            return  # stopped because the job ended (cancelled): it is settled already
        if failure.fault == "provider":
            self._spawn(self._provider_lost(job_id, run.provider_id, reason="provider_fault"))
            return
        self._spawn(self._settle(run, succeeded=False, result=None, error=_describe(failure)))

    def _on_worker_lost(self, job_id: str, worker_name: str) -> None:
        run = self.runs.pop(job_id, None)
        if run is not None:
            self._spawn(self._provider_lost(job_id, run.provider_id, reason="provider_lost"))

    # ------------------------------------------------------------------ settling

    async def _settle(self, run: Run, *, succeeded: bool, result: Any, error: str | None) -> None:
        async with run.order:  # after the progress it reported before it finished
            # ResultTooLarge: the job failed, charged its time, and its error says why. An
            # answer of an earlier run settles nothing: that run was settled (or lost) already.
            with contextlib.suppress(ResultTooLarge, UnknownJob):
                await self._jobs.complete(
                    run.job_id,
                    run.owner,
                    worker_id=run.worker_id,
                    succeeded=succeeded,
                    result=result,
                    error=error,
                    request_key=f"job:{run.job_id}:run:{run.step}",
                    step=run.step,
                    clock=run.clock,
                )

    async def _provider_lost(self, job_id: str, provider_id: str | None, *, reason: str) -> None:
        """Reassign once per loss: the scheduler, the dispatcher and liveness may all report
        the same provider gone."""
        async with self._lost:
            async with self._sessionmaker() as session:
                job = await session.get(Job, job_id)
            if job is None or job.status not in OPEN_JOB_STATES or job.provider_id != provider_id:
                return
            self.runs.pop(job_id, None)
            await self._jobs.provider_lost(job_id, reason=reason)


_NO_USAGE = Usage(cpu_percent=0.0, ram_percent=0.0, ram_used_gb=0.0, ram_total_gb=0.0)


def _describe(failure: JobExecutionError) -> str:
    trace = failure.details.get("traceback")
    return f"{failure.message}\n{trace}" if isinstance(trace, str) and trace else failure.message
