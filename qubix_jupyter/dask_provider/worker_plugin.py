"""The provider's side of a worker: metrics heartbeat, progress and result relay, and the GPU
temperature guard.

``dask worker --preload qubix_jupyter.dask_provider.worker_plugin`` (what ``qubix provide``
starts) reads its settings from the environment the launcher gives it — ``QUBIX_WORKER_TOKEN``
(never on the command line, where other users could read it), ``QUBIX_MARKET_URL`` and
``QUBIX_GPU_INDEX`` — presents the token to the scheduler and installs :class:`QubixWorkerPlugin`.

The market being down is a normal state for a provider: a heartbeat that fails is logged once
and tried again next period; the worker keeps running.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import logging
import os
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Literal

from distributed.diagnostics.plugin import WorkerPlugin

from . import runners
from .scheduler import PROGRESS_TOPIC, RELAY_MAX_BYTES, RESULT_OP, TOKEN_KEY

if TYPE_CHECKING:
    from distributed import Worker

log = logging.getLogger(__name__)

Status = Literal["online", "busy", "offline"]
DEFAULT_INTERVAL_S = 5.0
#: Above this a GPU stops taking jobs; it takes them again once below the resume threshold.
DEFAULT_STOP_ABOVE_C = 85
DEFAULT_RESUME_BELOW_C = 75


@dataclasses.dataclass(slots=True)
class TemperatureGuard:
    """Hysteresis on GPU temperature (seed: "Hardware errors"): stop hot, resume when cool.

    Between the two thresholds the guard keeps its last decision, so a GPU hovering at the
    limit does not flap between taking and refusing jobs.
    """

    stop_above_c: float = DEFAULT_STOP_ABOVE_C
    resume_below_c: float = DEFAULT_RESUME_BELOW_C
    accepting: bool = True

    def __post_init__(self) -> None:
        if not self.resume_below_c < self.stop_above_c:
            raise ValueError("the resume temperature must be below the stop temperature")

    def update(self, temperature_c: float | None) -> bool:
        """Whether the GPU takes jobs after this reading (None: no reading, no change)."""
        if temperature_c is None:
            return self.accepting
        if self.accepting and temperature_c > self.stop_above_c:
            self.accepting = False
        elif not self.accepting and temperature_c < self.resume_below_c:
            self.accepting = True
        return self.accepting

    @property
    def reason(self) -> str | None:
        if self.accepting:
            return None
        return f"GPU above {self.stop_above_c:g} °C: paused until below {self.resume_below_c:g} °C"


class MetricsSampler:
    """One reading of the machine: psutil for CPU and RAM, NVML for the GPU when present.

    ``nvml`` is the ``pynvml`` module (imported lazily when not given; None: no GPU metrics).
    """

    def __init__(self, *, gpu_index: int | None = None, nvml: Any = None) -> None:
        self._gpu_index = gpu_index
        self._nvml = nvml
        self._handle: Any = None
        if gpu_index is not None and nvml is None:
            with contextlib.suppress(ImportError):
                import pynvml

                self._nvml = pynvml
        if self._nvml is not None and gpu_index is not None:
            try:
                self._nvml.nvmlInit()
                self._handle = self._nvml.nvmlDeviceGetHandleByIndex(gpu_index)
            except Exception:  # a foreign C library: no GPU metrics is a normal answer
                log.info("QUBIX: no NVML metrics for GPU %s", gpu_index, exc_info=True)
                self._handle = None

    def sample(self) -> dict[str, Any]:
        import psutil

        memory = psutil.virtual_memory()
        usage: dict[str, Any] = {
            "cpuPercent": float(psutil.cpu_percent(interval=None)),
            "ramPercent": float(memory.percent),
            "ramUsedGb": round((memory.total - memory.available) / 2**30, 2),
            "ramTotalGb": round(memory.total / 2**30, 2),
            "timestamp": dt.datetime.now(dt.UTC).isoformat(),
        }
        if self._handle is not None:
            usage.update(self._gpu())
        return usage

    def _gpu(self) -> dict[str, Any]:
        nvml, handle, found = self._nvml, self._handle, {}
        readings: dict[str, Callable[[], Any]] = {
            "gpuPercent": lambda: float(nvml.nvmlDeviceGetUtilizationRates(handle).gpu),
            "gpuTemp": lambda: float(nvml.nvmlDeviceGetTemperature(handle, 0)),  # 0: the GPU die
            "gpuMemUsedMb": lambda: int(nvml.nvmlDeviceGetMemoryInfo(handle).used // 2**20),
            "gpuMemTotalMb": lambda: int(nvml.nvmlDeviceGetMemoryInfo(handle).total // 2**20),
        }
        for field, read in readings.items():
            try:
                found[field] = read()
            except Exception:  # one reading the driver does not support; the rest still count
                continue
        return found


#: ``(body) → delivered?``: what sends one heartbeat to the market.
HeartbeatSink = Callable[[dict[str, Any]], Awaitable[bool]]


def http_heartbeat(market_url: str, worker_id: str, token: str, *, timeout_s: float = 5.0):  # type: ignore[no-untyped-def]
    """``POST {market}/qubix/api/providers/{workerId}/heartbeat`` with the worker token."""
    import httpx

    url = f"{market_url.rstrip('/')}/qubix/api/providers/{worker_id}/heartbeat"
    headers = {"Authorization": f"Bearer {token}"}
    failing = False

    async def send(body: dict[str, Any]) -> bool:
        nonlocal failing
        try:
            async with httpx.AsyncClient(timeout=timeout_s) as client:
                response = await client.post(url, json=body, headers=headers)
            ok = response.status_code < 300
            detail = f"HTTP {response.status_code}"
        except (httpx.HTTPError, OSError) as exc:
            ok, detail = False, f"{type(exc).__name__}: {exc}"
        if not ok and not failing:
            log.warning("QUBIX heartbeat to %s failed (%s); retrying every period", url, detail)
        failing = not ok
        return ok

    return send


class QubixWorkerPlugin(WorkerPlugin):
    """Heartbeats with metrics, relays job progress, and pauses a hot GPU."""

    name = "qubix"

    def __init__(
        self,
        *,
        sink: HeartbeatSink | None = None,
        sampler: MetricsSampler | None = None,
        guard: TemperatureGuard | None = None,
        interval_s: float = DEFAULT_INTERVAL_S,
    ) -> None:
        self.sink = sink
        self.sampler = sampler or MetricsSampler()
        self.guard = guard or TemperatureGuard()
        self.interval_s = interval_s
        self.current_job: str | None = None
        #: Jobs the market asked to stop; their runner sees it and stops the child.
        self.stopping: set[str] = set()
        self.last_heartbeat: dict[str, Any] | None = None
        self._worker: Worker | None = None
        self._task: asyncio.Task[None] | None = None
        self._gpu_slots: float | None = None

    def setup(self, worker: Worker) -> None:
        self._worker = worker
        self._gpu_slots = worker.state.total_resources.get("GPU")
        self._task = asyncio.ensure_future(self._beat_forever())
        runners.standby()  # the first job's child starts now, not when the job arrives

    async def teardown(self, worker: Worker) -> None:
        runners.close_standby()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.beat(status="offline")

    # ---------------------------------------------------------------- jobs

    def job_started(self, job_id: str) -> None:
        self.current_job = job_id

    def job_finished(self, job_id: str) -> None:
        self.stopping.discard(job_id)
        if self.current_job == job_id:
            self.current_job = None

    def report_progress(self, job_id: str, fraction: float) -> None:
        """From the job's thread: relay to the scheduler, where the market's plugin hears it."""
        worker = self._worker
        if worker is None:
            return
        message = {"jobId": job_id, "fraction": fraction}  # the scheduler adds the worker
        worker.loop.add_callback(worker.log_event, PROGRESS_TOPIC, message)

    def relay_result(self, job_id: str, key: str, result: runners.JobResult) -> None:
        """From the job's thread: a small result straight to the market's scheduler on the
        worker's stream, ahead of the task's own end (a larger one comes only that way)."""
        worker = self._worker
        if worker is None or len(result.data) > RELAY_MAX_BYTES:
            return
        message = {
            "op": RESULT_OP,
            "jobId": job_id,
            "key": key,
            "data": result.data,
            "seconds": result.seconds,
        }
        worker.loop.add_callback(worker.batched_stream.send, message)

    # ---------------------------------------------------------------- heartbeat

    async def _beat_forever(self) -> None:
        while True:
            await self.beat()
            await asyncio.sleep(self.interval_s)

    async def beat(self, status: Status | None = None) -> dict[str, Any]:
        """Sample, apply the temperature guard, send one heartbeat; returns its body."""
        usage = self.sampler.sample()
        was_accepting = self.guard.accepting
        accepting = self.guard.update(usage.get("gpuTemp"))
        if accepting != was_accepting:
            await self._set_gpu_slots(accepting)
        if status is None:
            status = "busy" if (self.current_job or not accepting) else "online"
        body: dict[str, Any] = {"usage": usage, "status": status}
        if self.current_job is not None:
            body["currentJob"] = self.current_job
        self.last_heartbeat = body
        if self.sink is not None:
            await self.sink(body)
        return body

    async def _set_gpu_slots(self, accepting: bool) -> None:
        """A hot GPU offers no GPU slot, so the scheduler sends it no GPU job until it cools."""
        worker = self._worker
        if worker is None or self._gpu_slots is None:
            return
        log.warning("QUBIX: %s", self.guard.reason or "GPU cooled down: taking jobs again")
        await worker.set_resources(GPU=self._gpu_slots if accepting else 0)


def current_plugin() -> QubixWorkerPlugin | None:
    """The plugin of the worker this task runs on, if it has one."""
    from distributed import get_worker

    try:
        plugin = get_worker().plugins.get(QubixWorkerPlugin.name)
    except ValueError:  # not inside a worker
        return None
    return plugin if isinstance(plugin, QubixWorkerPlugin) else None


# ---------------------------------------------------------------------------- preload


async def dask_setup(worker: Worker) -> None:
    """``--preload`` hook: present the worker token and install the plugin."""
    token = os.environ.get("QUBIX_WORKER_TOKEN", "")
    worker.startup_information[TOKEN_KEY] = lambda _worker: token
    market = os.environ.get("QUBIX_MARKET_URL", "")
    index = os.environ.get("QUBIX_GPU_INDEX", "")
    interval = float(os.environ.get("QUBIX_HEARTBEAT_INTERVAL_S", DEFAULT_INTERVAL_S))
    sink = http_heartbeat(market, str(worker.name), token) if market and token else None
    sampler = MetricsSampler(gpu_index=int(index) if index.isdigit() else None)
    await worker.plugin_add(
        QubixWorkerPlugin(sink=sink, sampler=sampler, interval_s=interval), catch_errors=False
    )
