"""Async client for Qubic's public HTTP APIs: ``/live/v1`` (network) and ``/query/v1`` (archive).

The live API answers what the network holds now (tick, balances) and relays transactions; the
query API answers what the archive has processed (transactions by hash, by identity, and the
last processed tick that bounds every answer). Both are grpc-gateway services, so

* 64-bit integers arrive as JSON strings (``"amount": "1000"``); 32-bit ones as numbers. Every
  integer field is parsed to ``int`` from either form, and a field the server omitted (proto3
  omits zero values) reads as zero.
* Errors arrive as ``{"code": <grpc code>, "message": "…", "details": [...]}`` with an HTTP status;
  they become typed exceptions below.

Transient failures (connection errors, timeouts, HTTP 502/503/504) are retried with exponential
backoff and jitter; a 4xx is never retried. After the retries the caller gets
:class:`RpcUnavailable` and decides what to queue (the settlement backend marks the payout
"payment delayed" and tries again on its next round).
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import logging
import random
import re
from collections.abc import AsyncIterator, Mapping
from typing import Any, Self

import httpx

from .identity import is_valid_identity

log = logging.getLogger(__name__)

#: The public endpoints; pass ``base_url=PUBLIC_RPC_URL`` to :meth:`QubicRpcClient.from_base_url`.
PUBLIC_RPC_URL = "https://rpc.qubic.org"
#: The archive refuses ``offset + size`` above this; larger result sets are split by tick range.
MAX_RESULT_WINDOW = 10_000
#: The archive's largest page; page sizes must be 1 or a multiple of 10.
MAX_PAGE_SIZE = 1_000

_TRANSIENT_STATUS = frozenset({502, 503, 504})
_TX_ID = re.compile(r"[a-z]{60}")
_INT = re.compile(r"-?[0-9]+")


# ---------------------------------------------------------------------------------------- errors


class QubicRpcError(Exception):
    """Base of every error the RPC client raises.

    ``status`` is the HTTP status (``None`` for transport failures), ``grpc_code`` and ``details``
    come from the server's error body when it sent one.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        grpc_code: int | None = None,
        details: Any = None,
        endpoint: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.grpc_code = grpc_code
        self.details = details
        self.endpoint = endpoint

    def __str__(self) -> str:
        where = f"{self.endpoint}: " if self.endpoint else ""
        status = f"HTTP {self.status}: " if self.status is not None else ""
        return f"{where}{status}{self.message}"


class RpcNotConfigured(QubicRpcError, ValueError):
    """No (or no usable) base URL: the client will not touch the network."""


class RpcUnavailable(QubicRpcError):
    """The service could not be reached or answered 5xx, after the configured retries."""


class RpcRejected(QubicRpcError):
    """The service refused the request (HTTP 4xx). Retrying the same request will not help."""


class TransactionNotFound(QubicRpcError):
    """The archive holds no transaction with that hash (HTTP 404): it was not included."""


class RpcBadResponse(QubicRpcError):
    """A 2xx answer that is not the JSON shape of the API."""


# ----------------------------------------------------------------------------- response types


@dataclasses.dataclass(frozen=True, slots=True)
class TickInfo:
    """``GET /live/v1/tick-info``: the network's current tick."""

    tick: int
    duration: int
    epoch: int
    initial_tick: int


@dataclasses.dataclass(frozen=True, slots=True)
class Balance:
    """``GET /live/v1/balances/{id}``: an identity's entity record as of ``valid_for_tick``."""

    id: str
    balance: int
    valid_for_tick: int
    latest_incoming_transfer_tick: int
    latest_outgoing_transfer_tick: int
    incoming_amount: int
    outgoing_amount: int
    number_of_incoming_transfers: int
    number_of_outgoing_transfers: int


@dataclasses.dataclass(frozen=True, slots=True)
class BroadcastResult:
    """``POST /live/v1/broadcast-transaction``: how many peers got it, and its id."""

    peers_broadcasted: int
    encoded_transaction: str
    transaction_id: str


@dataclasses.dataclass(frozen=True, slots=True)
class LastProcessedTick:
    """``GET /query/v1/getLastProcessedTick``: archive answers are complete to ``tick_number``."""

    tick_number: int
    epoch: int
    interval_initial_tick: int


