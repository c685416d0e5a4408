from __future__ import annotations

from typing import Any

import pytest

from .conftest import SEED_ALICE, Api, body_of, login


@pytest.fixture
def qubix_config() -> dict[str, Any]:
    return {"rate_limit_per_minute": 4}


async def test_each_token_has_its_own_bucket_and_429_says_when_to_retry(api: Api):
    session = await login(api, SEED_ALICE)  # two public calls from this IP: challenge, connect
    token = session["token"]
    for _ in range(4):
        assert (await api("GET", "me", token=token)).code == 200
    limited = await api("GET", "me", token=token)
    assert limited.code == 429
    assert body_of(limited)["error"]["code"] == "rate_limited"
    retry_after = int(limited.headers["Retry-After"])
    assert 1 <= retry_after <= 15  # one request refills in 60/4 s
    assert body_of(limited)["error"]["details"] == {"retryAfter": retry_after}

    # the public routes count per client address: two calls left of four
    assert (await api("GET", "health")).code == 200
    assert (await api("GET", "health")).code == 200
    assert (await api("GET", "health")).code == 429
