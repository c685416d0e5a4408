"""The Qubic RPC client against the local fake server: shapes, int64 strings, typed errors,
retries on transient failures only, timeouts, pagination."""

from __future__ import annotations

import base64
import random
from collections.abc import AsyncIterator

import httpx
import pytest

from qubix_jupyter.settlement.identity import identity_from_public_key
from qubix_jupyter.settlement.keys import KeyPair
from qubix_jupyter.settlement.rpc import (
    ArchivedTransaction,
    QubicRpcClient,
    QubicRpcError,
    RetryPolicy,
    RpcBadResponse,
    RpcNotConfigured,
    RpcRejected,
    RpcUnavailable,
    TransactionNotFound,
    parse_balance,
    parse_int,
    parse_transaction_page,
)
from qubix_jupyter.settlement.transaction import Transaction

from .fake_rpc import FakeQubicRpc

FAST = RetryPolicy(retries=3, base_delay=0.001, max_delay=0.005)
ALICE = KeyPair.from_seed("a" * 55)
BOB = identity_from_public_key(bytes(range(32)))


@pytest.fixture
async def fake() -> AsyncIterator[FakeQubicRpc]:
    async with FakeQubicRpc() as server:
        yield server


@pytest.fixture
async def rpc(fake: FakeQubicRpc) -> AsyncIterator[QubicRpcClient]:
    async with QubicRpcClient(fake.live_url, fake.query_url, timeout=2.0, retry=FAST) as client:
        yield client


def signed_transfer(amount: int, tick: int, *, to: str = BOB) -> Transaction:
    from qubix_jupyter.settlement.identity import public_key_from_identity

    return Transaction(ALICE.public_key, public_key_from_identity(to), amount, tick).signed(
        ALICE.subseed
    )


# ------------------------------------------------------------------------ configuration


@pytest.mark.parametrize(
    ("live", "query"),
    [(None, None), ("", "http://127.0.0.1:1/query/v1"), ("http://x/live/v1", None)],
)
def test_a_client_without_urls_refuses_to_exist(live: str | None, query: str | None) -> None:
    with pytest.raises(RpcNotConfigured, match="URL is configured"):
        QubicRpcClient(live, query)


def test_a_non_http_url_is_refused() -> None:
    with pytest.raises(RpcNotConfigured, match="not an http"):
        QubicRpcClient("ftp://example.org/live/v1", "http://example.org/query/v1")
    with pytest.raises(RpcNotConfigured):
        QubicRpcClient.from_base_url(None)
    with pytest.raises(RpcNotConfigured, match="not a URL"):
        QubicRpcClient("http://[::1", "http://example.org/query/v1")


async def test_from_base_url_puts_both_apis_under_one_root() -> None:
    client = QubicRpcClient.from_base_url("https://rpc.example.org/")
    assert client.live_url == "https://rpc.example.org/live/v1"
    assert client.query_url == "https://rpc.example.org/query/v1"
    await client.aclose()


def test_retry_delays_grow_and_stay_within_bounds() -> None:
    policy = RetryPolicy(retries=5, base_delay=0.1, max_delay=0.5, jitter=0.5)
    rng = random.Random(7)
    for n in range(6):
        cap = min(0.5, 0.1 * 2**n)
        for _ in range(50):
            assert cap * 0.5 <= policy.delay(n, rng) <= cap


# ------------------------------------------------------------------------ parsing


@pytest.mark.parametrize(("raw", "value"), [("42", 42), (42, 42), ("-7", -7), (" 9 ", 9)])
def test_parse_int_takes_numbers_and_decimal_strings(raw: object, value: int) -> None:
    assert parse_int(raw) == value


@pytest.mark.parametrize("raw", [True, "1.5", 1.0, "", "0x10", None, [1]])
def test_parse_int_rejects_everything_else(raw: object) -> None:
    with pytest.raises(RpcBadResponse):
        parse_int(raw)


def test_int64_fields_parse_from_strings_and_numbers_alike() -> None:
    big = 2**62 + 1  # beyond a double's exact range: must not pass through float
    as_strings = {"balance": {"id": BOB, "balance": str(big), "incomingAmount": str(big)}}
    as_numbers = {"balance": {"id": BOB, "balance": big, "incomingAmount": big}}
    a, b = parse_balance(as_strings), parse_balance(as_numbers)
    assert a == b
    assert a.balance == big
    assert isinstance(a.balance, int)
    assert a.outgoing_amount == 0  # proto3 omits zero values


