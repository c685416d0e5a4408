"""Tables of the market's own login: single-use wallet challenges and per-user bearer tokens.

* ``login_challenges``: a random string the market hands out for one Qubic identity; the wallet
  signs it (SchnorrQ) and ``wallet/connect`` consumes it once, before it expires.
* ``api_tokens``: bearer tokens issued at connect. Only the SHA-256 of a token is stored, so a
  copy of the database does not let anyone act as a user; a token expires and can be revoked.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import DateTime, ForeignKey, Index, String, func
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
