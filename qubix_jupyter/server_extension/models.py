"""Request and response bodies of the market API (pydantic), in the seed's camelCase.

Requests forbid unknown fields and coerce nothing (``strict``): a client's typo is a 422 naming
the field, not a silently ignored value. Their JSON schemas are the OpenAPI document's.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from ..settlement.identity import is_valid_identity


def _identity(value: str) -> str:
    if not is_valid_identity(value):
        raise ValueError(
            "not a Qubic identity: 60 uppercase letters A-Z whose last 4 are the checksum"
        )
    return value


QubicAddress = Annotated[
    str,
    Field(
        min_length=60,
        max_length=60,
        description="a Qubic identity: 60 uppercase letters, the last 4 a K12 checksum",
        examples=["BZBQFLLBNCXEMGLOBHUVFTLUPLVCPQUASSILFABOFFBCADQSSUPNWLZBQEXK"],
    ),
    AfterValidator(_identity),
]
QU = Annotated[int, Field(ge=0, description="integer QU (Qubic's unit has no decimals)")]


class Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class Response(BaseModel):
    model_config = ConfigDict(frozen=True)


# ---------------------------------------------------------------------- requests


class ChallengeRequest(Request):
    qubicAddress: QubicAddress


class ConnectRequest(Request):
    qubicAddress: QubicAddress
    signature: str = Field(
        min_length=128,
        max_length=128,
        pattern="^[0-9a-fA-F]{128}$",
        description="SchnorrQ signature (64 bytes, hex) of K12(challenge as UTF-8)",
    )
    challenge: str = Field(min_length=1, max_length=100, description="from POST auth/challenge")


# ---------------------------------------------------------------------- responses


class ErrorBody(Response):
    code: str = Field(examples=["insufficient_funds"])
    message: str
    details: dict[str, Any] = Field(default_factory=dict)


class ErrorResponse(Response):
    error: ErrorBody


class DatabaseHealth(Response):
    reachable: bool
    backend: str = Field(examples=["sqlite", "postgresql"])


class HealthResponse(Response):
    status: Literal["ok", "degraded"]
    version: str
    role: Literal["market", "agent", "both"]
    database: DatabaseHealth


class ChallengeResponse(Response):
    challenge: str = Field(description="sign K12(challenge) with the wallet; single use")
    expiresAt: dt.datetime


class UserOut(Response):
    id: str
    qubicAddress: str
    email: str | None
    username: str | None
    role: Literal["CONSUMER", "PROVIDER", "BOTH"]
    balance: QU
    createdAt: dt.datetime
    updatedAt: dt.datetime


class ConnectResponse(Response):
    success: bool
    balance: QU
    user: UserOut
    token: str = Field(description="bearer token for `Authorization: Bearer …`; shown once")
    expiresAt: dt.datetime


class RevokeResponse(Response):
    revoked: bool


class BalanceResponse(Response):
    balance: QU
    pendingEarnings: QU = Field(
        description="QU held in escrow for jobs running on your providers: the most you can "
        "still earn from the jobs in progress"
    )


class MeResponse(Response):
    user: UserOut
    tokenExpiresAt: dt.datetime


class OpenAPIDocument(Response):
    model_config = ConfigDict(extra="allow", frozen=True)
    openapi: str
