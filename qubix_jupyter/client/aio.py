"""The asynchronous market client: the REST API over ``httpx``, the events over a WebSocket.

Use it from async code (``await client.providers()``); plain scripts and notebook cells use the
blocking :class:`~qubix_jupyter.client.sync.MarketClient`, which runs this one on a private
event loop.

Retries: a call that never reached the market (connection refused, reset before an answer) is
tried again up to ``retries`` times with :class:`~.backoff.Backoff` waits. GETs and every
money-moving call are retried on any network error: a money-moving call carries one
``Idempotency-Key`` (a uuid4 per logical call, the same on each of its retries), so the market
moves the money once however many times the request arrives. An answer — even an error — is
never retried, except a 401 when the client holds the wallet's seed: it signs in again once.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import datetime as dt
import os
import threading
import time
import uuid
from collections.abc import AsyncIterator, Coroutine, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit, urlunsplit

import httpx

from ..settlement.keys import KeyPair
from ..settlement.wallet import read_seed_file, sign_challenge
from .backoff import Backoff
from .errors import MarketUnreachable, Unauthorized, error_from_response
from .models import (
    Balance,
    Deposit,
    DepositAddress,
    Earnings,
    Health,
    Heartbeat,
    JobCancelled,
    JobCreated,
    JobInfo,
    JobPage,
    JobResult,
    Me,
    MetricsHistory,
    Offer,
    OfferPage,
    Payment,
    Registration,
    Session,
    TransactionPage,
    Withdrawal,
    WithdrawalInfo,
)

DEFAULT_URL = "http://127.0.0.1:8888/"
API_PREFIX = "qubix/api/"

#: The HTTP client of a call run on its caller's thread (:func:`run_blocking`): its requests
#: block that thread on it and its waits sleep the thread, so the call never suspends.
_BLOCKING_HTTP: contextvars.ContextVar[httpx.Client | None] = contextvars.ContextVar(
    "qubix_blocking_http", default=None
)


_R = TypeVar("_R")


def run_blocking(call: Coroutine[Any, Any, _R], http: httpx.Client) -> _R:
    """Run one call of :class:`AsyncMarketClient` to its end on this thread, no event loop:
    its requests go through ``http`` (blocking) and its waits sleep the thread.

    This is how the blocking client answers: without a hop to an event loop in another thread
    and back, which costs a few milliseconds on every call."""
    token = _BLOCKING_HTTP.set(http)
    try:
        call.send(None)
    except StopIteration as done:
        value: _R = done.value
        return value
    finally:
        _BLOCKING_HTTP.reset(token)
    call.close()
    raise RuntimeError("a blocking QUBIX call waited on an event loop; use the async client")


async def _pause(seconds: float) -> None:
    """Wait ``seconds``: on the event loop, or on the caller's thread (:func:`run_blocking`)."""
    if _BLOCKING_HTTP.get() is not None:
        time.sleep(seconds)  # noqa: ASYNC251 - no event loop runs this call: its thread waits
    else:
        await asyncio.sleep(seconds)


def market_url(url: str | None = None) -> str:
    """The market's base URL, ending in ``/``: ``url``, else $QUBIX_MARKET_URL, else the default.

    A URL that already names the API (``…/qubix/api/``) is cut back to its base.
    """
    url = url or os.environ.get("QUBIX_MARKET_URL") or DEFAULT_URL
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"the market URL must be http:// or https://, not {url!r}")
    path = parts.path or "/"
    if not path.endswith("/"):
        path += "/"
    if path.endswith("/" + API_PREFIX):
        path = path[: -len(API_PREFIX)]
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def _seed_from(seed: str | None, seed_file: str | os.PathLike[str] | None) -> str | None:
    if seed is not None:
        return seed
    path = seed_file or os.environ.get("QUBIX_SEED_FILE")
    return read_seed_file(Path(path)) if path else None


def _segment(value: str) -> str:
    """One path segment: an id from the caller must not walk to another endpoint."""
    return quote(str(value), safe="")


