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

        return SchedulerCallbacks(online, offline, job_progress=progress)

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

        # The market's own client runs a job on that worker, with progress relayed.
        results: dict[str, JobResult] = {}
        failures: dict[str, JobExecutionError] = {}
        lost: dict[str, str] = {}
        done = asyncio.Event()
        dispatcher = Dispatcher(
            market.client,
            DispatchCallbacks(
                on_result=lambda job, r: (results.__setitem__(job, r), done.set()),
                on_failure=lambda job, e: (failures.__setitem__(job, e), done.set()),
                on_worker_lost=lambda job, w: (lost.__setitem__(job, w), done.set()),
            ),
        )

        def work(n: int) -> int:
            import qubix_jupyter as qubix

            qubix.progress(0.5)
            return n + 1

        heard.offline_listeners.append(dispatcher.worker_offline)
        worker_address = next(iter(market.scheduler.workers))  # type: ignore[union-attr]
        dispatcher.dispatch(
            "job-1",
            "python",
            python_payload(work, 41),
            worker_name="w-good",
            worker_address=worker_address,
            limits=JobLimits(time_budget_s=60),
        )
        async with asyncio.timeout(60):
            await done.wait()
        assert pickle.loads(results["job-1"].data) == 42
        await heard.until(lambda: ("job-1", 0.5) in heard.progress)
        assert heard.progress_from["job-1"] == "w-good"
        assert ("job-1", 1.0) not in heard.progress  # the forged event above was not heard

        # A failing job comes back typed, the worker lives on.
        done.clear()
        dispatcher.dispatch(
            "job-2",
            "python",
            python_payload(lambda: 1 / 0),
            worker_name="w-good",
            worker_address=worker_address,
            limits=JobLimits(time_budget_s=60),
        )
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
        dispatcher.dispatch(
            "job-3",
            "python",
            python_payload(forever),
            worker_name="w-good",
            worker_address=worker_address,
            limits=JobLimits(time_budget_s=300),
        )
        await heard.until(lambda: ("job-3", 0.1) in heard.progress)
        await dispatcher.stop("job-3")
        async with asyncio.timeout(60):
            await done.wait()
        assert failures["job-3"].details.get("stopped") is True
        assert dispatcher.running == {}

        # SIGKILL: the connection drops and the worker is reported lost.
        killed = start_worker(address, "w-kill", TOKENS["w-kill"], tmp_path)
        processes.append(killed)
        await heard.until(lambda: "w-kill" in heard.online)
        kill_address = next(
            a
            for a, w in market.scheduler.workers.items()
            if w.name == "w-kill"  # type: ignore[union-attr]
        )
        dispatcher.dispatch(
            "job-4",
            "python",
            python_payload(forever),
            worker_name="w-kill",
            worker_address=kill_address,
            limits=JobLimits(time_budget_s=300),
        )
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
