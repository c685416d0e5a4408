"""Market identity: wallet challenges, bearer tokens, and a per-caller rate limit.

A user proves they hold a Qubic identity by signing a random, single-use, expiring challenge
with SchnorrQ; the market then issues a bearer token of 32 random bytes and keeps only its
SHA-256. This is the market's own identity: Jupyter's server token never stands for a market user.

Three kinds of market credential, each in its own table and opening only its own routes: the
user's bearer token (``api_tokens``), a provider's worker token (``qxw_…``, ``worker_tokens``)
and a user's provisioning token (``qxp_…``, ``provision_tokens``), which registers providers for
its user and does nothing else.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import hashlib
import math
import random
import secrets
import time
from collections.abc import Callable

from ..db.auth_store import AuthStore, ProvisionRecord, TokenOwner, WorkerOwner
from ..db.jobs import utc
from ..db.models import User
from ..market.credentials import PROVISION_TOKEN_PREFIX, WORKER_TOKEN_PREFIX
from ..settlement.wallet import verify_challenge
from .batching import SharedReads
from .errors import InvalidChallenge, InvalidSignature, RateLimited, Unauthorized

CHALLENGE_PREFIX = "qubix-login:"
#: A provisioning token lives a day unless asked otherwise; at least a minute, at most 30 days.
PROVISION_TTL_DEFAULT = 24 * 3600
PROVISION_TTL_MIN = 60
PROVISION_TTL_MAX = 30 * 24 * 3600


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclasses.dataclass(frozen=True, slots=True)
class Challenge:
    challenge: str
    expires_at: dt.datetime


@dataclasses.dataclass(frozen=True, slots=True)
class IssuedProvisionToken:
    """A new provisioning token, shown once, and its record."""

    token: str
    record: ProvisionRecord


@dataclasses.dataclass(frozen=True, slots=True)
class Session:
    """What a successful connect hands the client: its user and the token, shown once."""

    user: User
    token: str
    expires_at: dt.datetime


class AuthService:
    def __init__(
        self,
        store: AuthStore,
        *,
        token_ttl_seconds: int,
        challenge_ttl_seconds: int,
        clock: Callable[[], dt.datetime] = utcnow,
    ) -> None:
        self._store = store
        self._token_ttl = dt.timedelta(seconds=token_ttl_seconds)
        self._challenge_ttl = dt.timedelta(seconds=challenge_ttl_seconds)
        self._clock = clock
        #: worker token hash → (its provider, monotonic time until which the lookup stands)
        self._workers: dict[str, tuple[WorkerOwner, float]] = {}
        #: market token hash → (its owner, monotonic time until which the lookup stands)
        self._tokens: dict[str, tuple[TokenOwner, float]] = {}
        #: Revokes begun in this process: a lookup that overlapped one is not cached.
        self._revokes = 0
        #: Lookups of market tokens, many in one query when they come together (a wave of
        #: clients reconnecting and resubscribing after a restart); each checks the expiry at
        #: the time of its read, which began after every caller in it asked.
        self._token_lookups: SharedReads[str, TokenOwner | None] = SharedReads(
            lambda hashes: store.token_owners(hashes, now=self._clock()), None
        )
        #: Lookups of worker tokens not in the cache, many in one query when they come together
        #: (every provider's first heartbeat after a market restart).
        self._worker_lookups: SharedReads[str, WorkerOwner | None] = SharedReads(
            store.worker_owners, None
        )

    async def issue_challenge(self, qubic_address: str) -> Challenge:
        now = self._clock()
        challenge = CHALLENGE_PREFIX + secrets.token_urlsafe(32)
        expires_at = now + self._challenge_ttl
        await self._store.add_challenge(challenge, qubic_address, now=now, expires_at=expires_at)
        return Challenge(challenge, expires_at)

    async def connect(self, qubic_address: str, challenge: str, signature_hex: str) -> Session:
        """Verify the wallet's signature over an open challenge, consume it, issue a token."""
        now = self._clock()
        issued_to = await self._store.open_challenge_address(challenge, now=now)
        if issued_to is None or issued_to != qubic_address:
            raise InvalidChallenge(
                "unknown, used or expired challenge, or issued to another identity: "
                "ask POST auth/challenge for a new one"
            )
        # SchnorrQ verification is pure Python: keep it off the event loop.
        if not await asyncio.to_thread(verify_challenge, qubic_address, challenge, signature_hex):
            raise InvalidSignature("the signature does not verify for this identity and challenge")
        token = secrets.token_urlsafe(32)
        expires_at = now + self._token_ttl
        connected = await self._store.connect(
            challenge,
            qubic_address,
            token_hash=token_hash(token),
            now=now,
            token_expires_at=expires_at,
        )
        if connected is None:  # consumed by a concurrent connect with the same challenge
            raise InvalidChallenge("challenge already used: ask POST auth/challenge for a new one")
        return Session(connected.user, token, expires_at)

    async def authenticate(self, authorization: str | None) -> TokenOwner:
        """The owner of the ``Authorization: Bearer <token>`` header's live token."""
        if not authorization:
            raise Unauthorized("missing `Authorization: Bearer <token>`: connect a wallet first")
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token or len(token) > 200:
            raise Unauthorized("malformed Authorization header: use `Bearer <token>`")
        if token.startswith(PROVISION_TOKEN_PREFIX):
            raise Unauthorized(
                "a provisioning token only registers providers (POST providers/quick-register); "
                "this route takes the market token from wallet connect"
            )
        hashed = token_hash(token)
        cache = self._tokens
        now = time.monotonic()
        cached = cache.get(hashed)
        if cached is not None and cached[1] > now and utc(cached[0].expires_at) > self._clock():
            return cached[0]
        revokes = self._revokes
        owner = await self._token_lookups.get(hashed)
        if owner is None:
            cache.pop(hashed, None)
            raise Unauthorized("unknown, expired or revoked token: connect the wallet again")
        if revokes == self._revokes:  # no revoke ran meanwhile: the answer may be stale
            if len(cache) > 100_000:
                cache.clear()
            cache[hashed] = (owner, now + self.TOKEN_CACHE_SECONDS)
        return owner

    # ------------------------------------------------------------------ provisioning tokens

    @staticmethod
    def is_provision_token(authorization: str | None) -> bool:
        """Whether the header carries a provisioning token (by its prefix)."""
        scheme, _, token = (authorization or "").partition(" ")
        return scheme.lower() == "bearer" and token.strip().startswith(PROVISION_TOKEN_PREFIX)

    async def issue_provision_token(
        self, user_id: str, ttl_seconds: int = PROVISION_TTL_DEFAULT
    ) -> IssuedProvisionToken:
        """A new provisioning token for ``user_id``, valid ``ttl_seconds``."""
        if not PROVISION_TTL_MIN <= ttl_seconds <= PROVISION_TTL_MAX:
            raise ValueError(f"ttl_seconds out of {PROVISION_TTL_MIN}..{PROVISION_TTL_MAX}")
        now = self._clock()
        token = PROVISION_TOKEN_PREFIX + secrets.token_urlsafe(32)
        record = await self._store.add_provision_token(
            user_id,
            token_hash(token),
            now=now,
            expires_at=now + dt.timedelta(seconds=ttl_seconds),
        )
        return IssuedProvisionToken(token, record)

    async def authenticate_provisioning(self, authorization: str | None) -> TokenOwner:
        """The owner of the header's live provisioning token (``token_id`` is the token's id).

        Looked up every time, never cached: a revocation holds from the next request on.
        """
        scheme, _, token = (authorization or "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token.startswith(PROVISION_TOKEN_PREFIX):
            raise Unauthorized("malformed Authorization header: use `Bearer qxp_…`")
        if len(token) > 200:
            raise Unauthorized("malformed provisioning token")
        found = await self._store.provision_owner(token_hash(token), now=self._clock())
        if found is None:
            raise Unauthorized("unknown, expired or revoked provisioning token")
        user, record = found
        return TokenOwner(user, record.id, record.expires_at)

    async def provision_tokens(self, user_id: str) -> list[ProvisionRecord]:
        return await self._store.provision_tokens(user_id)

    async def revoke_provision_token(self, user_id: str, token_id: str) -> ProvisionRecord | None:
        return await self._store.revoke_provision_token(user_id, token_id, now=self._clock())

    #: Seconds a looked-up market token is trusted without asking the database again: every
    #: call of a consumer (a job's create, its result, the listing) otherwise starts with that
    #: read. A revoke through this market forgets the token at once, and the expiry is checked
    #: on every use; only a token revoked behind the market's back (another market process on
    #: the same database) is honoured for up to this long.
    TOKEN_CACHE_SECONDS = 5.0

    async def revoke(self, owner: TokenOwner) -> bool:
        self._revokes += 1
        self._forget_token(owner.token_id)
        try:
            return await self._store.revoke(owner.token_id, now=self._clock())
        finally:
            # Again: a lookup begun during the revoke may have read the token before the
            # revoke committed and cached it meanwhile.
            self._revokes += 1
            self._forget_token(owner.token_id)

    def _forget_token(self, token_id: str) -> None:
        cache = self._tokens
        for key in [k for k, (owner, _) in cache.items() if owner.token_id == token_id]:
            del cache[key]

    # ------------------------------------------------------------------ worker tokens

    #: Seconds a looked-up worker token is trusted without asking the database again: each
    #: provider sends a heartbeat every few seconds, and a lookup per heartbeat would be most
    #: of the market's database load (at 1,000 providers, 10 s cost a tenth of the server's CPU
    #: in lookups). Registering the worker again in this process (which revokes its earlier
    #: token) forgets it at once; only a token revoked behind the market's back is honoured for
    #: up to this long.
    WORKER_CACHE_SECONDS = 30.0
    #: Each lookup is trusted for a random part of the last quarter of WORKER_CACHE_SECONDS
    #: more or less, so that tokens looked up together (providers registered in one wave) do
    #: not all fall due in the same instant and send a burst of lookups at once.
    WORKER_CACHE_SPREAD = 0.25

    @staticmethod
    def new_worker_token() -> tuple[str, str]:
        """A fresh worker token and the hash to store: ``(token, token_hash)``."""
        token = WORKER_TOKEN_PREFIX + secrets.token_urlsafe(32)
        return token, token_hash(token)

    def forget_worker(self, provider_id: str) -> None:
        """Drop cached lookups of ``provider_id``'s tokens (its tokens were just rotated)."""
        cache = self._workers
        for key in [k for k, (owner, _) in cache.items() if owner.provider_id == provider_id]:
            del cache[key]

    async def authenticate_worker(self, authorization: str | None) -> WorkerOwner:
        """The provider of the ``Authorization: Bearer <workerToken>`` header's live token."""
        if not authorization:
            raise Unauthorized(
                "missing `Authorization: Bearer <workerToken>`: register the worker first "
                "(POST providers/quick-register answers its workerToken)"
            )
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token.startswith(WORKER_TOKEN_PREFIX):
            raise Unauthorized("this endpoint takes the provider's worker token, not a user token")
        if len(token) > 200:
            raise Unauthorized("malformed worker token")
        hashed = token_hash(token)
        cache = self._workers
        now = time.monotonic()
        cached = cache.get(hashed)
        if cached is not None and cached[1] > now:
            return cached[0]
        owner = await self._worker_lookups.get(hashed)
        if owner is None:
            cache.pop(hashed, None)
            raise Unauthorized(
                "unknown or revoked worker token: the worker was registered again since"
            )
        if len(cache) > 100_000:
            cache.clear()
        trusted = self.WORKER_CACHE_SECONDS * (1 - self.WORKER_CACHE_SPREAD * random.random())
        cache[hashed] = (owner, now + trusted)
        return owner


class RateLimiter:
    """A token bucket per caller: ``per_minute`` requests a minute, bursts up to that many.

    In memory, per process: enough for one market server; a fleet would share it in the database
    or a cache. ``per_minute = 0`` turns limiting off.
    """

    #: Past this many callers, buckets that have refilled completely are forgotten.
    MAX_BUCKETS = 10_000

    def __init__(self, per_minute: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_minute = per_minute
        self._rate = per_minute / 60.0
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key → (tokens, last refill)

    def check(self, key: str) -> None:
        """Take one request from ``key``'s bucket, or raise :class:`RateLimited`."""
        if self.per_minute <= 0:
            return
        now = self._clock()
        tokens, last = self._buckets.get(key, (float(self.per_minute), now))
        tokens = min(float(self.per_minute), tokens + (now - last) * self._rate)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            raise RateLimited(max(1, math.ceil((1.0 - tokens) / self._rate)))
        self._buckets[key] = (tokens - 1.0, now)
        if len(self._buckets) > self.MAX_BUCKETS:
            self._forget_full(now)

    def _forget_full(self, now: float) -> None:
        full = [
            key
            for key, (tokens, last) in self._buckets.items()
            if tokens + (now - last) * self._rate >= self.per_minute
        ]
        for key in full:
            del self._buckets[key]
