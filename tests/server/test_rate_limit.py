from __future__ import annotations

from typing import Any

import pytest

from qubix_jupyter.server_extension.auth import RateLimiter
from qubix_jupyter.server_extension.errors import RateLimited

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


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_bucket_refills_at_the_configured_rate():
    clock = FakeClock()
    limiter = RateLimiter(60, clock=clock)  # one a second, bursts of 60
    for _ in range(60):
        limiter.check("a")
    with pytest.raises(RateLimited) as limited:
        limiter.check("a")
    assert limited.value.retry_after == 1
    limiter.check("b")  # another caller has its own bucket
    clock.now += 1.0
    limiter.check("a")
    with pytest.raises(RateLimited):
        limiter.check("a")
    clock.now += 3600
    for _ in range(60):  # refilled to the burst size, not beyond
        limiter.check("a")
    with pytest.raises(RateLimited):
        limiter.check("a")


def test_zero_turns_the_limit_off_and_idle_callers_are_forgotten():
    off = RateLimiter(0)
    for _ in range(10_000):
        off.check("a")
    clock = FakeClock()
    limiter = RateLimiter(60, clock=clock)
    limiter.MAX_BUCKETS = 10
    for n in range(10):
        limiter.check(f"caller-{n}")
    clock.now += 120  # everyone is full again
    limiter.check("newcomer")
    assert len(limiter._buckets) == 1
