"""The jobs API through the real HTTP stack, on SQLite and PostgreSQL: create (escrow, assign),
read, list, cancel, result; a worker's poll, progress and completion; the Idempotency-Key
mechanism; the money of each lifecycle, with the ledger audit after each step."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from pytest_jupyter.jupyter_server import jp_ws_fetch  # noqa: F401 (a fixture)
from sqlalchemy import func, select
from sqlalchemy.exc import DBAPIError
from tornado.httpclient import HTTPResponse
from tornado.websocket import WebSocketClientConnection

from qubix_jupyter.db.auth_models import IdempotentRequest
from qubix_jupyter.db.ledger import audit
from qubix_jupyter.db.models import Job, Provider, Transaction
from qubix_jupyter.market.matching import Assign, Fail
from qubix_jupyter.server_extension import periodic
from qubix_jupyter.server_extension.handlers import SERVICES
from qubix_jupyter.server_extension.services import Services
from qubix_jupyter.settlement.keys import KeyPair

from ..conftest import DatabaseURL
from .conftest import SEED_ALICE, SEED_BOB, Api, body_of, execute_sql, login

SEED_CAROL = "c" * 55
ALICE = KeyPair.from_seed(SEED_ALICE).identity
BOB = KeyPair.from_seed(SEED_BOB).identity


@pytest.fixture
def services(jp_serverapp: Any) -> Services:
    return jp_serverapp.web_app.settings[SERVICES]  # type: ignore[no-any-return]


class Market:
    """Alice consumes (funded), Bob provides (worker ``bob-1`` online at 40 QU/h)."""

    def __init__(
        self, api: Api, services: Services, url: DatabaseURL, fetch: Callable[..., Any]
    ) -> None:
        self.api = api
        self.fetch = fetch
        self.services = services
        self.url = url

    async def setup(self, *, funds: int = 1000, price: int = 40, online: bool = True) -> Market:
        self.alice = await login(self.api, SEED_ALICE)
        self.bob = await login(self.api, SEED_BOB)
        self.alice_id = self.alice["user"]["id"]
        self.bob_id = self.bob["user"]["id"]
        if funds:
            await self.services.ledger.deposit(self.alice_id, funds, idempotency_key="fund-alice")
        self.worker_token = await self.register("bob-1", price=price, online=online)
        return self

    async def register(
        self, worker_id: str, *, price: int, online: bool = True, model: str = "RTX 4090"
    ) -> str:
        body = {
            "type": "native",
            "gpu": {"type": "native", "vendor": "NVIDIA", "model": model, "vram": 24, "count": 1},
            "workerId": worker_id,
            "qubicAddress": BOB,
            "pricePerHour": price,
            "cpuModel": "Ryzen 9",
            "cpuCores": 16,
            "ramTotal": 64,
        }
        r = await self.api(
            "POST", "providers/quick-register", json_body=body, token=self.bob["token"]
        )
        assert r.code == 200, r.body
        if online:
            await self.set_provider(worker_id, is_online=True)
        return body_of(r)["workerToken"]  # type: ignore[no-any-return]

    async def set_provider(self, worker_id: str, **columns: Any) -> None:
        assignments = ", ".join(f"{column} = :{column}" for column in columns)
        await execute_sql(
            self.url.url,
            f"UPDATE providers SET {assignments} WHERE worker_id = :w",
            w=worker_id,
            **columns,
        )

    async def create(
        self, *, key: str | None = None, token: str | None = None, **changes: Any
    ) -> HTTPResponse:
        headers = {} if key is None else {"Idempotency-Key": key}
        return await self.api(
            "POST",
            "jobs/create",
            json_body=self.job_body(**changes),
            token=token or self.alice["token"],
            headers=headers,
        )

    @staticmethod
    def job_body(**changes: Any) -> dict[str, Any]:
        """A create's body: Alice's ``python`` job, 0.5 h at 100 QU/h at most, with changes."""
        return {
            "modelType": "python",
            "computeNeeded": 0.5,
            "inputData": {"fn": "abc"},
            "maxPrice": 100,
            "qubicAddress": ALICE,
            **changes,
        }

    async def worker(
        self, method: str, path: str, body: Any = None, *, key: str | None = None
    ) -> HTTPResponse:
        headers = {} if key is None else {"Idempotency-Key": key}
        return await self.api(
            method, path, json_body=body, token=self.worker_token, headers=headers
        )

    async def list_jobs(self, token: str, **params: Any) -> HTTPResponse:
        return await self.fetch(  # type: ignore[no-any-return]
            "qubix",
            "api",
            "jobs",
            params=params,
            headers={"Authorization": f"Bearer {token}"},
            raise_error=False,
        )

    async def balance(self, user_id: str) -> int:
        return await self.services.ledger.wallet_balance(user_id)

    async def audit_ok(self) -> None:
        async with self.services.sessionmaker() as session:
            report = await audit(session)
        assert report.ok, report.violations

    async def job_row(self, job_id: str) -> Job:
        async with self.services.sessionmaker() as session:
            job = await session.get(Job, job_id)
            assert job is not None
            return job

    async def backdate(self, job_id: str, *, seconds: int) -> None:
        """Move the job's clock back, as if it had started ``seconds`` ago."""
        earlier = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=seconds)
        await execute_sql(
            self.url.url,
            "UPDATE jobs SET created_at = :t, assigned_at = :t, started_at = CASE "
            "WHEN started_at IS NULL THEN NULL ELSE :t END WHERE id = :j",
            t=earlier,
            j=job_id,
        )


@pytest.fixture
def make_market(
    api: Api, services: Services, database_url: DatabaseURL, jp_fetch: Callable[..., Any]
) -> Callable[..., Any]:
    async def make(**options: Any) -> Market:
        return await Market(api, services, database_url, jp_fetch).setup(**options)

    return make


@pytest.fixture
async def market(make_market: Callable[..., Any]) -> Market:
    return await make_market()  # type: ignore[no-any-return]


def error_code(response: HTTPResponse) -> str:
    return body_of(response)["error"]["code"]  # type: ignore[no-any-return]


COMPLETE = {
    "workerId": "bob-1",
    "status": "completed",
    "result": {"answer": 42},
    "metrics": {"processingTimeSeconds": 1.5, "cpuUsageAvg": 20, "ramUsageAvg": 30},
}


# ---------------------------------------------------------------------- create