def test_a_page_without_transactions_parses_to_an_empty_page() -> None:
    page = parse_transaction_page({"validForTick": 5, "hits": {"total": 0}})
    assert page.transactions == ()
    assert page.hits.total == 0
    assert page.valid_for_tick == 5


def test_a_transaction_without_hash_is_a_bad_response() -> None:
    with pytest.raises(RpcBadResponse, match="hash"):
        parse_transaction_page({"transactions": [{"amount": "1"}]})


# ------------------------------------------------------------------------ live API


async def test_tick_info(fake: FakeQubicRpc, rpc: QubicRpcClient) -> None:
    fake.advance(3)
    info = await rpc.get_tick_info()
    assert (info.tick, info.epoch, info.initial_tick) == (fake.tick, fake.epoch, fake.initial_tick)
    assert info.tick == fake.initial_tick + 3


async def test_balance_fields_arrive_as_int64_strings_and_parse_to_int(
    fake: FakeQubicRpc, rpc: QubicRpcClient
) -> None:
    fake.seed_incoming(BOB, 10**15)
    fake.seed_incoming(BOB, 5)
    fake.advance(1)
    async with httpx.AsyncClient() as raw:
        wire = (await raw.get(f"{fake.live_url}/balances/{BOB}")).json()["balance"]
    assert wire["balance"] == str(10**15 + 5)  # the wire form really is a string
    balance = await rpc.get_balance(BOB)
    assert balance.id == BOB
    assert balance.balance == 10**15 + 5
    assert balance.incoming_amount == 10**15 + 5
    assert balance.number_of_incoming_transfers == 2
    assert balance.outgoing_amount == 0
    assert balance.valid_for_tick == fake.tick


async def test_an_invalid_identity_is_refused_before_any_request(
    fake: FakeQubicRpc, rpc: QubicRpcClient
) -> None:
    with pytest.raises(ValueError, match="identity"):
        await rpc.get_balance(BOB[:-1] + ("A" if BOB[-1] != "A" else "B"))
    assert fake.requests == []


async def test_broadcast_then_inclusion_at_the_target_tick(
    fake: FakeQubicRpc, rpc: QubicRpcClient
) -> None:
    fake.balances[ALICE.identity] = 1_000
    tx = signed_transfer(400, fake.tick + 2)
    result = await rpc.broadcast_transaction(tx.to_bytes())
    assert result.transaction_id == tx.tx_id
    assert result.peers_broadcasted == fake.peers
    assert base64.b64decode(result.encoded_transaction) == tx.to_bytes()

    with pytest.raises(TransactionNotFound) as err:
        await rpc.get_transaction_by_hash(tx.tx_id)
    assert err.value.status == 404
    assert err.value.grpc_code == 5
    fake.advance(1)
    with pytest.raises(TransactionNotFound):  # one tick early: still not there
        await rpc.get_transaction_by_hash(tx.tx_id)
    fake.advance(1)

    archived = await rpc.get_transaction_by_hash(tx.tx_id)
    assert archived.hash == tx.tx_id
    assert archived.amount == 400
    assert archived.source == ALICE.identity
    assert archived.destination == BOB
    assert archived.tick_number == tx.tick
    assert archived.money_flew is True
    assert (await rpc.get_balance(BOB)).balance == 400
    assert (await rpc.get_last_processed_tick()).tick_number == fake.tick


async def test_a_transfer_the_source_cannot_cover_is_included_without_moving_money(
    fake: FakeQubicRpc, rpc: QubicRpcClient
) -> None:
    fake.balances[ALICE.identity] = 10
    tx = signed_transfer(11, fake.tick + 1)
    await rpc.broadcast_transaction(tx.to_base64())
    fake.advance(1)
    archived = await rpc.get_transaction_by_hash(tx.tx_id)
    assert archived.money_flew is False
    assert fake.balance(ALICE.identity) == 10
    assert fake.balance(BOB) == 0


async def test_a_bad_signature_is_rejected_with_400_and_not_retried(
    fake: FakeQubicRpc, rpc: QubicRpcClient
) -> None:
    tx = signed_transfer(1, fake.tick + 5)
    assert tx.signature is not None
    forged = tx.to_bytes()[:-64] + bytes([tx.signature[0] ^ 1]) + tx.signature[1:]
    with pytest.raises(RpcRejected) as err:
        await rpc.broadcast_transaction(forged)
    assert err.value.status == 400
    assert err.value.grpc_code == 3
    assert "signature" in err.value.message
    assert len(fake.requests) == 1
    assert fake.broadcasts == []


