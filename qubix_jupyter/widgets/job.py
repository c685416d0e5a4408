"""JobWidget: one job's state, progress, cost so far and logs, with a cancel button."""

from __future__ import annotations

import contextlib
import datetime as dt
import queue
import threading
import time
from typing import Any

import ipywidgets as widgets

from ..client import MarketClient, MarketError
from ..client.models import JobInfo
from ._live import Refresher, close_subscription, error_html

#: How long ``wait`` goes between two questions to the market when no event comes (seconds).
POLL_SECONDS = 1.0


def cost_so_far(info: JobInfo, now: dt.datetime | None = None) -> int:
    """QU: the settled cost once the job ended, else what its running time has cost so far."""
    if info.actual_cost is not None:
        return info.actual_cost
    if info.started_at is None or info.price_per_hour is None:
        return 0
    now = now or dt.datetime.now(dt.UTC)
    started = info.started_at
    if started.tzinfo is None:
        started = started.replace(tzinfo=dt.UTC)
    seconds = max(0.0, (now - started).total_seconds())
    return min(info.estimated_cost, int(seconds * info.price_per_hour // 3600))


def job_logs(info: JobInfo) -> str:
    """What the job printed (a ``cell`` job's stdout and stderr), or its error."""
    result = info.result if isinstance(info.result, dict) else {}
    text = "".join(str(result.get(k) or "") for k in ("stdout", "stderr"))
    return text or (info.error or "")


class JobWidget(widgets.VBox):
    """A job on the market as it goes: ``state``, ``progress_bar``, ``cost``, ``logs``,
    ``cancel_button``. Live from its ``job:{id}`` channel (``live=True``) or driven by
    :meth:`wait`, which refreshes it from the calling thread until the job ends."""

    def __init__(self, client: MarketClient, job: JobInfo | str, *, live: bool = True) -> None:
        self.client = client
        self.info = job if isinstance(job, JobInfo) else client.job(job)
        self.job_id = self.info.id
        self.title = widgets.HTML(f"<b>QUBIX job</b> <code>{self.job_id}</code>")
        self.state = widgets.Label()
        self.progress_bar = widgets.IntProgress(value=0, min=0, max=100, description="0 %")
        self.cost = widgets.Label()
        self.logs = widgets.Textarea(
            value="", disabled=True, layout=widgets.Layout(width="100%", height="8em")
        )
        self.message = widgets.HTML()
        self.cancel_button = widgets.Button(description="Cancel", button_style="danger")
        self.cancel_button.on_click(lambda _b: self.cancel())
        self._lock = threading.Lock()
        super().__init__(
            [
                self.title,
                widgets.HBox([self.state, self.progress_bar, self.cost, self.cancel_button]),
                self.logs,
                self.message,
            ]
        )
        self.update(self.info)
        self.subscription: Any = None
        if live and not self.info.terminal:
            self._refresher = Refresher(self._refresh_async, self._show_error)
            self.subscription = client.events(
                f"job:{self.job_id}", on_event=lambda _e: self._refresher.trigger()
            )

    def update(self, info: JobInfo) -> None:
        with self._lock:
            self.info = info
            self.state.value = info.status
            self.progress_bar.value = max(0, min(100, info.progress))
            self.progress_bar.description = f"{self.progress_bar.value} %"
            if info.status == "COMPLETED":
                self.progress_bar.bar_style = "success"
            elif info.terminal:
                self.progress_bar.bar_style = "danger"
            price = f" at {info.price_per_hour} QU/h" if info.price_per_hour else ""
            self.cost.value = f"cost {cost_so_far(info)} QU of {info.estimated_cost} QU{price}"
            self.logs.value = job_logs(info)
            self.cancel_button.disabled = info.terminal
            if info.terminal and self.subscription is not None:
                subscription, self.subscription = self.subscription, None
                close_subscription(self.client, subscription)

    def refresh(self) -> JobInfo:
        self.update(self.client.job(self.job_id))
        return self.info

    async def _refresh_async(self) -> None:
        self.update(await self.client.aio.job(self.job_id))

    def _show_error(self, exc: BaseException) -> None:
        self.message.value = error_html(
            f"The market did not answer: {exc}", "The job goes on; refresh() asks again."
        )

    def cancel(self) -> JobInfo:
        """Cancel the job: the unused escrow comes back to the wallet."""
        try:
            answer = self.client.cancel_job(self.job_id)
        except MarketError as exc:
            self.message.value = error_html(
                f"Could not cancel: {exc.message}", "It may have just ended; see its state."
            )
            return self.refresh()
        if answer.job is not None:
            self.update(answer.job)
        else:
            self.refresh()
        return self.info

    def wait(self, timeout: float | None = None) -> JobInfo:
        """Block until the job ends (or ``timeout`` s pass), updating the widget meanwhile."""
        events: queue.Queue[Any] = queue.Queue()
        deadline = None if timeout is None else time.monotonic() + timeout
        with self.client.events(f"job:{self.job_id}", on_event=events.put):
            while not self.refresh().terminal:
                if deadline is not None and time.monotonic() >= deadline:
                    break
                with contextlib.suppress(queue.Empty):
                    events.get(timeout=POLL_SECONDS)
        return self.info

    def close(self) -> None:
        if self.subscription is not None:
            close_subscription(self.client, self.subscription)
            self.subscription = None
        super().close()