async def test_create_locks_escrow_and_assigns_the_cheapest_offer(market: Market):
    await market.register("bob-2", price=20)
    r = await market.create(computeNeeded=0.5, maxPrice=100)
    assert r.code == 200, r.body
    data = body_of(r)
    job = data["job"]
    assert data["success"] is True
    assert job["status"] == "ASSIGNED"
    assert job["workerId"] == "bob-2"
    assert job["pricePerHour"] == 20
    assert job["computeNeeded"] == 0.5
    assert job["maxPrice"] == 100
    # Locked 100 × 0.5 = 50 while unassigned, reduced to 20 × 0.5 = 10 at assignment.
    assert data["estimatedCost"] == job["estimatedCost"] == 10
    assert await market.balance(market.alice_id) == 990
    assert await market.services.ledger.escrow_balance(job["id"]) == 10
    await market.audit_ok()
    # The provider is busy now: the next job goes to the other one.
    r2 = await market.create(computeNeeded=0.5, maxPrice=100)
    assert body_of(r2)["job"]["workerId"] == "bob-1"
    r3 = await market.create(computeNeeded=0.5, maxPrice=100)
    assert body_of(r3)["job"]["status"] == "PENDING"
    assert await market.services.ledger.escrow_balance(body_of(r3)["job"]["id"]) == 50
    await market.audit_ok()


async def test_create_respects_constraints(market: Market):
    r = await market.create(gpuModel=["A100"])
    assert body_of(r)["job"]["status"] == "PENDING"
    assert body_of(r)["job"]["gpuModel"] == ["A100"]
    r = await market.create(minVram=48)
    assert body_of(r)["job"]["status"] == "PENDING"
    r = await market.create(maxPrice=39)
    assert body_of(r)["job"]["status"] == "PENDING"
    r = await market.create(gpuModel=["rtx 4090"], minVram=24, maxPrice=40)
    assert body_of(r)["job"]["status"] == "ASSIGNED"


async def test_create_without_funds_is_402_and_locks_nothing(
    api: Api, services: Services, make_market: Callable[..., Any]
):
    market = await make_market(funds=10)
    r = await market.create(computeNeeded=1, maxPrice=100)
    assert r.code == 402
    assert error_code(r) == "insufficient_funds"
    assert await market.balance(market.alice_id) == 10
    async with services.sessionmaker() as session:
        assert await session.scalar(select(func.count()).select_from(Job)) == 0
    await market.audit_ok()
    listed = body_of(await api("GET", "jobs", token=market.alice["token"]))
    assert listed["total"] == 0


class _Deadlock(Exception):
    sqlstate = "40P01"


async def test_a_create_that_meets_a_deadlock_runs_again_and_locks_once(
    market: Market, monkeypatch: pytest.MonkeyPatch
):
    """The job's insert, escrow and assignment are one transaction: a transient failure after
    the escrow was locked rolls all of it back, and the next try does it once.

    On PostgreSQL (one ``qubix_create_job`` call) the database itself raises the deadlock, from
    a trigger on the first escrow release, after the lock and the assignment were written; on
    SQLite the Python transaction fails at its escrow read."""
    from qubix_jupyter.server_extension import jobs as service

    tries = []
    if market.url.kind == "postgresql":
        await execute_sql(
            market.url.url,
            """
            CREATE SEQUENCE deadlock_once;
            CREATE FUNCTION deadlock_once() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
              -- A sequence is not rolled back with the failed statement: only the first fires.
              IF nextval('deadlock_once') = 1 THEN
                RAISE EXCEPTION 'deadlock detected (test)' USING ERRCODE = 'deadlock_detected';
              END IF;
              RETURN NEW;
            END $$;
            CREATE TRIGGER deadlock_once AFTER INSERT ON transactions
            FOR EACH ROW WHEN (NEW.type = 'ESCROW_RELEASE') EXECUTE FUNCTION deadlock_once();
            """,
        )
        create = service.db.create_job_on

        async def counted(*args: Any, **options: Any) -> Any:
            tries.append(args[1])
            return await create(*args, **options)

        monkeypatch.setattr(service.db, "create_job_on", counted)
    else:
        held = service.db.escrow_held

        async def deadlocked_once(session: Any, job_id: str, **options: Any) -> int:
            tries.append(job_id)
            if len(tries) == 1:
                raise DBAPIError("SELECT …", {}, _Deadlock())
            return await held(session, job_id, **options)

        monkeypatch.setattr(service.db, "escrow_held", deadlocked_once)
    r = await market.create(computeNeeded=1, maxPrice=100)
    assert r.code == 200, r.body
    assert len(tries) == 2
    job = body_of(r)["job"]
    assert job["status"] == "ASSIGNED"
    # Locked at the max price once, then given back down to the provider's 40 QU/h.
    assert await market.balance(market.alice_id) == 1000 - 40
    async with market.services.sessionmaker() as session:
        kinds = (
            await session.scalars(select(Transaction.type).where(Transaction.job_id == job["id"]))
        ).all()
    assert sorted(k.value for k in kinds) == ["ESCROW_LOCK", "ESCROW_RELEASE"]
    await market.audit_ok()


async def test_create_refuses_bad_input(market: Market):
    carol = await login(market.api, SEED_CAROL)
    r = await market.create(token=carol["token"])  # Alice's address, Carol's token
    assert r.code == 403
    for changes in (
        {"computeNeeded": 0},
        {"computeNeeded": 169},
        {"computeNeeded": "1"},
        {"maxPrice": -1},
        {"maxPrice": 1.5},
        {"modelType": ""},
        {"modelType": "has space"},
        {"minVram": -1},
        {"gpuModel": "A100"},
        {"qubicAddress": "X"},
        {"unknown": 1},
    ):
        r = await market.create(**changes)
        assert r.code == 422, (changes, r.body)
    assert (await market.api("POST", "jobs/create", json_body={})).code == 401
    assert await market.balance(market.alice_id) == 1000


# ---------------------------------------------------------------------- Idempotency-Key


async def test_same_key_same_body_replays_and_moves_money_once(market: Market):
    first = await market.create(key="create-1", maxPrice=100, computeNeeded=1)
    second = await market.create(key="create-1", maxPrice=100, computeNeeded=1)
    assert first.code == second.code == 200
    assert second.headers.get("Idempotent-Replayed") == "true"
    assert "Idempotent-Replayed" not in first.headers
    assert body_of(first) == body_of(second)
    assert await market.balance(market.alice_id) == 1000 - 40
    listed = body_of(await market.api("GET", "jobs", token=market.alice["token"]))
    assert listed["total"] == 1
    await market.audit_ok()


