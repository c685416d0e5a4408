"""The blocking client against a real ``qubix serve``: sign-in, marketplace, wallet, jobs, and
the market's error answers as typed exceptions carrying the server's body."""

from __future__ import annotations

import asyncio
import pickle
import time
import uuid

import pytest

import qubix_jupyter as qubix
from qubix_jupyter.client import (
    Conflict,
    Forbidden,
    InsufficientFunds,
    MarketClient,
    MarketUnreachable,
    NotFound,
    ResultTimeout,
    Unauthorized,
    ValidationFailed,
)
from qubix_jupyter.dask_provider.kinds import run_python
from qubix_jupyter.market import payloads
from qubix_jupyter.settlement.wallet import write_seed_file

from .conftest import GPU, SEED_ALICE, Market, identity, signed_in


def _worker() -> str:
    return f"w-{uuid.uuid4().hex[:12]}"


def test_sign_in_with_the_seed_file_and_use_the_marketplace(market_on_both: Market, tmp_path):
    seed_file = tmp_path / "seed"
    write_seed_file(seed_file, SEED_ALICE)
    client = MarketClient(market_on_both.url, seed_file=str(seed_file))
    try:
        assert client.token is None
        session = client.sign_in()
        assert client.token is not None
        assert session.user is not None
        assert session.user.qubic_address == identity(SEED_ALICE)
        assert (
            client.health().database
            == {
                "reachable": True,
                "backend": market_on_both.database_url.split(":")[0].replace("sqlite", "sqlite"),
            }
            or client.health().status == "ok"
        )
        me = client.me()
        assert me.user is not None
        assert me.user.id == session.user.id
        assert client.balance().balance == 0

        worker = _worker()
        registered = client.quick_register(worker, GPU, 12, name="alice's 4090")
        assert registered.created is True
        assert registered.worker_token
        assert registered.worker_token.startswith("qxw_")
        assert registered.provider is not None
        assert registered.provider.worker_id == worker
        again = client.quick_register(worker, GPU, 99)
        assert again.created is False
        assert again.provider is not None
        assert again.provider.price_per_hour == 12  # a re-register keeps the chosen price

        page = client.providers(availability="all", gpu_model="rtx 4090", max_price=12)
        assert worker in [offer.worker_id for offer in page.items]
        offer = client.provider(worker)
        assert (offer.gpu_model, offer.gpu_vram, offer.price_per_hour) == ("RTX 4090", 24, 12)
        newest = client.check_new()
        assert newest is not None
        assert newest.worker_id == worker

        updated = client.update_provider(worker, price_per_hour=15, location="EU")
        assert (updated.price_per_hour, updated.location) == (15, "EU")
        unlisted = client.unlist_provider(worker)
        assert unlisted.is_listed is False
        with pytest.raises(NotFound) as missing:
            client.provider(worker)
        assert missing.value.code == "unknown_provider"
    finally:
        client.close()


def test_market_errors_arrive_as_typed_exceptions_with_the_servers_body(market: Market, alice, bob):
    with pytest.raises(NotFound) as not_found:
        alice.provider("nobody-here")
    assert (not_found.value.status, not_found.value.code) == (404, "unknown_provider")
    assert not_found.value.body["error"]["code"] == "unknown_provider"

    with pytest.raises(ValidationFailed) as invalid:
        alice.providers(limit=0)
    assert invalid.value.status == 422
    assert "limit" in str(invalid.value.details["errors"])

    worker = _worker()
    alice.quick_register(worker, GPU, 10)
    with pytest.raises(Conflict) as taken:
        bob.quick_register(worker, GPU, 10)
    assert taken.value.code == "worker_id_taken"
    with pytest.raises(Forbidden) as forbidden:
        bob.update_provider(worker, price_per_hour=1)
    assert forbidden.value.status == 403

    with pytest.raises(InsufficientFunds) as broke:
        bob.create_job("python", None, compute_needed=1.0, max_price=10**6)
    assert (broke.value.status, broke.value.code) == (402, "insufficient_funds")

    stranger = MarketClient(market.url, token="not-a-token", retries=0)
    try:
        with pytest.raises(Unauthorized) as refused:
            stranger.me()
        assert (refused.value.status, refused.value.code) == (401, "unauthorized")
    finally:
        stranger.close()
    anonymous = MarketClient(market.url, retries=0)
    try:
        with pytest.raises(Unauthorized) as not_signed_in:
            anonymous.me()
        assert not_signed_in.value.code == "not_signed_in"
    finally:
        anonymous.close()


def test_an_expired_or_revoked_token_is_renewed_with_the_wallet(market: Market):
    client = signed_in(market, "c" * 55)
    try:
        old = client.token
        other = MarketClient(market.url, token=old, retries=0)
        assert other.sign_out() is True  # the market revokes the token of that request
        other.close()
        assert client.me().user is not None  # 401 → signs in again with the seed → retried
        assert client.token != old
    finally:
        client.close()


