"""`qubix demo`: the market's money path end to end on the embedded defaults.

Two users with real Qubic identities (SchnorrQ keys generated from seeds) sign in by signing a
challenge. The consumer deposits QU on the simulated chain of the memory settlement backend, which
credits the ledger; rents a provider's GPU for a job escrowed at the consumer's max price, assigned
to a cheaper offer (the excess released), run and charged by the second; a second job finds no
provider and is refunded in full; a retried charge moves nothing; the provider withdraws the
earnings through a payout that the chain confirms by tick. Balances are printed after each step and
the ledger's invariants are checked from the raw entries at the end.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import TextIO

from .db import migrate
from .db import repositories as repo
from .db.engine import make_engine, make_sessionmaker
from .db.ledger import Ledger, audit
from .market.money import escrow_for
from .market.states import JobStatus, Role
from .settlement.backends.memory import MemoryBackend
from .settlement.keys import KeyPair
from .settlement.wallet import sign_challenge, verify_challenge

PRICE = 400  # QU per GPU-hour asked by the provider
MAX_PRICE = 500  # QU per GPU-hour the consumer accepts
FEE_BPS = 250  # 2.5 % platform fee
# Fixed seeds so every run shows the same identities. Real users run `qubix wallet new`.
ALICE_SEED = "alice" + "a" * 50
BOB_SEED = "bob" + "b" * 52


async def run_demo(database_url: str | None = None, out: TextIO | None = None) -> bool:
    """Run the demo; return True when every invariant holds."""
    out = out if out is not None else sys.stdout
    with tempfile.TemporaryDirectory(prefix="qubix-demo-") as tmp:
        url = database_url or f"sqlite:///{Path(tmp) / 'demo.db'}"
        return await _run(url, out)


async def _run(url: str, out: TextIO) -> bool:
    def say(text: str = "") -> None:
        print(text, file=out, flush=True)

    say(f"QUBIX demo — database {url.split('@')[-1]}")
    migrate.upgrade(url)
    engine = make_engine(url)
    sessionmaker = make_sessionmaker(engine)
    ledger = Ledger(sessionmaker, platform_fee_bps=FEE_BPS)
    try:
        await migrate.ensure_current(engine)
        alice_keys, bob_keys = KeyPair.from_seed(ALICE_SEED), KeyPair.from_seed(BOB_SEED)
        say("\nwallet connect (the seed never leaves the user's machine):")
        for name, keys, seed in (("alice", alice_keys, ALICE_SEED), ("bob", bob_keys, BOB_SEED)):
            challenge = f"qubix-demo login {name}"
            signed = sign_challenge(seed, challenge)
            accepted = verify_challenge(signed["identity"], challenge, signed["signature"])
            say(f"  {name:<5} {keys.identity}  SchnorrQ signature verified: {accepted}")
            if not accepted:
                return False

        settlement = MemoryBackend(ledger)
        async with sessionmaker() as s, s.begin():
            alice = await repo.create_user(
                s, alice_keys.identity, username="alice", role=Role.CONSUMER
            )
            bob = await repo.create_user(s, bob_keys.identity, username="bob", role=Role.PROVIDER)
            rtx = await repo.create_provider(
                s,
                bob.id,
                worker_id="bob-rtx4090",
                name="Bob's RTX 4090",
                price_per_hour=PRICE,
                gpu_vendor="NVIDIA",
                gpu_model="NVIDIA GeForce RTX 4090",
                gpu_vram=24.0,
                gpu_count=1,
                location="EU",
            )
            train = await repo.create_job(
                s, alice.id, model_type="python", compute_seconds=1800, max_price=MAX_PRICE
            )
            orphan = await repo.create_job(
                s,
                alice.id,
                model_type="cell",
                compute_seconds=600,
                max_price=MAX_PRICE,
                constraints={"gpuModel": ["NVIDIA H200"]},
            )

        async def balances(step: str) -> None:
            a = await ledger.wallet_balance(alice.id)
            b = await ledger.wallet_balance(bob.id)
            e = await ledger.escrow_balance(train.id) + await ledger.escrow_balance(orphan.id)
            f = await ledger.balance("platform:fees")
            say(f"  {step:<50} alice {a:>6}  bob {b:>5}  escrow {e:>5}  fees {f:>3}")

        say(
            f"\nprices: provider asks {PRICE} QU/GPU-h, consumer accepts up to {MAX_PRICE} QU/GPU-h"
        )
        say(f"platform fee {FEE_BPS / 100}%\n")
        address = await settlement.deposit_identity_for(alice.id)
        tx_id = await settlement.simulate_deposit(alice.id, 10_000)
        settlement.advance(1)
        credited = await settlement.scan_deposits()
        credited += await settlement.scan_deposits()  # a second scan sees it again, credits nothing
        say(f"alice's deposit identity {address}")
        await balances(f"10000 QU arrive (tx {tx_id[:12]}…), credited {len(credited)}×")

        locked = escrow_for(MAX_PRICE, train.compute_seconds)
        await ledger.lock_escrow(train.id, locked, idempotency_key="demo-lock-train")
        await balances(f"job 1 (30 min) escrowed at max price: {locked}")
        await ledger.lock_escrow(
            orphan.id,
            escrow_for(MAX_PRICE, orphan.compute_seconds),
            idempotency_key="demo-lock-orphan",
        )
        await balances("job 2 (10 min, H200 only) escrowed")

        async with sessionmaker() as s, s.begin():
            provider = await s.get(type(rtx), rtx.id)
            assert provider is not None
            await repo.assign_job(s, train.id, provider, status=JobStatus.RUNNING)
        excess = locked - escrow_for(PRICE, train.compute_seconds)
        await ledger.release_escrow(train.id, excess, idempotency_key="demo-release-train")
        await balances(f"job 1 assigned to bob at {PRICE}: {excess} released")

        charge = await ledger.charge(train.id, seconds=754, idempotency_key="demo-charge-train")
        c = charge.amounts
        await balances(f"job 1 ran 754 s: cost {c['cost']}")
        say(f"    cost ceil({PRICE} × 754 / 3600) = {c['cost']} → bob {c['provider']}, "
            f"fee {c['fee']}, refund {c['refund']}")  # fmt: skip

        again = await ledger.charge(train.id, seconds=754, idempotency_key="demo-charge-train")
        await balances(f"charge retried: replayed={again.replayed}, nothing moved")

        await ledger.refund(orphan.id, idempotency_key="demo-refund-orphan", error="unassignable")
        await balances("job 2 unassignable: refunded in full")

        earned = await ledger.wallet_balance(bob.id)
        payout = await settlement.request_payout(
            "demo-payout-bob", bob.id, bob.qubic_address, earned
        )
        await balances(f"bob withdraws {earned} QU: payout {payout.display}")
        for _ in range(20):
            await settlement.run_once()  # one simulated tick, then payouts are processed
            payout = await settlement.payout_status("demo-payout-bob")
            if payout.display == "paid":
                break
        on_chain = settlement.chain.balance(bob.qubic_address)
        say(f"    payout {payout.display} in tick {payout.confirmed_tick}, tx {payout.tx_id}")
        say(f"    bob's identity now holds {on_chain} QU on the chain")

        async with sessionmaker() as s:
            report = await audit(s)
        say("\nledger audit (recomputed from every entry):")
        say(f"  accounts {report.accounts}, entries {report.entries}")
        say(f"  internal total {report.internal_total} == deposits {report.deposits} "
            f"- withdrawals {report.withdrawals}")  # fmt: skip
        if report.ok:
            say("  all five invariants hold: balances match entries, no QU created or lost,")
            say("  nothing negative, no escrow left on finished jobs, every key applied once")
        for violation in report.violations:
            say(f"  VIOLATION: {violation}")
        return report.ok and payout.display == "paid" and len(credited) == 1
    finally:
        await engine.dispose()