async def test_same_key_other_body_is_a_conflict(market: Market):
    assert (await market.create(key="k", computeNeeded=1)).code == 200
    other = await market.create(key="k", computeNeeded=2)
    assert other.code == 409
    assert error_code(other) == "idempotency_conflict"
    assert await market.balance(market.alice_id) == 960
    # Keys are per caller: Carol's "k" is her own.
    carol = await login(market.api, SEED_CAROL)
    await market.services.ledger.deposit(carol["user"]["id"], 100, idempotency_key="fund-c")
    carol_address = KeyPair.from_seed(SEED_CAROL).identity
    r = await market.create(key="k", token=carol["token"], qubicAddress=carol_address)
    assert r.code == 200
    assert "Idempotent-Replayed" not in r.headers


async def test_on_postgresql_the_creates_own_statement_claims_its_key(
    market: Market, monkeypatch: pytest.MonkeyPatch
):
    """One round trip fewer on a job's way: PostgreSQL's create claims the Idempotency-Key in
    its own statement; the store's separate claim runs only for a retry (here a replay) and on
    other databases. The answer is kept under the key either way."""
    store = market.services.idempotency
    claims: list[str] = []
    claim = store.claim

    async def counted(scope: str, key: str, *args: Any, **options: Any) -> Any:
        claims.append(key)
        return await claim(scope, key, *args, **options)

    monkeypatch.setattr(store, "claim", counted)
    first = await market.create(key="folded", computeNeeded=1)
    assert first.code == 200, first.body
    assert claims == ([] if market.url.kind == "postgresql" else ["folded"])
    async with market.services.sessionmaker() as session:
        row = await session.get(IdempotentRequest, (f"user:{market.alice_id}", "folded"))
    assert row is not None
    assert row.status == 200
    assert row.response == body_of(first)
    again = await market.create(key="folded", computeNeeded=1)
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert body_of(again) == body_of(first)
    assert claims[-1] == "folded"
    refused = await market.create(key="folded-poor", computeNeeded=100, maxPrice=100)
    assert refused.code == 402  # and its claim went with it: the retry runs, not "in progress"
    async with market.services.sessionmaker() as session:
        gone = await session.get(IdempotentRequest, (f"user:{market.alice_id}", "folded-poor"))
    assert gone is None


async def test_without_a_key_two_creates_make_two_jobs(market: Market):
    a = body_of(await market.create(maxPrice=40, computeNeeded=1))
    b = body_of(await market.create(maxPrice=40, computeNeeded=1))
    assert a["job"]["id"] != b["job"]["id"]
    assert await market.balance(market.alice_id) == 1000 - 80
    await market.audit_ok()


@pytest.mark.parametrize("key", ["has space", "x" * 201, "tab\tkey", "é"])
async def test_a_malformed_key_is_422(market: Market, key: str):
    r = await market.create(key=key)
    assert r.code == 422
    assert error_code(r) == "validation_failed"
    assert await market.balance(market.alice_id) == 1000


async def test_a_failed_request_can_be_retried_under_its_key(
    api: Api, services: Services, make_market: Callable[..., Any]
):
    market = await make_market(funds=10)
    assert (await market.create(key="retry", computeNeeded=1, maxPrice=40)).code == 402
    await services.ledger.deposit(market.alice_id, 100, idempotency_key="more")
    r = await market.create(key="retry", computeNeeded=1, maxPrice=40)
    assert r.code == 200
    assert "Idempotent-Replayed" not in r.headers
    assert await market.balance(market.alice_id) == 110 - 40
    await market.audit_ok()


async def test_five_concurrent_creates_with_one_key_make_one_job(market: Market):
    answers = await asyncio.gather(
        *(market.create(key="together", computeNeeded=1, maxPrice=100) for _ in range(5))
    )
    ok = [a for a in answers if a.code == 200]
    assert ok, [a.body for a in answers]
    for a in answers:
        assert a.code in (200, 409), a.body
        if a.code == 409:
            assert error_code(a) == "request_in_progress"
    assert len({body_of(a)["job"]["id"] for a in ok}) == 1
    async with market.services.sessionmaker() as session:
        assert await session.scalar(select(func.count()).select_from(Job)) == 1
        locks = await session.scalar(
            select(func.count()).select_from(Transaction).where(Transaction.type == "ESCROW_LOCK")
        )
    assert locks == 1
    assert await market.balance(market.alice_id) == 1000 - 40  # 100 locked, 60 back at 40 QU/h
    await market.audit_ok()
    again = await market.create(key="together", computeNeeded=1, maxPrice=100)
    assert again.headers.get("Idempotent-Replayed") == "true"


# ---------------------------------------------------------------------- lifecycle and money


async def test_full_lifecycle_pays_the_provider_and_refunds_the_rest(market: Market):
    created = body_of(await market.create(computeNeeded=1, maxPrice=100))
    job_id = created["job"]["id"]
    assert await market.balance(market.alice_id) == 960  # 40 QU/h × 1 h
    await market.audit_ok()

    pending = await market.worker("GET", "jobs/pending/bob-1")
    assert pending.code == 200
    [polled] = body_of(pending)
    assert polled["id"] == job_id
    assert polled["inputData"] == {"fn": "abc"}

    for reported, stored in ((10, 10), (5, 10), (150, 100)):
        r = await market.worker(
            "POST",
            f"jobs/{job_id}/progress",
            {"workerId": "bob-1", "progress": reported, "timestamp": "2026-01-01T00:00:00Z"},
        )
        assert r.code == 200, r.body
        assert body_of(r) == {"success": True, "progress": stored}
    row = await market.job_row(job_id)
    assert row.status.value == "RUNNING"
    assert row.started_at is not None
    # The start is the first report's: a later one moves neither it nor the progress down.
    r = await market.worker(
        "POST",
        f"jobs/{job_id}/progress",
        {"workerId": "bob-1", "progress": 50, "timestamp": "2026-01-01T00:00:01Z"},
    )
    assert body_of(r) == {"success": True, "progress": 100}
    assert (await market.job_row(job_id)).started_at == row.started_at
    assert body_of(await market.worker("GET", "jobs/pending/bob-1")) == []

    await market.backdate(job_id, seconds=900)  # a quarter of an hour: 10 QU at 40 QU/h
    done = await market.worker("POST", f"jobs/{job_id}/complete", COMPLETE, key="done-1")
    assert done.code == 200, done.body
    payment = body_of(done)["payment"]
    assert payment["cost"] in (10, 11)  # the request itself may take a second
    assert payment == {
        "cost": payment["cost"],
        "providerEarning": payment["cost"],
        "platformFee": 0,
        "refund": 40 - payment["cost"],
    }
    assert await market.balance(market.alice_id) == 1000 - payment["cost"]
    assert await market.balance(market.bob_id) == payment["cost"]
    assert await market.services.ledger.escrow_balance(job_id) == 0
    await market.audit_ok()

    again = await market.worker("POST", f"jobs/{job_id}/complete", COMPLETE, key="done-1")
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert body_of(again) == body_of(done)
    late = await market.worker("POST", f"jobs/{job_id}/complete", COMPLETE, key="done-2")
    assert late.code == 409
    assert await market.balance(market.bob_id) == payment["cost"]

    result = await market.api("GET", f"jobs/{job_id}/result", token=market.alice["token"])
    assert body_of(result) == {
        "jobId": job_id,
        "status": "COMPLETED",
        "result": {"answer": 42},
        "error": None,
    }
    job = body_of(await market.api("GET", f"jobs/{job_id}", token=market.alice["token"]))
    assert job["status"] == "COMPLETED"
    assert job["actualCost"] == payment["cost"]
    assert job["progress"] == 100
    assert job["completedAt"] is not None
    # Bob sees the job that ran on his provider, not its payload or result.
    seen = body_of(await market.api("GET", f"jobs/{job_id}", token=market.bob["token"]))
    assert seen["id"] == job_id
    assert seen["result"] is None
    assert seen["inputData"] is None
    # The provider is free again and takes the next job.
    nxt = body_of(await market.create(computeNeeded=1, maxPrice=100))
    assert nxt["job"]["status"] == "ASSIGNED"
    await market.audit_ok()


