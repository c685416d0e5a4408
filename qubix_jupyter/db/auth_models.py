"""Tables of the market's own login: single-use wallet challenges and per-user bearer tokens.

* ``login_challenges``: a random string the market hands out for one Qubic identity; the wallet
  signs it (SchnorrQ) and ``wallet/connect`` consumes it once, before it expires.
* ``api_tokens``: bearer tokens issued at connect. Only the SHA-256 of a token is stored, so a
  copy of the database does not let anyone act as a user; a token expires and can be revoked.
* ``worker_tokens``: one per provider registration, what the provider's worker presents for its
  heartbeats, job progress and results (and to join the scheduler). Hashed the same way; a new
  registration of the worker revokes the earlier ones.
* ``provision_tokens``: what a user hands to a machine they want to share (``qubix provide
  --token``): it registers providers for its user through ``providers/quick-register``, any
  number of times until it expires or is revoked, and opens nothing else. Hashed the same way.
* ``idempotent_requests``: money-moving API requests by their caller's ``Idempotency-Key``: what
  was asked (a hash) and what was answered, so a retry gets the same answer.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import JSON, DateTime, ForeignKey, Index, Integer, String, func
from sqlalchemy.orm import Mapped, mapped_column

from .models import Base, Timestamp, new_id, utcnow


class LoginChallenge(Base):
    __tablename__ = "login_challenges"
    # Expired rows are swept by expiry time.
    __table_args__ = (Index(None, "expires_at"),)

    challenge: Mapped[str] = mapped_column(String(100), primary_key=True)
    qubic_address: Mapped[str] = mapped_column(String(60))
    created_at: Mapped[Timestamp] = mapped_column(default=utcnow, server_default=func.now())
    expires_at: Mapped[Timestamp]
    used_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))


class ApiToken(Base):
    __tablename__ = "api_tokens"
    __table_args__ = (Index(None, "user_id"), Index(None, "expires_at"))

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    #: hex SHA-256 of the token; the token itself is shown to its user once and never stored.
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[Timestamp] = mapped_column(default=utcnow, server_default=func.now())
    expires_at: Mapped[Timestamp]
    revoked_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))


class WorkerToken(Base):
    __tablename__ = "worker_tokens"
    __table_args__ = (Index(None, "provider_id"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    provider_id: Mapped[str] = mapped_column(ForeignKey("providers.id", ondelete="CASCADE"))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[Timestamp] = mapped_column(default=utcnow, server_default=func.now())
    revoked_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))


class ProvisionToken(Base):
    __tablename__ = "provision_tokens"
    __table_args__ = (Index(None, "user_id"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    #: hex SHA-256 of the token; the token itself is shown to its user once and never stored.
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[Timestamp] = mapped_column(default=utcnow, server_default=func.now())
    expires_at: Mapped[Timestamp]
    revoked_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    #: the last registration made with it, and how many there were
    last_used_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    use_count: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class IdempotentRequest(Base):
    """A money-moving request under its caller's key. ``status`` is None while it runs."""

    __tablename__ = "idempotent_requests"
    __table_args__ = (Index(None, "created_at"),)

    #: whose key: ``user:{id}`` or ``worker:{providerId}`` (keys of different callers never meet)
    scope: Mapped[str] = mapped_column(String(80), primary_key=True)
    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    #: SHA-256 over method, route and body: the same key with another request is a conflict
    request_hash: Mapped[str] = mapped_column(String(64))
    status: Mapped[int | None] = mapped_column(Integer)
    response: Mapped[Any | None] = mapped_column(JSON)
    created_at: Mapped[Timestamp] = mapped_column(default=utcnow, server_default=func.now())
    completed_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
