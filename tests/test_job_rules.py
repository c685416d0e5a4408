"""The pure job rules: matching order, the time budget, escrow, progress, charged time; seed
Properties 6 and 7 on the matcher and the progress rule with a simulated clock."""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qubix_jupyter.market.jobs import (
    MAX_COMPUTE_SECONDS,
    InvalidJob,
    assigned_escrow,
    charged_seconds,
    compute_seconds,
    excess_at_assignment,
    next_progress,
    unassigned_escrow,
)
from qubix_jupyter.market.matching import (
    Assign,
    Fail,
    InvalidConstraints,
    JobConstraints,
    Wait,
    choose_provider,
    decide_assignment,
)

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
TIMEOUT = dt.timedelta(seconds=30)


@dataclasses.dataclass
class FakeOffer:
    id: str
    price_per_hour: int = 10
    gpu_model: str = "RTX 4090"
    gpu_vram: float = 24.0
    performance_tflops: float | None = None
    last_assigned_at: dt.datetime | None = None
    location: str | None = None
    is_online: bool = True
    is_available: bool = True
    is_listed: bool = True


# ---------------------------------------------------------------------- matching order


def test_cheapest_first_then_performance_then_fairness_then_id():
    c = JobConstraints(max_price=100)
    cheap = FakeOffer("z", price_per_hour=5)
    assert choose_provider(c, [FakeOffer("a", 6), cheap]) is cheap
    fast = FakeOffer("b", performance_tflops=80.0)
    slow = FakeOffer("a", performance_tflops=10.0)
    unmeasured = FakeOffer("0")
    assert choose_provider(c, [unmeasured, slow, fast]) is fast
    assert choose_provider(c, [unmeasured, slow]) is slow
    recent = FakeOffer("a", last_assigned_at=T0 + dt.timedelta(seconds=5))
    earlier = FakeOffer("b", last_assigned_at=T0)
    never = FakeOffer("c")
    assert choose_provider(c, [recent, earlier, never]) is never
    assert choose_provider(c, [recent, earlier]) is earlier
    # Naive timestamps (SQLite) compare as UTC.
    naive = FakeOffer("d", last_assigned_at=(T0 - dt.timedelta(seconds=1)).replace(tzinfo=None))
    assert choose_provider(c, [earlier, naive]) is naive
    assert choose_provider(c, [FakeOffer("b"), FakeOffer("a")]).id == "a"  # type: ignore[union-attr]


def test_constraints_filter_offers():
    c = JobConstraints(max_price=10, gpu_models=("rtx 4090", "A100"), min_vram=24)
    assert c.accepts(FakeOffer("a"))  # case-insensitive model
    assert not c.accepts(FakeOffer("a", price_per_hour=11))
    assert not c.accepts(FakeOffer("a", gpu_vram=23.5))
    assert not c.accepts(FakeOffer("a", gpu_model="H100"))
    assert not c.accepts(FakeOffer("a", is_online=False))
    assert not c.accepts(FakeOffer("a", is_available=False))
    assert not c.accepts(FakeOffer("a", is_listed=False))
    assert choose_provider(c, [FakeOffer("a", gpu_model="H100")]) is None
    for bad in ({"min_vram": -1}, {"min_vram": float("nan")}, {"gpu_models": ("",)}):
        with pytest.raises(InvalidConstraints):
            JobConstraints(max_price=1, **bad)  # type: ignore[arg-type]
    assert JobConstraints.from_json(c.to_json(), max_price=10) == c


def test_decision_assigns_waits_then_fails():
    c = JobConstraints(max_price=10)
    assert isinstance(decide_assignment(c, [FakeOffer("a")], created_at=T0, now=T0,
                                        timeout=TIMEOUT), Assign)  # fmt: skip
    wait = decide_assignment(c, [], created_at=T0, now=T0 + dt.timedelta(seconds=29),
                             timeout=TIMEOUT)  # fmt: skip
    assert wait == Wait(T0 + TIMEOUT)
    assert decide_assignment(c, [], created_at=T0, now=T0 + TIMEOUT, timeout=TIMEOUT) == Fail()
    late = decide_assignment(c, [FakeOffer("a")], created_at=T0, now=T0 + 2 * TIMEOUT,
                             timeout=TIMEOUT)  # fmt: skip
    assert isinstance(late, Assign)  # an offer wins even when the sweep ran late


# ---------------------------------------------------------------------- budget and escrow


@pytest.mark.parametrize(
    ("hours", "seconds"),
    [(0.1, 360), (0.5, 1800), (1, 3600), (0.0001, 1), (1e-9, 1), (1 / 3, 1200), (168, 604800),
     (Decimal("0.00027"), 1), ("2.5", 9000)],
)  # fmt: skip
def test_compute_needed_becomes_whole_seconds_rounded_up(hours, seconds):
    assert compute_seconds(hours) == seconds


@pytest.mark.parametrize("hours", [0, -1, float("inf"), float("nan"), 168.001, True, "x", None])
def test_compute_needed_out_of_bounds_is_refused(hours):
    with pytest.raises(InvalidJob):
        compute_seconds(hours)


@settings(max_examples=200)
@given(st.integers(min_value=1, max_value=MAX_COMPUTE_SECONDS))
def test_whole_seconds_in_hours_read_back_exactly(seconds):
    assert compute_seconds(Decimal(seconds) / 3600) == seconds
    assert compute_seconds(seconds / 3600) == seconds  # as a client's float