async def test_a_failed_job_is_charged_its_time(market: Market):
    job_id = body_of(await market.create(computeNeeded=1, maxPrice=40))["job"]["id"]
    await market.backdate(job_id, seconds=1800)
    failed = {**COMPLETE, "status": "failed", "result": None, "error": "ZeroDivisionError"}
    r = await market.worker("POST", f"jobs/{job_id}/complete", failed)
    assert r.code == 200, r.body
    payment = body_of(r)["payment"]
    assert payment["cost"] in (20, 21)
    assert payment["refund"] == 40 - payment["cost"]
    result = body_of(await market.api("GET", f"jobs/{job_id}/result", token=market.alice["token"]))
    assert result["status"] == "FAILED"
    assert result["error"] == "ZeroDivisionError"
    await market.audit_ok()


async def test_a_job_over_its_budget_is_charged_the_budget(market: Market):
    job_id = body_of(await market.create(computeNeeded=0.25, maxPrice=40))["job"]["id"]
    await market.backdate(job_id, seconds=7200)
    r = await market.worker("POST", f"jobs/{job_id}/complete", COMPLETE)
    assert body_of(r)["payment"] == {
        "cost": 10,
        "providerEarning": 10,
        "platformFee": 0,
        "refund": 0,
    }
    await market.audit_ok()


@pytest.mark.parametrize("qubix_config", [{"max_result_bytes": 64}])
async def test_a_result_over_the_cap_is_413_and_fails_the_job(market: Market):
    job_id = body_of(await market.create(computeNeeded=1, maxPrice=40))["job"]["id"]
    big = {**COMPLETE, "result": {"data": "x" * 100}}
    r = await market.worker("POST", f"jobs/{job_id}/complete", big, key="big")
    assert r.code == 413
    assert error_code(r) == "payload_too_large"
    row = await market.job_row(job_id)
    assert row.status.value == "FAILED"
    assert row.result is None
    assert "64" in (row.error or "")
    assert await market.services.ledger.escrow_balance(job_id) == 0
    assert await market.balance(market.alice_id) == 1000 - (row.actual_cost or 0)
    again = await market.worker("POST", f"jobs/{job_id}/complete", big, key="big")
    assert again.code == 413
    assert await market.balance(market.alice_id) == 1000 - (row.actual_cost or 0)
    await market.audit_ok()


async def test_cancel_a_pending_job_refunds_it_whole(
    api: Api, services: Services, make_market: Callable[..., Any]
):
    market = await make_market(online=False)
    job_id = body_of(await market.create(computeNeeded=1, maxPrice=100))["job"]["id"]
    assert await market.balance(market.alice_id) == 900
    r = await api("POST", f"jobs/{job_id}/cancel", token=market.alice["token"])
    assert r.code == 200, r.body
    data = body_of(r)
    assert data["job"]["status"] == "CANCELLED"
    assert data["payment"] == {"cost": 0, "providerEarning": 0, "platformFee": 0, "refund": 100}
    assert await market.balance(market.alice_id) == 1000
    again = await api("POST", f"jobs/{job_id}/cancel", token=market.alice["token"])
    assert again.code == 409
    result = await api("GET", f"jobs/{job_id}/result", token=market.alice["token"])
    assert body_of(result)["status"] == "CANCELLED"
    await market.audit_ok()


async def test_cancel_a_running_job_charges_time_used(market: Market):
    job_id = body_of(await market.create(computeNeeded=1, maxPrice=100))["job"]["id"]
    await market.worker(
        "POST",
        f"jobs/{job_id}/progress",
        {"workerId": "bob-1", "progress": 5, "timestamp": "2026-01-01T00:00:00+00:00"},
    )
    await market.backdate(job_id, seconds=900)
    token = market.alice["token"]
    bob = await market.api("POST", f"jobs/{job_id}/cancel", token=market.bob["token"])
    assert bob.code == 403
    r = await market.api(
        "POST", f"jobs/{job_id}/cancel", token=token, headers={"Idempotency-Key": "c"}
    )
    assert r.code == 200, r.body
    payment = body_of(r)["payment"]
    assert payment["cost"] in (10, 11)
    assert payment["refund"] == 40 - payment["cost"]
    again = await market.api(
        "POST", f"jobs/{job_id}/cancel", token=token, headers={"Idempotency-Key": "c"}
    )
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert await market.balance(market.bob_id) == payment["cost"]
    # The worker's late report is refused; the provider is free for the next job.
    late = await market.worker("POST", f"jobs/{job_id}/complete", COMPLETE)
    assert late.code == 409
    assert body_of(await market.create())["job"]["status"] == "ASSIGNED"
    await market.audit_ok()


