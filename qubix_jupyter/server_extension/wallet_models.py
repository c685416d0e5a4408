"""Request, query and response bodies of the wallet endpoints (deposit address, simulated
deposits, withdrawals, ledger history) and of ``earnings``, in the seed's camelCase.

Every amount is integer QU. Query models convert their strings (``lax``) but forbid unknown
parameters, like the marketplace search.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..market.money import INT64_MAX
from ..market.payouts import MAX_TRANSFER_AMOUNT
from ..market.states import EntryType
from .marketplace_models import WorkerId
from .models import QU, QubicAddress, Request, Response

MAX_HISTORY_PAGE = 200
MAX_EARNINGS_DAYS = 366

Transfer = Annotated[
    int,
    Field(
        gt=0,
        le=MAX_TRANSFER_AMOUNT,
        description=f"integer QU, 1 to {MAX_TRANSFER_AMOUNT} (a Qubic transfer's limit)",
    ),
]


# ---------------------------------------------------------------------- requests


class DepositRequest(Request):
    amount: Transfer


class WithdrawRequest(Request):
    amount: Transfer
    toAddress: QubicAddress


class TransactionsQuery(BaseModel):
    """``GET wallet/transactions``: a page of your ledger entries, optionally of some types."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: list[EntryType] = Field(
        default_factory=list,
        max_length=len(EntryType),
        description="only entries of these types (repeat, or a comma list)",
    )
    offset: int = Field(default=0, ge=0, le=INT64_MAX)
    limit: int = Field(default=50, ge=1, le=MAX_HISTORY_PAGE)


class EarningsQuery(BaseModel):
    """``GET earnings``: what your providers earned."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    workerId: WorkerId | None = Field(default=None, description="only this provider of yours")
    days: int = Field(
        default=30,
        ge=1,
        le=MAX_EARNINGS_DAYS,
        description="days of `history`, today included (UTC)",
    )


# ---------------------------------------------------------------------- responses


class DepositAddressResponse(Response):
    address: str = Field(description="the Qubic identity to send QU to; credited to your wallet")
    backend: Literal["memory", "qubic"]
    simulated: bool = Field(description="true: a simulated chain (demo); POST wallet/deposit funds")
    instructions: str


class DepositResponse(Response):
    success: bool
    simulated: bool
    amount: QU
    qubicTxHash: str = Field(description="the simulated chain's transaction id")
    balance: QU


class WithdrawalOut(Response):
    id: str = Field(description="the withdrawal's id (its payout key)")
    amount: QU
    toAddress: str
    status: Literal["queued", "signed", "broadcast", "confirmed", "failed"]
    statusText: str = Field(
        description="`queued`, `sending`, `paid`, `failed (refunded)` or `payment delayed`"
    )
    delayed: bool = Field(description="the chain could not be reached on the last try")
    attempts: int = Field(description="transactions signed for it so far")
    qubicTxHash: str | None = Field(description="the current or confirming transaction")
    targetTick: int | None
    confirmedTick: int | None
    lastError: str | None
    createdAt: dt.datetime | None
    updatedAt: dt.datetime | None


class WithdrawResponse(Response):
    success: bool
    withdrawal: WithdrawalOut
    balance: QU


class WithdrawalList(Response):
    items: list[WithdrawalOut] = Field(description="newest first")


class TransactionOut(Response):
    id: str
    type: EntryType
    amount: int = Field(description="integer QU, signed: + into your wallet, - out of it")
    direction: Literal["in", "out"]
    jobId: str | None
    qubicTxHash: str | None
    status: str
    createdAt: dt.datetime


class TransactionPage(Response):
    items: list[TransactionOut] = Field(description="newest first")
    total: int = Field(description="entries matching the filter on all pages")
    offset: int
    limit: int


class EarningEntry(Response):
    date: dt.date
    amount: QU
    jobCount: int


class EarningsData(Response):
    total: QU = Field(description="all time")
    today: QU = Field(description="since 00:00 UTC")
    thisWeek: QU = Field(description="since Monday 00:00 UTC")
    thisMonth: QU = Field(description="since the 1st, 00:00 UTC")
    history: list[EarningEntry] = Field(description="one entry a day, oldest first, zero days too")
