"""Jobs run on real Dask worker processes through the market: the embedded scheduler, the
dispatcher and the job service together, with the money of each lifecycle and the ledger audit.

SQLite for most, PostgreSQL for the whole lifecycle; the worker TTL is small so a stopped worker
is noticed within a few seconds."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from qubix_jupyter.api import decode_result, encode_python_job
from qubix_jupyter.api import run as qubix_run
from qubix_jupyter.client import MarketClient
from qubix_jupyter.client.errors import JobFailed
from qubix_jupyter.db.ledger import audit
from qubix_jupyter.db.models import Account, Job, Transaction
from qubix_jupyter.market.states import AccountKind, EntryType
from qubix_jupyter.server_extension.execution import EXECUTION, ExecutionService
from qubix_jupyter.server_extension.handlers import SERVICES
from qubix_jupyter.server_extension.services import Services
from qubix_jupyter.settlement.keys import KeyPair

from ..dask.workers import start_worker, stop
from .conftest import SEED_ALICE, SEED_BOB, Api, body_of, login

SEED_CAROL = "c" * 55
ALICE = KeyPair.from_seed(SEED_ALICE).identity
#: 1 QU a second: charges count seconds.
PRICE = 3600

pytestmark = pytest.mark.parametrize(
    "qubix_config",
    [{"execute_jobs": True, "worker_ttl_seconds": 3, "heartbeat_interval": 1.0}],
)
sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


class Market:
    def __init__(self, api: Api, settings: dict[str, Any], url: str, tmp_path: Path) -> None:
        self.api = api
        self.settings = settings
        services: Services = settings[SERVICES]
        self.services = services
        self.url = url
        self.tmp_path = tmp_path
        self.workers: dict[str, subprocess.Popen[bytes]] = {}
        self.owner_of: dict[str, str] = {}

    async def setup(self, funds: int = 10_000) -> Market:
        async with asyncio.timeout(60):
            await self.execution.ready.wait()
        self.alice = await login(self.api, SEED_ALICE)
        self.alice_id = self.alice["user"]["id"]
        await self.services.ledger.deposit(self.alice_id, funds, idempotency_key="fund-alice")
        return self

    async def provider(self, worker_id: str, *, seed: str = SEED_BOB, price: int = PRICE) -> str:
        """Register a CPU provider and start its worker; returns once it is online."""
        owner = await login(self.api, seed)
        self.owner_of[worker_id] = owner["user"]["id"]
        body = {
            "type": "native",
            "gpu": {"type": "native", "count": 0},
            "workerId": worker_id,
            "qubicAddress": KeyPair.from_seed(seed).identity,
            "pricePerHour": price,
        }
        r = await self.api("POST", "providers/quick-register", json_body=body, token=owner["token"])
        assert r.code == 200, r.body
        token = body_of(r)["workerToken"]
        os.environ["QUBIX_MARKET_URL"] = self.url
        try:
            self.workers[worker_id] = start_worker(
                self.services.scheduler.address, worker_id, token, self.tmp_path
            )
        finally:
            del os.environ["QUBIX_MARKET_URL"]
        async with asyncio.timeout(90):
            while True:
                listed = body_of(await self.api("GET", f"providers/{worker_id}"))
                if worker_id in self.execution.workers and listed["status"] == "online":
                    return token
                await asyncio.sleep(0.1)

    @property
    def execution(self) -> ExecutionService:
        return self.settings[EXECUTION]  # type: ignore[no-any-return]

    async def create(self, kind: str, input_data: Any, *, hours: float = 0.01) -> str:
        body = {
            "modelType": kind,
            "computeNeeded": hours,
            "inputData": input_data,
            "maxPrice": PRICE * 2,
            "qubicAddress": ALICE,
        }
        r = await self.api("POST", "jobs/create", json_body=body, token=self.alice["token"])
        assert r.code == 200, r.body
        return str(body_of(r)["job"]["id"])

    async def job(self, job_id: str) -> dict[str, Any]:
        r = await self.api("GET", f"jobs/{job_id}", token=self.alice["token"])
        assert r.code == 200, r.body
        return body_of(r)  # type: ignore[no-any-return]

    async def until(self, job_id: str, *statuses: str) -> dict[str, Any]:
        async with asyncio.timeout(120):
            while True:
                job = await self.job(job_id)
                if job["status"] in statuses:
                    return job
                await asyncio.sleep(0.1)

    async def result(self, job_id: str) -> Any:
        r = await self.api("GET", f"jobs/{job_id}/result", token=self.alice["token"])
        assert r.code == 200, r.body
        return body_of(r)

    async def entries(self, job_id: str, kind: EntryType) -> list[Transaction]:
        async with self.services.sessionmaker() as session:
            rows = await session.scalars(
                select(Transaction).where(Transaction.job_id == job_id, Transaction.type == kind)
            )
            return list(rows)

    async def escrow(self, job_id: str) -> int:
        async with self.services.sessionmaker() as session:
            held = await session.scalar(
                select(Account.balance).where(
                    Account.job_id == job_id, Account.kind == AccountKind.ESCROW
                )
            )
            return int(held or 0)

    async def audit_ok(self) -> None:
        async with self.services.sessionmaker() as session:
            report = await audit(session)
        assert report.ok, report.violations

    async def row(self, job_id: str) -> Job:
        async with self.services.sessionmaker() as session:
            job = await session.get(Job, job_id)
            assert job is not None
            return job

    def close(self) -> None:
        for process in self.workers.values():
            if process.poll() is None:
                with_signal(process, signal.SIGCONT)
            stop(process)


def with_signal(process: subprocess.Popen[bytes], sig: int) -> None:
    if process.poll() is None:
        os.kill(process.pid, sig)


@pytest.fixture
async def market(api: Api, jp_serverapp: Any, jp_http_port: int, jp_base_url: str, tmp_path):
    url = f"http://127.0.0.1:{jp_http_port}{jp_base_url}"
    m = Market(api, jp_serverapp.web_app.settings, url, tmp_path)
    try:
        yield await m.setup()
    finally:
        m.close()


def slow_sum(n: int, seconds: float) -> int:
    import time

    from qubix_jupyter.api import progress

    for step in range(4):
        time.sleep(seconds / 4)
        progress((step + 1) / 4)
    return sum(range(n))


async def test_a_python_job_runs_on_the_worker_and_is_paid(market: Market):
    await market.provider("exec-a")
    start = await market.services.ledger.wallet_balance(market.alice_id)
    job_id = await market.create("python", encode_python_job(slow_sum, (10, 1.0), {}))
    seen: list[int] = []
    async with asyncio.timeout(120):
        while (job := await market.job(job_id))["status"] != "COMPLETED":
            assert job["status"] in {"ASSIGNED", "RUNNING"}, job
            seen.append(job["progress"])
            await asyncio.sleep(0.05)
    assert seen == sorted(seen)  # stored monotonically
    assert job["progress"] == 100
    answer = await market.result(job_id)
    assert decode_result(answer["result"]) == 45
    row = await market.row(job_id)
    earned = sum(t.amount for t in await market.entries(job_id, EntryType.EARNING))
    assert 1 <= earned <= row.estimated_cost  # at 1 QU/s, a run of a second or more
    assert len(await market.entries(job_id, EntryType.EARNING)) == 1
    assert await market.services.ledger.wallet_balance(market.alice_id) == start - earned
    assert await market.services.ledger.wallet_balance(market.owner_of["exec-a"]) == earned
    assert await market.escrow(job_id) == 0
    await market.audit_ok()


def finishes_at_once() -> str:
    from qubix_jupyter.api import progress

    for step in range(1, 5):
        progress(step / 4)
    return "done"


@sqlite_only
async def test_a_job_that_finishes_at_once_shows_its_progress_before_it_completes(
    market: Market,
):
    await market.provider("exec-quick")
    hub = market.services.events
    before = hub.seq
    job_id = await market.create("python", encode_python_job(finishes_at_once, (), {}))
    listener = hub.connect(market.alice["user"]["id"])

    async def allow(_user: str, _channel: Any) -> bool:
        return True

    await listener.subscribe(f"job:{job_id}", authorize=allow, since_seq=before)
    job = await market.until(job_id, "COMPLETED")
    assert job["progress"] == 100
    await asyncio.sleep(0.2)  # the completion's last events
    frames = []
    while (frame := listener.get_nowait()) is not None:
        frames.append(json.loads(frame))
    listener.close()
    types = [f["type"] for f in frames]
    reported = [f["data"]["progress"] for f in frames if f["type"] == "JOB_PROGRESS"]
    assert reported == sorted(reported)
    assert reported[-1] == 100
    last_progress = max(i for i, t in enumerate(types) if t == "JOB_PROGRESS")
    assert "JOB_COMPLETED" in types[last_progress:], types


def fails() -> None:
    raise ValueError("no such luck")


@sqlite_only
async def test_run_gives_a_jobs_result_in_one_exchange(market: Market):
    """``qubix.run``: the create's answer is held until the job has ended and carries its
    result; a job whose code raised is JobFailed with its error."""
    await market.provider("exec-run")
    client = MarketClient(market.url, token=market.alice["token"])
    metrics = market.services.metrics
    try:
        creates = _requests(metrics, "jobs/create")
        results = _requests(metrics, "jobs/{jobId}/result")
        answer = await asyncio.to_thread(
            qubix_run, slow_sum, 10, 0.2, client=client, max_price=PRICE * 2, hours=0.01
        )
        assert answer == 45
        assert _requests(metrics, "jobs/create") == creates + 1
        assert _requests(metrics, "jobs/{jobId}/result") == results  # none asked for
        with pytest.raises(JobFailed) as failed:
            await asyncio.to_thread(
                qubix_run, fails, client=client, max_price=PRICE * 2, hours=0.01
            )
        assert "no such luck" in str(failed.value)
    finally:
        await asyncio.to_thread(client.close)
    assert market.services.jobs._finish_waiters == {}
    await market.audit_ok()


def _requests(metrics: Any, path: str) -> int:
    """Requests the market answered on a route (its qubix_http_requests counter)."""
    return sum(
        int(sample.value)
        for family in metrics.requests.collect()
        for sample in family.samples
        if sample.name.endswith("_total") and sample.labels["route"].endswith(path)
    )


@sqlite_only
async def test_cell_and_benchmark_jobs_run_through_the_market(market: Market):
    await market.provider("exec-cell")
    cell = await market.create(
        "cell", {"source": "x = 6 * 7\nprint('hello')\nx + 1", "variables": ["x", "nope"]}
    )
    await market.until(cell, "COMPLETED", "FAILED")
    out = decode_result((await market.result(cell))["result"])
    assert out["stdout"] == "hello\n"
    assert out["output"] == "43"
    assert out["variables"] == {"x": 42}
    assert out["missing"] == ["nope"]
    bench = await market.create("benchmark", {"size": 128, "repeats": 2, "device": "cpu"})
    job = await market.until(bench, "COMPLETED", "FAILED")
    assert job["status"] == "COMPLETED", job
    figures = decode_result((await market.result(bench))["result"])
    assert figures["device"] == "cpu"
    assert figures["tflops"] > 0
    await market.audit_ok()


def sleepy(seconds: float) -> str:
    import time

    from qubix_jupyter.api import progress

    progress(0.1)
    time.sleep(seconds)
    return "done"


def failing() -> None:
    raise ValueError("the consumer's bug")


def huge() -> bytes:
    return b"x" * 4_000_000


async def _running(market: Market, job_id: str) -> dict[str, Any]:
    async with asyncio.timeout(120):
        while True:
            job = await market.job(job_id)
            if job["status"] == "RUNNING" and job["progress"] >= 10:
                return job
            await asyncio.sleep(0.1)


@sqlite_only
async def test_a_killed_worker_loses_its_job_to_another_provider_paid_once(market: Market):
    await market.provider("exec-cheap", price=PRICE)
    await market.provider("exec-other", seed=SEED_CAROL, price=PRICE + 1)
    job_id = await market.create("python", encode_python_job(sleepy, (5.0,), {}))
    first = await _running(market, job_id)
    assert first["workerId"] == "exec-cheap"  # the cheapest first
    market.workers["exec-cheap"].kill()
    job = await market.until(job_id, "COMPLETED", "FAILED")
    assert job["status"] == "COMPLETED", job
    assert job["workerId"] == "exec-other"
    assert decode_result((await market.result(job_id))["result"]) == "done"
    earnings = await market.entries(job_id, EntryType.EARNING)
    assert len(earnings) == 1
    assert earnings[0].user_id == market.owner_of["exec-other"]
    assert await market.escrow(job_id) == 0
    await market.audit_ok()


@sqlite_only
async def test_cancel_budget_code_error_and_oversize_results(market: Market):
    await market.provider("exec-f")
    # Cancelled mid-run: the task stops, the time used is charged.
    job_id = await market.create("python", encode_python_job(sleepy, (60.0,), {}))
    await _running(market, job_id)
    r = await market.api("POST", f"jobs/{job_id}/cancel", token=market.alice["token"])
    assert r.code == 200, r.body
    assert (await market.job(job_id))["status"] == "CANCELLED"
    async with asyncio.timeout(60):
        while True:
            if job_id not in market.execution.dispatcher.running:
                break  # the task was stopped on the worker and answered
            await asyncio.sleep(0.1)
    assert len(await market.entries(job_id, EntryType.EARNING)) == 1
    # Over its budget (4 s): stopped and charged the budget, 4 QU at 1 QU/s.
    job_id = await market.create("python", encode_python_job(sleepy, (60.0,), {}), hours=4 / 3600)
    job = await market.until(job_id, "COMPLETED", "FAILED")
    assert job["status"] == "FAILED"
    assert "time budget" in job["error"]
    assert [t.amount for t in await market.entries(job_id, EntryType.EARNING)] == [4]
    # The consumer's code raised: FAILED with its traceback, charged its time.
    job_id = await market.create("python", encode_python_job(failing, (), {}))
    job = await market.until(job_id, "COMPLETED", "FAILED")
    assert job["status"] == "FAILED"
    assert "the consumer's bug" in job["error"]
    assert "Traceback" in job["error"]
    # A result over max_result_bytes (1 MiB): FAILED with a clear error, the rest refunded.
    job_id = await market.create("python", encode_python_job(huge, (), {}))
    job = await market.until(job_id, "COMPLETED", "FAILED")
    assert job["status"] == "FAILED"
    assert "over the cap" in job["error"]
    assert await market.escrow(job_id) == 0
    await market.audit_ok()