async def test_a_target_tick_already_past_is_accepted_but_never_included(
    fake: FakeQubicRpc, rpc: QubicRpcClient
) -> None:
    fake.balances[ALICE.identity] = 100
    tx = signed_transfer(1, fake.tick)
    assert (await rpc.broadcast_transaction(tx.to_bytes())).transaction_id == tx.tx_id
    fake.advance(5)
    with pytest.raises(TransactionNotFound):
        await rpc.get_transaction_by_hash(tx.tx_id)
    assert fake.balance(ALICE.identity) == 100


# ------------------------------------------------------------------------ failures and retries


async def test_503_is_retried_then_succeeds(fake: FakeQubicRpc, rpc: QubicRpcClient) -> None:
    fake.fail_next(2, status=503)
    info = await rpc.get_tick_info()
    assert info.tick == fake.tick
    assert len(fake.requests) == 3


@pytest.mark.parametrize("status", [502, 503, 504])
async def test_transient_statuses_exhaust_the_retries_then_raise_unavailable(
    fake: FakeQubicRpc, rpc: QubicRpcClient, status: int
) -> None:
    fake.fail_next(10, status=status)
    with pytest.raises(RpcUnavailable) as err:
        await rpc.get_tick_info()
    assert err.value.status == status
    assert len(fake.requests) == FAST.retries + 1


@pytest.mark.parametrize("status", [400, 401, 403, 409, 429])
async def test_4xx_is_never_retried(fake: FakeQubicRpc, rpc: QubicRpcClient, status: int) -> None:
    fake.fail_next(1, status=status, body={"code": 3, "message": "nope", "details": [{"x": 1}]})
    with pytest.raises(RpcRejected) as err:
        await rpc.get_last_processed_tick()
    assert (err.value.status, err.value.grpc_code, err.value.message) == (status, 3, "nope")
    assert err.value.details == [{"x": 1}]
    assert len(fake.requests) == 1


async def test_500_is_unavailable_without_retry(fake: FakeQubicRpc, rpc: QubicRpcClient) -> None:
    fake.fail_next(1, status=500, body={"code": 13, "message": "boom"})
    with pytest.raises(RpcUnavailable, match="boom"):
        await rpc.get_tick_info()
    assert len(fake.requests) == 1


async def test_an_error_body_that_is_not_json_keeps_its_text(
    fake: FakeQubicRpc, rpc: QubicRpcClient
) -> None:
    fake.fail_next(1, status=400, body="plain words")
    with pytest.raises(RpcRejected) as err:
        await rpc.get_tick_info()
    assert err.value.message == "plain words"
    assert err.value.grpc_code is None


async def test_a_2xx_that_is_not_json_is_a_bad_response(
    fake: FakeQubicRpc, rpc: QubicRpcClient
) -> None:
    fake.fail_next(1, status=200, body="<html>")
    with pytest.raises(RpcBadResponse):
        await rpc.get_tick_info()


async def test_a_slow_server_times_out_and_is_unavailable(fake: FakeQubicRpc) -> None:
    fake.latency = 0.5
    policy = RetryPolicy(retries=1, base_delay=0.001, max_delay=0.001)
    async with QubicRpcClient(fake.live_url, fake.query_url, timeout=0.05, retry=policy) as rpc:
        with pytest.raises(RpcUnavailable, match="timed out"):
            await rpc.get_tick_info()
    assert len(fake.requests) == 2


async def test_refused_connections_are_unavailable_then_recover(
    fake: FakeQubicRpc, rpc: QubicRpcClient
) -> None:
    assert (await rpc.get_tick_info()).tick == fake.tick  # a kept-alive connection exists
    await fake.refuse_connections()
    with pytest.raises(RpcUnavailable, match="unreachable"):
        await rpc.get_tick_info()
    await fake.accept_connections()
    assert (await rpc.get_tick_info()).tick == fake.tick


async def test_a_down_service_answers_503_with_a_grpc_body(
    fake: FakeQubicRpc, rpc: QubicRpcClient
) -> None:
    fake.down = True
    with pytest.raises(RpcUnavailable) as err:
        await rpc.get_balance(BOB)
    assert err.value.grpc_code == 14
    fake.down = False
    assert (await rpc.get_balance(BOB)).balance == 0


async def test_during_an_epoch_change_the_tick_stands_and_the_archive_is_unavailable(
    fake: FakeQubicRpc, rpc: QubicRpcClient
) -> None:
    start, epoch = fake.tick, fake.epoch
    fake.epoch_transition(3, gap=10)
    fake.advance(2)
    assert (await rpc.get_tick_info()).tick == start
    with pytest.raises(RpcUnavailable, match="epoch change"):
        await rpc.get_last_processed_tick()
    fake.advance(1)
    info = await rpc.get_tick_info()
    assert (info.tick, info.epoch, info.initial_tick) == (start + 10, epoch + 1, start + 10)
    last = await rpc.get_last_processed_tick()
    assert (last.tick_number, last.interval_initial_tick) == (start + 10, start + 10)