@dataclasses.dataclass(frozen=True, slots=True)
class ArchivedTransaction:
    """A transaction as the archive holds it: included in ``tick_number``.

    ``money_flew`` is false when the transaction was included but moved nothing (for example the
    source could not cover the amount when its tick was processed).
    """

    hash: str
    amount: int
    source: str
    destination: str
    tick_number: int
    timestamp: int
    input_type: int
    input_size: int
    input_data: str
    signature: str
    money_flew: bool


@dataclasses.dataclass(frozen=True, slots=True)
class Hits:
    total: int
    offset: int  # the API calls it "from"
    size: int


@dataclasses.dataclass(frozen=True, slots=True)
class TransactionPage:
    """``POST /query/v1/getTransactionsForIdentity``: one page, newest tick first."""

    valid_for_tick: int
    hits: Hits
    transactions: tuple[ArchivedTransaction, ...]


# ----------------------------------------------------------------------------------- parsing


def parse_int(value: Any, field: str = "value") -> int:
    """An integer from a JSON number or a decimal string (how protobuf JSON writes int64)."""
    if isinstance(value, bool):
        raise RpcBadResponse(f"{field}: expected an integer, got a boolean")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and _INT.fullmatch(value.strip()):
        return int(value.strip())
    raise RpcBadResponse(f"{field}: expected an integer, got {value!r}")


def _obj(data: Any, field: str) -> Mapping[str, Any]:
    if not isinstance(data, Mapping):
        raise RpcBadResponse(f"{field}: expected a JSON object, got {type(data).__name__}")
    return data


def _int(data: Mapping[str, Any], key: str) -> int:
    # proto3 JSON leaves zero values out, so a missing number is 0.
    return parse_int(data[key], key) if data.get(key) is not None else 0


def _str(data: Mapping[str, Any], key: str, *, required: bool = False) -> str:
    value = data.get(key)
    if value is None:
        if required:
            raise RpcBadResponse(f"{key}: missing from the response")
        return ""
    if not isinstance(value, str):
        raise RpcBadResponse(f"{key}: expected a string, got {type(value).__name__}")
    return value


def _bool(data: Mapping[str, Any], key: str) -> bool:
    value = data.get(key, False)
    if not isinstance(value, bool):
        raise RpcBadResponse(f"{key}: expected a boolean, got {value!r}")
    return value


def parse_tick_info(data: Any) -> TickInfo:
    info = _obj(_obj(data, "response").get("tickInfo"), "tickInfo")
    return TickInfo(
        tick=_int(info, "tick"),
        duration=_int(info, "duration"),
        epoch=_int(info, "epoch"),
        initial_tick=_int(info, "initialTick"),
    )


def parse_balance(data: Any) -> Balance:
    b = _obj(_obj(data, "response").get("balance"), "balance")
    return Balance(
        id=_str(b, "id", required=True),
        balance=_int(b, "balance"),
        valid_for_tick=_int(b, "validForTick"),
        latest_incoming_transfer_tick=_int(b, "latestIncomingTransferTick"),
        latest_outgoing_transfer_tick=_int(b, "latestOutgoingTransferTick"),
        incoming_amount=_int(b, "incomingAmount"),
        outgoing_amount=_int(b, "outgoingAmount"),
        number_of_incoming_transfers=_int(b, "numberOfIncomingTransfers"),
        number_of_outgoing_transfers=_int(b, "numberOfOutgoingTransfers"),
    )


def parse_broadcast(data: Any) -> BroadcastResult:
    d = _obj(data, "response")
    return BroadcastResult(
        peers_broadcasted=_int(d, "peersBroadcasted"),
        encoded_transaction=_str(d, "encodedTransaction"),
        transaction_id=_str(d, "transactionId", required=True),
    )


def parse_last_processed_tick(data: Any) -> LastProcessedTick:
    d = _obj(data, "response")
    return LastProcessedTick(
        tick_number=_int(d, "tickNumber"),
        epoch=_int(d, "epoch"),
        interval_initial_tick=_int(d, "intervalInitialTick"),
    )


