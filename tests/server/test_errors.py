"""A client's mistake is never a 500, and an unexpected error never shows its traceback."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from qubix_jupyter.settlement.keys import KeyPair

from ..conftest import DatabaseURL
from .conftest import SEED_ALICE, Api, body_of, execute_sql, login

ALICE = KeyPair.from_seed(SEED_ALICE).identity

MALFORMED: list[tuple[str, bytes | str, int]] = [
    ("not JSON", b"qubicAddress=ABC", 400),
    ("truncated", b'{"qubicAddress": ', 400),
    ("not UTF-8", b'{"qubicAddress": "\xff\xfe"}', 400),
    ("NaN", b'{"qubicAddress": NaN}', 400),
    ("deep nesting", b"[" * 50_000 + b"]" * 50_000, 400),
    ("huge number", '{"qubicAddress": ' + "9" * 5000 + "}", 400),
    ("empty", b"", 422),
    ("whitespace", b"  \n", 422),
    ("JSON array", b'["qubicAddress"]', 422),
    ("JSON string", b'"hello"', 422),
    ("JSON null", b"null", 422),
    ("JSON number", b"12", 422),
    ("empty object", b"{}", 422),
    ("wrong type", json.dumps({"qubicAddress": 12}), 422),
    ("number as string", json.dumps({"qubicAddress": 10**30}), 422),
    ("nested object", json.dumps({"qubicAddress": {"a": 1}}), 422),
    ("list value", json.dumps({"qubicAddress": [ALICE]}), 422),
    ("null value", json.dumps({"qubicAddress": None}), 422),
    ("unknown field", json.dumps({"qubicAddress": ALICE, "x": 1}), 422),
    ("long string", json.dumps({"qubicAddress": "A" * 10_000}), 422),
]

CONNECT_MALFORMED: list[bytes | str] = [
    json.dumps({"qubicAddress": ALICE, "challenge": "c", "signature": "zz" * 64}),
    json.dumps({"qubicAddress": ALICE, "challenge": "c", "signature": "00"}),
    json.dumps({"qubicAddress": ALICE, "challenge": "", "signature": "00" * 64}),
    json.dumps({"qubicAddress": ALICE, "challenge": 5, "signature": "00" * 64}),
    json.dumps({"qubicAddress": ALICE, "challenge": "c" * 1000, "signature": "00" * 64}),
    json.dumps({"qubicAddress": ALICE}),
    b"[]",
]


@pytest.mark.parametrize(("what", "body", "status"), MALFORMED, ids=[m[0] for m in MALFORMED])
async def test_malformed_bodies_are_client_errors(api: Api, what: str, body, status: int):
    response = await api("POST", "auth/challenge", body=body)
    assert response.code == status, (what, response.body[:300])
    error = body_of(response)["error"]
    assert set(error) == {"code", "message", "details"}
    assert error["code"] == {400: "invalid_json", 422: "validation_failed"}[status]
    assert b"Traceback" not in response.body


async def test_malformed_connect_bodies_are_422(api: Api):
    for body in CONNECT_MALFORMED:
        response = await api("POST", "wallet/connect", body=body)
        assert response.code == 422, (body, response.body)


async def test_an_oversize_body_is_413(api: Api):
    padding = "x" * (1024 * 1024)
    response = await api(
        "POST", "auth/challenge", json_body={"qubicAddress": ALICE, "padding": padding}
    )
    assert response.code == 413
    error = body_of(response)["error"]
    assert error["code"] == "payload_too_large"
    assert error["details"] == {"limit": 1024 * 1024}


async def test_unknown_paths_and_methods_are_json_errors(api: Api):
    missing = await api("GET", "no/such/endpoint")
    assert missing.code == 404
    assert body_of(missing)["error"]["code"] == "not_found"

    wrong_method = await api("DELETE", "health")
    assert wrong_method.code == 405
    assert wrong_method.headers["Allow"] == "GET"
    assert body_of(wrong_method)["error"]["code"] == "method_not_allowed"

    get_a_post = await api("GET", "auth/challenge")
    assert get_a_post.code == 405


async def test_a_foreign_origin_is_403_unless_allowed(api: Api):
    response = await api("GET", "health", headers={"Origin": "https://evil.example"})
    assert response.code == 403
    assert "Access-Control-Allow-Origin" not in response.headers


async def test_an_unexpected_error_is_a_generic_500_that_is_logged(
    api: Api, database_url: DatabaseURL, caplog: pytest.LogCaptureFixture
):
    # the server's database loses a table behind its back: not the client's fault
    await execute_sql(database_url.url, "DROP TABLE login_challenges")
    with caplog.at_level(logging.ERROR):
        response = await api("POST", "auth/challenge", json_body={"qubicAddress": ALICE})
    assert response.code == 500
    assert body_of(response) == {
        "error": {
            "code": "internal_error",
            "message": "internal server error: the market logged the details",
            "details": {},
        }
    }
    assert b"login_challenges" not in response.body
    assert any(r.exc_info and "login_challenges" in str(r.exc_info[1]) for r in caplog.records)
    # the rest of the API is unaffected
    assert (await api("GET", "health")).code == 200


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_a_database_that_does_not_answer_is_a_503_to_retry_and_the_market_recovers(
    api: Api, database_url: DatabaseURL, caplog: pytest.LogCaptureFixture
):
    """A real outage of the market's database (its connections cut, new ones refused): every
    request that needs it is a 503 ``database_unavailable`` with ``Retry-After``, one warning
    line each and no traceback, whether it reads, claims a key or moves money; once the
    database answers again, so does the market, with nothing half done."""
    from urllib.parse import urlsplit, urlunsplit

    session = await login(api)
    token = session["token"]
    balance = f"wallet/{ALICE}/balance"
    assert (await api("GET", balance, token=token)).code == 200
    parts = urlsplit(database_url.url)
    name = parts.path.lstrip("/")
    admin = urlunsplit(parts._replace(path="/postgres"))
    await execute_sql(admin, f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
    await execute_sql(
        admin,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :name",
        name=name,
    )
    try:
        body = {"modelType": "python", "computeNeeded": 0.5, "inputData": {}, "maxPrice": 100}
        with caplog.at_level(logging.INFO):
            answers = [
                await api("GET", balance, token=token),
                await api("GET", balance, token=token),  # a connection refused, not cut
                await api(
                    "POST",
                    "jobs/create",
                    json_body=body | {"qubicAddress": ALICE},
                    token=token,
                    headers={"Idempotency-Key": "during-the-outage"},
                ),
                await api("POST", "auth/challenge", json_body={"qubicAddress": ALICE}),
            ]
        for answer in answers:
            assert answer.code == 503, answer.body
            assert body_of(answer)["error"]["code"] == "database_unavailable"
            assert answer.headers["Retry-After"] == "1"
        assert not any(r.exc_info for r in caplog.records)
        warned = [r for r in caplog.records if "the database does not answer" in r.getMessage()]
        assert len(warned) == len(answers)
    finally:
        await execute_sql(admin, f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
    assert (await api("GET", balance, token=token)).code == 200
    # the create refused during the outage left no claim behind: its retry runs now
    retried = await api(
        "POST",
        "jobs/create",
        json_body={"modelType": "python", "computeNeeded": 0.5, "inputData": {}}
        | {"maxPrice": 100, "qubicAddress": ALICE},
        token=token,
        headers={"Idempotency-Key": "during-the-outage"},
    )
    assert retried.code == 402, retried.body  # Alice has no QU: refused for that, not as busy
    assert body_of(retried)["error"]["code"] == "insufficient_funds"


class TestAllowedOrigins:
    @pytest.fixture
    def qubix_config(self) -> dict[str, Any]:
        return {"allowed_origins": ["https://lab.example"]}

    async def test_an_allowed_origin_gets_cors_headers(self, api: Api):
        origin = {"Origin": "https://lab.example"}
        response = await api("GET", "health", headers=origin)
        assert response.code == 200
        assert response.headers["Access-Control-Allow-Origin"] == "https://lab.example"
        preflight = await api("OPTIONS", "me", headers=origin)
        assert preflight.code == 204
        assert "authorization" in preflight.headers["Access-Control-Allow-Headers"]
        other = await api("GET", "health", headers={"Origin": "https://evil.example"})
        assert other.code == 403


class TestSmallBodyLimit:
    @pytest.fixture
    def qubix_config(self) -> dict[str, Any]:
        return {"max_body_bytes": 100}

    async def test_the_limit_is_exact_and_a_huge_body_is_refused_too(self, api: Api):
        at_limit = json.dumps({"qubicAddress": ALICE, "p": "x" * 11})
        assert len(at_limit) == 100
        assert (await api("POST", "auth/challenge", body=at_limit)).code == 422  # read: "p"
        over = await api("POST", "auth/challenge", body=at_limit + " ")
        assert over.code == 413
        assert body_of(over)["error"]["details"] == {"limit": 100}
        huge = await api("POST", "auth/challenge", body=b"{" + b" " * (16 * 1024 * 1024) + b"}")
        assert huge.code == 413
        assert (await api("GET", "health")).code == 200
