"""The wallet endpoints: where to send QU, a simulated deposit for demo markets, withdrawals
through the settlement backend, the caller's ledger history, and a provider's earnings.

Money moves only through ``SettlementService`` (which calls the backend, which calls the ledger),
each movement keyed by the request's key so a retried request moves nothing again.
"""

from __future__ import annotations

import datetime as dt

from pydantic import BaseModel
from sqlalchemy import select

from ..db import wallet_history
from ..db.models import Provider
from ..market.marketplace import UnknownProvider
from ..market.payouts import PayoutStatus
from . import wallet_models as w
from .endpoints import Call
from .errors import Forbidden
from .route import Route

_SIMULATED_INSTRUCTIONS = (
    "This market settles on a simulated Qubic chain (the memory backend): nothing is sent over "
    "the network. Fund your wallet with POST wallet/deposit {amount}, which simulates a transfer "
    "to this address and credits it at once."
)
_QUBIC_INSTRUCTIONS = (
    "Send QU to this address from your own Qubic wallet. The market credits each transfer once "
    "the Qubic archive has processed its tick (usually within a minute); watch the wallet "
    "channel for BALANCE_CHANGED. Never send from an exchange that cannot name this identity."
)


def withdrawal_out(payout: PayoutStatus) -> w.WithdrawalOut:
    return w.WithdrawalOut(
        id=payout.payout_key,
        amount=payout.amount,
        toAddress=payout.destination,
        status=payout.state.value,
        statusText=payout.display,
        delayed=payout.delayed,
        attempts=payout.attempts,
        qubicTxHash=payout.tx_id,
        targetTick=payout.target_tick,
        confirmedTick=payout.confirmed_tick,
        lastError=payout.last_error,
        createdAt=payout.created_at,
        updatedAt=payout.updated_at,
    )


async def deposit_address(call: Call) -> BaseModel:
    settlement = call.services.settlement
    return w.DepositAddressResponse(
        address=await settlement.deposit_address(call.caller.user.id),
        backend=settlement.backend.name,
        simulated=settlement.simulated,
        instructions=_SIMULATED_INSTRUCTIONS if settlement.simulated else _QUBIC_INSTRUCTIONS,
    )


async def simulated_deposit(call: Call) -> BaseModel:
    body: w.DepositRequest = call.body
    tx_id, balance = await call.services.settlement.simulate_deposit(
        call.caller.user.id, body.amount, key=f"{call.request_key}:deposit"
    )
    return w.DepositResponse(
        success=True, simulated=True, amount=body.amount, qubicTxHash=tx_id, balance=balance
    )


async def withdraw(call: Call) -> BaseModel:
    body: w.WithdrawRequest = call.body
    done = await call.services.settlement.withdraw(
        call.caller.user.id, body.toAddress, body.amount, key=f"{call.request_key}:withdraw"
    )
    return w.WithdrawResponse(
        success=True, withdrawal=withdrawal_out(done.payout), balance=done.balance
    )


async def withdrawals(call: Call) -> BaseModel:
    payouts = await call.services.settlement.withdrawals(call.caller.user.id)
    return w.WithdrawalList(items=[withdrawal_out(p) for p in payouts])


async def transactions(call: Call) -> BaseModel:
    query: w.TransactionsQuery = call.query
    async with call.services.sessionmaker() as session:
        page = await wallet_history.wallet_entries(
            session, call.caller.user.id, offset=query.offset, limit=query.limit, types=query.type
        )
    return w.TransactionPage(
        items=[
            w.TransactionOut(
                id=e.id,
                type=e.type,
                amount=e.amount,
                direction="in" if e.amount > 0 else "out",
                jobId=e.job_id,
                qubicTxHash=e.qubic_tx_hash,
                status=e.status,
                createdAt=e.created_at,
            )
            for e in page.entries
        ],
        total=page.total,
        offset=query.offset,
        limit=query.limit,
    )


async def earnings(call: Call) -> BaseModel:
    query: w.EarningsQuery = call.query
    user_id = call.caller.user.id
    async with call.services.sessionmaker() as session:
        provider_id = None
        if query.workerId is not None:
            provider = (
                await session.execute(select(Provider).where(Provider.worker_id == query.workerId))
            ).scalar_one_or_none()
            if provider is None:
                raise UnknownProvider(f"no provider {query.workerId!r}", workerId=query.workerId)
            if provider.user_id != user_id:
                raise Forbidden("you can read only your own providers' earnings")
            provider_id = provider.id
        found = await wallet_history.earnings(
            session, user_id, now=dt.datetime.now(dt.UTC), days=query.days, provider_id=provider_id
        )
    return w.EarningsData(
        total=found.total,
        today=found.today,
        thisWeek=found.this_week,
        thisMonth=found.this_month,
        history=[
            w.EarningEntry(date=day.date, amount=day.amount, jobCount=day.job_count)
            for day in found.history
        ],
    )


ROUTES: tuple[Route, ...] = (
    Route(
        "GET",
        "wallet/deposit-address",
        deposit_address,
        "Your deposit address: the Qubic identity whose incoming QU is credited to your wallet",
        w.DepositAddressResponse,
        tag="wallet",
        errors=(503,),
    ),
    Route(
        "POST",
        "wallet/deposit",
        simulated_deposit,
        "Simulated deposit (memory settlement backend only, for demo and development markets): "
        "QU arrive at your deposit address on the simulated chain and are credited at once",
        w.DepositResponse,
        body=w.DepositRequest,
        idempotent=True,
        tag="wallet",
        errors=(409, 422),
    ),
    Route(
        "POST",
        "wallet/withdraw",
        withdraw,
        "Withdraw QU to a Qubic identity: your wallet is debited and the payout queued at once, "
        "then sent and confirmed on the chain",
        w.WithdrawResponse,
        body=w.WithdrawRequest,
        idempotent=True,
        tag="wallet",
        errors=(402, 409, 422, 503),
    ),
    Route(
        "GET",
        "wallet/withdrawals",
        withdrawals,
        "Your withdrawals and where each one is, newest first",
        w.WithdrawalList,
        tag="wallet",
    ),
    Route(
        "GET",
        "wallet/transactions",
        transactions,
        "Your ledger entries, newest first, amounts signed from your side",
        w.TransactionPage,
        query=w.TransactionsQuery,
        tag="wallet",
        errors=(422,),
    ),
    Route(
        "GET",
        "earnings",
        earnings,
        "What your providers earned: total, today, this week, this month, and per day",
        w.EarningsData,
        query=w.EarningsQuery,
        tag="wallet",
        errors=(403, 404, 422),
    ),
)