def parse_transaction(data: Any) -> ArchivedTransaction:
    d = _obj(data, "transaction")
    return ArchivedTransaction(
        hash=_str(d, "hash", required=True),
        amount=_int(d, "amount"),
        source=_str(d, "source", required=True),
        destination=_str(d, "destination", required=True),
        tick_number=_int(d, "tickNumber"),
        timestamp=_int(d, "timestamp"),
        input_type=_int(d, "inputType"),
        input_size=_int(d, "inputSize"),
        input_data=_str(d, "inputData"),
        signature=_str(d, "signature"),
        money_flew=_bool(d, "moneyFlew"),
    )


def parse_transaction_page(data: Any) -> TransactionPage:
    d = _obj(data, "response")
    hits = _obj(d.get("hits") or {}, "hits")
    txs = d.get("transactions") or []
    if not isinstance(txs, list):
        raise RpcBadResponse("transactions: expected a list")
    return TransactionPage(
        valid_for_tick=_int(d, "validForTick"),
        hits=Hits(total=_int(hits, "total"), offset=_int(hits, "from"), size=_int(hits, "size")),
        transactions=tuple(parse_transaction(t) for t in txs),
    )


def _error(cls: type[QubicRpcError], response: httpx.Response, endpoint: str) -> QubicRpcError:
    """The typed error for an HTTP error answer, with the grpc-style body when there is one."""
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        body = None
    message = response.reason_phrase or "error"
    grpc_code = details = None
    if isinstance(body, Mapping):
        if isinstance(body.get("message"), str) and body["message"]:
            message = body["message"]
        code = body.get("code")
        grpc_code = code if isinstance(code, int) and not isinstance(code, bool) else None
        details = body.get("details")
    elif response.text:
        message = response.text[:200]
    return cls(
        message,
        status=response.status_code,
        grpc_code=grpc_code,
        details=details,
        endpoint=endpoint,
    )


# ------------------------------------------------------------------------------------ client


