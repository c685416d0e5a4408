"""The wallet endpoints on the ``qubic`` settlement backend, against a local fake of Qubic's RPC
(tests/settlement/fake_rpc.py), on SQLite and PostgreSQL: a deposit watched on the chain is
credited once, and a withdrawal is one debit with one ``payout_outbox`` row, signed, broadcast and
confirmed by tick."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from pytest_jupyter.jupyter_server import jp_ws_fetch  # noqa: F401 (a fixture)
from sqlalchemy import func, select

from qubix_jupyter.db.ledger import audit
from qubix_jupyter.db.models import Transaction
from qubix_jupyter.db.settlement_models import PayoutOutbox
from qubix_jupyter.market.states import EntryType
from qubix_jupyter.server_extension.handlers import SERVICES
from qubix_jupyter.server_extension.services import Services
from qubix_jupyter.settlement.identity import is_valid_identity
from qubix_jupyter.settlement.keys import KeyPair

from ..settlement.fake_rpc import FakeQubicRpc
from .conftest import SEED_ALICE, Api, body_of, login
from .test_websocket import recv, subscribe, ws_connect  # noqa: F401 (a fixture)

PLATFORM_SEED = "qubixplatformwalletseedfortestsonly" + "p" * 20
PLATFORM = KeyPair.from_seed(PLATFORM_SEED).identity
OUTSIDE = KeyPair.from_seed("o" * 55).identity


@pytest.fixture
async def fake() -> AsyncIterator[FakeQubicRpc]:
    async with FakeQubicRpc(balances={PLATFORM: 1_000_000}) as server:
        yield server


@pytest.fixture
def qubix_config(fake: FakeQubicRpc, tmp_path: Path) -> dict[str, Any]:
    platform = tmp_path / "platform-seed"
    platform.write_text(PLATFORM_SEED + "\n")
    deposits = tmp_path / "deposit-seed"
    deposits.write_text("a deposit secret used only in tests\n")
    return {
        "settlement_backend": "qubic",
        "qubic_rpc_url": fake.base_url,
        "qubic_platform_seed_file": str(platform),
        "qubic_deposit_seed_file": str(deposits),
        "settlement_interval": 0.0,  # the test drives the rounds
    }


@pytest.fixture
def services(jp_serverapp) -> Services:
    return jp_serverapp.web_app.settings[SERVICES]  # type: ignore[no-any-return]


async def _count(services: Services, query: Any) -> int:
    async with services.sessionmaker() as session:
        return int((await session.execute(query)).scalar_one())


async def test_deposit_on_the_chain_then_withdraw_once(
    api: Api,
    services: Services,
    fake: FakeQubicRpc,
    ws_connect,  # noqa: F811
):
    alice = await login(api, SEED_ALICE)
    token, user_id = alice["token"], alice["user"]["id"]
    where = body_of(await api("GET", "wallet/deposit-address", token=token))
    assert where["backend"] == "qubic"
    assert where["simulated"] is False
    assert is_valid_identity(where["address"])
    assert where["address"] != PLATFORM

    simulated = await api("POST", "wallet/deposit", json_body={"amount": 10}, token=token)
    assert simulated.code == 409
    assert body_of(simulated)["error"]["code"] == "simulated_deposits_off"

    ws = await ws_connect(token)
    await subscribe(ws, "wallet")
    tx_id = fake.seed_incoming(where["address"], 5000)
    fake.advance(1)
    await services.settlement.settle_once()
    await services.settlement.settle_once()  # seen again: credited once
    frame = await recv(ws)
    assert frame["type"] == "BALANCE_CHANGED"
    assert frame["data"] == {
        "balance": 5000,
        "change": 5000,
        "reason": "deposit",
        "qubicTxHash": tx_id,
    }
    assert await services.ledger.wallet_balance(user_id) == 5000

    body = {"amount": 1200, "toAddress": OUTSIDE}
    headers = {"Idempotency-Key": "alice-payout-1"}
    first = await api("POST", "wallet/withdraw", json_body=body, token=token, headers=headers)
    assert first.code == 200, first.body
    again = await api("POST", "wallet/withdraw", json_body=body, token=token, headers=headers)
    assert body_of(again) == body_of(first)
    withdrawal = body_of(first)["withdrawal"]
    assert withdrawal["status"] == "queued"
    assert body_of(first)["balance"] == 3800
    assert (await recv(ws))["data"]["reason"] == "withdrawal"
    ws.close()

    outbox = select(func.count()).select_from(PayoutOutbox).where(PayoutOutbox.user_id == user_id)
    assert await _count(services, outbox) == 1
    debits = (
        select(func.count())
        .select_from(Transaction)
        .where(Transaction.user_id == user_id, Transaction.type == EntryType.WITHDRAWAL)
    )
    assert await _count(services, debits) == 1

    for _ in range(40):
        await services.settlement.settle_once()
        [current] = body_of(await api("GET", "wallet/withdrawals", token=token))["items"]
        if current["status"] == "confirmed":
            break
        fake.advance(1)
    assert current["status"] == "confirmed", current
    assert current["statusText"] == "paid"
    [paid] = fake.paid(PLATFORM, OUTSIDE)
    assert paid.amount == 1200
    assert current["qubicTxHash"] == paid.tx_id
    assert await services.ledger.wallet_balance(user_id) == 3800
    async with services.sessionmaker() as session:
        report = await audit(session)
    assert report.ok, report.violations
