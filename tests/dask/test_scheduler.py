"""The embedded scheduler with real worker processes: admission by worker token, the guard
against foreign clients, provider online/offline on loss, and a job dispatched end to end."""

from __future__ import annotations

import asyncio
import os
import pickle
import signal
from pathlib import Path

import pytest
from distributed import Client
from distributed.core import rpc

from qubix_jupyter.dask_provider.dispatch import DispatchCallbacks, Dispatcher
from qubix_jupyter.dask_provider.errors import JobExecutionError
from qubix_jupyter.dask_provider.kinds import python_payload
from qubix_jupyter.dask_provider.runners import JobLimits, JobResult
from qubix_jupyter.dask_provider.scheduler import (
    PROGRESS_TOPIC,
    SchedulerCallbacks,
    start_scheduler,
)

from .workers import start_worker, stop

TOKENS = {"w-good": "qxw_good", "w-kill": "qxw_kill", "w-stop": "qxw_stop"}


class Heard:
    def __init__(self) -> None:
        self.online: list[str] = []
        self.offline: list[str] = []
        self.progress: list[tuple[str, float]] = []
        self.progress_from: dict[str, str] = {}  # job → the worker name that reported it
        self.relayed: list[tuple[str, str, str]] = []  # (job, task key, worker name)
        self.relay_to: Dispatcher | None = None
        self.changed = asyncio.Event()
        self.offline_listeners: list = []  # type: ignore[type-arg]

    def callbacks(self) -> SchedulerCallbacks:
        def online(name: str, address: str, resources: dict[str, float]) -> None:
            self.online.append(name)
            self.changed.set()

        def offline(name: str, address: str) -> None:
            self.offline.append(name)
            for listener in self.offline_listeners:
                listener(name)
            self.changed.set()

        def progress(job: str, fraction: float, worker: str) -> None:
            self.progress.append((job, fraction))
            self.progress_from[job] = worker
            self.changed.set()

        def result(job: str, key: str, worker: str, outcome: JobResult) -> None:
            self.relayed.append((job, key, worker))
            if self.relay_to is not None:
                self.relay_to.relayed(job, key, worker, outcome)

        return SchedulerCallbacks(online, offline, job_progress=progress, job_result=result)

    async def until(self, condition, within_s: float = 60) -> None:  # type: ignore[no-untyped-def]
        async with asyncio.timeout(within_s):
            while not condition():
                self.changed.clear()
                await self.changed.wait()


def valid(name: str, token: str) -> bool:
    return TOKENS.get(name) == token


