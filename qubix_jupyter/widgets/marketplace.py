"""MarketplacePanel: the market's offers, filtered and sorted as the seed's MarketplaceFilters,
kept live by the ``marketplace`` channel, with a rent action that pre-fills a submission."""

from __future__ import annotations

import shlex
import threading
from collections.abc import Callable
from typing import Any

import ipywidgets as widgets

from ..client import MarketClient, MarketError
from ..client.models import Offer
from ..market.marketplace import AVAILABILITIES, SORT_KEYS
from ._live import Refresher, client_or_default, close_subscription, error_html

#: GPU models offered in the filter before the market lists any (the listing adds its own).
KNOWN_MODELS = ("RTX 4090", "RTX 3090", "A100", "H100")
COLUMNS = ("GPU", "VRAM", "Price", "Performance", "Location", "Status", "")


def offer_row(offer: Offer) -> tuple[str, str, str, str, str, str]:
    """One offer as the table shows it: GPU, VRAM, price, performance, location, status."""
    return (
        offer.gpu_model or "CPU",
        f"{offer.gpu_vram:g} GB" if offer.gpu_vram else "—",
        f"{offer.price_per_hour} QU/h",
        f"{offer.performance_tflops:.2f} TFLOPS" if offer.performance_tflops else "—",
        offer.location or "—",
        offer.status,
    )


def submit_line(offer: Offer, hours: float = 0.5) -> str:
    """The ``%%qubix submit`` line that rents ``offer`` (its model, VRAM and price)."""
    parts = ["%%qubix", "submit"]
    if offer.gpu_model:
        parts += ["--gpu", shlex.quote(offer.gpu_model)]
    if offer.gpu_vram:
        parts += ["--min-vram", f"{offer.gpu_vram:g}"]
    parts += ["--max-price", str(offer.price_per_hour), "--hours", f"{hours:g}"]
    return " ".join(parts)


