"""Seed Property 10 over the client's real reconnect schedule (pure: simulated time)."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from qubix_jupyter.client.backoff import MAX_ATTEMPT_SECONDS, Backoff
from qubix_jupyter.client.events import AsyncSubscription

RECONNECT_WITHIN = 5.0


def reconnect_time(
    backoff: Backoff, rng: random.Random, back_at: float, failures: list[float]
) -> tuple[float, float]:
    """Drop at t=0, market back at ``back_at``: (first wait, when the attempt that succeeds starts).

    As ``AsyncSubscription._run`` does it: wait, try; an attempt before the market is back fails
    after its duration (``failures``, cycled: refused at once … timed out), then the next wait.
    """
    delays = backoff.delays(rng)
    first = now = next(delays)
    attempt = 0
    while now < back_at:
        now += failures[attempt % len(failures)]
        now += next(delays)
        attempt += 1
    return first, now


@settings(max_examples=300, deadline=None)
@given(
    back_at=st.floats(min_value=0.0, max_value=3600.0, allow_nan=False),
    failures=st.lists(
        st.floats(min_value=0.0, max_value=MAX_ATTEMPT_SECONDS, allow_nan=False),
        min_size=1,
        max_size=20,
    ),
    seed=st.integers(min_value=0, max_value=2**32 - 1),
)
def test_every_outage_ends_with_a_reconnect_within_5_s_of_the_servers_return(
    back_at: float, failures: list[float], seed: int
):
    """**Feature: qubix-enterprise-upgrade, Property 10: For any WebSocket disconnection, the
    client should automatically reconnect within 5 seconds**

    Whatever the outage's length and however each failed attempt fails (refused at once, or
    timing out after the connect timeout), the first retry comes within 250 ms of the drop and
    the attempt that reaches the market starts within 5 s of the market being back.
    """
    backoff = AsyncSubscription.DEFAULT_BACKOFF  # the schedule the client runs
    first, reconnected = reconnect_time(backoff, random.Random(seed), back_at, failures)
    assert 0.0 <= first <= 0.25
    assert back_at <= reconnected <= back_at + RECONNECT_WITHIN


@settings(max_examples=100, deadline=None)
@given(seed=st.integers(min_value=0, max_value=2**32 - 1), n=st.integers(0, 200))
def test_waits_grow_to_the_cap_with_full_jitter(seed: int, n: int):
    """Each wait lies in [0, min(cap, 0.25 · 2**n)]; the ceilings never shrink."""
    backoff = Backoff()
    delays = backoff.delays(random.Random(seed))
    for attempt in range(n + 1):
        wait = next(delays)
        assert 0.0 <= wait <= backoff.ceiling(attempt) <= backoff.cap
        assert backoff.ceiling(attempt) <= backoff.ceiling(attempt + 1)
    assert backoff.ceiling(0) == 0.25
    assert backoff.ceiling(10) == backoff.cap == 2.0