def test_every_typed_error_is_a_qubic_rpc_error() -> None:
    for cls in (RpcUnavailable, RpcRejected, TransactionNotFound, RpcBadResponse, RpcNotConfigured):
        assert issubclass(cls, QubicRpcError)
    assert not issubclass(TransactionNotFound, RpcRejected)


# ------------------------------------------------------------------------ query API


async def _collect(it: AsyncIterator[ArchivedTransaction]) -> list[ArchivedTransaction]:
    return [tx async for tx in it]


async def test_transactions_for_identity_pages_newest_first(
    fake: FakeQubicRpc, rpc: QubicRpcClient
) -> None:
    first = fake.tick
    ids = []
    for i in range(25):
        ids.append(fake.seed_incoming(BOB, i + 1))
        fake.advance(1)
    page = await rpc.get_transactions_for_identity(BOB, from_tick=first, to_tick=fake.tick, size=10)
    assert page.hits.total == 25
    assert page.hits.size == 10
    assert page.hits.offset == 0
    assert page.valid_for_tick == fake.last_processed_tick
    assert [t.hash for t in page.transactions] == ids[::-1][:10]
    assert all(isinstance(t.amount, int) for t in page.transactions)

    everything = await _collect(
        rpc.iter_transactions_for_identity(BOB, from_tick=first, to_tick=fake.tick, page_size=10)
    )
    assert [t.hash for t in everything] == ids[::-1]
    some = await _collect(
        rpc.iter_transactions_for_identity(
            BOB, from_tick=first + 5, to_tick=first + 9, page_size=10
        )
    )
    assert sorted(t.tick_number for t in some) == list(range(first + 5, first + 10))


async def test_a_range_larger_than_the_result_window_is_split(
    fake: FakeQubicRpc, rpc: QubicRpcClient
) -> None:
    fake.max_hits = 20
    first = fake.tick
    ids = set()
    for i in range(45):
        ids.add(fake.seed_incoming(BOB, i + 1))
        if i % 3 == 2:
            fake.advance(1)
    got = await _collect(
        rpc.iter_transactions_for_identity(
            BOB, from_tick=first, to_tick=fake.tick, page_size=10, max_result_window=20
        )
    )
    assert len(got) == len(ids)
    assert {t.hash for t in got} == ids


async def test_a_single_tick_range_is_widened_for_the_archive_and_filtered_back(
    fake: FakeQubicRpc, rpc: QubicRpcClient
) -> None:
    before = fake.seed_incoming(BOB, 1)
    fake.advance(1)
    at = fake.seed_incoming(BOB, 2)
    fake.advance(1)
    with pytest.raises(RpcRejected, match="invalid range"):  # what the archive itself says
        await rpc.get_transactions_for_identity(BOB, from_tick=fake.tick, to_tick=fake.tick)
    got = await _collect(
        rpc.iter_transactions_for_identity(BOB, from_tick=fake.tick, to_tick=fake.tick)
    )
    assert [t.hash for t in got] == [at]
    assert before != at


async def test_filters_reach_the_archive(fake: FakeQubicRpc, rpc: QubicRpcClient) -> None:
    outsider = identity_from_public_key(bytes([9] * 32))
    mine = fake.seed_incoming(BOB, 3, source=outsider)
    fake.seed_incoming(BOB, 4)
    fake.advance(1)
    page = await rpc.get_transactions_for_identity(
        BOB, filters={"source": outsider}, from_tick=0, to_tick=fake.tick
    )
    assert [t.hash for t in page.transactions] == [mine]


async def test_transactions_appear_only_once_the_archive_processed_their_tick() -> None:
    async with (
        FakeQubicRpc(archive_lag=2) as fake,
        QubicRpcClient(fake.live_url, fake.query_url, retry=FAST) as rpc,
    ):
        fake.balances[ALICE.identity] = 50
        tx = signed_transfer(5, fake.tick + 1)
        await rpc.broadcast_transaction(tx.to_bytes())
        fake.advance(2)
        assert fake.balance(BOB) == 5  # the network applied it
        with pytest.raises(TransactionNotFound):  # the archive has not caught up
            await rpc.get_transaction_by_hash(tx.tx_id)
        fake.advance(1)
        assert (await rpc.get_transaction_by_hash(tx.tx_id)).money_flew
