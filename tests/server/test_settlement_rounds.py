"""The settlement rounds the extension runs on the server's loop (``settlement_interval``), and the
configuration the qubic backend refuses to start without."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from traitlets import TraitError

from qubix_jupyter.server_extension.app import QubixExtension
from qubix_jupyter.settlement.backends import SettlementNotConfigured
from qubix_jupyter.settlement.keys import KeyPair

from .conftest import SEED_ALICE, Api, body_of, login

OUTSIDE = KeyPair.from_seed("o" * 55).identity


@pytest.fixture
def qubix_config() -> dict[str, Any]:
    return {"settlement_interval": 0.02}


async def test_the_rounds_pay_a_withdrawal_out_on_their_own(api: Api):
    alice = await login(api, SEED_ALICE)
    token = alice["token"]
    funded = await api("POST", "wallet/deposit", json_body={"amount": 900}, token=token)
    assert funded.code == 200
    sent = await api(
        "POST", "wallet/withdraw", json_body={"amount": 300, "toAddress": OUTSIDE}, token=token
    )
    assert sent.code == 200, sent.body
    statuses = []
    async with asyncio.timeout(30):  # a bound on a hang, not a performance figure
        while not statuses or statuses[-1] != "confirmed":
            await asyncio.sleep(0.05)
            [current] = body_of(await api("GET", "wallet/withdrawals", token=token))["items"]
            statuses.append(current["status"])
    assert current["statusText"] == "paid"
    assert body_of(await api("GET", "me", token=token))["user"]["balance"] == 600


def test_the_qubic_backend_needs_its_rpc_and_seed(tmp_path: Path):
    extension = QubixExtension(settlement_backend="qubic")
    with pytest.raises(SettlementNotConfigured, match="qubic_rpc_url"):
        extension._settlement_backend(None, None)  # type: ignore[arg-type]
    extension.qubic_rpc_url = "https://rpc.example.org"
    extension.qubic_platform_seed_file = str(tmp_path / "missing")
    with pytest.raises(SettlementNotConfigured, match="qubic_platform_seed_file"):
        extension._settlement_backend(None, None)  # type: ignore[arg-type]
    seed = tmp_path / "seed"
    seed.write_text("not a seed\n")
    extension.qubic_platform_seed_file = str(seed)
    with pytest.raises(SettlementNotConfigured, match="platform wallet's seed"):
        extension._settlement_backend(None, None)  # type: ignore[arg-type]


def test_settlement_interval_is_never_negative():
    with pytest.raises(TraitError, match="settlement_interval must be >= 0"):
        QubixExtension(settlement_interval=-1.0)
