"""From a job to a task pinned on its provider's worker, and back to the market's callbacks.

The market calls :meth:`Dispatcher.dispatch` with the job's id, kind, payload, worker and time
budget; the task (:func:`execute`) runs the job through :mod:`.runners` on that worker only, and
the dispatcher answers exactly one of ``on_result``, ``on_failure`` or ``on_worker_lost`` per
dispatch. Progress arrives separately, through the scheduler plugin's ``job_progress``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable
from typing import Any

from distributed import Client, Future

from .errors import JobExecutionError, JobProcessDied
from .runners import JobLimits, JobResult, run_job
from .worker_plugin import current_plugin

log = logging.getLogger(__name__)


def execute(
    job_id: str, kind: str, payload: Any, limits: JobLimits, relay: str | None = None
) -> JobResult:
    """The task on the worker: one job in its child process, progress relayed by the plugin.

    ``relay``: the task's key, when the market's scheduler takes results on the worker's stream:
    a small result is sent there too, tagged with it, the moment the child returns it."""
    plugin = current_plugin()
    if plugin is None:
        return run_job(kind, payload, limits)
    plugin.job_started(job_id)
    try:
        result = run_job(
            kind,
            payload,
            limits,
            on_progress=lambda fraction: plugin.report_progress(job_id, fraction),
            should_stop=lambda: job_id in plugin.stopping,
        )
        if relay is not None:
            plugin.relay_result(job_id, relay, result)
        return result
    finally:
        plugin.job_finished(job_id)


def _stop_on_worker(job_id: str, dask_worker: Any = None) -> bool:
    plugin = dask_worker.plugins.get("qubix") if dask_worker is not None else None
    if plugin is None:
        return False
    plugin.stopping.add(job_id)
    return True


@dataclasses.dataclass(frozen=True, slots=True)
class DispatchCallbacks:
    on_result: Callable[[str, JobResult], None]
    #: The job failed for its own reasons (code error, budget, memory, size cap) or was stopped.
    on_failure: Callable[[str, JobExecutionError], None]
    #: The provider went away while the job was on it: the market reassigns it.
    on_worker_lost: Callable[[str, str], None]


@dataclasses.dataclass(slots=True, eq=False)
class _Running:
    future: Future
    worker_name: str
    worker_address: str
    key: str
    lost: bool = False


class Dispatcher:
    """``relay_results``: the scheduler takes small results on the workers' streams (the
    market's own, see :data:`.scheduler.RESULT_OP`) and hands them to :meth:`relayed`."""

    def __init__(
        self, client: Client, callbacks: DispatchCallbacks, *, relay_results: bool = False
    ) -> None:
        self._client = client
        self._callbacks = callbacks
        self._relay = relay_results
        self._running: dict[str, _Running] = {}
        self._watchers: set[asyncio.Future[None]] = set()

    @property
    def running(self) -> dict[str, str]:
        """job id → worker name, for the jobs on a worker now."""
        return {job: r.worker_name for job, r in self._running.items()}

    def dispatch(
        self,
        job_id: str,
        kind: str,
        payload: Any,
        *,
        worker_name: str,
        worker_address: str,
        limits: JobLimits,
        gpu: bool = False,
        key: str | None = None,
    ) -> None:
        """Run the job on that worker only (with one GPU slot for a GPU job).

        ``key``: the task's key (default ``qubix-job-{job_id}``); a job run again after its
        worker was lost takes a new one, so it never meets the released task of its last run.
        """
        if job_id in self._running:
            raise ValueError(f"job {job_id} is already running")
        key = key or f"qubix-job-{job_id}"
        future = self._client.submit(
            execute,
            job_id,
            kind,
            payload,
            limits,
            key if self._relay else None,
            key=key,
            workers=[worker_address],
            allow_other_workers=False,
            resources={"GPU": 1} if gpu else None,
            retries=0,
            pure=False,
        )
        running = self._running[job_id] = _Running(future, worker_name, worker_address, key)
        self._watchers.add(watcher := asyncio.ensure_future(self._watch(job_id, running)))
        watcher.add_done_callback(self._watchers.discard)

    def relayed(self, job_id: str, key: str, worker_name: str, result: JobResult) -> None:
        """Wire from the scheduler plugin: a worker relayed a result. That of the job's task
        now (its key, from its worker) answers ``on_result`` at once, and the task is let go:
        its own end, right behind, answers nothing and its result is not fetched again.
        Anything else is ignored."""
        running = self._running.get(job_id)
        if running is None or running.key != key or running.worker_name != worker_name:
            return
        del self._running[job_id]
        running.future.release()
        self._callbacks.on_result(job_id, result)

    def worker_offline(self, worker_name: str) -> None:
        """Wire from the scheduler plugin: every job on that worker is lost with it."""
        for job_id, running in list(self._running.items()):
            if running.worker_name == worker_name and not running.lost:
                running.lost = True
                self._running.pop(job_id, None)
                running.future.release()
                self._callbacks.on_worker_lost(job_id, worker_name)

    async def stop(self, job_id: str) -> None:
        """Stop a running job (cancelled by its consumer); it ends with ``on_failure``."""
        running = self._running.get(job_id)
        if running is None:
            return
        await self._client.run(_stop_on_worker, job_id, workers=[running.worker_address])

    async def _watch(self, job_id: str, running: _Running) -> None:
        failure: JobExecutionError | None = None
        result: JobResult | None = None
        try:
            result = await running.future
        except asyncio.CancelledError:
            failure = JobProcessDied("the job was stopped", stopped=True)
        except JobExecutionError as error:
            failure = error
        except Exception as error:  # the task itself failed (serialization, a worker fault)
            log.error("QUBIX job %s: the task failed outside the runner: %r", job_id, error)
            failure = JobProcessDied(f"the task failed: {error!r}")
        if self._running.get(job_id) is not running or running.lost:
            return  # answered already: lost with its worker, or its result relayed
        del self._running[job_id]
        if failure is not None:
            self._callbacks.on_failure(job_id, failure)
        else:
            assert result is not None
            self._callbacks.on_result(job_id, result)
