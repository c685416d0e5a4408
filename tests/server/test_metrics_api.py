"""``GET metrics``: Prometheus' text format behind Jupyter's own authentication, on SQLite and
PostgreSQL; the text is parsed with prometheus_client's parser and its values asserted."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from pytest_jupyter.jupyter_server import jp_ws_fetch  # noqa: F401 (a fixture)

from qubix_jupyter.db import repositories as repo
from qubix_jupyter.market.money import escrow_for
from qubix_jupyter.server_extension.handlers import SERVICES
from qubix_jupyter.server_extension.services import Services

from .conftest import SEED_ALICE, SEED_BOB, Api, body_of, login
from .test_websocket import subscribe, ws_connect  # noqa: F401 (a fixture)


@pytest.fixture
def scrape(jp_fetch: Callable[..., Any]) -> Callable[..., Any]:
    """``GET metrics`` the way Prometheus is configured to: with the Jupyter server's token
    (jp_fetch sends it when no Authorization header is given)."""

    async def run() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        response = await jp_fetch("qubix", "api", "metrics", raise_error=False)
        assert response.code == 200, response.body
        assert response.headers["Content-Type"].startswith("text/plain")
        samples = {}
        for family in text_string_to_metric_families(response.body.decode()):
            for sample in family.samples:
                samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        return samples

    return run


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


async def test_metrics_take_jupyters_token_only(api: Api, jp_fetch, jp_auth_header):
    alice = await login(api, SEED_ALICE)
    for authorization in ("", f"Bearer {alice['token']}", "token not-jupyters-token"):
        response = await api("GET", "metrics", headers={"Authorization": authorization})
        assert response.code == 401, authorization
        assert response.headers["Content-Type"].startswith("application/json")
        assert body_of(response)["error"]["code"] == "unauthorized"
    accepted = await jp_fetch("qubix", "api", "metrics", headers=jp_auth_header)
    assert accepted.code == 200
    assert b"# TYPE qubix_http_requests_total counter" in accepted.body
    # and Jupyter's token is no market token
    refused = await jp_fetch("qubix", "api", "me", headers=jp_auth_header, raise_error=False)
    assert refused.code == 401


async def test_metrics_count_requests_and_read_the_market(
    api: Api,
    scrape,
    jp_serverapp,
    ws_connect,  # noqa: F811
):
    services: Services = jp_serverapp.web_app.settings[SERVICES]
    before = await scrape()
    assert value(before, "qubix_ledger_balanced") == 1
    assert value(before, "qubix_settlement_backend_info", backend="memory") == 1
    assert value(before, "qubix_websocket_connections") == 0
    for status in ("PENDING", "ASSIGNED", "RUNNING", "COMPLETED", "FAILED", "CANCELLED"):
        assert value(before, "qubix_jobs", status=status) == 0
    assert value(before, "qubix_providers", state="listed") == 0

    for _ in range(3):
        assert (await api("GET", "health")).code == 200
    alice, bob = await login(api, SEED_ALICE), await login(api, SEED_BOB)
    response = await api(
        "POST", "wallet/deposit", json_body={"amount": 10_000}, token=alice["token"]
    )
    assert response.code == 200
    assert (
        await api("POST", "wallet/deposit", json_body={"amount": 0}, token=bob["token"])
    ).code == 422
    registered = await api(
        "POST",
        "providers/quick-register",
        token=bob["token"],
        json_body={
            "type": "native",
            "gpu": {"type": "native", "model": "RTX 4090", "vram": 24, "count": 1},
            "workerId": "bob-box",
            "qubicAddress": bob["user"]["qubicAddress"],
            "pricePerHour": 100,
        },
    )
    assert registered.code == 200, registered.body
    async with services.sessionmaker() as s, s.begin():
        job = await repo.create_job(
            s, alice["user"]["id"], model_type="python", compute_seconds=1800, max_price=200
        )
    locked = escrow_for(200, 1800)
    await services.ledger.lock_escrow(job.id, locked, idempotency_key="metrics-lock")
    ws = await ws_connect(alice["token"])
    await subscribe(ws, "wallet")

    after = await scrape()
    health = {"route": "health", "method": "GET", "status": "200"}
    assert value(after, "qubix_http_requests_total", **health) == 3
    deposit = {"route": "wallet/deposit", "method": "POST"}
    assert value(after, "qubix_http_requests_total", **deposit, status="200") == 1
    assert value(after, "qubix_http_requests_total", **deposit, status="422") == 1
    assert value(after, "qubix_http_request_duration_seconds_count", **deposit) == 2
    assert value(after, "qubix_http_request_duration_seconds_bucket", **deposit, le="+Inf") == 2
    assert value(after, "qubix_http_request_duration_seconds_sum", **deposit) > 0
    # the previous scrape itself was counted once it was answered
    assert (
        value(after, "qubix_http_requests_total", route="metrics", method="GET", status="200") == 1
    )

    assert value(after, "qubix_websocket_connections") == 1
    assert value(after, "qubix_providers", state="listed") == 1
    assert value(after, "qubix_jobs", status="PENDING") == 1
    assert value(after, "qubix_ledger_balance_qu", kind="ESCROW") == locked
    assert value(after, "qubix_ledger_balance_qu", kind="WALLET") == 10_000 - locked
    assert value(after, "qubix_ledger_balance_qu", kind="EXTERNAL") == -10_000
    assert value(after, "qubix_ledger_balance_qu", kind="PLATFORM") == 0
    assert value(after, "qubix_ledger_accounts", kind="ESCROW") == 1
    assert value(after, "qubix_ledger_balanced") == 1
    ws.close()