class MarketplacePanel(widgets.VBox):
    """The offers of the market, as its filters select them, updated as the market changes.

    ``offers`` holds what the table shows; ``rows`` its cells. ``rent(offer)`` (each row's
    button) fills ``submission`` with the ``%%qubix submit`` line for that offer and calls
    ``on_rent(offer, line)`` when given.
    """

    def __init__(
        self,
        client: MarketClient | None = None,
        *,
        live: bool = True,
        limit: int = 50,
        on_rent: Callable[[Offer, str], Any] | None = None,
    ) -> None:
        self.client = client_or_default(client)
        self.limit = limit
        self.on_rent = on_rent
        self.offers: list[Offer] = []
        self.total = 0
        self.updates = 0  # how many times the table was redrawn from the market
        self._lock = threading.Lock()
        self._redrawing = False
        style = {"description_width": "initial"}
        self.gpu_model = widgets.SelectMultiple(
            options=KNOWN_MODELS, rows=4, description="GPU model", style=style
        )
        self.min_vram = widgets.BoundedFloatText(
            value=0, min=0, max=4096, step=1, description="Min VRAM (GB)", style=style
        )
        self.max_price = widgets.BoundedIntText(
            value=0, min=0, max=10**12, description="Max price (QU/h, 0 = any)", style=style
        )
        self.location = widgets.Text(
            value="", placeholder="any", description="Location", style=style
        )
        self.availability = widgets.Dropdown(
            options=AVAILABILITIES, value="available", description="Availability", style=style
        )
        self.sort_by = widgets.Dropdown(
            options=SORT_KEYS, value="price", description="Sort by", style=style
        )
        self.status = widgets.HTML()
        self.table = widgets.GridBox(
            layout=widgets.Layout(
                grid_template_columns="repeat(7, max-content)", grid_gap="2px 16px"
            )
        )
        self.rent_buttons: list[widgets.Button] = []
        self.submission = widgets.Textarea(
            value="",
            placeholder="Rent an offer to get its %%qubix submit line",
            layout=widgets.Layout(width="100%"),
        )
        for control in (
            self.gpu_model,
            self.min_vram,
            self.max_price,
            self.location,
            self.availability,
            self.sort_by,
        ):
            control.observe(self._filters_changed, names="value")
        filters = widgets.HBox(
            [
                self.gpu_model,
                widgets.VBox([self.min_vram, self.max_price, self.location]),
                widgets.VBox([self.availability, self.sort_by]),
            ]
        )
        super().__init__(
            [
                widgets.HTML("<h3>GPU marketplace</h3>"),
                filters,
                self.status,
                self.table,
                self.submission,
            ]
        )
        self._refresher = Refresher(self._refresh_async, self._show_error)
        self.subscription: Any = None
        self.refresh()
        if live:
            self.subscription = self.client.events("marketplace", on_event=self._on_event)

    # ------------------------------------------------------------------ filters

    def filters(self) -> dict[str, Any]:
        """The query the controls describe, as ``MarketClient.providers`` takes it."""
        location = self.location.value.strip()
        return {
            "gpu_model": list(self.gpu_model.value) or None,
            "min_vram": self.min_vram.value or None,
            "max_price": self.max_price.value or None,
            "location": location or None,
            "availability": self.availability.value,
            "sort_by": self.sort_by.value,
            "limit": self.limit,
        }

    def _filters_changed(self, _change: Any) -> None:
        if not self._redrawing:  # new models offered by the listing are no change of mind
            self.refresh()

    # ------------------------------------------------------------------ the listing

    def refresh(self) -> None:
        """Ask the market for the offers now (blocking; the live updates do it on their own)."""
        try:
            page = self.client.providers(**self.filters())
        except MarketError as exc:
            self._show_error(exc)
            return
        self._show(page.items, page.total)

    async def _refresh_async(self) -> None:
        page = await self.client.aio.providers(**self.filters())
        self._show(page.items, page.total)

    def _on_event(self, event: Any) -> None:
        if event.type == "error":
            return
        self._refresher.trigger()

    def _show(self, offers: list[Offer], total: int) -> None:
        with self._lock:
            self.offers = list(offers)
            self.total = total
            known = set(self.gpu_model.options)
            new = sorted({o.gpu_model for o in offers if o.gpu_model} - known)
            if new:
                chosen = self.gpu_model.value
                self._redrawing = True
                try:
                    self.gpu_model.options = (*self.gpu_model.options, *new)
                    self.gpu_model.value = chosen
                finally:
                    self._redrawing = False
            cells: list[widgets.Widget] = [widgets.HTML(f"<b>{c}</b>") for c in COLUMNS]
            self.rent_buttons = []
            for offer in self.offers:
                cells += [widgets.Label(c) for c in offer_row(offer)]
                button = widgets.Button(description="Rent", button_style="primary")
                button.on_click(lambda _b, offer=offer: self.rent(offer))
                self.rent_buttons.append(button)
                cells.append(button)
            self.table.children = cells
            self.status.value = (
                f"{len(self.offers)} of {self.total} offers"
                if self.offers
                else "<i>No offer matches these filters.</i>"
            )
            self.updates += 1

    @property
    def rows(self) -> list[tuple[str, ...]]:
        return [offer_row(o) for o in self.offers]

    def _show_error(self, exc: BaseException) -> None:
        self.status.value = error_html(
            f"The market did not answer: {exc}",
            "Check the market URL given to %qubix connect, then change a filter to try again.",
        )

    # ------------------------------------------------------------------ renting

    def rent(self, offer: Offer, hours: float = 0.5) -> str:
        line = submit_line(offer, hours)
        self.submission.value = line
        if self.on_rent is not None:
            self.on_rent(offer, line)
        return line

    def close(self) -> None:
        if self.subscription is not None:
            close_subscription(self.client, self.subscription)
            self.subscription = None
        super().close()