def test_escrow_rules():
    assert unassigned_escrow(40, 1800) == 20
    assert unassigned_escrow(7, 1) == 1  # ceil
    assert assigned_escrow(10, 1800) == 5
    assert excess_at_assignment(20, 10, 1800) == 15
    assert excess_at_assignment(5, 40, 1800) == 0


def test_charged_seconds_round_up_within_the_budget():
    start = T0
    assert charged_seconds(start, start, budget_seconds=60) == 0
    assert charged_seconds(start, start + dt.timedelta(milliseconds=1), budget_seconds=60) == 1
    assert charged_seconds(start, start + dt.timedelta(seconds=10), budget_seconds=60) == 10
    assert charged_seconds(start, start + dt.timedelta(hours=1), budget_seconds=60) == 60
    assert charged_seconds(start, start - dt.timedelta(seconds=5), budget_seconds=60) == 0
    assert charged_seconds(start.replace(tzinfo=None), start + dt.timedelta(seconds=2),
                           budget_seconds=60) == 2  # fmt: skip


# ---------------------------------------------------------------------- Property 6


offers_strategy = st.lists(
    st.builds(
        FakeOffer,
        id=st.text("abcdef", min_size=1, max_size=4),
        price_per_hour=st.integers(0, 50),
        gpu_model=st.sampled_from(["RTX 4090", "A100", "H100"]),
        gpu_vram=st.sampled_from([8.0, 24.0, 80.0]),
        performance_tflops=st.none() | st.floats(1, 100),
        last_assigned_at=st.none()
        | st.integers(0, 100).map(lambda s: T0 - dt.timedelta(seconds=s)),
        is_online=st.booleans(),
        is_available=st.booleans(),
        is_listed=st.booleans(),
    ),
    max_size=8,
    unique_by=lambda o: o.id,
)
constraints_strategy = st.builds(
    JobConstraints,
    max_price=st.integers(0, 60),
    gpu_models=st.lists(st.sampled_from(["rtx 4090", "A100", "H100"]), max_size=2).map(tuple),
    min_vram=st.none() | st.sampled_from([0.0, 16.0, 48.0]),
)


@settings(max_examples=150, deadline=None)
@given(
    offers=offers_strategy,
    jobs=st.lists(st.tuples(constraints_strategy, st.integers(0, 40)), min_size=1, max_size=8),
    arrivals=st.lists(st.tuples(st.integers(0, 80), st.integers(0, 7)), max_size=6),
    step=st.integers(1, 7),
)
def test_property_6_every_pending_job_is_assigned_or_fails_unassignable(
    offers, jobs, arrivals, step
):
    """**Feature: qubix-enterprise-upgrade, Property 6: For any pending job, the system should
    assign it to an available provider within 30 seconds or mark it as unassignable**

    A simulated clock ticks every ``step`` seconds; jobs arrive at their second, offers come
    online at theirs. Each tick the assigner decides every pending job, oldest first, as the
    service does. No job is ever left pending past its deadline (plus one tick); an assigned job
    got the best offer free for it then; a failed one had none, and only after 30 s.
    """
    status: dict[int, str] = {}
    decided_at: dict[int, dt.datetime] = {}
    end = max(created for _, created in jobs) + TIMEOUT.seconds + step
    for now_s in range(0, end + 1, step):
        now = T0 + dt.timedelta(seconds=now_s)
        for at, index in arrivals:
            if at <= now_s and index < len(offers):
                offers[index].is_online = True
        for n, (constraints, created) in enumerate(jobs):
            if created > now_s or n in status:
                continue
            free_for_job = [o for o in offers if constraints.accepts(o)]
            created_at = T0 + dt.timedelta(seconds=created)
            decision = decide_assignment(
                constraints, offers, created_at=created_at, now=now, timeout=TIMEOUT
            )
            if free_for_job:
                assert isinstance(decision, Assign)
                assert decision.provider is choose_provider(constraints, free_for_job)
                decision.provider.is_available = False  # type: ignore[misc]
                decision.provider.last_assigned_at = now  # type: ignore[misc]
                status[n] = "ASSIGNED"
            elif now >= created_at + TIMEOUT:
                assert decision == Fail()
                status[n] = "FAILED"
            else:
                assert decision == Wait(created_at + TIMEOUT)
                continue
            decided_at[n] = now
    assert set(status) == set(range(len(jobs))), "a job was left pending"
    for n, (_, created) in enumerate(jobs):
        waited = decided_at[n] - (T0 + dt.timedelta(seconds=created))
        assert waited <= TIMEOUT + dt.timedelta(seconds=step)
        if status[n] == "FAILED":
            assert waited >= TIMEOUT


# ---------------------------------------------------------------------- Property 7


reports = st.one_of(
    st.integers(-1000, 1000), st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False)
)


@settings(max_examples=200)
@given(st.lists(reports, max_size=40))
def test_property_7_progress_is_monotonic_within_0_to_100(sequence):
    """**Feature: qubix-enterprise-upgrade, Property 7: For any running job, progress updates
    should be monotonically increasing from 0 to 100**

    Any sequence of reports (out of range, repeated, going back) stores a non-decreasing
    sequence within 0..100 that reaches each in-range report's whole percent.
    """
    stored = [0]
    for report in sequence:
        stored.append(next_progress(stored[-1], report))
    assert all(0 <= p <= 100 for p in stored)
    assert all(a <= b for a, b in itertools.pairwise(stored))
    for report, after in zip(sequence, stored[1:], strict=True):
        assert after >= min(max(int(report // 1), 0), 100)


def test_progress_refuses_what_is_not_a_number():
    for bad in (float("nan"), float("inf"), True, "50"):
        with pytest.raises(InvalidJob):
            next_progress(0, bad)
