"""The panels' state, read through their widget models, against a real market."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from qubix_jupyter.client import MarketClient
from qubix_jupyter.dask_provider.gpu import HardwareReport
from qubix_jupyter.widgets import JobWidget, MarketplacePanel, ProviderDashboard, ShareGPUPanel

from .conftest import GPU, Market, signed_in

SEED_CAROL = "c" * 55
SEED_DAVE = "d" * 55


def eventually(check: Callable[[], Any], timeout: float = 60.0) -> Any:
    """Wait for the market's events to reach a widget (a bound on waiting, not an assertion)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.1)


def gpu(model: str, vram: int) -> dict[str, Any]:
    return {**GPU, "model": model, "vram": vram}


@pytest.fixture
def carol(market: Market) -> Iterator[MarketClient]:
    client = signed_in(market, SEED_CAROL)
    yield client
    client.close()


def test_filters_choose_the_offers_in_the_table(alice: MarketClient, bob: MarketClient) -> None:
    alice.quick_register("w-filter-4090", gpu("RTX 4090", 24), 30, location="EU")
    alice.quick_register("w-filter-a100", gpu("A100", 80), 90, location="US")
    bob.quick_register("w-filter-3090", gpu("RTX 3090", 24), 20, location="EU")
    panel = MarketplacePanel(alice, live=False)
    try:
        panel.availability.value = "all"  # just registered: listed, not yet online
        mine = {"w-filter-4090", "w-filter-a100", "w-filter-3090"}
        assert mine <= {o.worker_id for o in panel.offers}
        assert "A100" in panel.gpu_model.options  # the listing's models join the filter

        panel.gpu_model.value = ("RTX 4090", "A100")
        assert {o.gpu_model for o in panel.offers} <= {"RTX 4090", "A100"}
        assert {"w-filter-4090", "w-filter-a100"} <= {o.worker_id for o in panel.offers}

        panel.max_price.value = 50
        assert all(o.price_per_hour <= 50 for o in panel.offers)
        assert "w-filter-a100" not in {o.worker_id for o in panel.offers}

        panel.gpu_model.value = ()
        panel.max_price.value = 0
        panel.location.value = "EU"
        panel.min_vram.value = 24
        assert {o.location for o in panel.offers} == {"EU"}
        prices = [o.price_per_hour for o in panel.offers]
        assert prices == sorted(prices)  # sortBy price
        row = next(r for r, o in zip(panel.rows, panel.offers, strict=True) if o.worker_id
                   == "w-filter-3090")  # fmt: skip
        assert row == ("RTX 3090", "24 GB", "20 QU/h", "—", "EU", "offline")
        # 7 columns: a header row, then one row per offer with its Rent button
        assert len(panel.table.children) == 7 * (1 + len(panel.offers))

        panel.availability.value = "available"
        assert not {o.worker_id for o in panel.offers} & mine  # none of them is online
        assert "No offer" in panel.status.value or panel.offers
    finally:
        panel.close()


def test_a_provider_registering_appears_live_and_rent_fills_the_submission(
    alice: MarketClient, carol: MarketClient
) -> None:
    rented: list[str] = []
    panel = MarketplacePanel(alice, on_rent=lambda _offer, line: rented.append(line))
    try:
        panel.availability.value = "all"
        panel.subscription.wait_subscribed("marketplace", timeout=30)
        assert "w-live-h100" not in {o.worker_id for o in panel.offers}
        before = panel.updates

        carol.quick_register("w-live-h100", gpu("H100", 80), 75, location="US")

        assert eventually(
            lambda: panel.updates > before and "w-live-h100" in {o.worker_id for o in panel.offers}
        )
        index = [o.worker_id for o in panel.offers].index("w-live-h100")
        panel.rent_buttons[index].click()
        line = "%%qubix submit --gpu H100 --min-vram 80 --max-price 75 --hours 0.5"
        assert panel.submission.value == line
        assert rented == [line]
    finally:
        panel.close()


def test_a_job_widget_follows_its_job_and_cancels_it(alice: MarketClient) -> None:
    alice.deposit(1000)
    created = alice.create_job(
        "cell", {"source": "x = 1", "variables": ["x"]}, compute_needed=0.5, max_price=40,
        gpu_model="no such GPU",  # nothing matches: it stays pending
    )  # fmt: skip
    assert created.job is not None
    widget = JobWidget(alice, created.job)
    try:
        assert widget.state.value == "PENDING"
        assert widget.progress_bar.value == 0
        assert widget.cost.value == "cost 0 QU of 20 QU"
        assert not widget.cancel_button.disabled
        widget.cancel_button.click()
        assert widget.state.value == "CANCELLED"
        assert widget.cancel_button.disabled
        assert widget.progress_bar.bar_style == "danger"
        assert alice.balance().balance == 1000  # the escrow came back whole
    finally:
        widget.close()


def cpu_only(**_: Any) -> HardwareReport:
    return HardwareReport(source="none", gpus=(), notes=("no GPU on the test machine",))


def test_share_goes_online_with_a_real_worker_and_the_dashboard_follows(
    market: Market, alice: MarketClient
) -> None:
    dave = MarketClient(market.url, seed=SEED_DAVE, retries=1)
    dave.sign_in()
    panel = ShareGPUPanel(dave, price_per_hour=35, detect=cpu_only, heartbeat_interval_s=0.5)
    listing = MarketplacePanel(alice)
    dashboard = None
    try:
        assert panel.state == "idle"
        assert panel.progress_bar.value == 0
        assert panel.stop_button.disabled
        panel.share(block=True, timeout=120)
        assert panel.state == "online", panel.message.value
        assert panel.progress_bar.value == 100
        assert "CPU will be shared" in panel.gpus.value
        assert panel.share_button.disabled
        assert not panel.stop_button.disabled
        (worker_id,) = panel.worker_ids
        # online and available: the live listing (availability "available") shows it
        assert eventually(lambda: worker_id in {o.worker_id for o in listing.offers})
        offer = next(o for o in listing.offers if o.worker_id == worker_id)
        assert offer.price_per_hour == 35

        dashboard = ProviderDashboard(dave, worker_id)
        assert "online" in dashboard.status.value
        assert dashboard.earnings["total"].value == "0 QU"
        assert "No job has paid" in dashboard.jobs.value
        # heartbeats carry the CPU's usage: the chart fills from history and GPU_METRICS_UPDATE
        assert eventually(lambda: len(dashboard.charts["cpu_percent"].x) >= 2)

        panel.stop()
        assert panel.state == "idle"
        assert not panel.launcher.running
        assert panel.message.value == "Stopped sharing."
    finally:
        if panel.launcher is not None:
            panel.launcher.stop()
        listing.close()
        if dashboard is not None:
            dashboard.close()
        dave.close()


def test_sharing_with_an_unreachable_market_says_what_to_do() -> None:
    from .conftest import SEED_ALICE

    nowhere = MarketClient("http://127.0.0.1:9/", seed=SEED_ALICE, retries=0)
    panel = ShareGPUPanel(nowhere, detect=cpu_only)
    try:
        panel.share(block=True)
        assert panel.state == "error"
        assert panel.progress_bar.bar_style == "danger"
        assert "did not answer" in panel.message.value
        assert "Check that the market is running" in panel.message.value
        assert not panel.share_button.disabled  # it may be tried again
    finally:
        nowhere.close()
