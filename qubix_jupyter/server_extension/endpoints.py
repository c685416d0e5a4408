"""The endpoints: each takes the parsed, authorized call, makes one service call, and returns a
response model. Parsing, authentication, rate limits and error bodies live in ``handlers``."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import BaseModel

from .. import __version__
from ..db.auth_store import TokenOwner, WorkerOwner
from ..db.idempotency_store import Claim
from ..db.models import User
from . import models
from .errors import Forbidden
from .services import Services


@dataclasses.dataclass(frozen=True, slots=True)
class Call:
    services: Services
    body: Any  # the route's request model, or None
    params: dict[str, str]  # named groups of the route's path
    owner: TokenOwner | None  # the authenticated caller; None on public routes
    openapi: dict[str, Any]
    query: Any = None  # the route's query model (parsed query string), or None
    worker: WorkerOwner | None = None  # the calling provider on worker routes
    #: On idempotent routes: a key unique to this request (the same on its retries under one
    #: Idempotency-Key). Derive every ledger key of the request from it, e.g. ``f"{key}:escrow"``.
    idempotency_key: str | None = None
    #: The caller authenticated with a provisioning token (``owner.token_id`` is its id), on
    #: the routes that take one.
    provisioning: bool = False
    #: This server's URL as the caller reached it (scheme, host, base URL), e.g.
    #: ``https://hub.example/user/ann/``.
    origin: str | None = None
    #: On a ``claims_in_call`` route, when the store folds claims: the Idempotency-Key's claim
    #: for the endpoint's statement to make (it raises ClaimTaken when the key was taken).
    claim: Claim | None = None

    @property
    def caller(self) -> TokenOwner:
        assert self.owner is not None, "only user routes ask for the caller"
        return self.owner

    @property
    def calling_worker(self) -> WorkerOwner:
        assert self.worker is not None, "only worker routes ask for the calling worker"
        return self.worker

    @property
    def request_key(self) -> str:
        assert self.idempotency_key is not None, "only idempotent routes have a request key"
        return self.idempotency_key


def _utc(moment: dt.datetime) -> dt.datetime:
    # SQLite hands timestamps back without their offset; every one we store is UTC.
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=dt.UTC)


def _utc_or_none(moment: dt.datetime | None) -> dt.datetime | None:
    return None if moment is None else _utc(moment)


async def _user_out(services: Services, user: User) -> models.UserOut:
    return models.UserOut(
        id=user.id,
        qubicAddress=user.qubic_address,
        email=user.email,
        username=user.username,
        role=user.role.value,
        balance=await services.wallets.balance(user.id),
        createdAt=_utc(user.created_at),
        updatedAt=_utc(user.updated_at),
    )


@dataclasses.dataclass(frozen=True, slots=True)
class Reply:
    """A response model with a status other than 200 (one of its route's ``alt_statuses``)."""

    body: BaseModel
    status: int


@dataclasses.dataclass(frozen=True, slots=True)
class Held:
    """A 200 answer given in two parts: ``stored`` is the request's answer, kept at once for
    its retries (its Idempotency-Key); this caller's answer waits for ``then`` (a create
    that waits for its job to end gets the job as it ended). ``discard`` is called instead
    of ``then`` when the answer cannot be sent (its storing failed)."""

    stored: BaseModel
    then: Callable[[], Awaitable[BaseModel]]
    discard: Callable[[], None]


@dataclasses.dataclass(frozen=True, slots=True)
class TextReply:
    """A 200 answer that is not JSON (the route's ``media_type``, e.g. Prometheus' text)."""

    text: str
    media_type: str


async def health(call: Call) -> BaseModel | Reply:
    reachable = await call.services.health.database_reachable()
    body = models.HealthResponse(
        status="ok" if reachable else "degraded",
        version=__version__,
        role=call.services.role,
        database=models.DatabaseHealth(reachable=reachable, backend=call.services.health.backend),
    )
    # A load balancer reads the status code: a market without its database is down.
    return body if reachable else Reply(body, 503)


async def openapi(call: Call) -> BaseModel:
    return models.OpenAPIDocument.model_validate(call.openapi)


async def auth_challenge(call: Call) -> BaseModel:
    issued = await call.services.auth.issue_challenge(call.body.qubicAddress)
    return models.ChallengeResponse(challenge=issued.challenge, expiresAt=issued.expires_at)


async def wallet_connect(call: Call) -> BaseModel:
    body: models.ConnectRequest = call.body
    session = await call.services.auth.connect(body.qubicAddress, body.challenge, body.signature)
    user = await _user_out(call.services, session.user)
    return models.ConnectResponse(
        success=True,
        balance=user.balance,
        user=user,
        token=session.token,
        expiresAt=session.expires_at,
    )


async def auth_revoke(call: Call) -> BaseModel:
    return models.RevokeResponse(revoked=await call.services.auth.revoke(call.caller))


async def wallet_balance(call: Call) -> BaseModel:
    user = call.caller.user
    if call.params["address"] != user.qubic_address:
        raise Forbidden("you can read only your own wallet's balance")
    wallets = call.services.wallets
    return models.BalanceResponse(
        balance=await wallets.balance(user.id),
        pendingEarnings=await wallets.pending_earnings(user.id),
    )


async def me(call: Call) -> BaseModel:
    return models.MeResponse(
        user=await _user_out(call.services, call.caller.user),
        tokenExpiresAt=_utc(call.caller.expires_at),
    )
