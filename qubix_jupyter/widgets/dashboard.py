"""ProviderDashboard: a provider's earnings (today, week, month, total and their history), its
GPU's live metrics (utilisation, temperature, memory), its jobs and its status."""

from __future__ import annotations

import threading
import warnings
from typing import Any

import ipywidgets as widgets

with warnings.catch_warnings():
    # bqscales declares its traits in a way traitlets deprecates; nothing of ours to change.
    warnings.filterwarnings(
        "ignore", "metadata .* was set from the constructor", DeprecationWarning
    )
    import bqplot

from ..client import MarketClient, MarketError
from ..client.models import MetricSample
from ._live import Refresher, client_or_default, close_subscription, error_html, html_table

#: Metric samples the charts keep (the oldest drop off).
MAX_SAMPLES = 300
METRICS = (("gpu_percent", "GPU utilisation (%)"), ("gpu_temp", "GPU temperature (°C)"),
           ("gpu_mem_used", "GPU memory used (MB)"), ("cpu_percent", "CPU (%)"))  # fmt: skip


def _line_chart(title: str) -> tuple[bqplot.Figure, bqplot.Lines]:
    x, y = bqplot.DateScale(), bqplot.LinearScale()
    line = bqplot.Lines(x=[], y=[], scales={"x": x, "y": y})
    figure = bqplot.Figure(
        marks=[line],
        axes=[bqplot.Axis(scale=x), bqplot.Axis(scale=y, side="left")],
        title=title,
        layout=widgets.Layout(width="25%", height="240px"),
    )
    return figure, line


