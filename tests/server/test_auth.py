"""Wallet login and the market's bearer tokens, through the real HTTP stack and database."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib

import pytest
from sqlalchemy import create_engine, event, text
from sqlalchemy.pool import NullPool
from tornado.httpclient import HTTPClientError

from qubix_jupyter.db.engine import sync_url
from qubix_jupyter.server_extension.errors import Unauthorized
from qubix_jupyter.server_extension.handlers import SERVICES
from qubix_jupyter.settlement.keys import KeyPair

from ..conftest import DatabaseURL
from .conftest import SEED_ALICE, SEED_BOB, Api, body_of, execute_sql, login, sign

ALICE = KeyPair.from_seed(SEED_ALICE).identity
BOB = KeyPair.from_seed(SEED_BOB).identity
PAST = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)


def _parse_time(value: str) -> dt.datetime:
    moment = dt.datetime.fromisoformat(value)
    assert moment.tzinfo is not None, value
    return moment


async def _challenge(api: Api, address: str = ALICE) -> str:
    response = await api("POST", "auth/challenge", json_body={"qubicAddress": address})
    assert response.code == 200, response.body
    return body_of(response)["challenge"]  # type: ignore[no-any-return]


async def test_full_login_flow(api: Api, database_url: DatabaseURL):
    before = dt.datetime.now(dt.UTC)
    response = await api("POST", "auth/challenge", json_body={"qubicAddress": ALICE})
    assert response.code == 200
    issued = body_of(response)
    assert issued["challenge"].startswith("qubix-login:")
    assert before < _parse_time(issued["expiresAt"]) <= before + dt.timedelta(minutes=6)

    connected = await api(
        "POST",
        "wallet/connect",
        json_body={
            "qubicAddress": ALICE,
            "challenge": issued["challenge"],
            "signature": sign(SEED_ALICE, issued["challenge"]),
        },
    )
    assert connected.code == 200, connected.body
    session = body_of(connected)
    assert session["success"] is True
    assert session["balance"] == 0
    assert session["user"]["qubicAddress"] == ALICE
    assert session["user"]["role"] == "CONSUMER"
    assert _parse_time(session["expiresAt"]) > before + dt.timedelta(days=29)
    token = session["token"]
    assert len(token) >= 43

    balance = await api("GET", f"wallet/{ALICE}/balance", token=token)
    assert balance.code == 200, balance.body
    assert body_of(balance) == {"balance": 0, "pendingEarnings": 0}

    me = await api("GET", "me", token=token)
    assert me.code == 200
    assert body_of(me)["user"]["id"] == session["user"]["id"]

    # only the token's SHA-256 is stored
    engine = create_engine(sync_url(database_url.url), poolclass=NullPool)
    try:
        with engine.connect() as conn:
            stored = conn.execute(text("SELECT token_hash FROM api_tokens")).scalars().all()
    finally:
        engine.dispose()
    assert stored == [hashlib.sha256(token.encode()).hexdigest()]


async def test_second_connect_finds_the_same_user_and_sees_deposits(api: Api, database):
    first = await login(api)
    await database.ledger.deposit(first["user"]["id"], 1234, idempotency_key="dep-1")
    second = await login(api)
    assert second["user"]["id"] == first["user"]["id"]
    assert second["balance"] == 1234
    assert second["token"] != first["token"]
    balance = await api("GET", f"wallet/{ALICE}/balance", token=first["token"])
    assert body_of(balance) == {"balance": 1234, "pendingEarnings": 0}


async def test_wrong_signature_is_401(api: Api):
    challenge = await _challenge(api)
    for signature in (sign(SEED_BOB, challenge), sign(SEED_ALICE, challenge + "x"), "0" * 128):
        response = await api(
            "POST",
            "wallet/connect",
            json_body={"qubicAddress": ALICE, "challenge": challenge, "signature": signature},
        )
        assert response.code == 401, response.body
        assert body_of(response)["error"]["code"] == "invalid_signature"


async def test_a_challenge_is_single_use(api: Api):
    challenge = await _challenge(api)
    body = {"qubicAddress": ALICE, "challenge": challenge, "signature": sign(SEED_ALICE, challenge)}
    assert (await api("POST", "wallet/connect", json_body=body)).code == 200
    again = await api("POST", "wallet/connect", json_body=body)
    assert again.code == 401
    assert body_of(again)["error"]["code"] == "invalid_challenge"


async def test_an_expired_or_unknown_challenge_is_401(api: Api, database_url: DatabaseURL):
    challenge = await _challenge(api)
    await execute_sql(database_url.url, "UPDATE login_challenges SET expires_at = :t", t=PAST)
    body = {"qubicAddress": ALICE, "challenge": challenge, "signature": sign(SEED_ALICE, challenge)}
    expired = await api("POST", "wallet/connect", json_body=body)
    assert expired.code == 401
    assert body_of(expired)["error"]["code"] == "invalid_challenge"
    made_up = "qubix-login:never-issued"
    body = {"qubicAddress": ALICE, "challenge": made_up, "signature": sign(SEED_ALICE, made_up)}
    assert (await api("POST", "wallet/connect", json_body=body)).code == 401


async def test_a_challenge_is_bound_to_its_identity(api: Api):
    challenge = await _challenge(api, ALICE)
    body = {"qubicAddress": BOB, "challenge": challenge, "signature": sign(SEED_BOB, challenge)}
    response = await api("POST", "wallet/connect", json_body=body)
    assert response.code == 401
    assert body_of(response)["error"]["code"] == "invalid_challenge"


async def test_an_invalid_identity_is_422_with_the_field(api: Api):
    wrong_checksum = ALICE[:-1] + ("A" if ALICE[-1] != "A" else "B")
    for address in (wrong_checksum, ALICE.lower(), ALICE[:-1], "", 42):
        response = await api("POST", "auth/challenge", json_body={"qubicAddress": address})
        assert response.code == 422, (address, response.body)
        error = body_of(response)["error"]
        assert error["code"] == "validation_failed"
        assert [e["loc"] for e in error["details"]["errors"]] == [["qubicAddress"]]


async def test_an_unknown_field_is_422(api: Api):
    response = await api(
        "POST", "auth/challenge", json_body={"qubicAddress": ALICE, "isAdmin": True}
    )
    assert response.code == 422
    errors = body_of(response)["error"]["details"]["errors"]
    assert errors[0]["loc"] == ["isAdmin"]
    assert errors[0]["type"] == "extra_forbidden"


async def test_no_invalid_or_revoked_token_is_401(api: Api):
    for token in (None, "not-a-token", "x" * 300):
        response = await api("GET", "me", token=token)
        assert response.code == 401, (token, response.body)
        assert body_of(response)["error"]["code"] == "unauthorized"
    odd = await api("GET", "me", headers={"Authorization": "Basic dXNlcjpwYXNz"})
    assert odd.code == 401

    session = await login(api)
    token = session["token"]
    assert (await api("GET", "me", token=token)).code == 200
    revoked = await api("POST", "auth/revoke", token=token)
    assert revoked.code == 200
    assert body_of(revoked) == {"revoked": True}
    for method, path in (("GET", "me"), ("GET", f"wallet/{ALICE}/balance")):
        response = await api(method, path, token=token)
        assert response.code == 401, (path, response.body)
    assert (await api("POST", "auth/revoke", token=token)).code == 401
    # revoking one token leaves the user's others alone
    other = await login(api)
    assert (await api("GET", "me", token=other["token"])).code == 200


async def test_an_expired_token_is_401(api: Api, database_url: DatabaseURL):
    session = await login(api)
    await execute_sql(database_url.url, "UPDATE api_tokens SET expires_at = :t", t=PAST)
    assert (await api("GET", "me", token=session["token"])).code == 401


async def test_a_token_used_again_is_not_looked_up_again(api: Api, jp_serverapp):
    services = jp_serverapp.web_app.settings[SERVICES]
    token = (await login(api))["token"]
    lookups = _count_token_lookups(services)
    try:
        for _ in range(3):
            assert (await api("GET", "me", token=token)).code == 200
    finally:
        lookups.close()
    assert lookups.count == 1


async def test_a_cached_token_past_its_expiry_is_401(
    api: Api, jp_serverapp, monkeypatch: pytest.MonkeyPatch
):
    auth = jp_serverapp.web_app.settings[SERVICES].auth
    token = (await login(api))["token"]
    assert (await api("GET", "me", token=token)).code == 200  # looked up: cached now
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=400)
    monkeypatch.setattr(auth, "_clock", lambda: later)
    assert (await api("GET", "me", token=token)).code == 401


async def test_a_token_revoked_behind_the_markets_back_is_401_once_its_lookup_is_stale(
    api: Api, jp_serverapp, database_url: DatabaseURL, monkeypatch: pytest.MonkeyPatch
):
    auth = jp_serverapp.web_app.settings[SERVICES].auth
    monkeypatch.setattr(auth, "TOKEN_CACHE_SECONDS", 0.3)
    token = (await login(api))["token"]
    assert (await api("GET", "me", token=token)).code == 200
    await execute_sql(database_url.url, "UPDATE api_tokens SET revoked_at = :t", t=PAST)
    await asyncio.sleep(0.35)
    assert (await api("GET", "me", token=token)).code == 401


async def test_a_lookup_overlapping_a_revoke_is_not_cached(
    api: Api, jp_serverapp, monkeypatch: pytest.MonkeyPatch
):
    auth = jp_serverapp.web_app.settings[SERVICES].auth
    token = (await login(api))["token"]
    owner = await auth.authenticate(f"Bearer {token}")
    auth._tokens.clear()  # as if its lookup had gone stale
    lookups = auth._token_lookups
    read, answered, go_on = lookups._read, asyncio.Event(), asyncio.Event()

    async def slow_read(hashes):
        found = await read(hashes)  # live: read before the revoke
        answered.set()
        await go_on.wait()  # answered only after the revoke
        return found

    monkeypatch.setattr(lookups, "_read", slow_read)
    lookup = asyncio.ensure_future(auth.authenticate(f"Bearer {token}"))
    await answered.wait()
    assert await auth.revoke(owner)
    go_on.set()
    assert (await lookup).token_id == owner.token_id  # this request stands, as it began before
    assert (await api("GET", "me", token=token)).code == 401


class _count_token_lookups:
    """Counts the statements that read ``api_tokens`` until closed."""

    def __init__(self, services) -> None:
        self.count = 0
        self._engine = services.engine.sync_engine
        event.listen(self._engine, "before_cursor_execute", self._seen)

    def _seen(self, conn, cursor, statement, *args) -> None:
        if "FROM users JOIN api_tokens" in statement:
            self.count += 1

    def close(self) -> None:
        event.remove(self._engine, "before_cursor_execute", self._seen)


async def test_another_users_balance_is_403(api: Api):
    alice = await login(api, SEED_ALICE)
    await login(api, SEED_BOB)
    for address in (BOB, "NOT-AN-IDENTITY"):
        response = await api("GET", f"wallet/{address}/balance", token=alice["token"])
        assert response.code == 403, response.body
        assert body_of(response)["error"]["code"] == "forbidden"


async def test_every_authenticated_route_is_401_without_a_token(api: Api):
    for method, path in (
        ("GET", "me"),
        ("POST", "auth/revoke"),
        ("GET", f"wallet/{ALICE}/balance"),
    ):
        response = await api(method, path)
        assert response.code == 401, (method, path, response.body)


async def test_jupyters_token_is_not_a_market_identity(api: Api, jp_serverapp, jp_fetch):
    jupyter_token = jp_serverapp.identity_provider.token
    assert jupyter_token
    for header in (f"token {jupyter_token}", f"Bearer {jupyter_token}"):
        for method, path in (("GET", "me"), ("GET", f"wallet/{ALICE}/balance")):
            response = await api(method, path, headers={"Authorization": header})
            assert response.code == 401, (header, path, response.body)
    # ...while Jupyter's own API still takes it, and still wants it
    assert (await jp_fetch("api", "status")).code == 200  # jp_fetch sends Jupyter's token
    with pytest.raises(HTTPClientError) as refused:
        await jp_fetch("api", "status", headers={"Authorization": ""})
    assert refused.value.code == 403


async def test_a_challenge_raced_by_two_connects_signs_in_once(api: Api):
    challenge = await _challenge(api)
    body = {"qubicAddress": ALICE, "challenge": challenge, "signature": sign(SEED_ALICE, challenge)}
    answers = await asyncio.gather(
        *(api("POST", "wallet/connect", json_body=body) for _ in range(5))
    )
    assert sorted(a.code for a in answers) == [200, 401, 401, 401, 401]


async def test_racing_first_connects_create_one_user(api: Api, database_url: DatabaseURL):
    challenges = [await _challenge(api) for _ in range(4)]
    answers = await asyncio.gather(
        *(
            api(
                "POST",
                "wallet/connect",
                json_body={"qubicAddress": ALICE, "challenge": c, "signature": sign(SEED_ALICE, c)},
            )
            for c in challenges
        )
    )
    assert [a.code for a in answers] == [200] * 4
    assert len({body_of(a)["user"]["id"] for a in answers}) == 1
    engine = create_engine(sync_url(database_url.url), poolclass=NullPool)
    try:
        with engine.connect() as conn:
            users = conn.execute(text("SELECT count(*) FROM users")).scalar_one()
            wallets = conn.execute(
                text("SELECT count(*) FROM accounts WHERE kind = 'WALLET'")
            ).scalar_one()
    finally:
        engine.dispose()
    assert (users, wallets) == (1, 1)


async def test_token_checks_arriving_together_share_one_query(api: Api, jp_serverapp):
    services = jp_serverapp.web_app.settings[SERVICES]
    alice = (await login(api, SEED_ALICE))["token"]
    bob = (await login(api, SEED_BOB))["token"]
    gone = (await login(api, SEED_BOB))["token"]
    assert (await api("POST", "auth/revoke", token=gone)).code == 200
    statements: list[str] = []

    def count(conn, cursor, statement, *args) -> None:
        if "api_tokens" in statement:
            statements.append(statement)

    engine = services.engine.sync_engine
    event.listen(engine, "before_cursor_execute", count)
    try:
        checked = await asyncio.gather(
            *(
                services.auth.authenticate(f"Bearer {t}")
                for t in (alice, bob, gone, alice, "qx_not-a-token")
            ),
            return_exceptions=True,
        )
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert len(statements) == 1, statements
    alice_id, bob_id = checked[0].user.id, checked[1].user.id
    assert alice_id != bob_id
    assert checked[3].user.id == alice_id
    assert isinstance(checked[2], Unauthorized)  # revoked: refused though asked beside live ones
    assert isinstance(checked[4], Unauthorized)
