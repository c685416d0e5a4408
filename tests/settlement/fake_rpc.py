"""A local stand-in for Qubic's ``/live/v1`` and ``/query/v1`` HTTP APIs.

A real tornado server on 127.0.0.1 (a free port) that speaks the services' JSON: 64-bit integers
as strings, grpc-gateway error bodies ``{"code", "message", "details"}``, the archive's pagination
and range rules. Behind it a tiny chain with the rules that matter for settlement:

* a broadcast transaction is decoded, parsed and its SchnorrQ signature verified with our own
  code; it is applied only when the chain processes its target tick, and moves money only if the
  source can cover it then (``moneyFlew``); a target tick already past is never included;
* the archive lists a transaction only once its tick is processed (``last_processed_tick``, which
  may lag the network tick by ``archive_lag``);
* switches to misbehave: :meth:`drop_next`, :attr:`down`, :meth:`refuse_connections`,
  :meth:`epoch_transition`, :meth:`fail_next`, :attr:`latency`;
* :meth:`seed_incoming` simulates QU arriving from outside.

Use it as ``async with FakeQubicRpc() as fake:``; ``fake.live_url`` and ``fake.query_url`` are the
API roots for :class:`~qubix_jupyter.settlement.rpc.QubicRpcClient`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import hashlib
import json
import socket
from collections.abc import Callable
from typing import Any

from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets
from tornado.web import Application, RequestHandler

from qubix_jupyter.settlement.identity import (
    identity_from_public_key,
    is_valid_identity,
    public_key_from_identity,
)
from qubix_jupyter.settlement.transaction import (
    MAX_AMOUNT,
    InvalidTransaction,
    Transaction,
)

# grpc status codes the gateways send in error bodies
OK, INVALID_ARGUMENT, NOT_FOUND, INTERNAL, UNAVAILABLE = 0, 3, 5, 13, 14
_MAX_HITS = 10_000


@dataclasses.dataclass
class FakeTx:
    """A transaction the fake chain knows: pending until its tick is processed."""

    tx_id: str
    source: str
    destination: str
    amount: int
    tick: int
    input_type: int = 0
    input_data: bytes = b""
    signature: bytes = b""
    timestamp_ms: int = 0
    money_flew: bool | None = None  # None while pending
    seq: int = 0  # arrival order, to keep listings stable
    outside: bool = False  # sent by an identity outside the fake (seed_incoming): minted
    outside_money_flew: bool = True

    def to_json(self) -> dict[str, Any]:
        return {
            "hash": self.tx_id,
            "amount": str(self.amount),
            "source": self.source,
            "destination": self.destination,
            "tickNumber": self.tick,
            "timestamp": str(self.timestamp_ms),
            "inputType": self.input_type,
            "inputSize": len(self.input_data),
            "inputData": base64.b64encode(self.input_data).decode(),
            "signature": base64.b64encode(self.signature).decode(),
            "moneyFlew": bool(self.money_flew),
        }


class ApiError(Exception):
    def __init__(self, status: int, code: int, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class FakeQubicRpc:
    """State and controls of the fake network; see the module docstring."""

    def __init__(
        self,
        *,
        tick: int = 20_000_000,
        epoch: int = 150,
        archive_lag: int = 0,
        balances: dict[str, int] | None = None,
        max_page_size: int = 1000,
        default_page_size: int = 10,
        max_hits: int = _MAX_HITS,
        peers: int = 3,
    ) -> None:
        self.tick = tick
        self.epoch = epoch
        self.initial_tick = tick
        self.duration = 1
        self.archive_lag = archive_lag
        self.balances: dict[str, int] = dict(balances or {})
        self.max_page_size = max_page_size
        self.default_page_size = default_page_size
        self.max_hits = max_hits
        self.peers = peers

        self.pending: dict[str, FakeTx] = {}
        self.archive: dict[str, FakeTx] = {}
        self.never_included: dict[str, FakeTx] = {}
        #: every accepted broadcast, duplicates included, in arrival order
        self.broadcasts: list[str] = []
        #: (tx id, other tx id) for each broadcast while its source had another tx outstanding
        self.pending_violations: list[tuple[str, str]] = []
        #: (method, path) of every request served, for asserting retries
        self.requests: list[tuple[str, str]] = []

        self.down = False
        self.latency = 0.0
        self._drop_next = 0
        self._epoch_window = 0
        self._epoch_gap = 0
        self._fail_next: list[tuple[int, dict[str, Any] | str, Callable[[str], bool]]] = []
        self._seq = 0

        self._server: HTTPServer | None = None
        self._app = self._make_app()
        self.port = 0

    # ------------------------------------------------------------------ lifecycle

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def live_url(self) -> str:
        return f"{self.base_url}/live/v1"

    @property
    def query_url(self) -> str:
        return f"{self.base_url}/query/v1"

    async def start(self) -> FakeQubicRpc:
        sockets = bind_sockets(self.port, "127.0.0.1", family=socket.AF_INET)
        self.port = sockets[0].getsockname()[1]
        self._server = HTTPServer(self._app)
        self._server.add_sockets(sockets)
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            await self._server.close_all_connections()
            self._server = None

    async def __aenter__(self) -> FakeQubicRpc:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def refuse_connections(self) -> None:
        """Close the listening socket and every open connection: clients get connection errors."""
        await self.stop()

    async def accept_connections(self) -> None:
        """Listen again on the same port after :meth:`refuse_connections`."""
        if self._server is None:
            await self.start()

    # ------------------------------------------------------------------ chain controls

    @property
    def last_processed_tick(self) -> int:
        return max(self.initial_tick, self.tick - self.archive_lag)

    @property
    def in_epoch_transition(self) -> bool:
        return self._epoch_window > 0

    def advance(self, n: int = 1) -> None:
        """Let ``n`` tick periods pass: produce and process the next ticks.

        During an epoch transition a period produces nothing (the tick stands still); when the
        window closes the new epoch starts ``gap`` ticks later and the skipped ticks are never
        processed, so transactions aimed at them are never included.
        """
        for _ in range(n):
            if self._epoch_window:
                self._epoch_window -= 1
                if not self._epoch_window:
                    self.epoch += 1
                    self.tick += self._epoch_gap
                    self.initial_tick = self.tick
                    self._expire_before(self.tick)
                    self._process(self.tick)
                continue
            self.tick += 1
            self._process(self.tick)

    def drop_next(self, n: int = 1) -> None:
        """Accept the next ``n`` broadcasts but never include them (as if no computor saw them)."""
        self._drop_next += n

    def epoch_transition(self, ticks: int, *, gap: int | None = None) -> None:
        """Start an epoch change lasting ``ticks`` periods: the tick does not advance and the
        query API answers 503 "epoch change"; the new epoch starts ``gap`` (default ``ticks``)
        ticks after the old one stopped."""
        if ticks <= 0:
            raise ValueError("an epoch transition lasts at least one tick period")
        self._epoch_window = ticks
        self._epoch_gap = ticks if gap is None else gap

    def fail_next(
        self,
        n: int = 1,
        *,
        status: int = 503,
        body: dict[str, Any] | str | None = None,
        path: str | None = None,
    ) -> None:
        """Answer the next ``n`` requests (whose path contains ``path``, if given) with
        ``status`` and ``body`` (a grpc error body by default; a str is sent as-is)."""
        if body is None:
            code = UNAVAILABLE if status >= 500 else INVALID_ARGUMENT
            body = {"code": code, "message": f"injected failure {status}", "details": []}
        match: Callable[[str], bool] = (lambda p: True) if path is None else (lambda p: path in p)
        self._fail_next.extend((status, body, match) for _ in range(n))

    def seed_incoming(
        self,
        identity: str,
        amount: int,
        *,
        source: str | None = None,
        tick: int | None = None,
        money_flew: bool = True,
    ) -> str:
        """Simulate ``amount`` QU sent to ``identity`` from an outside ``source`` (whose key we do
        not have). Returns the transaction id.

        By default the transfer is included in the next tick, like any transaction: it shows up
        once :meth:`advance` has processed that tick. A ``tick`` at or before the current one
        records it as history that was already there. With ``money_flew`` false the transfer is
        listed but moves nothing (as when its sender could not cover it).
        """
        if not is_valid_identity(identity):
            raise ValueError(f"not an identity: {identity!r}")
        tick = self.tick + 1 if tick is None else tick
        self._seq += 1
        source = source or identity_from_public_key(
            hashlib.sha256(b"fake-outside-%d" % self._seq).digest()
        )
        # A real transaction layout with a dummy signature: the id is K12 of the bytes.
        tx = Transaction(
            source_public_key=public_key_from_identity(source),
            destination_public_key=public_key_from_identity(identity),
            amount=amount,
            tick=tick,
            signature=hashlib.sha512(b"fake-sig-%d" % self._seq).digest(),
        )
        record = FakeTx(
            tx_id=tx.tx_id,
            source=source,
            destination=identity,
            amount=amount,
            tick=tick,
            signature=tx.signature or b"",
            seq=self._seq,
            outside=True,
            outside_money_flew=money_flew,
        )
        if tick > self.tick:
            self.pending[record.tx_id] = record
        else:
            self._apply(record)
        return record.tx_id

    def balance(self, identity: str) -> int:
        return self.balances.get(identity, 0)

    def visible(self, tx_id: str) -> FakeTx | None:
        """The archived transaction, if the archive has processed its tick."""
        tx = self.archive.get(tx_id)
        return tx if tx is not None and tx.tick <= self.last_processed_tick else None

    def paid(self, source: str, destination: str) -> list[FakeTx]:
        """Included transfers that moved money from ``source`` to ``destination``."""
        return [
            t
            for t in self.archive.values()
            if t.source == source and t.destination == destination and t.money_flew
        ]

    # ------------------------------------------------------------------ chain internals

    def _timestamp(self, tick: int) -> int:
        return 1_700_000_000_000 + tick * 1000

    def _expire_before(self, tick: int) -> None:
        for tx_id, tx in list(self.pending.items()):
            if tx.tick < tick:
                self.never_included[tx_id] = self.pending.pop(tx_id)

    def _process(self, tick: int) -> None:
        self._expire_before(tick)
        due = sorted((t for t in self.pending.values() if t.tick == tick), key=lambda t: t.seq)
        for tx in due:
            del self.pending[tx.tx_id]
            self._apply(tx)

    def _apply(self, tx: FakeTx) -> None:
        """Include ``tx`` in its tick; money moves only if the source can cover it."""
        if tx.outside:
            tx.money_flew = tx.outside_money_flew
            if tx.money_flew:
                self.balances[tx.destination] = self.balances.get(tx.destination, 0) + tx.amount
        else:
            have = self.balances.get(tx.source, 0)
            tx.money_flew = tx.amount <= have
            if tx.money_flew:
                self.balances[tx.source] = have - tx.amount
                self.balances[tx.destination] = self.balances.get(tx.destination, 0) + tx.amount
        tx.timestamp_ms = self._timestamp(tx.tick)
        self.archive[tx.tx_id] = tx

    def _outstanding(self, source: str) -> list[FakeTx]:
        """Accepted transactions from ``source`` whose target tick has not been processed."""
        candidates = list(self.pending.values()) + list(self.never_included.values())
        return [t for t in candidates if t.source == source and t.tick > self.tick]

    def _broadcast(self, encoded: Any) -> dict[str, Any]:
        if not isinstance(encoded, str) or not encoded:
            raise ApiError(400, INVALID_ARGUMENT, "encodedTransaction is required")
        try:
            raw = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ApiError(400, INVALID_ARGUMENT, "encodedTransaction is not base64") from exc
        try:
            tx = Transaction.from_bytes(raw)
        except InvalidTransaction as exc:
            raise ApiError(400, INVALID_ARGUMENT, f"invalid transaction: {exc}") from exc
        if not tx.verify_signature():
            raise ApiError(400, INVALID_ARGUMENT, "invalid transaction signature")
        if not 0 <= tx.amount <= MAX_AMOUNT:
            raise ApiError(400, INVALID_ARGUMENT, "invalid amount")
        tx_id = tx.tx_id
        self.broadcasts.append(tx_id)
        result = {
            "peersBroadcasted": self.peers,
            "encodedTransaction": encoded,
            "transactionId": tx_id,
        }
        if tx_id in self.pending or tx_id in self.archive or tx_id in self.never_included:
            return result  # a re-broadcast of the same bytes changes nothing
        source = identity_from_public_key(tx.source_public_key)
        self._seq += 1
        record = FakeTx(
            tx_id=tx_id,
            source=source,
            destination=identity_from_public_key(tx.destination_public_key),
            amount=tx.amount,
            tick=tx.tick,
            input_type=tx.input_type,
            input_data=tx.payload,
            signature=tx.signature or b"",
            seq=self._seq,
        )
        self.pending_violations.extend((tx_id, o.tx_id) for o in self._outstanding(source))
        if self._drop_next:
            self._drop_next -= 1
            self.never_included[tx_id] = record
        elif tx.tick <= self.tick:
            self.never_included[tx_id] = record  # its tick is gone: it can never be included
        else:
            self.pending[tx_id] = record
        return result

    # ------------------------------------------------------------------ query internals

    def _identity_transactions(self, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise ApiError(400, INVALID_ARGUMENT, "request body must be an object")
        identity = body.get("identity")
        if not isinstance(identity, str) or not is_valid_identity(identity):
            raise ApiError(400, INVALID_ARGUMENT, f"invalid identity: {identity!r}")
        filters = body.get("filters") or {}
        ranges = body.get("ranges") or {}
        term = {"source": "source", "destination": "destination"}
        numeric = {
            "amount": lambda t: t.amount,
            "inputType": lambda t: t.input_type,
            "tickNumber": lambda t: t.tick,
            "timestamp": lambda t: t.timestamp_ms,
        }
        checks: list[Callable[[FakeTx], bool]] = []
        for key, value in filters.items():
            if key in term:
                if not is_valid_identity(value):
                    raise ApiError(400, INVALID_ARGUMENT, f"invalid {key} filter")
                checks.append(lambda t, k=term[key], v=value: getattr(t, k) == v)
            elif key in ("amount", "inputType"):
                if not str(value).isdigit():
                    raise ApiError(400, INVALID_ARGUMENT, f"invalid {key} filter")
                checks.append(lambda t, f=numeric[key], v=int(value): f(t) == v)
            else:
                raise ApiError(400, INVALID_ARGUMENT, f"unsupported filter: [{key}]")
        for key, bounds in ranges.items():
            if key not in numeric or key in filters:
                raise ApiError(400, INVALID_ARGUMENT, f"unsupported range: [{key}]")
            lo, hi = self._range(bounds)
            checks.append(lambda t, f=numeric[key], lo=lo, hi=hi: lo <= f(t) <= hi)
        offset, size = self._pagination(body.get("pagination"))
        last = self.last_processed_tick
        hits = [
            t
            for t in self.archive.values()
            if t.tick <= last
            and identity in (t.source, t.destination)
            and all(check(t) for check in checks)
        ]
        hits.sort(key=lambda t: (t.tick, t.seq), reverse=True)
        return {
            "validForTick": last,
            "hits": {"total": min(len(hits), self.max_hits), "from": offset, "size": size},
            "transactions": [t.to_json() for t in hits[offset : offset + size]],
        }

    @staticmethod
    def _range(bounds: Any) -> tuple[int, int]:
        if not isinstance(bounds, dict) or not bounds:
            raise ApiError(400, INVALID_ARGUMENT, "invalid range: no bounds")
        if ("gt" in bounds and "gte" in bounds) or ("lt" in bounds and "lte" in bounds):
            raise ApiError(400, INVALID_ARGUMENT, "invalid range: two bounds on one side")
        try:
            values = {k: int(str(v)) for k, v in bounds.items() if k in ("gt", "gte", "lt", "lte")}
        except ValueError as exc:
            raise ApiError(400, INVALID_ARGUMENT, "invalid range value") from exc
        if len(values) != len(bounds) or any(v < 0 for v in values.values()):
            raise ApiError(400, INVALID_ARGUMENT, "invalid range")
        lo = values["gt"] + 1 if "gt" in values else values.get("gte", 0)
        hi = values["lt"] - 1 if "lt" in values else values.get("lte", 2**64)
        if lo > 0 and hi > 0 and lo >= hi:
            raise ApiError(400, INVALID_ARGUMENT, f"invalid range: [{lo}:{hi}]")
        return lo, hi

    def _pagination(self, page: Any) -> tuple[int, int]:
        page = page or {}
        offset, size = int(page.get("offset", 0) or 0), int(page.get("size", 0) or 0)
        if size > self.max_page_size:
            raise ApiError(400, INVALID_ARGUMENT, f"page size [{size}] exceeds maximum")
        if size == 0:
            size = self.default_page_size
        elif size == 1 and offset:
            raise ApiError(400, INVALID_ARGUMENT, "page size [1] is only allowed for offset [0]")
        elif size != 1 and size % 10:
            raise ApiError(400, INVALID_ARGUMENT, f"page size [{size}] must be a multiple of 10")
        if offset + size > self.max_hits:
            raise ApiError(400, INVALID_ARGUMENT, "offset + size exceeds maximum allowed")
        return offset, size

    # ------------------------------------------------------------------ HTTP

    def _make_app(self) -> Application:
        fake = self

        class Handler(RequestHandler):
            def check_xsrf_cookie(self) -> None:  # an API, not a form
                pass

            async def _serve(self, route: Callable[[Any], Any]) -> None:
                fake.requests.append((self.request.method or "", self.request.path))
                if fake.latency:
                    await asyncio.sleep(fake.latency)
                try:
                    failure = next(
                        (i for i, f in enumerate(fake._fail_next) if f[2](self.request.path)),
                        None,
                    )
                    if failure is not None:
                        status, body, _ = fake._fail_next.pop(failure)
                        self.set_status(status)
                        if isinstance(body, str):
                            self.finish(body)
                        else:
                            self._json(body)
                        return
                    if fake.down:
                        raise ApiError(503, UNAVAILABLE, "service unavailable")
                    payload: Any = None
                    if self.request.method == "POST":
                        try:
                            payload = json.loads(self.request.body or b"null")
                        except json.JSONDecodeError as exc:
                            raise ApiError(400, INVALID_ARGUMENT, "body is not JSON") from exc
                    self._json(route(payload))
                except ApiError as err:
                    self.set_status(err.status)
                    self._json({"code": err.code, "message": err.message, "details": []})

            def _json(self, data: Any) -> None:
                self.set_header("Content-Type", "application/json")
                self.finish(json.dumps(data))

        def query(fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
            def guarded(payload: Any) -> Any:
                if fake.in_epoch_transition:
                    raise ApiError(503, UNAVAILABLE, "epoch change in progress")
                return fn(payload)

            return guarded

        def get(route: Callable[..., Any]) -> type[RequestHandler]:
            class GetHandler(Handler):
                async def get(self, *args: str) -> None:
                    await self._serve(lambda payload: route(payload, *args))

            return GetHandler

        def post(route: Callable[[Any], Any]) -> type[RequestHandler]:
            class PostHandler(Handler):
                async def post(self) -> None:
                    await self._serve(route)

            return PostHandler

        def tick_info(_: Any) -> dict[str, Any]:
            return {
                "tickInfo": {
                    "tick": fake.tick,
                    "duration": fake.duration,
                    "epoch": fake.epoch,
                    "initialTick": fake.initial_tick,
                }
            }

        def balance(_: Any, identity: str) -> dict[str, Any]:
            if not is_valid_identity(identity):
                raise ApiError(400, INVALID_ARGUMENT, "invalid id format")
            incoming = [t for t in fake.archive.values() if t.destination == identity]
            outgoing = [t for t in fake.archive.values() if t.source == identity]
            flew_in = [t for t in incoming if t.money_flew]
            flew_out = [t for t in outgoing if t.money_flew]
            return {
                "balance": {
                    "id": identity,
                    "balance": str(fake.balance(identity)),
                    "validForTick": fake.tick,
                    "latestIncomingTransferTick": max((t.tick for t in flew_in), default=0),
                    "latestOutgoingTransferTick": max((t.tick for t in flew_out), default=0),
                    "incomingAmount": str(sum(t.amount for t in flew_in)),
                    "outgoingAmount": str(sum(t.amount for t in flew_out)),
                    "numberOfIncomingTransfers": len(flew_in),
                    "numberOfOutgoingTransfers": len(flew_out),
                }
            }

        def broadcast(payload: Any) -> dict[str, Any]:
            if not isinstance(payload, dict):
                raise ApiError(400, INVALID_ARGUMENT, "request body must be an object")
            return fake._broadcast(payload.get("encodedTransaction"))

        def last_processed(_: Any) -> dict[str, Any]:
            return {
                "tickNumber": fake.last_processed_tick,
                "epoch": fake.epoch,
                "intervalInitialTick": fake.initial_tick,
            }

        def by_hash(payload: Any) -> dict[str, Any]:
            tx_hash = payload.get("hash") if isinstance(payload, dict) else None
            if not isinstance(tx_hash, str):
                raise ApiError(400, INVALID_ARGUMENT, "hash is required")
            tx = fake.visible(tx_hash)
            if tx is None:
                raise ApiError(404, NOT_FOUND, "transaction not found")
            return tx.to_json()

        return Application(
            [
                (r"/live/v1/tick-info", get(tick_info)),
                (r"/live/v1/balances/([^/]+)", get(balance)),
                (r"/live/v1/broadcast-transaction", post(broadcast)),
                (r"/query/v1/getLastProcessedTick", get(query(last_processed))),
                (r"/query/v1/getTransactionByHash", post(query(by_hash))),
                (
                    r"/query/v1/getTransactionsForIdentity",
                    post(query(fake._identity_transactions)),
                ),
            ],
            log_function=lambda handler: None,
        )
