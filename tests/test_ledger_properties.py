"""Seed Properties 4 and 8 as Hypothesis state machines over the real ledger.

Random sequences of deposits, withdrawals, escrow locks and releases, charges, refunds, retried
requests and conflicting reuses of keys run against PostgreSQL and SQLite; after every step the
five invariants of DESIGN.md §4 are recomputed from the raw entries, and every balance is checked
against a simple in-memory model.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from qubix_jupyter.db import repositories as repo
from qubix_jupyter.db.engine import make_engine, make_sessionmaker
from qubix_jupyter.db.ledger import Ledger, audit
from qubix_jupyter.market.errors import IdempotencyConflict, InsufficientFunds, InvalidState
from qubix_jupyter.market.money import split_charge
from qubix_jupyter.market.states import JobStatus

from .conftest import DatabaseURL

AMOUNTS = st.integers(min_value=1, max_value=50_000)
PRICES = st.integers(min_value=0, max_value=100_000)
SECONDS = st.integers(min_value=0, max_value=20_000)
FEES = st.sampled_from([0, 1, 250, 1000, 10_000])


@dataclass
class Context:
    runner: asyncio.Runner
    ledger: Ledger
    sessionmaker: Any


@dataclass
class ModelJob:
    id: str
    consumer: str
    provider_owner: str | None
    price: int | None
    escrow: int = 0
    open: bool = True


@dataclass
class Request:
    method: str
    kwargs: dict[str, Any]
    receipt: Any = None
    snapshot: dict[str, int] = field(default_factory=dict)


class LedgerMachine(RuleBasedStateMachine):
    ctx: Context

    jobs = Bundle("jobs")
    requests = Bundle("requests")

    def __init__(self) -> None:
        super().__init__()
        self.prefix = uuid.uuid4().hex[:12]
        self.keys = 0
        self.balances: dict[str, int] = {}  # user id → wallet
        self.platform_start = 0
        self.platform = 0
        self.model_jobs: dict[str, ModelJob] = {}

    # -------------------------------------------------------------- helpers

    def run(self, coro: Any) -> Any:
        return self.ctx.runner.run(coro)

    def key(self) -> str:
        self.keys += 1
        return f"{self.prefix}-{self.keys}"

    async def _new_user(self) -> str:
        async with self.ctx.sessionmaker() as s, s.begin():
            user = await repo.create_user(s, uuid.uuid4().hex.upper()[:60])
        return user.id

    def call(self, method: str, **kwargs: Any) -> Request:
        receipt = self.run(getattr(self.ledger, method)(**kwargs))
        assert not receipt.replayed
        return Request(method, kwargs, receipt)

    # -------------------------------------------------------------- setup

    @initialize(fee=FEES)
    def setup(self, fee: int) -> None:
        self.ledger = Ledger(self.ctx.sessionmaker, platform_fee_bps=fee)
        self.users = [self.run(self._new_user()) for _ in range(3)]
        self.balances = dict.fromkeys(self.users, 0)
        self.platform_start = self.run(self.ledger.balance("platform:fees"))
        self.platform = self.platform_start

    # -------------------------------------------------------------- wallets

    @rule(target=requests, who=st.integers(0, 2), amount=AMOUNTS)
    def deposit(self, who: int, amount: int) -> Request:
        user = self.users[who]
        req = self.call("deposit", user_id=user, amount=amount, idempotency_key=self.key())
        self.balances[user] += amount
        return req

    @rule(who=st.integers(0, 2), amount=AMOUNTS)
    def withdraw(self, who: int, amount: int) -> None:
        user = self.users[who]
        key = self.key()
        if amount > self.balances[user]:
            with pytest.raises(InsufficientFunds):
                self.run(self.ledger.withdraw(user, amount, idempotency_key=key))
            return
        self.run(self.ledger.withdraw(user, amount, idempotency_key=key))
        self.balances[user] -= amount

    # -------------------------------------------------------------- jobs and escrow

    @rule(target=jobs, who=st.integers(0, 2), owner=st.integers(0, 2), price=PRICES,
          assigned=st.booleans())  # fmt: skip
    def create_job(self, who: int, owner: int, price: int, assigned: bool) -> str:
        consumer, provider_owner = self.users[who], self.users[owner]

        async def make() -> str:
            async with self.ctx.sessionmaker() as s, s.begin():
                job = await repo.create_job(
                    s, consumer, model_type="python", compute_seconds=3600, max_price=price
                )
                if assigned:
                    provider = await repo.create_provider(
                        s, provider_owner, worker_id=uuid.uuid4().hex, price_per_hour=price
                    )
                    await repo.assign_job(s, job.id, provider, status=JobStatus.RUNNING)
            return job.id

        job_id = self.run(make())
        self.model_jobs[job_id] = ModelJob(
            job_id, consumer, provider_owner if assigned else None, price if assigned else None
        )
        return job_id

    @rule(target=requests, job_id=jobs, amount=AMOUNTS)
    def lock_escrow(self, job_id: str, amount: int) -> Request | None:
        job = self.model_jobs[job_id]
        key = self.key()
        if not job.open:
            with pytest.raises(InvalidState):
                self.run(self.ledger.lock_escrow(job_id, amount, idempotency_key=key))
            return None
        if amount > self.balances[job.consumer]:
            with pytest.raises(InsufficientFunds):
                self.run(self.ledger.lock_escrow(job_id, amount, idempotency_key=key))
            return None
        req = self.call("lock_escrow", job_id=job_id, amount=amount, idempotency_key=key)
        self.balances[job.consumer] -= amount
        job.escrow += amount
        assert req.receipt.amounts["escrow"] == job.escrow
        return req

    @rule(job_id=jobs, amount=AMOUNTS)
    def release_escrow(self, job_id: str, amount: int) -> None:
        job = self.model_jobs[job_id]
        key = self.key()
        expected = InvalidState if not job.open else InsufficientFunds
        if not job.open or amount > job.escrow:
            with pytest.raises(expected):
                self.run(self.ledger.release_escrow(job_id, amount, idempotency_key=key))
            return
        self.run(self.ledger.release_escrow(job_id, amount, idempotency_key=key))
        job.escrow -= amount
        self.balances[job.consumer] += amount

    @rule(target=requests, job_id=jobs, seconds=SECONDS)
    def charge(self, job_id: str, seconds: int) -> Request | None:
        job = self.model_jobs[job_id]
        key = self.key()
        if not job.open or job.provider_owner is None:
            with pytest.raises(InvalidState):
                self.run(self.ledger.charge(job_id, seconds=seconds, idempotency_key=key))
            return None
        req = self.call("charge", job_id=job_id, seconds=seconds, idempotency_key=key)
        assert job.price is not None
        split = split_charge(
            escrow=job.escrow,
            price_per_hour=job.price,
            seconds=seconds,
            platform_fee_bps=self.ledger.platform_fee_bps,
        )
        assert req.receipt.amounts == {
            "cost": split.cost,
            "provider": split.provider,
            "fee": split.fee,
            "refund": split.refund,
        }
        self.balances[job.provider_owner] += split.provider
        self.balances[job.consumer] += split.refund
        self.platform += split.fee
        job.escrow, job.open = 0, False
        return req

    @rule(target=requests, job_id=jobs, cancelled=st.booleans())
    def refund(self, job_id: str, cancelled: bool) -> Request | None:
        job = self.model_jobs[job_id]
        key = self.key()
        status = JobStatus.CANCELLED if cancelled else JobStatus.FAILED
        if not job.open:
            with pytest.raises(InvalidState):
                self.run(self.ledger.refund(job_id, idempotency_key=key, final_status=status))
            return None
        req = self.call("refund", job_id=job_id, idempotency_key=key, final_status=status)
        assert req.receipt.amounts == {"refund": job.escrow}
        self.balances[job.consumer] += job.escrow
        job.escrow, job.open = 0, False
        return req

    # -------------------------------------------------------------- retries

    @rule(req=requests)
    def retry_same_request(self, req: Request | None) -> None:
        """A client that lost the response sends the same request again: nothing moves twice."""
        if req is None:
            return
        before = self.snapshot()
        again = self.run(getattr(self.ledger, req.method)(**req.kwargs))
        assert again.replayed
        assert again.entry_ids == req.receipt.entry_ids
        assert again.amounts == req.receipt.amounts
        assert self.snapshot() == before

    @rule(req=consumes(requests), extra=st.integers(1, 5))
    def reuse_key_for_other_request(self, req: Request | None, extra: int) -> None:
        if req is None:
            return
        before = self.snapshot()
        kwargs = dict(req.kwargs)
        if "amount" in kwargs:
            kwargs["amount"] += extra
        elif "seconds" in kwargs:
            kwargs["seconds"] += extra
        else:
            kwargs["error"] = f"other reason {extra}"
        with pytest.raises(IdempotencyConflict):
            self.run(getattr(self.ledger, req.method)(**kwargs))
        assert self.snapshot() == before

    # -------------------------------------------------------------- invariants

    def snapshot(self) -> dict[str, int]:
        async def read() -> dict[str, int]:
            out = {u: await self.ledger.wallet_balance(u) for u in self.users}
            for job_id in self.model_jobs:
                out[job_id] = await self.ledger.escrow_balance(job_id)
            out["platform"] = await self.ledger.balance("platform:fees")
            return out

        return self.run(read())

    @precondition(lambda self: hasattr(self, "ledger"))
    @invariant()
    def ledger_invariants_hold(self) -> None:
        async def check() -> Any:
            async with self.ctx.sessionmaker() as s:
                return await audit(s)

        report = self.run(check())
        assert report.ok, report.violations  # invariants 1–5 from the raw entries

    @precondition(lambda self: hasattr(self, "ledger"))
    @invariant()
    def balances_match_the_model(self) -> None:
        actual = self.snapshot()
        for user, expected in self.balances.items():
            assert actual[user] == expected
        for job in self.model_jobs.values():
            assert actual[job.id] == job.escrow
            if not job.open:
                assert actual[job.id] == 0  # invariant 4 for this example's jobs
        assert actual["platform"] == self.platform


def _run_machine(machine: type[LedgerMachine], database_url: DatabaseURL) -> None:
    with asyncio.Runner() as runner:
        engine = make_engine(database_url.url)
        sessionmaker = make_sessionmaker(engine)
        machine.ctx = Context(runner, Ledger(sessionmaker), sessionmaker)
        try:
            run_state_machine_as_test(
                machine,
                settings=settings(
                    max_examples=100,
                    stateful_step_count=12,
                    deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
                ),
            )
        finally:
            runner.run(engine.dispose())


def test_wallet_balance_integrity(database_url: DatabaseURL) -> None:
    """**Feature: qubix-enterprise-upgrade, Property 4: For any sequence of transactions, the sum
    of all credits minus debits should equal the current wallet balance**"""
    _run_machine(LedgerMachine, database_url)


def test_payment_escrow_safety(database_url: DatabaseURL) -> None:
    """**Feature: qubix-enterprise-upgrade, Property 8: For any job payment, funds should remain in
    escrow until job completion or failure, never lost**"""
    _run_machine(LedgerMachine, database_url)