async def test_unassignable_after_the_timeout_is_refunded_whole(
    api: Api, services: Services, make_market: Callable[..., Any]
):
    market = await make_market(online=False)
    job_id = body_of(await market.create(computeNeeded=1, maxPrice=100))["job"]["id"]
    await services.jobs.sweep()
    assert (await market.job_row(job_id)).status.value == "PENDING"
    later = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=31)
    await services.jobs.sweep(now=later)
    row = await market.job_row(job_id)
    assert row.status.value == "FAILED"
    assert row.error == "unassignable"
    assert await market.balance(market.alice_id) == 1000
    await market.audit_ok()


async def test_a_waiting_job_is_assigned_when_a_provider_comes_online(
    api: Api, services: Services, make_market: Callable[..., Any]
):
    market = await make_market(online=False)
    job_id = body_of(await market.create(computeNeeded=1, maxPrice=100))["job"]["id"]
    await market.set_provider("bob-1", is_online=True)
    await services.jobs.sweep()
    row = await market.job_row(job_id)
    assert row.status.value == "ASSIGNED"
    assert row.price_per_hour == 40
    assert await market.balance(market.alice_id) == 960
    await market.audit_ok()


# ---------------------------------------------------------------------- reads and refusals


async def result_of(market: Market, job_id: str, token: str, **params: Any) -> HTTPResponse:
    """``GET jobs/{id}/result`` with a query (``wait=``)."""
    return await market.fetch(  # type: ignore[no-any-return]
        "qubix",
        "api",
        "jobs",
        job_id,
        "result",
        params=params,
        headers={"Authorization": f"Bearer {token}"},
        raise_error=False,
    )


async def test_a_waiting_result_is_answered_when_the_job_completes(market: Market):
    job_id = body_of(await market.create())["job"]["id"]
    waiting = asyncio.ensure_future(result_of(market, job_id, market.alice["token"], wait=30))
    await asyncio.sleep(0.3)
    assert not waiting.done()
    assert (await market.worker("POST", f"jobs/{job_id}/complete", COMPLETE)).code == 200
    r = await asyncio.wait_for(waiting, 10)
    assert r.code == 200, r.body
    assert body_of(r) == {
        "jobId": job_id,
        "status": "COMPLETED",
        "result": COMPLETE["result"],
        "error": None,
    }
    # A finished job is answered at once, whatever the wait.
    again = await asyncio.wait_for(result_of(market, job_id, market.alice["token"], wait=30), 10)
    assert body_of(again) == body_of(r)


async def test_a_waiting_result_of_a_cancelled_job_says_so(market: Market):
    job_id = body_of(await market.create())["job"]["id"]
    waiting = asyncio.ensure_future(result_of(market, job_id, market.alice["token"], wait=30))
    await asyncio.sleep(0.2)
    cancelled = await market.api("POST", f"jobs/{job_id}/cancel", token=market.alice["token"])
    assert cancelled.code == 200, cancelled.body
    r = await asyncio.wait_for(waiting, 10)
    assert r.code == 200
    assert body_of(r)["status"] == "CANCELLED"


async def test_a_wait_that_runs_out_is_the_unfinished_409(market: Market):
    job_id = body_of(await market.create())["job"]["id"]
    started = time.monotonic()
    r = await result_of(market, job_id, market.alice["token"], wait=0.3)
    assert time.monotonic() - started >= 0.3  # it was held for the wait
    assert r.code == 409
    assert error_code(r) == "invalid_state"
    assert body_of(r)["error"]["details"]["status"] == "ASSIGNED"


async def test_a_wait_is_refused_when_it_is_not_a_wait_or_not_your_job(market: Market):
    job_id = body_of(await market.create())["job"]["id"]
    for bad in ("-1", "61", "nan", "inf", "soon"):
        r = await result_of(market, job_id, market.alice["token"], wait=bad)
        assert r.code == 422, (bad, r.body)
    carol = await login(market.api, SEED_CAROL)
    # Someone else's job is refused before any waiting.
    r = await asyncio.wait_for(result_of(market, job_id, carol["token"], wait=30), 10)
    assert r.code == 403
    r = await asyncio.wait_for(result_of(market, "no-such-job", carol["token"], wait=30), 10)
    assert r.code == 404


async def create_waiting(
    market: Market, wait: Any, *, key: str | None = None, **changes: Any
) -> HTTPResponse:
    """``POST jobs/create?wait=``: Alice's job, the answer held until it ends."""
    headers = {"Authorization": f"Bearer {market.alice['token']}"}
    if key is not None:
        headers["Idempotency-Key"] = key
    return await market.fetch(  # type: ignore[no-any-return]
        "qubix",
        "api",
        "jobs",
        "create",
        method="POST",
        body=json.dumps(market.job_body(**changes)),
        params={"wait": wait},
        headers=headers,
        raise_error=False,
    )


async def pending_job_id(market: Market) -> str:
    """The one job waiting for Bob's worker (its id, before the create has answered)."""
    async with asyncio.timeout(10):
        while True:
            pending = body_of(await market.worker("GET", "jobs/pending/bob-1"))
            if pending:
                [job] = pending
                return str(job["id"])
            await asyncio.sleep(0.05)


async def test_a_waiting_create_is_answered_with_the_job_as_it_ended(market: Market):
    waiting = asyncio.ensure_future(create_waiting(market, 30, key="run-1"))
    job_id = await pending_job_id(market)
    await asyncio.sleep(0.3)
    assert not waiting.done()  # held while the job runs
    # A retry under the same key is answered at once: the job as it was created.
    retry = await asyncio.wait_for(create_waiting(market, 30, key="run-1"), 10)
    assert retry.code == 200, retry.body
    assert retry.headers.get("Idempotent-Replayed") == "true"
    assert body_of(retry)["job"]["id"] == job_id
    assert body_of(retry)["job"]["status"] == "ASSIGNED"
    assert body_of(retry)["job"]["result"] is None
    assert not waiting.done()
    assert (await market.worker("POST", f"jobs/{job_id}/complete", COMPLETE)).code == 200
    r = await asyncio.wait_for(waiting, 10)
    assert r.code == 200, r.body
    answer = body_of(r)
    assert answer["success"] is True
    assert answer["job"]["id"] == job_id
    assert answer["job"]["status"] == "COMPLETED"
    assert answer["job"]["result"] == COMPLETE["result"]
    assert answer["job"]["workerId"] == "bob-1"
    assert answer["job"]["actualCost"] is not None
    assert answer["estimatedCost"] == answer["job"]["estimatedCost"]
    # Once the job has ended, a retry still gets the create's answer, and nothing moves.
    balance = await market.balance(market.alice_id)
    again = await create_waiting(market, 30, key="run-1")
    assert body_of(again) == body_of(retry)
    assert await market.balance(market.alice_id) == balance
    assert market.services.jobs._finish_waiters == {}
    await market.audit_ok()