class ProviderDashboard(widgets.VBox):
    """One provider (``worker_id``, default: your newest listing), live from its
    ``provider:{workerId}`` channel (metrics and status) and the ``wallet`` channel (earnings)."""

    def __init__(
        self, client: MarketClient | None = None, worker_id: str | None = None, *, live: bool = True
    ) -> None:
        self.client = client_or_default(client)
        if worker_id is None:
            newest = self.client.check_new()
            worker_id = newest.worker_id if newest is not None else None
        self.worker_id = worker_id
        self.subscription: Any = None
        self.state: str | None = None
        self._lock = threading.Lock()
        self.samples: list[MetricSample | dict[str, Any]] = []
        self.status = widgets.HTML()
        self.earnings = {k: widgets.Label() for k in ("today", "this_week", "this_month", "total")}
        x, y = bqplot.OrdinalScale(), bqplot.LinearScale()
        self.earnings_bars = bqplot.Bars(x=[], y=[], scales={"x": x, "y": y})
        self.earnings_chart = bqplot.Figure(
            marks=[self.earnings_bars],
            axes=[bqplot.Axis(scale=x), bqplot.Axis(scale=y, side="left")],
            title="Earnings per day (QU)",
            layout=widgets.Layout(height="240px"),
        )
        self.charts: dict[str, bqplot.Lines] = {}
        figures = []
        for field, title in METRICS:
            figure, line = _line_chart(title)
            self.charts[field] = line
            figures.append(figure)
        self.jobs = widgets.HTML()
        self.message = widgets.HTML()
        labels = widgets.HBox(
            [
                widgets.VBox([widgets.HTML(f"<b>{t}</b>"), self.earnings[k]])
                for k, t in (
                    ("today", "Today"),
                    ("this_week", "This week"),
                    ("this_month", "This month"),
                    ("total", "Total"),
                )
            ],
            layout=widgets.Layout(grid_gap="24px"),
        )
        super().__init__(
            [
                widgets.HTML("<h3>Provider dashboard</h3>"),
                self.status,
                labels,
                self.earnings_chart,
                widgets.HBox(figures),
                widgets.HTML("<b>Jobs</b>"),
                self.jobs,
                self.message,
            ]
        )
        self.refresh()
        if live and self.worker_id is not None:
            self._refresher = Refresher(self._refresh_async, self._show_error)
            self.subscription = self.client.events(
                f"provider:{self.worker_id}", "wallet", on_event=self._on_event
            )

    # ------------------------------------------------------------------ data

    def refresh(self) -> None:
        """Ask the market for everything the dashboard shows (blocking)."""
        try:
            earnings = self.client.earnings(worker_id=self.worker_id)
            self._show_earnings(earnings)
            if self.worker_id is None:
                self.status.value = "<i>No GPU listed yet: share one with %qubix share.</i>"
                return
            self._show_status(self.client.provider(self.worker_id))
            history = self.client.metrics_history(self.worker_id)
            with self._lock:
                self.samples = list(history.metrics)[-MAX_SAMPLES:]
            self._draw_metrics()
            self._show_jobs(self.client.transactions(type="EARNING", limit=20).items)
        except MarketError as exc:
            self._show_error(exc)

    async def _refresh_async(self) -> None:
        aio = self.client.aio
        self._show_earnings(await aio.earnings(worker_id=self.worker_id))
        if self.worker_id is not None:
            self._show_status(await aio.provider(self.worker_id))
            self._show_jobs((await aio.transactions(type="EARNING", limit=20)).items)

    def _on_event(self, event: Any) -> None:
        if event.type == "GPU_METRICS_UPDATE" and isinstance(event.data, dict):
            usage = event.data.get("usage") or {}
            with self._lock:
                self.samples = [*self.samples, _sample(usage, event.data.get("receivedAt"))]
                self.samples = self.samples[-MAX_SAMPLES:]
            self._draw_metrics()
        elif event.type != "error":
            self._refresher.trigger()

    # ------------------------------------------------------------------ drawing

    def _show_earnings(self, earnings: Any) -> None:
        for key, label in self.earnings.items():
            label.value = f"{getattr(earnings, key)} QU"
        with self.earnings_bars.hold_sync():
            self.earnings_bars.x = [d.date for d in earnings.history]
            self.earnings_bars.y = [d.amount for d in earnings.history]

    def _show_status(self, offer: Any) -> None:
        state = "offline" if not offer.is_online else ("online" if offer.is_available else "busy")
        self.status.value = (
            f"<b>{offer.name or offer.worker_id}</b> — {offer.gpu_model or 'CPU'} at "
            f"{offer.price_per_hour} QU/h — <b>{state}</b> — {offer.total_jobs} jobs"
        )
        self.state = state

    def _draw_metrics(self) -> None:
        with self._lock:
            samples = list(self.samples)
        times = [_field(s, "timestamp") for s in samples]
        for field, line in self.charts.items():
            points = [(t, _field(s, field)) for t, s in zip(times, samples, strict=True)]
            points = [(t, v) for t, v in points if t is not None and v is not None]
            with line.hold_sync():
                line.x = _times([t for t, _ in points])
                line.y = [float(v) for _, v in points]

    def _show_jobs(self, earnings: list[Any]) -> None:
        self.jobs.value = html_table(
            ("Job", "Earned", "When"),
            [(t.job_id or "—", f"{t.amount} QU", t.created_at or "") for t in earnings],
            "No job has paid this provider yet.",
        )

    def _show_error(self, exc: BaseException) -> None:
        self.message.value = error_html(
            f"The market did not answer: {exc}", "refresh() asks again once it is back."
        )

    def close(self) -> None:
        if self.subscription is not None:
            close_subscription(self.client, self.subscription)
            self.subscription = None
        super().close()


def _sample(usage: dict[str, Any], received_at: Any) -> dict[str, Any]:
    """A GPU_METRICS_UPDATE's usage as a history sample (the market's time when it has one)."""
    import datetime as dt

    stamp = usage.get("timestamp") or received_at
    when = (
        dt.datetime.fromisoformat(stamp.replace("Z", "+00:00")) if isinstance(stamp, str) else None
    )
    return {
        "timestamp": when or dt.datetime.now(dt.UTC),
        "cpu_percent": usage.get("cpuPercent"),
        "gpu_percent": usage.get("gpuPercent"),
        "gpu_temp": usage.get("gpuTemp"),
        "gpu_mem_used": usage.get("gpuMemUsedMb"),
    }


def _field(sample: Any, name: str) -> Any:
    return sample.get(name) if isinstance(sample, dict) else getattr(sample, name, None)


def _times(stamps: list[Any]) -> Any:
    """bqplot's date scale takes naive datetime64; the market's times are aware UTC."""
    import datetime as dt

    import numpy as np

    naive = [
        t.astimezone(dt.UTC).replace(tzinfo=None) if t.tzinfo is not None else t for t in stamps
    ]
    return np.array(naive, dtype="datetime64[ms]")
