"""QubixWorkerPlugin: the temperature guard's hysteresis, the sampler on a fake NVML, heartbeats
over real HTTP (and a market that is down), and the guard pausing a real worker's GPU slot."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import socket
from types import SimpleNamespace
from typing import Any

import pytest
import tornado.web
from distributed import Worker
from hypothesis import given, settings
from hypothesis import strategies as st

from qubix_jupyter.dask_provider.scheduler import TOKEN_KEY, start_scheduler
from qubix_jupyter.dask_provider.worker_plugin import (
    MetricsSampler,
    QubixWorkerPlugin,
    TemperatureGuard,
    http_heartbeat,
)


def test_guard_stops_hot_and_resumes_only_below_the_lower_threshold() -> None:
    guard = TemperatureGuard(stop_above_c=85, resume_below_c=75)
    readings = [70, 85, 86, 80, 76, 75, 74, 84, None, 90]
    seen = [guard.update(t) for t in readings]
    assert seen == [True, True, False, False, False, False, True, True, True, False]
    assert guard.reason is not None
    assert "85" in guard.reason


@settings(max_examples=200)
@given(st.lists(st.one_of(st.none(), st.floats(0, 120, allow_nan=False)), max_size=40))
def test_guard_flips_only_across_its_thresholds(readings: list[float | None]) -> None:
    guard = TemperatureGuard(stop_above_c=85, resume_below_c=75)
    for reading in readings:
        before = guard.accepting
        after = guard.update(reading)
        if reading is None or 75 <= reading <= 85:
            assert after == before  # between the thresholds (or no reading): no flapping
        elif reading > 85:
            assert after is False
        else:
            assert after is True


def test_guard_refuses_inverted_thresholds() -> None:
    with pytest.raises(ValueError, match="below"):
        TemperatureGuard(stop_above_c=70, resume_below_c=80)


class FakeNvml:
    """pynvml's surface that the sampler reads, with a temperature the test sets."""

    def __init__(self, temperature: float = 60, *, broken: set[str] = frozenset()) -> None:
        self.temperature = temperature
        self.broken = broken
        self.initialised = False

    def nvmlInit(self) -> None:
        self.initialised = True

    def nvmlDeviceGetHandleByIndex(self, index: int) -> str:
        return f"gpu{index}"

    def _check(self, name: str) -> None:
        if name in self.broken:
            raise RuntimeError(f"{name} not supported")

    def nvmlDeviceGetUtilizationRates(self, handle: str) -> Any:
        self._check("util")
        return SimpleNamespace(gpu=42)

    def nvmlDeviceGetTemperature(self, handle: str, sensor: int) -> float:
        self._check("temp")
        return self.temperature

    def nvmlDeviceGetMemoryInfo(self, handle: str) -> Any:
        self._check("memory")
        return SimpleNamespace(used=3 * 2**30, total=24 * 2**30)


def test_sampler_reads_psutil_and_nvml() -> None:
    nvml = FakeNvml(temperature=71)
    usage = MetricsSampler(gpu_index=0, nvml=nvml).sample()
    assert nvml.initialised
    assert 0 <= usage["cpuPercent"] <= 100 * 1024
    assert 0 < usage["ramPercent"] <= 100
    assert 0 < usage["ramUsedGb"] <= usage["ramTotalGb"]
    assert usage["gpuPercent"] == 42
    assert usage["gpuTemp"] == 71
    assert usage["gpuMemUsedMb"] == 3 * 1024
    assert usage["gpuMemTotalMb"] == 24 * 1024
    assert dt.datetime.fromisoformat(usage["timestamp"]).tzinfo is not None


def test_sampler_keeps_the_readings_a_driver_supports() -> None:
    usage = MetricsSampler(gpu_index=0, nvml=FakeNvml(broken={"temp"})).sample()
    assert "gpuTemp" not in usage
    assert usage["gpuPercent"] == 42


def test_sampler_without_a_gpu_reports_cpu_only() -> None:
    usage = MetricsSampler().sample()
    assert "gpuTemp" not in usage
    assert "cpuPercent" in usage


class HeartbeatHandler(tornado.web.RequestHandler):
    def initialize(self, received: list[tuple[str, str, dict[str, Any]]]) -> None:
        self.received = received

    def post(self, worker_id: str) -> None:
        auth = self.request.headers.get("Authorization", "")
        self.received.append((worker_id, auth, json.loads(self.request.body)))
        self.write({"ok": True})


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_heartbeat_posts_to_the_market_and_tolerates_it_down() -> None:
    received: list[tuple[str, str, dict[str, Any]]] = []
    app = tornado.web.Application(
        [(r"/qubix/api/providers/([^/]+)/heartbeat", HeartbeatHandler, {"received": received})]
    )
    port = _free_port()
    server = app.listen(port, address="127.0.0.1")
    try:
        send = http_heartbeat(f"http://127.0.0.1:{port}/", "w-1", "qxw_secret")
        assert await send({"usage": {"cpuPercent": 1.0}, "status": "online"}) is True
    finally:
        server.stop()
    assert received == [
        ("w-1", "Bearer qxw_secret", {"usage": {"cpuPercent": 1.0}, "status": "online"})
    ]
    down = http_heartbeat(f"http://127.0.0.1:{_free_port()}", "w-1", "qxw_secret", timeout_s=2)
    assert await down({"status": "online"}) is False  # no exception: the worker carries on


async def test_hot_gpu_takes_no_gpu_jobs_until_it_cools() -> None:
    market = await start_scheduler(lambda name, token: token == "qxw_hot")
    worker = await Worker(
        market.worker_address,
        name="w-hot",
        nthreads=1,
        resources={"GPU": 1},
        dashboard=False,
        startup_information={TOKEN_KEY: lambda _worker: "qxw_hot"},
    )
    sent: list[dict[str, Any]] = []

    async def sink(body: dict[str, Any]) -> bool:
        sent.append(body)
        return True

    nvml = FakeNvml(temperature=60)
    plugin = QubixWorkerPlugin(
        sink=sink, sampler=MetricsSampler(gpu_index=0, nvml=nvml), interval_s=3600
    )
    try:
        await worker.plugin_add(plugin, catch_errors=False)
        assert market.scheduler is not None
        state = market.scheduler.workers[worker.address]
        assert state.resources == {"GPU": 1}
        nvml.temperature = 91
        body = await plugin.beat()
        assert body["status"] == "busy"
        assert plugin.guard.reason is not None
        async with asyncio.timeout(30):
            while state.resources.get("GPU") != 0:  # noqa: ASYNC110 - no event to await
                await asyncio.sleep(0.05)
        nvml.temperature = 80  # between the thresholds: still paused
        assert (await plugin.beat())["status"] == "busy"
        assert state.resources.get("GPU") == 0
        nvml.temperature = 70
        assert (await plugin.beat())["status"] == "online"
        async with asyncio.timeout(30):
            while state.resources.get("GPU") != 1:  # noqa: ASYNC110 - no event to await
                await asyncio.sleep(0.05)
        plugin.job_started("job-9")
        body = await plugin.beat()
        assert body["status"] == "busy"
        assert body["currentJob"] == "job-9"
        assert sent[-1] == body
    finally:
        await worker.close()
        await market.close()
    assert sent[-1]["status"] == "offline"  # the plugin's teardown says goodbye