async def test_a_waiting_create_of_a_job_that_fails_says_so(market: Market):
    waiting = asyncio.ensure_future(create_waiting(market, 30))
    job_id = await pending_job_id(market)
    failed = {**COMPLETE, "status": "failed", "result": None, "error": "it broke"}
    assert (await market.worker("POST", f"jobs/{job_id}/complete", failed)).code == 200
    r = await asyncio.wait_for(waiting, 10)
    assert r.code == 200, r.body
    assert body_of(r)["job"]["status"] == "FAILED"
    assert body_of(r)["job"]["error"] == "it broke"
    await market.audit_ok()


async def test_a_waiting_create_that_runs_out_answers_the_job_as_it_stands(market: Market):
    started = time.monotonic()
    r = await create_waiting(market, 0.3)
    assert time.monotonic() - started >= 0.3  # it was held for the wait
    assert r.code == 200, r.body
    assert body_of(r)["job"]["status"] == "ASSIGNED"
    assert body_of(r)["job"]["workerId"] == "bob-1"
    assert market.services.jobs._finish_waiters == {}


async def test_a_waiting_create_is_refused_as_a_create_is(market: Market):
    for bad in ("-1", "61", "nan", "inf", "soon"):
        r = await create_waiting(market, bad)
        assert r.code == 422, (bad, r.body)
    r = await create_waiting(market, 30, maxPrice=10**9)  # more than Alice has: 402 at once
    assert r.code == 402, r.body
    assert await market.balance(market.alice_id) == 1000  # nothing created, nothing locked
    assert market.services.jobs._finish_waiters == {}


async def test_stopping_the_assigner_lets_a_sweep_under_way_finish(
    services: Services, monkeypatch: pytest.MonkeyPatch
):
    """A sweep cancelled mid-statement could leave its connection checked out and never
    closed: stop waits for the pass under way, and cancels only one stuck past the grace."""
    jobs = services.jobs
    await jobs.stop()  # the extension's own sweeps
    entered, release = asyncio.Event(), asyncio.Event()
    finished: list[bool] = []

    async def slow_sweep() -> None:
        entered.set()
        await release.wait()
        finished.append(True)

    monkeypatch.setattr(jobs, "sweep", slow_sweep)
    try:
        jobs.start()
        await asyncio.wait_for(entered.wait(), 5)
        stopping = asyncio.ensure_future(jobs.stop())
        await asyncio.sleep(0.2)
        assert not stopping.done()  # the pass under way is let finish
        release.set()
        await asyncio.wait_for(stopping, 5)
        assert finished == [True]

        monkeypatch.setattr(periodic, "STOP_GRACE_SECONDS", 0.2)
        entered.clear()
        release.clear()
        jobs.start()
        await asyncio.wait_for(entered.wait(), 5)
        await asyncio.wait_for(jobs.stop(), 5)  # stuck: cancelled after the grace
        assert finished == [True]
    finally:
        monkeypatch.undo()
        jobs.start()  # as the extension had it, for its own stop


async def test_a_job_is_never_seen_completed_without_its_result(
    market: Market, monkeypatch: pytest.MonkeyPatch
):
    """The result is stored in the transaction that ends the job: the moment the charge has
    committed, a reader sees the job COMPLETED with its result, and its provider free."""
    ledger = market.services.jobs._ledger
    # The settlement: one end_job call on PostgreSQL, a charge with the result within elsewhere.
    name = "end_job" if ledger.native else "charge"
    settle = getattr(ledger, name)
    seen: list[Job] = []

    async def settle_then_look(job_id: str, **options: Any) -> Any:
        receipt = await settle(job_id, **options)
        seen.append(await market.job_row(job_id))
        return receipt

    monkeypatch.setattr(ledger, name, settle_then_look)
    job_id = body_of(await market.create())["job"]["id"]
    assert (await market.worker("POST", f"jobs/{job_id}/complete", COMPLETE)).code == 200
    [row] = seen
    assert row.status.value == "COMPLETED"
    assert row.result == COMPLETE["result"]
    async with market.services.sessionmaker() as session:
        provider = (
            await session.scalars(select(Provider).where(Provider.worker_id == "bob-1"))
        ).one()
    assert provider.current_job_id is None
    await market.audit_ok()


async def test_reads_check_ownership(market: Market):
    job_id = body_of(await market.create())["job"]["id"]
    carol = await login(market.api, SEED_CAROL)
    for path in (f"jobs/{job_id}", f"jobs/{job_id}/result"):
        assert (await market.api("GET", path, token=carol["token"])).code == 403
        assert (await market.api("GET", path)).code == 401
    assert (await market.api("GET", f"jobs/{job_id}/result", token=market.bob["token"])).code == 403
    r = await market.api("GET", f"jobs/{job_id}/result", token=market.alice["token"])
    assert r.code == 409
    assert error_code(r) == "invalid_state"
    for path in ("jobs/no-such-job", "jobs/no-such-job/result"):
        r = await market.api("GET", path, token=market.alice["token"])
        assert r.code == 404
        assert error_code(r) == "unknown_job"
    r = await market.api("POST", "jobs/no-such-job/cancel", token=market.alice["token"])
    assert r.code == 404
    assert (await market.api("POST", f"jobs/{job_id}/cancel")).code == 401
    assert (await market.api("GET", "jobs")).code == 401


async def test_list_my_jobs_paged_and_filtered(market: Market):
    ids = [body_of(await market.create())["job"]["id"] for _ in range(3)]  # 1 assigned, 2 pending
    token = market.alice["token"]
    page = body_of(await market.list_jobs(token, limit=2))
    assert page["total"] == 3
    assert len(page["items"]) == 2
    rest = body_of(await market.list_jobs(token, limit=2, offset=2))
    assert {j["id"] for j in page["items"] + rest["items"]} == set(ids)
    pending = body_of(await market.list_jobs(token, status="PENDING"))
    assert pending["total"] == 2
    assert all(j["status"] == "PENDING" for j in pending["items"])
    assert body_of(await market.api("GET", "jobs", token=market.bob["token"]))["total"] == 0
    for bad in ({"status": "DONE"}, {"limit": 0}, {"offset": -1}, {"nope": 1}):
        assert (await market.list_jobs(token, **bad)).code == 422