def _drop_none(values: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


def _error_code(response: httpx.Response) -> str | None:
    try:
        body = response.json()
    except ValueError:
        return None
    error = body.get("error") if isinstance(body, dict) else None
    return error.get("code") if isinstance(error, dict) else None


def new_idempotency_key() -> str:
    return str(uuid.uuid4())


class AsyncMarketClient:
    """One user's connection to one market.

    ``token``: a market bearer token (else $QUBIX_TOKEN). ``seed``/``seed_file`` (else
    $QUBIX_SEED_FILE): the wallet, kept in this process only, to sign in with
    :meth:`sign_in` — and again on its own when the token expires. ``worker_token``: the
    provider's worker token, for the worker calls (heartbeat).
    """

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        *,
        seed: str | None = None,
        seed_file: str | os.PathLike[str] | None = None,
        worker_token: str | None = None,
        timeout: float = 30.0,
        retries: int = 3,
        backoff: Backoff | None = None,
    ) -> None:
        self.url = market_url(url)
        self.api_url = self.url + API_PREFIX
        self.token = token if token is not None else os.environ.get("QUBIX_TOKEN") or None
        self.worker_token = worker_token
        self._seed = _seed_from(seed, seed_file)
        self.identity: str | None = KeyPair.from_seed(self._seed).identity if self._seed else None
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff or Backoff()
        self._http: httpx.AsyncClient | None = None
        self._sign_in_lock: asyncio.Lock | None = None
        #: The same for the calls run on their caller's thread (:func:`run_blocking`).
        self._sign_in_thread_lock = threading.Lock()

    # ------------------------------------------------------------------ plumbing

    @property
    def events_url(self) -> str:
        parts = urlsplit(self.api_url + "events")
        scheme = "wss" if parts.scheme == "https" else "ws"
        return urlunsplit((scheme, parts.netloc, parts.path, "", ""))

    @property
    def can_sign_in(self) -> bool:
        return self._seed is not None

    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=self.timeout, follow_redirects=False)
        return self._http

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    async def __aenter__(self) -> AsyncMarketClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, Any] | None = None,
        auth: str | None = "user",
        idempotency_key: str | None = None,
        http_timeout: float | None = None,
    ) -> Any:
        """One API call → its JSON answer, or the :class:`MarketError` for its error answer.

        ``auth``: ``"user"`` (the bearer token), ``"worker"`` (the worker token) or None.
        ``http_timeout``: seconds for this call (default: the client's ``timeout``).
        """
        if auth == "user" and not self.token and self.can_sign_in:
            await self.sign_in()
        resigned = False
        in_progress = self.backoff.delays()
        waits = 0
        while True:
            headers = self._headers(auth, idempotency_key)
            response = await self._send(
                method, path, json, params, headers, idempotency_key, http_timeout
            )
            if (
                response.status_code == 401
                and auth == "user"
                and self.can_sign_in
                and not resigned
                and path != "wallet/connect"
            ):
                resigned = True
                await self.sign_in()
                continue
            if (
                response.status_code == 409
                and idempotency_key is not None
                and waits < self.retries
                and _error_code(response) == "request_in_progress"
            ):
                # an earlier try of this very call is still running at the market: its answer
                # will be replayed to us once it is done
                waits += 1
                await _pause(next(in_progress))
                continue
            return self._answer(response)

    def _headers(self, auth: str | None, idempotency_key: str | None) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if auth == "user":
            if not self.token:
                raise Unauthorized(
                    401,
                    "not_signed_in",
                    "sign in first: connect(seed_file=…) or pass token=… (or set QUBIX_TOKEN)",
                )
            headers["Authorization"] = f"Bearer {self.token}"
        elif auth == "worker":
            if not self.worker_token:
                raise Unauthorized(
                    401, "no_worker_token", "worker calls take the workerToken of quick-register"
                )
            headers["Authorization"] = f"Bearer {self.worker_token}"
        if idempotency_key is not None:
            headers["Idempotency-Key"] = idempotency_key
        return headers

    async def _send(
        self,
        method: str,
        path: str,
        json: Any,
        params: Mapping[str, Any] | None,
        headers: dict[str, str],
        idempotency_key: str | None,
        http_timeout: float | None = None,
    ) -> httpx.Response:
        repeatable = method == "GET" or idempotency_key is not None
        delays = self.backoff.delays()
        attempt = 0
        blocking = _BLOCKING_HTTP.get()
        while True:
            options: dict[str, Any] = {
                "json": json,
                "params": params,
                "headers": headers,
                "timeout": self.timeout if http_timeout is None else http_timeout,
            }
            try:
                if blocking is not None:
                    return blocking.request(method, self.api_url + path, **options)
                return await self._client().request(method, self.api_url + path, **options)
            except httpx.TransportError as exc:
                # ConnectError: nothing reached the market, so even a plain POST may go again
                if (
                    not (repeatable or isinstance(exc, httpx.ConnectError))
                    or attempt >= self.retries
                ):
                    raise MarketUnreachable(
                        f"{method} {self.api_url}{path}: {type(exc).__name__}: {exc}"
                    ) from exc
            attempt += 1
            await _pause(next(delays))

    @staticmethod
    def _answer(response: httpx.Response) -> Any:
        try:
            body: Any = response.json() if response.content else None
        except ValueError:
            body = response.text
        if response.status_code >= 400:
            raise error_from_response(
                response.status_code,
                body,
                retry_after=response.headers.get("Retry-After"),
                reason=response.reason_phrase,
            )
        return body

    # ------------------------------------------------------------------ sign-in

    async def health(self) -> Health:
        return Health.from_json(await self.request("GET", "health", auth=None))

    async def sign_in(self, seed: str | None = None) -> Session:
        """Wallet connect: ask a challenge, sign it here, trade the signature for a token.

        The seed never leaves this process; the market sees the identity and the signature.
        """
        if seed is not None:
            self._seed = seed
            self.identity = KeyPair.from_seed(seed).identity
        if self._seed is None:
            raise ValueError("sign_in needs the wallet: a seed, seed_file or $QUBIX_SEED_FILE")
        async with self._signing_in():
            signed_for = self.token
            identity = self.identity
            issued = await self.request(
                "POST", "auth/challenge", json={"qubicAddress": identity}, auth=None
            )
            challenge = issued["challenge"]
            signature = sign_challenge(self._seed, challenge)["signature"]
            answer = await self.request(
                "POST",
                "wallet/connect",
                json={"qubicAddress": identity, "challenge": challenge, "signature": signature},
                auth=None,
            )
            if self.token == signed_for:
                self.token = answer["token"]
            return Session.from_json(answer)

    @contextlib.asynccontextmanager
    async def _signing_in(self) -> AsyncIterator[None]:
        """One sign-in at a time: a call that finds one under way takes its token."""
        if _BLOCKING_HTTP.get() is not None:
            with self._sign_in_thread_lock:
                yield
            return
        if self._sign_in_lock is None:
            self._sign_in_lock = asyncio.Lock()
        async with self._sign_in_lock:
            yield

    async def sign_out(self) -> bool:
        """Revoke this client's token at the market."""
        answer = await self.request("POST", "auth/revoke")
        self.token = None
        return bool(answer.get("revoked"))

    async def me(self) -> Me:
        return Me.from_json(await self.request("GET", "me"))

    async def _own_address(self) -> str:
        if self.identity is None:
            me = await self.me()
            assert me.user is not None
            self.identity = me.user.qubic_address
        return self.identity

    async def balance(self, address: str | None = None) -> Balance:
        """Your wallet's balance and pending earnings (QU)."""
        address = address or await self._own_address()
        return Balance.from_json(await self.request("GET", f"wallet/{_segment(address)}/balance"))

    # ------------------------------------------------------------------ marketplace

    async def providers(
        self,
        *,
        gpu_model: str | Iterable[str] | None = None,
        min_vram: float | None = None,
        max_price: int | None = None,
        location: str | Iterable[str] | None = None,
        availability: str | None = None,
        sort_by: str | None = None,
        offset: int | None = None,
        limit: int | None = None,
    ) -> OfferPage:
        """The marketplace listing (public), filtered and sorted by the market."""

        def many(value: str | Iterable[str] | None) -> list[str] | None:
            if value is None:
                return None
            return [value] if isinstance(value, str) else list(value)

        params = _drop_none(
            {
                "gpuModel": many(gpu_model),
                "minVram": min_vram,
                "maxPrice": max_price,
                "location": many(location),
                "availability": availability,
                "sortBy": sort_by,
                "offset": offset,
                "limit": limit,
            }
        )
        return OfferPage.from_json(await self.request("GET", "providers", params=params, auth=None))

    async def provider(self, worker_id: str) -> Offer:
        answer = await self.request("GET", f"providers/{_segment(worker_id)}", auth=None)
        return Offer.from_json(answer)

    async def quick_register(
        self,
        worker_id: str,
        gpu: Mapping[str, Any],
        price_per_hour: int,
        *,
        type: str = "native",
        qubic_address: str | None = None,
        name: str | None = None,
        location: str | None = None,
        cpu_model: str | None = None,
        cpu_cores: int | None = None,
        ram_total: float | None = None,
    ) -> Registration:
        """List this machine's GPU; keeps the answer's ``worker_token`` for :meth:`heartbeat`."""
        body = _drop_none(
            {
                "type": type,
                "gpu": dict(gpu),
                "workerId": worker_id,
                "qubicAddress": qubic_address or await self._own_address(),
                "pricePerHour": price_per_hour,
                "name": name,
                "location": location,
                "cpuModel": cpu_model,
                "cpuCores": cpu_cores,
                "ramTotal": ram_total,
            }
        )
        answer = Registration.from_json(
            await self.request("POST", "providers/quick-register", json=body)
        )
        if answer.worker_token:
            self.worker_token = answer.worker_token
        return answer

    async def check_new(self) -> Offer | None:
        answer = await self.request("GET", "providers/check-new")
        found = answer.get("newProvider")
        return Offer.from_json(found) if found else None

    async def update_provider(
        self,
        worker_id: str,
        *,
        price_per_hour: int | None = None,
        name: str | None = None,
        location: str | None = None,
        is_available: bool | None = None,
    ) -> Offer:
        body = _drop_none(
            {
                "pricePerHour": price_per_hour,
                "name": name,
                "location": location,
                "isAvailable": is_available,
            }
        )
        answer = await self.request("PATCH", f"providers/{_segment(worker_id)}", json=body)
        return Offer.from_json(answer["provider"])

    async def unlist_provider(self, worker_id: str) -> Offer:
        answer = await self.request("DELETE", f"providers/{_segment(worker_id)}")
        return Offer.from_json(answer["provider"])

    async def heartbeat(
        self,
        worker_id: str,
        usage: Mapping[str, Any],
        *,
        status: str = "online",
        current_job: str | None = None,
    ) -> Heartbeat:
        """The provider's heartbeat (worker token): its usage now; answers the pending jobs."""
        measured = {"timestamp": dt.datetime.now(dt.UTC).isoformat(), **usage}
        body = _drop_none(
            {
                "workerId": worker_id,
                "usage": measured,
                "status": status,
                "currentJob": current_job,
            }
        )
        answer = await self.request(
            "POST", f"providers/{_segment(worker_id)}/heartbeat", json=body, auth="worker"
        )
        return Heartbeat.from_json(answer)

    async def metrics_history(
        self,
        worker_id: str,
        *,
        since: str | None = None,
        until: str | None = None,
        limit: int | None = None,
    ) -> MetricsHistory:
        """Your provider's recorded metrics, oldest first (``since``/``until``: ISO 8601)."""
        params = _drop_none({"since": since, "until": until, "limit": limit})
        answer = await self.request(
            "GET", f"providers/{_segment(worker_id)}/metrics", params=params
        )
        return MetricsHistory.from_json(answer)

    # ------------------------------------------------------------------ jobs

    async def pending_jobs(self, worker_id: str) -> list[JobInfo]:
        """Worker call: the jobs assigned to this worker and not started, with their payloads."""
        answer = await self.request("GET", f"jobs/pending/{_segment(worker_id)}", auth="worker")
        return [JobInfo.from_json(item) for item in answer]

    async def report_progress(self, job_id: str, worker_id: str, progress: float) -> int:
        """Worker call: ``progress`` percent done; answers the progress the market stored."""
        body = {
            "workerId": worker_id,
            "progress": progress,
            "timestamp": dt.datetime.now(dt.UTC).isoformat(),
        }
        answer = await self.request(
            "POST", f"jobs/{_segment(job_id)}/progress", json=body, auth="worker"
        )
        return int(answer["progress"])

    async def complete_job(
        self,
        job_id: str,
        worker_id: str,
        *,
        result: Any = None,
        error: str | None = None,
        metrics: Mapping[str, float] | None = None,
        idempotency_key: str | None = None,
    ) -> Payment:
        """Worker call: the job ended (``error`` None: completed); answers how it was paid."""
        body = _drop_none(
            {
                "workerId": worker_id,
                "status": "failed" if error is not None else "completed",
                "result": result,
                "error": error,
                "metrics": dict(
                    metrics or {"processingTimeSeconds": 0, "cpuUsageAvg": 0, "ramUsageAvg": 0}
                ),
            }
        )
        answer = await self.request(
            "POST",
            f"jobs/{_segment(job_id)}/complete",
            json=body,
            auth="worker",
            idempotency_key=idempotency_key or new_idempotency_key(),
        )
        return Payment.from_json(answer["payment"])

    async def create_job(
        self,
        model_type: str,
        input_data: Any,
        *,
        compute_needed: float,
        max_price: int,
        gpu_model: str | Iterable[str] | None = None,
        min_vram: float | None = None,
        idempotency_key: str | None = None,
        wait: float | None = None,
    ) -> JobCreated:
        """``POST jobs/create``: locks ``max_price × compute_needed`` (hours) in escrow.

        Raises InsufficientFunds (402) when the wallet cannot cover it; nothing is locked then.
        ``wait``: seconds (at most 60) the market holds the answer until the job ends; the job
        then comes back as it ended, with its result (``job.terminal``), else as it stands.
        """
        models = [gpu_model] if isinstance(gpu_model, str) else gpu_model
        body = _drop_none(
            {
                "modelType": model_type,
                "computeNeeded": compute_needed,
                "inputData": input_data,
                "maxPrice": max_price,
                "qubicAddress": await self._own_address(),
                "gpuModel": list(models) if models is not None else None,
                "minVram": min_vram,
            }
        )
        answer = await self.request(
            "POST",
            "jobs/create",
            json=body,
            params={"wait": wait} if wait else None,
            idempotency_key=idempotency_key or new_idempotency_key(),
            http_timeout=self.timeout + wait if wait else None,
        )
        return JobCreated.from_json(answer)

    async def jobs(
        self, *, status: str | None = None, offset: int | None = None, limit: int | None = None
    ) -> JobPage:
        """Your jobs as a consumer, newest first."""
        params = _drop_none({"status": status, "offset": offset, "limit": limit})
        return JobPage.from_json(await self.request("GET", "jobs", params=params))

    async def job(self, job_id: str) -> JobInfo:
        return JobInfo.from_json(await self.request("GET", f"jobs/{_segment(job_id)}"))

    async def cancel_job(self, job_id: str, *, idempotency_key: str | None = None) -> JobCancelled:
        """Cancel: a pending job is refunded whole, a running one charged the time it used."""
        answer = await self.request(
            "POST",
            f"jobs/{_segment(job_id)}/cancel",
            idempotency_key=idempotency_key or new_idempotency_key(),
        )
        return JobCancelled.from_json(answer)

    async def job_result(self, job_id: str, *, wait: float | None = None) -> JobResult:
        """A finished job's result and error; Conflict (409) while it is not finished.

        ``wait``: seconds (at most 60) the market holds the answer while the job runs; it comes
        the moment the job ends, or as the 409 once the wait is over.
        """
        path = f"jobs/{_segment(job_id)}/result"
        if not wait:
            return JobResult.from_json(await self.request("GET", path))
        answer = await self.request(
            "GET", path, params={"wait": wait}, http_timeout=self.timeout + wait
        )
        return JobResult.from_json(answer)

    # ------------------------------------------------------------------ wallet

    async def deposit_address(self) -> DepositAddress:
        return DepositAddress.from_json(await self.request("GET", "wallet/deposit-address"))

    async def deposit(self, amount: int, *, idempotency_key: str | None = None) -> Deposit:
        """Simulated deposit of ``amount`` QU (markets on the memory settlement backend only)."""
        answer = await self.request(
            "POST",
            "wallet/deposit",
            json={"amount": amount},
            idempotency_key=idempotency_key or new_idempotency_key(),
        )
        return Deposit.from_json(answer)

    async def withdraw(
        self, amount: int, to_address: str | None = None, *, idempotency_key: str | None = None
    ) -> Withdrawal:
        """Pay ``amount`` QU out to ``to_address`` (default: your own identity)."""
        body = {"amount": amount, "toAddress": to_address or await self._own_address()}
        answer = await self.request(
            "POST",
            "wallet/withdraw",
            json=body,
            idempotency_key=idempotency_key or new_idempotency_key(),
        )
        return Withdrawal.from_json(answer)

    async def withdrawals(self) -> list[WithdrawalInfo]:
        answer = await self.request("GET", "wallet/withdrawals")
        return [WithdrawalInfo.from_json(item) for item in answer.get("items", [])]

    async def transactions(
        self,
        *,
        type: str | Iterable[str] | None = None,
        offset: int | None = None,
        limit: int | None = None,
    ) -> TransactionPage:
        """Your ledger entries, newest first; ``type`` filters (DEPOSIT, PAYMENT, …)."""
        types = [type] if isinstance(type, str) else (list(type) if type is not None else None)
        params = _drop_none({"type": types, "offset": offset, "limit": limit})
        return TransactionPage.from_json(
            await self.request("GET", "wallet/transactions", params=params)
        )

    async def earnings(self, *, worker_id: str | None = None, days: int | None = None) -> Earnings:
        params = _drop_none({"workerId": worker_id, "days": days})
        return Earnings.from_json(await self.request("GET", "earnings", params=params))

    # ------------------------------------------------------------------ events

    def events(self, *channels: str, **options: Any) -> Any:
        """A live :class:`~.events.AsyncSubscription` to ``channels``; call inside the loop."""
        from .events import AsyncSubscription

        subscription = AsyncSubscription(self, channels, **options)
        subscription.start()
        return subscription
