"""ShareGPUPanel: the seed's QuickProvider in a notebook — detect this machine's GPUs, list them
at a price, start a Dask worker for each and follow them until the market sees them online.

States, one way: ``idle → detecting → registering → starting → online``; ``stop sharing`` goes
``online → stopping → idle``; any step that fails goes to ``error`` with what to do next, and
``share`` may be tried again from there.
"""

from __future__ import annotations

import html
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any

import ipywidgets as widgets

from ..client import MarketClient, MarketError
from ._live import client_or_default, error_html

STATES = ("idle", "detecting", "registering", "starting", "online", "stopping", "error")
#: The progress bar at each state (percent).
PROGRESS = {"idle": 0, "detecting": 20, "registering": 45, "starting": 70, "online": 100}
#: What may follow each state.
TRANSITIONS = {
    "idle": {"detecting"},
    "detecting": {"registering", "error"},
    "registering": {"starting", "error"},
    "starting": {"online", "error", "stopping"},
    "online": {"stopping"},
    "stopping": {"idle", "error"},
    "error": {"detecting", "stopping", "idle"},
}
#: How long the workers get to join the market's scheduler (seconds).
ONLINE_TIMEOUT_S = 120.0


class ShareGPUPanel(widgets.VBox):
    """Share this machine's GPUs (or its CPU) on the market, from a notebook.

    The wallet's seed signs the provider in (``seed``, else the client's own); it stays in this
    process. ``config`` takes further fields of ``ProvideConfig`` (``name``, ``location``,
    ``gpus``, ``heartbeat_interval_s``…). ``state`` is one of :data:`STATES`.
    """

    def __init__(
        self,
        client: MarketClient | None = None,
        *,
        seed: str | None = None,
        price_per_hour: int = 40,
        detect: Callable[..., Any] | None = None,
        **config: Any,
    ) -> None:
        self.client = client_or_default(client)
        self._seed = seed or self.client.aio._seed
        self._detect = detect
        self._config = config
        self.launcher: Any = None
        self.report: Any = None
        self.worker_ids: list[str] = []
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.state_label = widgets.HTML()
        self.progress_bar = widgets.IntProgress(value=0, min=0, max=100)
        self.gpus = widgets.HTML("<i>not detected yet</i>")
        self.price = widgets.BoundedIntText(
            value=price_per_hour,
            min=1,
            max=10**12,
            description="Price (QU/GPU-hour)",
            style={"description_width": "initial"},
        )
        self.share_button = widgets.Button(description="Share my GPU", button_style="success")
        self.stop_button = widgets.Button(description="Stop sharing", button_style="warning")
        self.message = widgets.HTML()
        self.share_button.on_click(lambda _b: self.share())
        self.stop_button.on_click(lambda _b: self.stop(block=False))
        self.state = "idle"
        super().__init__(
            [
                widgets.HTML("<h3>Share my GPU</h3>"),
                widgets.HBox([self.state_label, self.progress_bar]),
                self.gpus,
                self.price,
                widgets.HBox([self.share_button, self.stop_button]),
                self.message,
            ]
        )
        self._show()

    # ------------------------------------------------------------------ states

    def _move(self, state: str) -> None:
        with self._lock:
            if state != self.state and state not in TRANSITIONS[self.state]:
                raise RuntimeError(f"cannot go from {self.state} to {state}")
            self.state = state
        self._show()

    def _show(self) -> None:
        self.state_label.value = f"<b>{self.state}</b>"
        if self.state in PROGRESS:
            self.progress_bar.value = PROGRESS[self.state]
        self.progress_bar.bar_style = {"online": "success", "error": "danger"}.get(self.state, "")
        self.share_button.disabled = self.state not in ("idle", "error")
        self.stop_button.disabled = self.state not in ("starting", "online", "error")
        self.price.disabled = self.state not in ("idle", "error")

    def _fail(self, message: str, next_step: str) -> None:
        self.message.value = error_html(message, next_step)
        self._move("error")

    # ------------------------------------------------------------------ sharing

    def share(self, *, block: bool = False, timeout: float = ONLINE_TIMEOUT_S) -> None:
        """Detect, register, start the workers and wait for them online (in a thread unless
        ``block``)."""
        if self.state not in ("idle", "error"):
            return
        if self._seed is None:
            self.message.value = error_html(
                "Sharing needs your wallet.",
                "Connect with %qubix connect --seed-file PATH (or pass seed= to the panel).",
            )
            return
        self.message.value = ""
        self._move("detecting")
        if block:
            self._share(timeout)
        else:
            self._thread = threading.Thread(
                target=self._share, args=(timeout,), name="qubix-share", daemon=True
            )
            self._thread.start()

    def _share(self, timeout: float) -> None:
        from ..dask_provider.gpu import detect_gpus
        from ..dask_provider.launcher import MarketRefused, ProvideConfig, ProviderLauncher

        try:
            self.report = (self._detect or detect_gpus)()
        except Exception as exc:  # detection probes drivers: any failure is reported, not raised
            self._fail(f"GPU detection failed: {exc}", "Share the CPU, or check the driver.")
            return
        self._show_gpus(self.report)
        self._move("registering")
        config = ProvideConfig(
            market_url=self.client.url,
            seed=self._seed,
            price_per_hour=int(self.price.value),
            **self._config,
        )
        report = self.report
        self.launcher = ProviderLauncher(config, detect=lambda only=None: _only(report, only))
        try:
            devices = self.launcher.register()
            self.worker_ids = [d.worker_id for d in devices]
        except MarketRefused as exc:
            self._fail(str(exc), "Check that the market is running and your wallet is connected.")
            return
        self._move("starting")
        try:
            self.launcher.find_scheduler()
            for device in self.launcher.devices:
                device.process = subprocess.Popen(
                    self.launcher.worker_command(device), env=self.launcher.worker_env(device)
                )
        except (MarketRefused, OSError) as exc:
            self._fail(
                f"The worker could not start: {exc}",
                "The market may have no scheduler for providers; ask its operator.",
            )
            return
        self._wait_online(timeout)

    def _wait_online(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.state == "starting":
            if not self.launcher.running:
                self._fail(
                    "The worker stopped before joining the market.",
                    "Check that this machine reaches the market's scheduler (firewall, TLS).",
                )
                return
            try:
                online = all(self.client.provider(w).is_online for w in self.worker_ids)
            except MarketError:
                online = False
            if online:
                self._move("online")
                self.message.value = (
                    f"Listed as {', '.join(map(html.escape, self.worker_ids))} at "
                    f"{self.price.value} QU/GPU-hour."
                )
                return
            time.sleep(0.5)
        if self.state == "starting":
            self._fail(
                f"The worker did not come online within {timeout:g} s.",
                "Stop sharing and try again; check that the market's scheduler is reachable.",
            )

    def _show_gpus(self, report: Any) -> None:
        if report.gpus:
            rows = "".join(
                f"<li>{html.escape(g.vendor)} {html.escape(g.model)}, {g.vram_gb:g} GB</li>"
                for g in report.gpus
            )
            self.gpus.value = f"Detected ({html.escape(report.source)}):<ul>{rows}</ul>"
        else:
            self.gpus.value = "No GPU detected: this machine's CPU will be shared."

    def stop(self, *, block: bool = True) -> None:
        """Stop sharing: the workers drain and leave; the listing goes offline."""
        if self.state not in ("starting", "online", "error") or self.launcher is None:
            return
        self._move("stopping")

        def stop() -> None:
            try:
                self.launcher.stop()
            except OSError as exc:
                self._fail(f"Stopping failed: {exc}", "End the worker processes by hand.")
                return
            self.message.value = "Stopped sharing."
            self._move("idle")

        if block:
            stop()
        else:
            threading.Thread(target=stop, name="qubix-unshare", daemon=True).start()

    def wait(self, *states: str, timeout: float = ONLINE_TIMEOUT_S) -> str:
        """Block until the panel is in one of ``states`` (or the sharing thread ended)."""
        deadline = time.monotonic() + timeout
        while self.state not in states and time.monotonic() < deadline:
            time.sleep(0.1)
        return self.state


def _only(report: Any, only: Any) -> Any:
    if only is None:
        return report
    import dataclasses

    return dataclasses.replace(report, gpus=tuple(g for g in report.gpus if g.index in only))