async def test_worker_routes_check_the_worker(market: Market):
    job_id = body_of(await market.create())["job"]["id"]
    other_token = await market.register("bob-2", price=50)
    progress = {"workerId": "bob-1", "progress": 1, "timestamp": "2026-01-01T00:00:00Z"}
    # No token, a user token, another worker's token: 401, 401, 403.
    assert (await market.api("GET", "jobs/pending/bob-1")).code == 401
    r = await market.api("GET", "jobs/pending/bob-1", token=market.bob["token"])
    assert r.code == 401
    r = await market.api("GET", "jobs/pending/bob-1", token=other_token)
    assert r.code == 403
    r = await market.api("POST", f"jobs/{job_id}/progress", json_body=progress, token=other_token)
    assert r.code == 403
    r = await market.api(
        "POST",
        f"jobs/{job_id}/progress",
        json_body={**progress, "workerId": "bob-2"},
        token=other_token,
    )
    assert r.code == 403
    r = await market.api("POST", f"jobs/{job_id}/complete", json_body=COMPLETE, token=other_token)
    assert r.code == 403
    r = await market.worker("POST", "jobs/nope/progress", progress)
    assert r.code == 404
    for bad in (
        {**progress, "progress": "10"},
        {**progress, "timestamp": "yesterday"},
        {"workerId": "bob-1", "progress": 1},
    ):
        assert (await market.worker("POST", f"jobs/{job_id}/progress", bad)).code == 422
    for bad in ({**COMPLETE, "status": "done"}, {**COMPLETE, "metrics": {}}):
        assert (await market.worker("POST", f"jobs/{job_id}/complete", bad)).code == 422
    assert (await market.job_row(job_id)).status.value == "ASSIGNED"
    await market.audit_ok()


# ---------------------------------------------------------------------- events


async def frame_of(ws: WebSocketClientConnection, kind: str) -> dict[str, Any]:
    """The next frame of type ``kind`` (others, e.g. coalesced marketplace ones, skipped)."""
    while True:
        message = await asyncio.wait_for(ws.read_message(), 10.0)
        assert message is not None, f"closed: {ws.close_code} {ws.close_reason}"
        frame = json.loads(message)
        if frame["type"] == kind:
            return frame  # type: ignore[no-any-return]


async def subscribed(ws: WebSocketClientConnection, channel: str) -> None:
    await ws.write_message(json.dumps({"type": "subscribe", "channel": channel}))
    await frame_of(ws, "SUBSCRIBED")


async def test_the_lifecycle_is_published(
    api: Api,
    services: Services,
    make_market: Callable[..., Any],
    jp_ws_fetch: Callable[..., Any],  # noqa: F811 (the fixture, imported above)
):
    market = await make_market(online=False)

    async def connect(token: str) -> WebSocketClientConnection:
        headers = {"Authorization": f"Bearer {token}"}
        return await jp_ws_fetch("qubix", "api", "events", headers=headers)  # type: ignore[no-any-return]

    alice = await connect(market.alice["token"])
    bob = await connect(market.bob["token"])
    public = await connect(market.alice["token"])
    try:
        await subscribed(alice, "wallet")
        await subscribed(bob, "wallet")
        job_id = body_of(await market.create(computeNeeded=1, maxPrice=100))["job"]["id"]
        locked = await frame_of(alice, "BALANCE_CHANGED")
        assert locked["data"] == {
            "balance": 900,
            "change": -100,
            "reason": "escrow_lock",
            "jobId": job_id,
        }
        await subscribed(alice, f"job:{job_id}")
        await subscribed(public, "marketplace")

        await market.set_provider("bob-1", is_online=True)
        await services.jobs.sweep()
        # The job's change is told first, then the wallet's (read after it was dispatched).
        assigned = await frame_of(alice, "JOB_ASSIGNED")
        assert assigned["channel"] == f"job:{job_id}"
        assert assigned["data"]["job"]["status"] == "ASSIGNED"
        assert assigned["data"]["job"]["workerId"] == "bob-1"
        released = await frame_of(alice, "BALANCE_CHANGED")
        assert released["data"]["change"] == 60
        assert released["data"]["balance"] == 960
        busy = await frame_of(public, "MARKETPLACE_UPDATE")
        assert [(p["workerId"], p["status"]) for p in busy["data"]["providers"]] == [
            ("bob-1", "busy")
        ]

        progress = {"workerId": "bob-1", "progress": 30, "timestamp": "2026-01-01T00:00:00Z"}
        assert (await market.worker("POST", f"jobs/{job_id}/progress", progress)).code == 200
        reported = await frame_of(alice, "JOB_PROGRESS")
        assert reported["data"] == {"jobId": job_id, "progress": 30, "status": "RUNNING"}

        await market.backdate(job_id, seconds=900)
        done = await market.worker("POST", f"jobs/{job_id}/complete", COMPLETE)
        cost = body_of(done)["payment"]["cost"]
        completed = await frame_of(alice, "JOB_COMPLETED")
        assert completed["data"]["job"]["status"] == "COMPLETED"
        refunded = await frame_of(alice, "BALANCE_CHANGED")
        assert refunded["data"]["reason"] == "job_refund"
        assert refunded["data"]["balance"] == 1000 - cost
        earned = await frame_of(bob, "BALANCE_CHANGED")
        assert earned["data"]["reason"] == "job_earning"
        assert earned["data"]["change"] == earned["data"]["balance"] == cost
        free = await frame_of(public, "MARKETPLACE_UPDATE")
        assert [(p["workerId"], p["status"]) for p in free["data"]["providers"]] == [
            ("bob-1", "online")
        ]
    finally:
        for ws in (alice, bob, public):
            ws.close()


@pytest.mark.parametrize("qubix_config", [{"platform_fee_bps": 2500}])
async def test_the_platform_fee_comes_out_of_the_providers_pay(market: Market):
    job_id = body_of(await market.create(computeNeeded=1, maxPrice=40))["job"]["id"]
    await market.backdate(job_id, seconds=3600)
    payment = body_of(await market.worker("POST", f"jobs/{job_id}/complete", COMPLETE))["payment"]
    assert payment == {"cost": 40, "providerEarning": 30, "platformFee": 10, "refund": 0}
    assert await market.balance(market.bob_id) == 30
    assert await market.services.ledger.balance("platform:fees") == 10
    await market.audit_ok()


