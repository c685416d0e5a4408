"""The market's execution survives a stopped worker and its own crash, on real Dask worker
processes: a SIGSTOPped worker loses its job to another provider and its late answer settles
nothing; a market killed with SIGKILL mid-job reconciles the job on restart (moved and
completed, or failed and refunded), pays it at most once and leaves the ledger balanced."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, func, select

from qubix_jupyter.api import decode_result, encode_python_job
from qubix_jupyter.client import MarketClient
from qubix_jupyter.db.engine import make_engine, make_sessionmaker, sync_url
from qubix_jupyter.db.ledger import audit
from qubix_jupyter.db.models import Account, Job, Transaction
from qubix_jupyter.market.states import AccountKind, EntryType, JobStatus

from ..client.conftest import Market as ServedMarket
from ..client.conftest import free_port, sqlite_copy
from ..dask.workers import start_worker, stop
from .conftest import SEED_ALICE, SEED_BOB, Api
from .test_execution import PRICE, SEED_CAROL, Market, _running, sleepy, with_signal


@pytest.fixture
async def market(api: Api, jp_serverapp: Any, jp_http_port: int, jp_base_url: str, tmp_path):
    url = f"http://127.0.0.1:{jp_http_port}{jp_base_url}"
    m = Market(api, jp_serverapp.web_app.settings, url, tmp_path)
    try:
        yield await m.setup()
    finally:
        m.close()


@pytest.mark.parametrize(
    "qubix_config",
    [{"execute_jobs": True, "worker_ttl_seconds": 3, "heartbeat_interval": 1.0}],
)
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_a_stopped_worker_loses_its_job_and_its_late_answer_pays_nothing(market: Market):
    await market.provider("stop-cheap", price=PRICE)
    await market.provider("stop-other", seed=SEED_CAROL, price=PRICE + 1)
    job_id = await market.create("python", encode_python_job(sleepy, (4.0,), {}))
    first = await _running(market, job_id)
    assert first["workerId"] == "stop-cheap"
    stopped = market.workers["stop-cheap"]
    with_signal(stopped, signal.SIGSTOP)
    try:
        job = await market.until(job_id, "COMPLETED", "FAILED")
        # Silent past the worker TTL: removed, and the job ran again on the other provider.
        assert "stop-cheap" not in market.execution.workers
    finally:
        with_signal(stopped, signal.SIGCONT)
    assert job["status"] == "COMPLETED", job
    assert job["workerId"] == "stop-other"
    assert decode_result((await market.result(job_id))["result"]) == "done"
    row = await market.row(job_id)
    assert row.reassignments == 1
    # The old run's child finishes its sleep and the woken worker answers: it settles nothing.
    # Wait until the woken worker is back in touch (or gone for good) before looking.
    async with asyncio.timeout(60):
        while stopped.poll() is None and "stop-cheap" not in market.execution.workers:  # noqa: ASYNC110
            await asyncio.sleep(0.2)
    await asyncio.sleep(2.0)  # the old run's own 4 s are over by now; its answer had its chance
    earnings = await market.entries(job_id, EntryType.EARNING)
    assert len(earnings) == 1
    assert earnings[0].user_id == market.owner_of["stop-other"]
    assert (await market.row(job_id)).status is JobStatus.COMPLETED
    assert await market.escrow(job_id) == 0
    await market.audit_ok()


# ---------------------------------------------------------------------- the market killed


class Crashable(ServedMarket):
    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait(timeout=30)
        self.process = None


@pytest.fixture
def served(tmp_path: Path, sqlite_template: Path) -> Iterator[Crashable]:
    port = free_port()
    market = Crashable(tmp_path, sqlite_copy(tmp_path, sqlite_template))
    # `qubix serve` reads the Jupyter config of its JUPYTER_CONFIG_DIR (the market's folder):
    # a fixed scheduler port, so the workers find the restarted market where they left it.
    config_dir = tmp_path / "jupyter_config_dir"
    config_dir.mkdir()
    qubix = {
        "execute_jobs": True,
        "scheduler_listen": f"tcp://127.0.0.1:{port}",
        "worker_ttl_seconds": 3,
        "heartbeat_interval": 1.0,
    }
    (config_dir / "jupyter_server_config.json").write_text(json.dumps({"QubixExtension": qubix}))
    market.scheduler = f"tcp://127.0.0.1:{port}"  # type: ignore[attr-defined]
    market.start()
    try:
        yield market
    finally:
        market.stop()


def _signed_in(market: ServedMarket, seed: str) -> MarketClient:
    client = MarketClient(market.url, seed=seed, retries=1)
    client.sign_in()
    return client


def _worker(market: Crashable, name: str, token: str, tmp_path: Path) -> subprocess.Popen[bytes]:
    os.environ["QUBIX_MARKET_URL"] = market.url
    try:
        return start_worker(market.scheduler, name, token, tmp_path)  # type: ignore[attr-defined]
    finally:
        del os.environ["QUBIX_MARKET_URL"]


def _wait(what: str, check: Any, timeout: float = 120) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"{what}: not within {timeout} s")


def _ledger(database_url: str) -> dict[str, Any]:
    """The ledger read straight from the database file (the market's process is separate)."""
    engine = create_engine(sync_url(database_url))
    try:
        with engine.connect() as connection:
            escrows = dict(
                connection.execute(
                    select(Account.job_id, Account.balance).where(
                        Account.kind == AccountKind.ESCROW
                    )
                ).all()
            )
            earnings = dict(
                connection.execute(
                    select(Transaction.job_id, func.count())
                    .where(Transaction.type == EntryType.EARNING)
                    .group_by(Transaction.job_id)
                ).all()
            )
            jobs = dict(connection.execute(select(Job.id, Job.status)).all())
    finally:
        engine.dispose()
    return {"escrows": escrows, "earnings": earnings, "jobs": jobs}


async def _audit(database_url: str) -> Any:
    engine = make_engine(database_url)
    try:
        async with make_sessionmaker(engine)() as session:
            return await audit(session)
    finally:
        await engine.dispose()


def test_a_market_killed_mid_job_reconciles_it_on_restart(served: Crashable, tmp_path: Path):
    alice = _signed_in(served, SEED_ALICE)
    bob = _signed_in(served, SEED_BOB)
    carol = _signed_in(served, SEED_CAROL)
    workers: list[subprocess.Popen[bytes]] = []
    try:
        alice.deposit(10_000)
        cpu = {"type": "native", "count": 0}
        tokens = {
            "crash-cheap": bob.quick_register("crash-cheap", cpu, PRICE).worker_token,
            "crash-other": carol.quick_register("crash-other", cpu, PRICE + 1).worker_token,
        }
        for name, token in tokens.items():
            workers.append(_worker(served, name, str(token), tmp_path))
        for name in tokens:
            _wait(f"{name} online", lambda n=name: alice.provider(n).status == "online")
        created = alice.create_job(
            "python",
            encode_python_job(sleepy, (3.0,), {}),
            compute_needed=0.01,
            max_price=PRICE * 2,
        )
        job_id = created.job.id  # type: ignore[union-attr]
        _wait(
            "the job running",
            lambda: (j := alice.job(job_id)).status == "RUNNING" and j.progress >= 10,
        )
        assert alice.job(job_id).worker_id == "crash-cheap"

        served.kill()
        # Workers close when their scheduler goes; the providers' machines start them again.
        for process in workers:
            stop(process)
        served.start()
        for name, token in tokens.items():
            workers.append(_worker(served, name, str(token), tmp_path))

        job = _wait(
            "the job reconciled",
            lambda: (j := alice.job(job_id)).status in {"COMPLETED", "FAILED"} and j,
            timeout=180,
        )
        ledger = _ledger(served.database_url)
        assert ledger["escrows"].get(job_id, 0) == 0  # a terminal job locks nothing
        assert ledger["earnings"].get(job_id, 0) <= 1  # paid at most once
        if job.status == "COMPLETED":
            assert job.worker_id in tokens
            assert decode_result(alice.job_result(job_id).result) == "done"
            assert ledger["earnings"][job_id] == 1
        else:
            assert ledger["earnings"].get(job_id, 0) == 0
            assert alice.balance().balance == 10_000  # refunded whole
    finally:
        for process in workers:
            stop(process)
        for client in (alice, bob, carol):
            client.close()
    served.stop()
    report = asyncio.run(_audit(served.database_url))
    assert report.ok, report.violations