async def test_worker_admission_guard_loss_and_a_job(tmp_path: Path) -> None:
    heard = Heard()
    market = await start_scheduler(valid, heard.callbacks(), worker_ttl_s=2)
    processes = []
    try:
        address = market.worker_address
        bad = start_worker(address, "w-good", "qxw_wrong", tmp_path)
        processes.append(bad)
        good = start_worker(address, "w-good", TOKENS["w-good"], tmp_path)
        processes.append(good)
        await heard.until(lambda: "w-good" in heard.online)
        assert await asyncio.to_thread(bad.wait, 60) != 0  # refused: the process gives up
        assert market.guard is not None
        assert [op for op, _ in market.guard.refused] == ["register-worker"]
        assert heard.online == ["w-good"]

        good_address = next(iter(market.scheduler.workers))  # type: ignore[union-attr]
        # A foreign client: refused at connect, and its raw calls are refused too.
        with pytest.raises(Exception, match="only the market"):
            await Client(address, asynchronous=True, timeout=20)
        async with rpc(address) as scheduler:
            with pytest.raises(PermissionError, match="reserved to the market"):
                await scheduler.run_function(function=pickle.dumps(print))
            with pytest.raises(PermissionError, match="reserved to the market"):
                await scheduler.register_worker_plugin(plugin=b"", name="x", idempotent=False)
            with pytest.raises(PermissionError, match="reserved to the market"):
                await scheduler.log_event(
                    topic=PROGRESS_TOPIC,
                    msg={"jobId": "job-1", "fraction": 1.0, "worker": good_address},
                )

        # The market's own client runs a job on that worker, with progress relayed, and its
        # small result relayed on the worker's stream.
        results: dict[str, JobResult] = {}
        failures: dict[str, JobExecutionError] = {}
        lost: dict[str, str] = {}
        answered: list[str] = []  # each answer of the dispatcher, in order
        done = asyncio.Event()

        def answer(into: dict, job: str, value: object) -> None:  # type: ignore[type-arg]
            into[job] = value
            answered.append(job)
            done.set()

        dispatcher = Dispatcher(
            market.client,
            DispatchCallbacks(
                on_result=lambda job, r: answer(results, job, r),
                on_failure=lambda job, e: answer(failures, job, e),
                on_worker_lost=lambda job, w: answer(lost, job, w),
            ),
            relay_results=True,
        )
        heard.relay_to = dispatcher

        def run(job: str, payload: object, *, on: str = "w-good", budget_s: float = 60) -> None:
            """Dispatch a ``python`` job to the worker named ``on``."""
            address = next(
                a
                for a, w in market.scheduler.workers.items()  # type: ignore[union-attr]
                if w.name == on
            )
            dispatcher.dispatch(
                job,
                "python",
                payload,
                worker_name=on,
                worker_address=address,
                limits=JobLimits(time_budget_s=budget_s),
            )

        def work(n: int) -> int:
            import qubix_jupyter as qubix

            qubix.progress(0.5)
            return n + 1

        heard.offline_listeners.append(dispatcher.worker_offline)
        run("job-1", python_payload(work, 41))
        async with asyncio.timeout(60):
            await done.wait()
        assert pickle.loads(results["job-1"].data) == 42
        assert heard.relayed == [("job-1", "qubix-job-job-1", "w-good")]
        await heard.until(lambda: ("job-1", 0.5) in heard.progress)
        assert heard.progress_from["job-1"] == "w-good"
        assert ("job-1", 1.0) not in heard.progress  # the forged event above was not heard

        # A result over the relay's size comes the task's way, whole.
        done.clear()
        run("job-big", python_payload(bytes, 100_000))
        async with asyncio.timeout(60):
            await done.wait()
        assert pickle.loads(results["job-big"].data) == bytes(100_000)
        assert [job for job, _, _ in heard.relayed] == ["job-1"]

        # A failing job comes back typed, the worker lives on.
        done.clear()
        run("job-2", python_payload(lambda: 1 / 0))
        async with asyncio.timeout(60):
            await done.wait()
        assert "ZeroDivisionError" in failures["job-2"].details["traceback"]
        assert good.poll() is None

        def forever() -> None:
            import time

            import qubix_jupyter as qubix

            qubix.progress(0.1)
            while True:
                time.sleep(0.05)

        # A consumer's cancel stops the job's child; the job ends as stopped.
        done.clear()
        run("job-3", python_payload(forever), budget_s=300)
        await heard.until(lambda: ("job-3", 0.1) in heard.progress)
        # A relayed result that is not of the job's task now (another key, another worker)
        # answers nothing.
        dispatcher.relayed("job-3", "qubix-job-job-3-old", "w-good", JobResult(b"x", 0.1))
        dispatcher.relayed("job-3", "qubix-job-job-3", "w-other", JobResult(b"x", 0.1))
        await dispatcher.stop("job-3")
        async with asyncio.timeout(60):
            await done.wait()
        assert failures["job-3"].details.get("stopped") is True
        assert "job-3" not in results
        assert dispatcher.running == {}
        # Each job was answered once: the relayed one's task end answered nothing more.
        assert answered == ["job-1", "job-big", "job-2", "job-3"]

        # SIGKILL: the connection drops and the worker is reported lost.
        killed = start_worker(address, "w-kill", TOKENS["w-kill"], tmp_path)
        processes.append(killed)
        await heard.until(lambda: "w-kill" in heard.online)
        run("job-4", python_payload(forever), on="w-kill", budget_s=300)
        await heard.until(lambda: ("job-4", 0.1) in heard.progress)
        killed.send_signal(signal.SIGKILL)
        await heard.until(lambda: "w-kill" in heard.offline)
        assert lost == {"job-4": "w-kill"}  # the market reassigns it
        assert "job-4" not in failures

        # SIGSTOP: the connection stays open; the lowered TTL removes the silent worker.
        frozen = start_worker(address, "w-stop", TOKENS["w-stop"], tmp_path)
        processes.append(frozen)
        await heard.until(lambda: "w-stop" in heard.online)
        os.kill(frozen.pid, signal.SIGSTOP)
        try:
            await heard.until(lambda: "w-stop" in heard.offline, within_s=45)
        finally:
            os.kill(frozen.pid, signal.SIGCONT)
        assert "w-good" not in heard.offline
    finally:
        for process in processes:
            await asyncio.to_thread(stop, process)
        await market.close()