def test_wallet_deposit_is_idempotent_by_key_and_shows_in_the_history(market: Market):
    client = signed_in(market, "d" * 55)
    try:
        address = client.deposit_address()
        assert address.simulated
        assert address.backend == "memory"
        assert address.address
        key = str(uuid.uuid4())
        first = client.deposit(500, idempotency_key=key)
        repeat = client.deposit(500, idempotency_key=key)
        assert (first.amount, first.balance) == (500, 500)
        assert repeat.qubic_tx_hash == first.qubic_tx_hash
        assert client.balance().balance == 500  # the retry moved no money
        client.deposit(250)
        assert client.balance().balance == 750

        history = client.transactions()
        deposits = [t for t in history.items if t.type == "DEPOSIT"]
        assert sorted(t.amount for t in deposits) == [250, 500]
        assert all(t.direction == "in" for t in deposits)

        withdrawal = client.withdraw(100)
        assert withdrawal.balance == 650
        assert withdrawal.withdrawal is not None
        assert withdrawal.withdrawal.to_address == identity("d" * 55)
        assert [w.id for w in client.withdrawals()] == [withdrawal.withdrawal.id]
        assert client.earnings().total == 0
    finally:
        client.close()


def test_jobs_create_list_get_cancel_and_result(market: Market):
    client = signed_in(market, "e" * 55)
    try:
        client.deposit(1000)
        created = client.create_job(
            "python", {"kind": "python", "payload": ""}, compute_needed=0.5, max_price=40
        )
        job = created.job
        assert job is not None
        assert job.status in {"PENDING", "FAILED"}
        assert created.estimated_cost == 20  # 40 QU/h × 0.5 h, locked in escrow
        assert client.job(job.id).id == job.id
        assert job.id in [j.id for j in client.jobs().items]
        if job.status == "PENDING":
            with pytest.raises(Conflict):  # no result before the job ends
                client.job_result(job.id)
            cancelled = client.cancel_job(job.id)
            assert cancelled.job is not None
            assert cancelled.job.status == "CANCELLED"
            assert cancelled.payment is not None
            assert cancelled.payment.refund == 20
        assert client.balance().balance == 1000  # unassigned: the escrow came back whole
        assert client.job_result(job.id).status in {"CANCELLED", "FAILED"}
        with pytest.raises(NotFound):
            client.job(str(uuid.uuid4()))
    finally:
        client.close()


def square(x: int) -> int:
    return x * x


def test_submit_sends_a_cloudpickled_python_job_and_cancel_refunds(market: Market):
    client = qubix.connect(market.url, seed="f" * 55)
    try:
        client.deposit(100)
        jobs = qubix.map(square, [2, 3], max_price=20, hours=1, gpu="RTX 4090")
        assert len(jobs) == 2
        for job in jobs:
            info = client.job(job.id)
            assert info.model_type == "python"
            assert info.gpu_model == ["RTX 4090"]
            assert job.status in {"PENDING", "FAILED"}
        assert client.balance().balance == 60  # two budgets of 20 QU locked
        for job in jobs:
            assert job.cancel().status in {"CANCELLED", "FAILED"}
        assert client.balance().balance == 100
        with pytest.raises(qubix.api.JobFailed):
            jobs[0].result(timeout=30)
    finally:
        client.close()


def test_a_market_that_is_down_is_unreachable_after_the_retries():
    client = MarketClient(f"http://127.0.0.1:{_closed_port()}/", retries=2)
    try:
        with pytest.raises(MarketUnreachable) as down:
            client.health()
        assert down.value.status == 0
    finally:
        client.close()


def _closed_port() -> int:
    from .conftest import free_port

    return free_port()


async def _awaited(job: qubix.Job) -> object:
    return await job


def test_a_submitted_function_runs_where_the_worker_reads_it_and_its_result_comes_back(
    market: Market,
):
    """The consumer's job travels as documented to the provider's worker (the worker calls are
    the client's too); ``result`` waits on the job's channel and unpickles the answer."""
    provider = signed_in(market, "k" * 55)
    consumer = MarketClient(market.url, seed="m" * 55)
    try:
        worker = _worker()
        provider.quick_register(worker, GPU, 10)
        usage = {"cpuPercent": 5, "ramPercent": 10, "ramUsedGb": 1, "ramTotalGb": 8}
        provider.heartbeat(worker, usage)  # online: the job can be assigned to it
        consumer.sign_in()
        consumer.deposit(100)
        job = qubix.submit(pow, 2, 5, max_price=20, hours=1, gpu="RTX 4090", client=consumer)
        deadline = time.monotonic() + 45  # assigned at once, or by the matcher's next round
        while job.status != "ASSIGNED" and time.monotonic() < deadline:
            provider.heartbeat(worker, usage)
            time.sleep(0.5)
        assert job.info.status == "ASSIGNED"

        (pending,) = provider.pending_jobs(worker)
        assert pending.id == job.id
        payload = payloads.python_call_bytes(pending.input_data)
        assert run_python(payload) == 32  # the provider's python runner reads it as it is
        assert provider.report_progress(job.id, worker, 50) == 50
        assert job.progress == 50
        for timeout in (0, 0.5):  # it runs on: the wait gives up at the timeout
            with pytest.raises(ResultTimeout):
                job.result(timeout=timeout)
        answer = payloads.pickled_result(pickle.dumps(32))
        payment = provider.complete_job(job.id, worker, result=answer)
        assert payment.cost + payment.refund == 10  # the budget at the provider's price

        assert job.result(timeout=60) == 32
        assert job.status == "COMPLETED"
        assert asyncio.run(_awaited(job)) == 32
        with pytest.raises((Forbidden, NotFound)):  # the provider may not cancel it
            provider.cancel_job(job.id)
    finally:
        provider.close()
        consumer.close()


def test_a_client_with_the_wallet_signs_in_on_its_first_call(market: Market):
    client = MarketClient(market.url, seed="p" * 55)
    try:
        assert client.token is None
        me = client.me()
        assert me.user is not None
        assert me.user.qubic_address == identity("p" * 55)
        assert client.token is not None
    finally:
        client.close()