@dataclasses.dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with jitter for transient failures.

    ``retries`` extra tries after the first (3 → at most 4 requests); the n-th retry waits
    ``min(max_delay, base_delay × 2ⁿ)`` scaled by a random factor in ``[1 − jitter, 1]``, so
    concurrent clients do not retry in lockstep.
    """

    retries: int = 3
    base_delay: float = 0.25
    max_delay: float = 5.0
    jitter: float = 0.5

    def delay(self, retry: int, rng: random.Random | None = None) -> float:
        pick = (rng or random).uniform(1.0 - self.jitter, 1.0)
        return min(self.max_delay, self.base_delay * 2**retry) * pick


def _check_base_url(url: str | None, name: str) -> str:
    if not url or not str(url).strip():
        raise RpcNotConfigured(
            f"no Qubic {name} URL is configured; set it (for the public network "
            f"{PUBLIC_RPC_URL}/{'live' if name == 'live' else 'query'}/v1) or use the memory "
            "settlement backend"
        )
    try:
        parsed = httpx.URL(str(url).strip())
    except httpx.InvalidURL as exc:
        raise RpcNotConfigured(f"the Qubic {name} URL {url!r} is not a URL: {exc}") from exc
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise RpcNotConfigured(f"the Qubic {name} URL {url!r} is not an http(s) URL")
    return str(parsed).rstrip("/")


class QubicRpcClient:
    """One client for both APIs. Use as ``async with QubicRpcClient(...) as rpc:`` or call
    :meth:`aclose`.

    ``live_url`` and ``query_url`` are the API roots, e.g. ``https://rpc.qubic.org/live/v1`` and
    ``https://rpc.qubic.org/query/v1``; both are required. ``timeout`` is seconds per request.
    """

    def __init__(
        self,
        live_url: str | None,
        query_url: str | None,
        *,
        timeout: float = 10.0,
        retry: RetryPolicy | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.live_url = _check_base_url(live_url, "live")
        self.query_url = _check_base_url(query_url, "query")
        self.retry = retry or RetryPolicy()
        self._rng = rng
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout),
            transport=transport,
            headers={"Accept": "application/json", "User-Agent": "qubix-jupyter"},
        )

    @classmethod
    def from_base_url(cls, base_url: str | None, **kwargs: Any) -> Self:
        """A client for a gateway that serves both APIs, e.g. ``https://rpc.qubic.org``."""
        root = _check_base_url(base_url, "RPC")
        return cls(f"{root}/live/v1", f"{root}/query/v1", **kwargs)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    # ------------------------------------------------------------------ transport

    async def _send(self, method: str, url: str, endpoint: str, body: Any) -> httpx.Response:
        """Send with retries on transient failures; return the first non-transient response."""
        last: QubicRpcError | None = None
        for attempt in range(self.retry.retries + 1):
            if attempt:
                await asyncio.sleep(self.retry.delay(attempt - 1, self._rng))
            try:
                response = await self._http.request(method, url, json=body)
            except httpx.TimeoutException as exc:
                last = RpcUnavailable(f"timed out ({type(exc).__name__})", endpoint=endpoint)
            except (httpx.NetworkError, httpx.RemoteProtocolError) as exc:
                last = RpcUnavailable(f"unreachable ({exc!r})", endpoint=endpoint)
            except httpx.HTTPError as exc:  # an unusable URL or proxy: not transient
                raise QubicRpcError(f"request failed: {exc!r}", endpoint=endpoint) from exc
            else:
                if response.status_code not in _TRANSIENT_STATUS:
                    return response
                last = _error(RpcUnavailable, response, endpoint)
            log.debug("qubic rpc %s failed (try %d): %s", endpoint, attempt + 1, last)
        assert last is not None
        raise last

    async def _call(
        self,
        method: str,
        base: str,
        path: str,
        body: Any = None,
        *,
        not_found: type[QubicRpcError] = RpcRejected,
    ) -> Any:
        endpoint = f"{method} {path}"
        response = await self._send(method, f"{base}{path}", endpoint, body)
        status = response.status_code
        if 200 <= status < 300:
            try:
                return response.json()
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise RpcBadResponse(
                    f"not JSON: {response.text[:200]!r}", status=status, endpoint=endpoint
                ) from None
        if status == 404:
            raise _error(not_found, response, endpoint)
        if 400 <= status < 500:
            raise _error(RpcRejected, response, endpoint)
        if status >= 500:
            raise _error(RpcUnavailable, response, endpoint)
        raise _error(RpcBadResponse, response, endpoint)

    # ------------------------------------------------------------------ live API

    async def get_tick_info(self) -> TickInfo:
        return parse_tick_info(await self._call("GET", self.live_url, "/tick-info"))

    async def get_balance(self, identity: str) -> Balance:
        _require_identity(identity)
        return parse_balance(await self._call("GET", self.live_url, f"/balances/{identity}"))

    async def broadcast_transaction(self, transaction: bytes | str) -> BroadcastResult:
        """Relay signed transaction bytes (or their base64 text) to the network.

        Acceptance means peers received it, not that it will be included: inclusion is known
        only from the archive once the target tick has been processed.
        """
        if isinstance(transaction, bytes | bytearray | memoryview):
            encoded = base64.b64encode(bytes(transaction)).decode("ascii")
        elif isinstance(transaction, str):
            encoded = transaction
        else:
            raise TypeError("transaction must be the signed bytes or their base64 text")
        data = await self._call(
            "POST", self.live_url, "/broadcast-transaction", {"encodedTransaction": encoded}
        )
        return parse_broadcast(data)

    # ------------------------------------------------------------------ query API

    async def get_last_processed_tick(self) -> LastProcessedTick:
        data = await self._call("GET", self.query_url, "/getLastProcessedTick")
        return parse_last_processed_tick(data)

    async def get_transaction_by_hash(self, tx_id: str) -> ArchivedTransaction:
        """The archived transaction; :class:`TransactionNotFound` when it was not included."""
        if not isinstance(tx_id, str) or not _TX_ID.fullmatch(tx_id):
            raise ValueError(f"a transaction id is 60 lowercase letters, got {tx_id!r}")
        data = await self._call(
            "POST",
            self.query_url,
            "/getTransactionByHash",
            {"hash": tx_id},
            not_found=TransactionNotFound,
        )
        return parse_transaction(data)

    async def get_transactions_for_identity(
        self,
        identity: str,
        *,
        from_tick: int | None = None,
        to_tick: int | None = None,
        filters: Mapping[str, str | int] | None = None,
        offset: int = 0,
        size: int = 100,
    ) -> TransactionPage:
        """One page of an identity's transactions (both directions unless filtered), newest
        first, with ``from_tick ≤ tickNumber ≤ to_tick``. The archive wants ``from_tick <
        to_tick`` when both are given, ``size`` of 1 or a multiple of 10 up to 1000, and
        ``offset + size ≤ 10000``."""
        _require_identity(identity)
        body: dict[str, Any] = {"identity": identity}
        if filters:
            body["filters"] = {k: str(v) for k, v in filters.items()}
        tick_range: dict[str, str] = {}
        if from_tick is not None:
            tick_range["gte"] = str(from_tick)
        if to_tick is not None:
            tick_range["lte"] = str(to_tick)
        if tick_range:
            body["ranges"] = {"tickNumber": tick_range}
        body["pagination"] = {"offset": offset, "size": size}
        data = await self._call("POST", self.query_url, "/getTransactionsForIdentity", body)
        return parse_transaction_page(data)

    async def iter_transactions_for_identity(
        self,
        identity: str,
        *,
        from_tick: int,
        to_tick: int,
        filters: Mapping[str, str | int] | None = None,
        page_size: int = 100,
        max_result_window: int = MAX_RESULT_WINDOW,
    ) -> AsyncIterator[ArchivedTransaction]:
        """Every transaction of ``identity`` in ``[from_tick, to_tick]``, page by page.

        A range whose hit count reaches the archive's result window (the count is capped there,
        so there may be more) is halved until each part fits.
        Pass ``to_tick`` ≤ the archive's last processed tick so pages cannot shift underneath.
        """
        if page_size != 1 and (page_size % 10 or not 0 < page_size <= MAX_PAGE_SIZE):
            raise ValueError("page_size must be 1 or a multiple of 10 up to 1000")
        if from_tick > to_tick:
            return
        stack = [(from_tick, to_tick)]
        while stack:
            lo, hi = stack.pop()
            # The archive refuses a range whose bounds are equal; widen it downwards by a tick
            # (the caller deduplicates by hash, so a repeated tick is harmless).
            query_lo = lo - 1 if lo == hi and lo > 0 else lo
            page = await self.get_transactions_for_identity(
                identity, from_tick=query_lo, to_tick=hi, filters=filters, size=page_size
            )
            if page.hits.total >= max_result_window and hi > lo:
                mid = (lo + hi) // 2
                stack.append((mid + 1, hi))
                stack.append((lo, mid))
                continue
            offset = 0
            while True:
                for tx in page.transactions:
                    if lo <= tx.tick_number <= hi:
                        yield tx
                offset += len(page.transactions)
                if not page.transactions or offset >= min(page.hits.total, max_result_window):
                    break
                size = min(page_size, max_result_window - offset)
                if size != 1 and size % 10:
                    size -= size % 10
                if size <= 0:
                    break
                page = await self.get_transactions_for_identity(
                    identity,
                    from_tick=query_lo,
                    to_tick=hi,
                    filters=filters,
                    offset=offset,
                    size=size,
                )


def _require_identity(identity: str) -> None:
    if not is_valid_identity(identity):
        raise ValueError(f"not a valid Qubic identity: {identity!r}")


__all__ = [
    "MAX_PAGE_SIZE",
    "MAX_RESULT_WINDOW",
    "PUBLIC_RPC_URL",
    "ArchivedTransaction",
    "Balance",
    "BroadcastResult",
    "Hits",
    "LastProcessedTick",
    "QubicRpcClient",
    "QubicRpcError",
    "RetryPolicy",
    "RpcBadResponse",
    "RpcNotConfigured",
    "RpcRejected",
    "RpcUnavailable",
    "TickInfo",
    "TransactionNotFound",
    "TransactionPage",
    "parse_int",
]
