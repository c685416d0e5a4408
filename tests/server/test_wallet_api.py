"""The wallet endpoints and earnings through the real HTTP stack, on SQLite and PostgreSQL, with
the memory settlement backend (a simulated chain) driven round by round."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from typing import Any

import pytest
from pytest_jupyter.jupyter_server import jp_ws_fetch  # noqa: F401 (a fixture)
from sqlalchemy import func, select, update
from tornado.httpclient import HTTPResponse

from qubix_jupyter.db import repositories as repo
from qubix_jupyter.db.ledger import audit
from qubix_jupyter.db.models import Job, Provider, Transaction
from qubix_jupyter.market.money import escrow_for
from qubix_jupyter.market.states import EntryType, JobStatus
from qubix_jupyter.server_extension.handlers import SERVICES
from qubix_jupyter.server_extension.services import Services
from qubix_jupyter.settlement.identity import is_valid_identity
from qubix_jupyter.settlement.keys import KeyPair

from ..conftest import DatabaseURL
from .conftest import SEED_ALICE, SEED_BOB, Api, body_of, login
from .test_websocket import recv, subscribe, ws_connect  # noqa: F401 (a fixture)

# An outside wallet to withdraw to (valid checksum), and the same with its last letter changed.
OUTSIDE = KeyPair.from_seed("o" * 55).identity
BAD_CHECKSUM = OUTSIDE[:-1] + ("A" if OUTSIDE[-1] != "A" else "B")


@pytest.fixture
def qubix_config() -> dict[str, Any]:
    return {"settlement_interval": 0.0}  # the tests drive the rounds


@pytest.fixture
def services(jp_serverapp) -> Services:
    return jp_serverapp.web_app.settings[SERVICES]  # type: ignore[no-any-return]


async def deposit(api: Api, token: str, amount: Any, key: str | None = None) -> Any:
    headers = {"Idempotency-Key": key} if key else None
    return await api(
        "POST", "wallet/deposit", json_body={"amount": amount}, token=token, headers=headers
    )


async def withdraw(api: Api, token: str, amount: Any, to: str, key: str | None = None) -> Any:
    headers = {"Idempotency-Key": key} if key else None
    return await api(
        "POST",
        "wallet/withdraw",
        json_body={"amount": amount, "toAddress": to},
        token=token,
        headers=headers,
    )


@pytest.fixture
def get(jp_fetch: Callable[..., Any]) -> Callable[..., Any]:
    """``GET path?query`` with a market token (the query a string, as a client sends it)."""

    async def run(path: str, token: str) -> HTTPResponse:
        path, _, query = path.partition("?")
        params = [tuple(pair.split("=", 1)) for pair in query.split("&")] if query else None
        return await jp_fetch(  # type: ignore[no-any-return]
            "qubix",
            "api",
            *path.split("/"),
            params=params,
            headers={"Authorization": f"Bearer {token}"},
            raise_error=False,
        )

    return run


def code_of(response: Any) -> str:
    return body_of(response)["error"]["code"]  # type: ignore[no-any-return]


async def test_every_wallet_route_refuses_anonymous_callers(api: Api):
    for method, path in (
        ("GET", "wallet/deposit-address"),
        ("POST", "wallet/deposit"),
        ("POST", "wallet/withdraw"),
        ("GET", "wallet/withdrawals"),
        ("GET", "wallet/transactions"),
        ("GET", "earnings"),
    ):
        for token in (None, "not-a-token"):
            body = {"amount": 1} if method == "POST" else None
            response = await api(method, path, token=token, json_body=body)
            assert response.code == 401, (method, path)
            assert code_of(response) == "unauthorized"


async def test_deposit_address_is_the_callers_own_and_stable(api: Api, services: Services):
    alice, bob = await login(api, SEED_ALICE), await login(api, SEED_BOB)
    first = body_of(await api("GET", "wallet/deposit-address", token=alice["token"]))
    again = body_of(await api("GET", "wallet/deposit-address", token=alice["token"]))
    other = body_of(await api("GET", "wallet/deposit-address", token=bob["token"]))
    assert first == again
    assert first["backend"] == "memory"
    assert first["simulated"] is True
    assert "POST wallet/deposit" in first["instructions"]
    assert is_valid_identity(first["address"])
    assert is_valid_identity(other["address"])
    assert first["address"] != other["address"]
    assert first["address"] == await services.settlement.deposit_address(alice["user"]["id"])


async def test_simulated_deposit_credits_once_per_key_and_publishes(
    api: Api,
    services: Services,
    ws_connect,  # noqa: F811
):
    alice = await login(api, SEED_ALICE)
    ws = await ws_connect(alice["token"])
    await subscribe(ws, "wallet")
    response = await deposit(api, alice["token"], 1500, key="fund-1")
    assert response.code == 200, response.body
    answer = body_of(response)
    assert answer["success"] is True
    assert answer["simulated"] is True
    assert (answer["amount"], answer["balance"]) == (1500, 1500)
    frame = await recv(ws)
    assert frame["type"] == "BALANCE_CHANGED"
    assert frame["channel"] == "wallet"
    assert frame["data"] == {
        "balance": 1500,
        "change": 1500,
        "reason": "deposit",
        "qubicTxHash": answer["qubicTxHash"],
    }
    ws.close()

    replay = await deposit(api, alice["token"], 1500, key="fund-1")
    assert replay.code == 200
    assert replay.headers.get("Idempotent-Replayed") == "true"
    assert body_of(replay) == answer
    conflict = await deposit(api, alice["token"], 99, key="fund-1")
    assert conflict.code == 409
    assert code_of(conflict) == "idempotency_conflict"
    assert await services.ledger.wallet_balance(alice["user"]["id"]) == 1500

    balance = body_of(
        await api("GET", f"wallet/{alice['user']['qubicAddress']}/balance", token=alice["token"])
    )
    assert balance["balance"] == 1500


@pytest.mark.parametrize(
    "amount", [0, -5, 1.5, "10", True, None, 10**15 + 1], ids=lambda a: repr(a)
)
async def test_deposit_refuses_what_is_not_a_whole_positive_amount(api: Api, amount: Any):
    alice = await login(api, SEED_ALICE)
    response = await deposit(api, alice["token"], amount)
    assert response.code == 422, response.body
    assert code_of(response) == "validation_failed"
    error = body_of(response)["error"]["details"]["errors"][0]
    assert error["loc"] == ["amount"]


async def test_withdraw_refusals_move_nothing(api: Api, services: Services):
    alice = await login(api, SEED_ALICE)
    await deposit(api, alice["token"], 100)
    broke = await withdraw(api, alice["token"], 101, OUTSIDE)
    assert broke.code == 402
    assert code_of(broke) == "insufficient_funds"
    bad = await withdraw(api, alice["token"], 10, BAD_CHECKSUM)
    assert bad.code == 422
    assert body_of(bad)["error"]["details"]["errors"][0]["loc"] == ["toAddress"]
    for body in ({"amount": 10}, {"amount": 0, "toAddress": OUTSIDE}, {"amount": "1"}):
        response = await api("POST", "wallet/withdraw", json_body=body, token=alice["token"])
        assert response.code == 422, body
    extra = {"amount": 10, "toAddress": OUTSIDE, "fee": 0}
    response = await api("POST", "wallet/withdraw", json_body=extra, token=alice["token"])
    assert response.code == 422
    assert await services.ledger.wallet_balance(alice["user"]["id"]) == 100
    assert body_of(await api("GET", "wallet/withdrawals", token=alice["token"])) == {"items": []}


async def _count(services: Services, *where: Any) -> int:
    async with services.sessionmaker() as session:
        query = select(func.count()).select_from(Transaction).where(*where)
        return int((await session.execute(query)).scalar_one())


async def test_withdraw_is_idempotent_by_key(
    api: Api, services: Services, database_url: DatabaseURL
):
    alice = await login(api, SEED_ALICE)
    await deposit(api, alice["token"], 1000)
    first = await withdraw(api, alice["token"], 400, OUTSIDE, key="payout-1")
    assert first.code == 200, first.body
    answer = body_of(first)
    assert answer["success"] is True
    assert answer["balance"] == 600
    withdrawal = answer["withdrawal"]
    assert (withdrawal["amount"], withdrawal["toAddress"]) == (400, OUTSIDE)
    assert withdrawal["status"] == "queued"
    assert withdrawal["statusText"] == "queued"

    again = await withdraw(api, alice["token"], 400, OUTSIDE, key="payout-1")
    assert again.code == 200
    assert body_of(again) == answer
    other = await withdraw(api, alice["token"], 401, OUTSIDE, key="payout-1")
    assert other.code == 409
    assert code_of(other) == "idempotency_conflict"

    user_id = alice["user"]["id"]
    assert await services.ledger.wallet_balance(user_id) == 600
    debits = await _count(
        services, Transaction.user_id == user_id, Transaction.type == EntryType.WITHDRAWAL
    )
    assert debits == 1
    listed = body_of(await api("GET", "wallet/withdrawals", token=alice["token"]))["items"]
    assert [w["id"] for w in listed] == [withdrawal["id"]]
    assert len(await services.settlement.backend.payouts_for_user(user_id)) == 1

    # without a key every request is its own
    await withdraw(api, alice["token"], 100, OUTSIDE)
    await withdraw(api, alice["token"], 100, OUTSIDE)
    assert await services.ledger.wallet_balance(user_id) == 400
    assert len(body_of(await api("GET", "wallet/withdrawals", token=alice["token"]))["items"]) == 3


async def test_deposit_balance_withdraw_confirmed_on_the_simulated_chain(
    api: Api,
    services: Services,
    ws_connect,  # noqa: F811
):
    alice = await login(api, SEED_ALICE)
    user_id = alice["user"]["id"]
    await deposit(api, alice["token"], 5000)
    ws = await ws_connect(alice["token"])
    await subscribe(ws, "wallet")
    response = await withdraw(api, alice["token"], 1200, OUTSIDE)
    withdrawal = body_of(response)["withdrawal"]
    frame = await recv(ws)
    assert frame["type"] == "BALANCE_CHANGED"
    assert frame["data"] == {
        "balance": 3800,
        "change": -1200,
        "reason": "withdrawal",
        "withdrawalId": withdrawal["id"],
    }
    ws.close()

    seen = []
    for _ in range(30):
        await services.settlement.settle_once()
        [current] = body_of(await api("GET", "wallet/withdrawals", token=alice["token"]))["items"]
        seen.append(current["status"])
        if current["status"] == "confirmed":
            break
    assert current["status"] == "confirmed", seen
    assert current["statusText"] == "paid"
    assert current["qubicTxHash"]
    assert current["confirmedTick"] is not None
    assert current["attempts"] == 1
    assert "broadcast" in seen  # it went through the chain, not around it
    chain = services.settlement.backend.chain  # type: ignore[attr-defined]
    assert chain.balance(OUTSIDE) == 1200
    assert await services.ledger.wallet_balance(user_id) == 3800
    async with services.sessionmaker() as session:
        report = await audit(session)
    assert report.ok, report.violations
    assert (report.deposits, report.withdrawals) == (5000, 1200)

    history = body_of(await api("GET", "wallet/transactions", token=alice["token"]))
    assert [(t["type"], t["amount"], t["direction"]) for t in history["items"]] == [
        ("WITHDRAWAL", -1200, "out"),
        ("DEPOSIT", 5000, "in"),
    ]


async def test_transactions_are_paged_newest_first_and_filtered(api: Api, get):
    alice, bob = await login(api, SEED_ALICE), await login(api, SEED_BOB)
    for amount in (10, 20, 30, 40, 50):
        await deposit(api, alice["token"], amount)
    await withdraw(api, alice["token"], 5, OUTSIDE)
    await deposit(api, bob["token"], 999)

    def page(response: Any) -> tuple[list[int], int]:
        assert response.code == 200, response.body
        answer = body_of(response)
        return [t["amount"] for t in answer["items"]], answer["total"]

    everything = page(await api("GET", "wallet/transactions", token=alice["token"]))
    assert everything == ([-5, 50, 40, 30, 20, 10], 6)
    second = page(await get("wallet/transactions?offset=2&limit=2", alice["token"]))
    assert second == ([40, 30], 6)
    deposits = page(await get("wallet/transactions?type=DEPOSIT", alice["token"]))
    assert deposits == ([50, 40, 30, 20, 10], 5)
    both = await get("wallet/transactions?type=DEPOSIT,WITHDRAWAL", alice["token"])
    assert page(both) == everything
    assert page(await api("GET", "wallet/transactions", token=bob["token"])) == ([999], 1)
    for bad in ("type=PIZZA", "limit=0", "limit=201", "offset=-1", "colour=red"):
        response = await get(f"wallet/transactions?{bad}", alice["token"])
        assert response.code == 422, bad
        assert code_of(response) == "validation_failed"


async def _earning_job(services: Services, consumer: str, provider_id: str, seconds: int) -> str:
    """A job of ``consumer`` on the provider, run for ``seconds`` and charged (one EARNING)."""
    async with services.sessionmaker() as s, s.begin():
        job = await repo.create_job(
            s, consumer, model_type="python", compute_seconds=3600, max_price=3600
        )
    await services.ledger.lock_escrow(job.id, escrow_for(3600, 3600), idempotency_key=f"{job.id}:l")
    async with services.sessionmaker() as s, s.begin():
        provider = await s.get(Provider, provider_id)
        assert provider is not None
        await repo.assign_job(s, job.id, provider, status=JobStatus.RUNNING)
    await services.ledger.charge(job.id, seconds=seconds, idempotency_key=f"{job.id}:c")
    return job.id


async def _date_earnings(services: Services, job_id: str, when: dt.datetime) -> None:
    async with services.sessionmaker() as session, session.begin():
        await session.execute(
            update(Transaction)
            .where(Transaction.job_id == job_id, Transaction.type == EntryType.EARNING)
            .values(created_at=when)
        )


async def test_earnings_buckets_by_utc_day(api: Api, get, services: Services):
    consumer, owner = await login(api, SEED_ALICE), await login(api, SEED_BOB)
    await deposit(api, consumer["token"], 1_000_000)
    offers = []
    for worker in ("bob-a", "bob-b"):
        registered = await api(
            "POST",
            "providers/quick-register",
            token=owner["token"],
            json_body={
                "type": "native",
                "gpu": {"type": "native", "model": "RTX 4090", "vram": 24, "count": 1},
                "workerId": worker,
                "qubicAddress": owner["user"]["qubicAddress"],
                "pricePerHour": 3600,  # 1 QU a second: a job's earning is its seconds
            },
        )
        assert registered.code == 200, registered.body
        offers.append(body_of(registered)["provider"]["id"])

    now = dt.datetime.now(dt.UTC)
    today = now.replace(hour=0, minute=0, second=0, microsecond=0)
    week = today - dt.timedelta(days=today.weekday())
    month = today.replace(day=1)
    # (provider, seconds earned, when): today, yesterday, 10 and 40 days ago
    plan = [
        (0, 100, today + dt.timedelta(seconds=1)),
        (1, 7, today + dt.timedelta(seconds=2)),
        (0, 20, today - dt.timedelta(hours=12)),
        (0, 3, today - dt.timedelta(days=10)),
        (1, 1000, today - dt.timedelta(days=40)),
    ]
    for index, seconds, when in plan:
        job_id = await _earning_job(services, consumer["user"]["id"], offers[index], seconds)
        await _date_earnings(services, job_id, when)

    def expected(provider: int | None, since: dt.datetime) -> int:
        return sum(s for i, s, w in plan if w >= since and provider in (None, i))

    answer = body_of(await api("GET", "earnings", token=owner["token"]))
    assert answer["total"] == 1130
    assert answer["today"] == 107
    assert answer["thisWeek"] == expected(None, week)
    assert answer["thisMonth"] == expected(None, month)
    history = answer["history"]
    assert len(history) == 30
    assert history[-1] == {"date": today.date().isoformat(), "amount": 107, "jobCount": 2}
    yesterday = (today - dt.timedelta(days=1)).date().isoformat()
    ten_days = (today - dt.timedelta(days=10)).date().isoformat()
    assert history[-2] == {"date": yesterday, "amount": 20, "jobCount": 1}
    assert history[-11] == {"date": ten_days, "amount": 3, "jobCount": 1}
    assert sum(day["amount"] for day in history) == 130  # 40 days ago is outside the window

    one = body_of(await get("earnings?workerId=bob-b&days=60", owner["token"]))
    assert (one["total"], one["today"]) == (1007, 7)
    assert len(one["history"]) == 60
    assert sum(d["amount"] for d in one["history"]) == 1007

    # the consumer earned nothing, and may not read the provider's earnings
    mine = body_of(await get("earnings?days=1", consumer["token"]))
    assert mine == {
        "total": 0,
        "today": 0,
        "thisWeek": 0,
        "thisMonth": 0,
        "history": [{"date": today.date().isoformat(), "amount": 0, "jobCount": 0}],
    }
    theirs = await get("earnings?workerId=bob-a", consumer["token"])
    assert theirs.code == 403
    assert code_of(theirs) == "forbidden"
    missing = await get("earnings?workerId=nobody", owner["token"])
    assert missing.code == 404
    assert code_of(missing) == "unknown_provider"
    for bad in ("days=0", "days=367", "days=x", "workerId=", "extra=1"):
        response = await get(f"earnings?{bad}", owner["token"])
        assert response.code == 422, bad

    # the history reads the same entries as the provider's own total
    async with services.sessionmaker() as session:
        earned = (
            await session.execute(
                select(func.sum(Provider.total_earnings)).where(Provider.id.in_(offers))
            )
        ).scalar_one()
        jobs = (await session.execute(select(func.count()).select_from(Job))).scalar_one()
    assert (earned, jobs) == (1130, 5)
    assert json.dumps(answer)  # plain JSON, integers throughout
    assert all(isinstance(day["amount"], int) for day in history)
