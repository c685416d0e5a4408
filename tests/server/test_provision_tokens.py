"""Provisioning tokens through the real stack, on SQLite and PostgreSQL: issued to a signed-in
user (stored hashed, expiring), used for ``providers/quick-register`` on the owner's behalf any
number of times, refused everywhere else, after expiry and after revocation (``qubix provide
--token``: tests/server/test_provide_token.py)."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
from typing import Any

from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from qubix_jupyter.db.engine import sync_url
from qubix_jupyter.settlement.keys import KeyPair

from ..conftest import DatabaseURL
from .conftest import SEED_ALICE, SEED_BOB, Api, body_of, execute_sql, login

ALICE = KeyPair.from_seed(SEED_ALICE).identity
BOB = KeyPair.from_seed(SEED_BOB).identity


def cpu_offer(worker_id: str, **extra: Any) -> dict[str, Any]:
    return {
        "type": "native",
        "gpu": {"type": "native", "count": 0},
        "workerId": worker_id,
        "pricePerHour": 5,
        **extra,
    }


def heartbeat_body() -> dict[str, Any]:
    usage = {"cpuPercent": 1.0, "ramPercent": 2.0, "ramUsedGb": 1.0, "ramTotalGb": 8.0}
    return {
        "usage": {**usage, "timestamp": dt.datetime.now(dt.UTC).isoformat()},
        "status": "online",
    }


async def issue(api: Api, user_token: str, **body: Any) -> dict[str, Any]:
    answer = await api("POST", "providers/provision-tokens", json_body=body, token=user_token)
    assert answer.code == 200, answer.body
    return body_of(answer)  # type: ignore[no-any-return]


async def register(api: Api, token: str, worker_id: str, **extra: Any) -> Any:
    return await api(
        "POST", "providers/quick-register", json_body=cpu_offer(worker_id, **extra), token=token
    )


async def tokens_of(api: Api, user_token: str) -> list[dict[str, Any]]:
    answer = await api("GET", "providers/provision-tokens", token=user_token)
    assert answer.code == 200, answer.body
    return body_of(answer)["items"]  # type: ignore[no-any-return]


def _rows(url: str, statement: str, **params: Any) -> list[Any]:
    engine = create_engine(sync_url(url), poolclass=NullPool)
    try:
        with engine.connect() as conn:
            return list(conn.execute(text(statement), params))
    finally:
        engine.dispose()


async def test_issue_stores_only_the_hash_and_expires_in_a_day_by_default(
    api: Api, database_url: DatabaseURL
):
    alice = await login(api)
    before = dt.datetime.now(dt.UTC)
    issued = await issue(api, alice["token"])
    token = issued["token"]
    assert token.startswith("qxp_")
    assert len(token) > 40
    record = issued["provisionToken"]
    assert record["status"] == "active"
    assert record["useCount"] == 0
    assert record["lastUsedAt"] is None
    expires = dt.datetime.fromisoformat(record["expiresAt"])
    assert dt.timedelta(hours=23, minutes=59) < expires - before < dt.timedelta(hours=24, minutes=1)
    rows = await asyncio.to_thread(
        _rows, database_url.url, "SELECT id, token_hash FROM provision_tokens"
    )
    assert [tuple(r) for r in rows] == [(record["id"], hashlib.sha256(token.encode()).hexdigest())]

    short = await issue(api, alice["token"], ttlSeconds=60)
    expires = dt.datetime.fromisoformat(short["provisionToken"]["expiresAt"])
    assert expires - dt.datetime.now(dt.UTC) < dt.timedelta(seconds=61)
    listed = await tokens_of(api, alice["token"])
    assert [t["id"] for t in listed] == [short["provisionToken"]["id"], record["id"]]
    assert all("token" not in t for t in listed)  # the token itself is shown once


async def test_issue_validates_its_body(api: Api):
    alice = await login(api)
    for body in (
        {"ttlSeconds": 59},
        {"ttlSeconds": 30 * 24 * 3600 + 1},
        {"ttlSeconds": "3600"},
        {"ttlSeconds": True},
        {"ttlSeconds": 3600.5},
        {"ttl": 3600},
    ):
        answer = await api(
            "POST", "providers/provision-tokens", json_body=body, token=alice["token"]
        )
        assert answer.code == 422, (body, answer.body)
        assert body_of(answer)["error"]["code"] == "validation_failed"
    answer = await api("POST", "providers/provision-tokens", body="[", token=alice["token"])
    assert answer.code == 400
    assert await tokens_of(api, alice["token"]) == []
    assert (await api("POST", "providers/provision-tokens", json_body={})).code == 401


async def test_a_token_registers_providers_for_its_owner_again_and_again(api: Api):
    alice = await login(api)
    token = (await issue(api, alice["token"]))["token"]
    # No qubicAddress: the token's owner is the payee.
    first = await register(api, token, "gpu-0")
    assert first.code == 200, first.body
    provider = body_of(first)["provider"]
    assert provider["userId"] == alice["user"]["id"]
    assert provider["qubicAddress"] == ALICE
    assert body_of(first)["created"] is True
    worker_token = body_of(first)["workerToken"]
    assert worker_token.startswith("qxw_")
    # A second GPU of the machine, and a restart of the first: the same token each time.
    second = await register(api, token, "gpu-1", qubicAddress=ALICE)
    assert second.code == 200
    assert body_of(second)["created"] is True
    again = await register(api, token, "gpu-0")
    assert again.code == 200
    assert body_of(again)["created"] is False
    assert body_of(again)["provider"]["id"] == provider["id"]
    # Registering again rotated gpu-0's worker token; the new one is a working worker token.
    heartbeat = heartbeat_body()
    stale = await api("POST", "providers/gpu-0/heartbeat", json_body=heartbeat, token=worker_token)
    assert stale.code == 401
    fresh = body_of(again)["workerToken"]
    beat = await api("POST", "providers/gpu-0/heartbeat", json_body=heartbeat, token=fresh)
    assert beat.code == 200, beat.body

    (listed,) = await tokens_of(api, alice["token"])
    assert listed["useCount"] == 3
    assert listed["lastUsedAt"] is not None
    mine = await api("GET", "providers/check-new", token=alice["token"])
    assert body_of(mine)["newProvider"]["userId"] == alice["user"]["id"]


async def test_a_token_acts_only_for_its_owner(api: Api):
    alice = await login(api)
    bob = await login(api, SEED_BOB)
    alices = (await issue(api, alice["token"]))["token"]
    bobs = (await issue(api, bob["token"]))["token"]
    # another wallet as the payee
    refused = await register(api, alices, "w-a", qubicAddress=BOB)
    assert refused.code == 403, refused.body
    assert body_of(refused)["error"]["code"] == "forbidden"
    # a workerId another user registered
    assert (await register(api, alices, "w-a")).code == 200
    taken = await register(api, bobs, "w-a")
    assert taken.code == 409
    assert body_of(taken)["error"]["code"] == "worker_id_taken"
    # Bob neither sees nor revokes Alice's token.
    (alice_record,) = await tokens_of(api, alice["token"])
    assert [t["id"] for t in await tokens_of(api, bob["token"])] != [alice_record["id"]]
    answer = await api(
        "DELETE", f"providers/provision-tokens/{alice_record['id']}", token=bob["token"]
    )
    assert answer.code == 404
    assert body_of(answer)["error"]["code"] == "unknown_provision_token"
    assert (await register(api, alices, "w-a")).code == 200  # still alive


async def test_a_token_opens_nothing_but_quick_register(api: Api):
    alice = await login(api)
    token = (await issue(api, alice["token"]))["token"]
    for method, path, body in (
        ("GET", "me", None),
        ("GET", f"wallet/{ALICE}/balance", None),
        ("POST", "wallet/withdraw", {"amount": 1, "toAddress": BOB}),
        ("POST", "wallet/deposit", {"amount": 1000}),
        ("POST", "jobs/create", {"modelType": "python", "computeNeeded": 0.1}),
        ("GET", "jobs", None),
        ("POST", "providers/provision-tokens", {}),  # it cannot mint more of itself
        ("GET", "providers/provision-tokens", None),
        ("POST", "auth/revoke", None),
        ("GET", "providers/check-new", None),
        ("GET", "scheduler", None),
    ):
        answer = await api(method, path, json_body=body, token=token)
        assert answer.code == 401, (method, path, answer.body)
        error = body_of(answer)["error"]
        assert error["code"] == "unauthorized"
        if path != "scheduler":  # a worker route says it wants a worker token
            assert "provisioning token" in error["message"], (path, error)
    assert body_of(await api("GET", "me", token=alice["token"]))["user"]["qubicAddress"] == ALICE


async def test_an_expired_token_is_refused(api: Api, database_url: DatabaseURL):
    alice = await login(api)
    issued = await issue(api, alice["token"], ttlSeconds=60)
    assert (await register(api, issued["token"], "w-exp")).code == 200
    await execute_sql(
        database_url.url,
        "UPDATE provision_tokens SET expires_at = :past WHERE id = :id",
        past="2000-01-01 00:00:00.000000",  # as SQLAlchemy writes it to SQLite; PostgreSQL too
        id=issued["provisionToken"]["id"],
    )
    answer = await register(api, issued["token"], "w-exp")
    assert answer.code == 401
    assert "expired" in body_of(answer)["error"]["message"]
    (listed,) = await tokens_of(api, alice["token"])
    assert listed["status"] == "expired"


async def test_a_revoked_token_is_refused_at_once(api: Api):
    alice = await login(api)
    issued = await issue(api, alice["token"])
    token_id = issued["provisionToken"]["id"]
    first = await register(api, issued["token"], "w-rev")
    assert first.code == 200
    answer = await api("DELETE", f"providers/provision-tokens/{token_id}", token=alice["token"])
    assert answer.code == 200, answer.body
    revoked = body_of(answer)["provisionToken"]
    assert revoked["status"] == "revoked"
    assert revoked["revokedAt"] is not None
    refused = await register(api, issued["token"], "w-rev")
    assert refused.code == 401
    assert body_of(refused)["error"]["code"] == "unauthorized"
    # Revoking again changes nothing; an unknown or malformed id is a 404.
    again = await api("DELETE", f"providers/provision-tokens/{token_id}", token=alice["token"])
    assert again.code == 200
    assert body_of(again)["provisionToken"]["revokedAt"] == revoked["revokedAt"]
    for bad in ("00000000-0000-0000-0000-000000000000", "not-a-uuid", "%00"):
        missing = await api("DELETE", f"providers/provision-tokens/{bad}", token=alice["token"])
        assert missing.code == 404, (bad, missing.body)
    # The provider it registered keeps its worker token (unlist it with DELETE providers/…).
    beat = await api(
        "POST",
        "providers/w-rev/heartbeat",
        json_body=heartbeat_body(),
        token=body_of(first)["workerToken"],
    )
    assert beat.code == 200, beat.body


async def test_a_worker_id_named_like_the_route_is_refused(api: Api):
    alice = await login(api)
    answer = await register(api, alice["token"], "provision-tokens")
    assert answer.code == 422, answer.body