async def test_concurrent_creates_never_share_a_provider(market: Market):
    answers = await asyncio.gather(
        *(market.create(computeNeeded=1, maxPrice=100) for _ in range(5))
    )
    jobs = [body_of(a)["job"] for a in answers]
    assert sorted(j["status"] for j in jobs) == ["ASSIGNED"] + ["PENDING"] * 4
    # One escrow at the provider's 40 QU/h, four at the max price of 100 QU/h.
    assert await market.balance(market.alice_id) == 1000 - 40 - 4 * 100
    await market.audit_ok()


async def test_a_provider_with_a_job_is_busy_whatever_its_flags_say(market: Market):
    first = body_of(await market.create())["job"]
    assert first["status"] == "ASSIGNED"
    # A heartbeat rewrites the flags as the worker sees them; the job is still the market's.
    await market.set_provider("bob-1", is_available=True, current_job_id=None)
    second = body_of(await market.create())["job"]
    assert second["status"] == "PENDING"
    await market.services.jobs.sweep()
    assert (await market.job_row(second["id"])).status.value == "PENDING"
    done = await market.worker("POST", f"jobs/{first['id']}/complete", COMPLETE)
    assert done.code == 200
    await market.services.jobs.sweep()
    assert (await market.job_row(second["id"])).status.value == "ASSIGNED"
    await market.audit_ok()


async def test_a_lost_provider_moves_the_job_then_fails_it_refunded(market: Market):
    jobs = market.services.jobs
    job_id = body_of(await market.create(computeNeeded=1, maxPrice=100))["job"]["id"]
    await market.register("bob-2", price=50)
    assert await market.balance(market.alice_id) == 960
    progress = {"workerId": "bob-1", "progress": 40, "timestamp": "2026-01-01T00:00:00Z"}
    await market.worker("POST", f"jobs/{job_id}/progress", progress)

    moved = await jobs.provider_lost(job_id)
    assert isinstance(moved, Assign)
    row = await market.job_row(job_id)
    assert row.status.value == "ASSIGNED"
    assert row.price_per_hour == 50
    assert row.reassignments == 1
    assert row.progress == 40  # progress never goes back
    assert row.started_at is None
    assert await market.balance(market.alice_id) == 950  # escrow topped up to 50
    # The old worker's reports are refused now.
    late = await market.worker("POST", f"jobs/{job_id}/progress", progress)
    assert late.code == 403
    await market.audit_ok()

    back = await jobs.provider_lost(job_id)  # bob-1 is free again, and cheaper
    assert isinstance(back, Assign)
    assert (await market.job_row(job_id)).price_per_hour == 40
    assert await market.balance(market.alice_id) == 960
    await market.audit_ok()

    failed = await jobs.provider_lost(job_id)  # max_reassignments (2) used up
    assert failed == Fail("provider_lost")
    row = await market.job_row(job_id)
    assert row.status.value == "FAILED"
    assert row.error == "provider_lost"
    assert await market.balance(market.alice_id) == 1000
    assert await market.balance(market.bob_id) == 0
    assert await jobs.provider_lost(job_id) is None
    # Both providers are free for the next job.
    assert body_of(await market.create())["job"]["status"] == "ASSIGNED"
    assert body_of(await market.create())["job"]["status"] == "ASSIGNED"
    await market.audit_ok()


async def test_a_jobs_end_wakes_the_assigner_only_while_a_job_may_be_waiting(market: Market):
    """The assigner's sweep runs every second; a job's end runs it at once only when a job may
    be waiting for the provider it frees, not after every job."""
    jobs = market.services.jobs
    await jobs.stop()  # the extension's own sweeps: the wake is looked at here instead
    try:
        first = body_of(await market.create())["job"]
        assert first["status"] == "ASSIGNED"
        await jobs.sweep()  # finds no job waiting
        jobs._wake.clear()
        assert (await market.worker("POST", f"jobs/{first['id']}/complete", COMPLETE)).code == 200
        assert not jobs._wake.is_set()

        busy = body_of(await market.create())["job"]
        waiting = body_of(await market.create())["job"]
        assert (busy["status"], waiting["status"]) == ("ASSIGNED", "PENDING")
        assert (await market.worker("POST", f"jobs/{busy['id']}/complete", COMPLETE)).code == 200
        assert jobs._wake.is_set()
        await jobs.sweep()
        assert (await market.job_row(waiting["id"])).status.value == "ASSIGNED"
    finally:
        jobs.start()  # as the extension had it, for its own stop


async def test_a_runs_answer_settles_only_on_its_run_and_once(market: Market):
    """The dispatcher's answer of a run (``step``, with what it knows of the charge): on
    PostgreSQL the run is checked in the statement that ends the job. An answer of another run,
    or another provider, settles nothing; the run's own settles once, charged from the time it
    gave; a repeat of it settles nothing more."""
    from qubix_jupyter.db.auth_store import WorkerOwner
    from qubix_jupyter.server_extension.jobs import RunClock

    jobs = market.services.jobs
    job_id = body_of(await market.create(computeNeeded=1, maxPrice=100))["job"]["id"]
    await market.backdate(job_id, seconds=900)  # a quarter of an hour: 10 QU at 40 QU/h
    row = await market.job_row(job_id)
    assert row.status.value == "ASSIGNED"
    bob = WorkerOwner(row.provider_id, "bob-1", user_id="", token_id="")
    clock = RunClock(row.assigned_at, row.compute_seconds)  # as the dispatcher knew it

    async def answer(owner: WorkerOwner, step: int) -> Any:
        return await jobs.complete(
            job_id,
            owner,
            worker_id=owner.worker_id,
            succeeded=True,
            result={"value": 42},
            error=None,
            request_key=f"job:{job_id}:run:{step}",
            step=step,
            clock=clock,
        )

    assert await answer(bob, 1) is None  # an answer of another run
    stranger = WorkerOwner(str(uuid.uuid4()), "bob-1", user_id="", token_id="")
    assert await answer(stranger, 0) is None  # of another provider
    assert (await market.job_row(job_id)).status.value == "ASSIGNED"
    assert await market.balance(market.alice_id) == 960  # nothing moved

    settled = await answer(bob, 0)
    assert settled is not None
    job, payment = settled
    assert job.status.value == "COMPLETED"
    assert job.result == {"value": 42}
    assert payment.cost in (10, 11)  # the test itself may take a second
    assert payment.refund == 40 - payment.cost
    assert await answer(bob, 0) is None  # settled already: nothing more
    assert await market.balance(market.alice_id) == 1000 - payment.cost
    await market.audit_ok()
