"""The local agent: this Jupyter shares its machine's GPU (or CPU) with a market, for the Lab.

The JupyterLab panel calls the agent routes with the Jupyter server's own credentials; the
agent signs in to the market with a wallet seed kept in a file on this machine, so neither the
seed nor the market token it gets ever reaches the browser. It drives the same
:class:`~..dask_provider.launcher.ProviderLauncher` as ``qubix provide``, one step at a time, so
that the panel can show where it is: idle → detecting → registering → starting → online, then
stopping → idle; a failure at any step is ``error`` with what went wrong and what to do next.

For a machine without an agent of its own (the Lab runs on a remote hub, the GPU is elsewhere),
the agent asks the market for a provisioning token for its wallet and answers the exact command
to run there (``pip install qubix-jupyter && qubix provide --market … --token qxp_… --price …``);
the token registers providers for this wallet and nothing else, and the agent can revoke it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import logging
import shlex
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..dask_provider.gpu import HardwareReport, detect_gpus
from ..dask_provider.launcher import MarketRefused, ProvideConfig, ProviderLauncher
from ..market.errors import QubixError
from ..settlement.wallet import generate_seed, read_seed_file, write_seed_file

log = logging.getLogger(__name__)

#: How long the provider may take to come online after its worker started.
ONLINE_TIMEOUT_S = 120.0
_POLL_S = 0.5


class SharingState(enum.StrEnum):
    IDLE = "idle"
    DETECTING = "detecting"
    REGISTERING = "registering"
    STARTING = "starting"
    ONLINE = "online"
    STOPPING = "stopping"
    ERROR = "error"


#: The sharing state machine: every move the agent makes is one of these.
TRANSITIONS: dict[SharingState, frozenset[SharingState]] = {
    SharingState.IDLE: frozenset({SharingState.DETECTING}),
    SharingState.DETECTING: frozenset(
        {SharingState.REGISTERING, SharingState.STOPPING, SharingState.ERROR}
    ),
    SharingState.REGISTERING: frozenset(
        {SharingState.STARTING, SharingState.STOPPING, SharingState.ERROR}
    ),
    SharingState.STARTING: frozenset(
        {SharingState.ONLINE, SharingState.STOPPING, SharingState.ERROR}
    ),
    SharingState.ONLINE: frozenset({SharingState.STOPPING, SharingState.ERROR}),
    SharingState.STOPPING: frozenset({SharingState.IDLE}),
    SharingState.ERROR: frozenset({SharingState.DETECTING, SharingState.STOPPING}),
}

#: States in which POST agent/share starts sharing.
_MAY_SHARE = frozenset({SharingState.IDLE, SharingState.ERROR})


class AlreadySharing(QubixError):
    code = "already_sharing"
    status = 409


class UnknownAgentToken(QubixError):
    code = "unknown_provision_token"
    status = 404


class AgentWalletUnusable(QubixError):
    """The agent's seed file cannot be read, so it cannot sign in to the market."""

    code = "agent_wallet_unusable"
    status = 409


def install_command(market_url: str, token: str, price: int) -> str:
    """What to run on a machine to share it with ``market_url`` under the token's wallet."""
    return (
        "pip install qubix-jupyter && qubix provide "
        f"--market {shlex.quote(market_url)} --token {shlex.quote(token)} --price {int(price)}"
    )


@dataclasses.dataclass(frozen=True, slots=True)
class ShareRequest:
    price_per_hour: int
    name: str | None = None
    location: str | None = None


class AgentService:
    """One sharing session at a time for this Jupyter server."""

    def __init__(
        self,
        *,
        market_url: Callable[[], str],
        seed_file: Path,
        detect: Callable[..., HardwareReport] = detect_gpus,
        heartbeat_interval_s: float = 5.0,
        market_is_this_server: Callable[[], bool] = lambda: False,
    ) -> None:
        self._market_url = market_url
        #: True when the market is this Jupyter server itself (reached over loopback): a command
        #: for another machine then names the server as the browser reached it.
        self.market_is_this_server = market_is_this_server
        self.seed_file = seed_file
        self.detect = detect
        self.heartbeat_interval_s = heartbeat_interval_s
        self.state = SharingState.IDLE
        self.error: str | None = None
        self.next_step: str | None = None
        self.launcher: ProviderLauncher | None = None
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    @property
    def market_url(self) -> str:
        return self._market_url()

    def _move(self, to: SharingState) -> None:
        if to not in TRANSITIONS[self.state]:
            raise RuntimeError(f"sharing cannot go from {self.state} to {to}")
        self.state = to

    def _seed(self) -> str:
        """The agent's wallet seed; a new wallet on first use (the file is owner-only)."""
        if not self.seed_file.exists():
            self.seed_file.parent.mkdir(parents=True, exist_ok=True)
            write_seed_file(self.seed_file, generate_seed())
            log.info("QUBIX agent: created the wallet seed file %s", self.seed_file)
        return read_seed_file(self.seed_file)

    # ------------------------------------------------------------------ detection

    async def detect_native(self) -> HardwareReport:
        return await asyncio.to_thread(self.detect)

    # ------------------------------------------------------------------ sharing

    async def share(self, request: ShareRequest) -> None:
        async with self._lock:
            if self.state not in _MAY_SHARE:
                raise AlreadySharing(
                    f"this machine is already sharing ({self.state}); stop sharing first",
                    state=str(self.state),
                )
            if self.launcher is not None:  # what an earlier failure left behind
                await asyncio.to_thread(self.launcher.stop, 5)
                self.launcher = None
            self.error = self.next_step = None
            self._move(SharingState.DETECTING)
            self._task = asyncio.create_task(self._share(request))

    async def _share(self, request: ShareRequest) -> None:
        step = "detecting the GPU"
        try:
            report = await self.detect_native()
            seed = await asyncio.to_thread(self._seed)
            launcher = ProviderLauncher(
                ProvideConfig(
                    market_url=self.market_url,
                    seed=seed,
                    price_per_hour=request.price_per_hour,
                    name=request.name,
                    location=request.location,
                    heartbeat_interval_s=self.heartbeat_interval_s,
                ),
                detect=lambda only=None: report,
            )
            self.launcher = launcher
            self._move(SharingState.REGISTERING)
            step = "registering with the market"
            await asyncio.to_thread(launcher.sign_in)
            await asyncio.to_thread(launcher.register)
            self._move(SharingState.STARTING)
            step = "starting the worker"
            await asyncio.to_thread(launcher.find_scheduler)
            await asyncio.to_thread(launcher.start_workers)
            await self._wait_online(launcher)
            self._move(SharingState.ONLINE)
        except asyncio.CancelledError:
            raise
        except MarketRefused as exc:
            self._fail(
                f"{step}: {exc.message}",
                f"check that the market at {self.market_url} is up and that this machine "
                "reaches it (the market URL is in Settings → QUBIX), then share again",
            )
        except (OSError, subprocess.SubprocessError) as exc:
            self._fail(
                f"{step}: {exc}",
                "check the Jupyter server's log for the worker's output, then share again",
            )
        except Exception as exc:  # the panel must say what happened, whatever it was
            self._fail(f"{step}: {exc}", "check the Jupyter server's log, then share again")

    async def _wait_online(self, launcher: ProviderLauncher) -> None:
        """Until the market lists every shared device online (its worker joined)."""
        async with asyncio.timeout(ONLINE_TIMEOUT_S):
            while True:
                if not launcher.running:
                    codes = [d.process.poll() for d in launcher.devices if d.process]
                    raise OSError(f"the worker exited (exit code {codes})")
                offers = await asyncio.to_thread(self._offers, launcher)
                if all(o.get("isOnline") for o in offers):
                    return
                await asyncio.sleep(_POLL_S)

    @staticmethod
    def _offers(launcher: ProviderLauncher) -> list[dict[str, Any]]:
        return [launcher._call("GET", f"providers/{d.worker_id}") for d in launcher.devices]

    def _fail(self, error: str, next_step: str) -> None:
        log.warning("QUBIX agent: %s", error)
        self.error = error
        self.next_step = next_step
        if self.state is not SharingState.ERROR:
            self._move(SharingState.ERROR)

    async def stop(self) -> None:
        """Stop sharing: the workers drain (their providers go offline) and the agent is idle."""
        async with self._lock:
            if self.state is SharingState.IDLE:
                return
            if self._task is not None and not self._task.done():
                self._task.cancel()
                await asyncio.gather(self._task, return_exceptions=True)
            self._move(SharingState.STOPPING)
            launcher, self.launcher = self.launcher, None
            try:
                if launcher is not None:
                    await asyncio.to_thread(launcher.stop)
            finally:
                self.error = self.next_step = None
                self._move(SharingState.IDLE)

    # ------------------------------------------------------------------ other machines

    def _wallet_seed(self) -> str:
        try:
            return self._seed()
        except (OSError, ValueError) as exc:
            raise AgentWalletUnusable(
                f"the agent cannot sign in to the market: its wallet seed file "
                f"{self.seed_file} is unusable ({exc})",
                nextStep=f"fix {self.seed_file} (55 lowercase letters, chmod 600) or set "
                "c.QubixExtension.agent_seed_file to your wallet's seed file, then try again",
            ) from exc

    def _market_session(self, work: Callable[[ProviderLauncher], Any]) -> Any:
        """Sign in with the agent's wallet, run ``work`` with the session, then revoke the
        session's token: the agent keeps no market token it does not use."""
        seed = self._wallet_seed()
        launcher = ProviderLauncher(
            ProvideConfig(market_url=self.market_url, seed=seed, price_per_hour=0)
        )
        next_step = (
            f"check that the market at {self.market_url} is up and that this server reaches "
            "it (c.QubixExtension.agent_market_url), then try again"
        )
        try:
            try:
                launcher.sign_in()
            except MarketRefused as exc:
                raise MarketRefused(
                    f"the agent could not sign in to the market at {self.market_url}: "
                    f"{exc.message}",
                    nextStep=next_step,
                ) from exc
            try:
                return work(launcher)
            except MarketRefused as exc:
                raise MarketRefused(exc.message, nextStep=next_step) from exc
            finally:
                try:
                    launcher._call("POST", "auth/revoke", token=launcher.user_token)
                except MarketRefused as exc:  # it expires on its own
                    log.info("QUBIX agent: could not revoke its market session: %s", exc)
        finally:
            launcher.close()

    async def provision_command(
        self, price: int, ttl_seconds: int | None = None, this_server: str | None = None
    ) -> dict[str, Any]:
        """A provisioning token for the agent's wallet and the command that uses it.

        ``this_server``: this Jupyter server's URL as the caller reached it; the command names
        it when the market is this server (the agent itself talks to it over loopback).
        """
        body = {} if ttl_seconds is None else {"ttlSeconds": ttl_seconds}

        def issue(launcher: ProviderLauncher) -> Any:
            return launcher._call(
                "POST", "providers/provision-tokens", token=launcher.user_token, body=body
            )

        issued = await asyncio.to_thread(self._market_session, issue)
        market = self.market_url
        if this_server and self.market_is_this_server():
            market = this_server
        record = issued["provisionToken"]
        return {
            "command": install_command(market, issued["token"], price),
            "marketUrl": market,
            "price": price,
            "tokenId": record["id"],
            "expiresAt": record["expiresAt"],
        }

    async def revoke_provision_token(self, token_id: str) -> dict[str, Any]:
        """Revoke a provisioning token of the agent's wallet; the market's answer."""
        from urllib.parse import quote

        def revoke(launcher: ProviderLauncher) -> Any:
            path = f"providers/provision-tokens/{quote(token_id, safe='')}"
            try:
                return launcher._call("DELETE", path, token=launcher.user_token)
            except MarketRefused as exc:
                if exc.details.get("httpStatus") == 404:
                    raise UnknownAgentToken(
                        f"this agent's wallet has no provisioning token {token_id!r}",
                        tokenId=token_id[:100],
                    ) from exc
                raise

        answer = await asyncio.to_thread(self._market_session, revoke)
        return answer["provisionToken"]  # type: ignore[no-any-return]

    # ------------------------------------------------------------------ status

    def _check_workers(self) -> None:
        launcher = self.launcher
        if self.state is SharingState.ONLINE and launcher is not None and not launcher.running:
            self._fail(
                "the worker stopped on its own",
                "check the Jupyter server's log for the worker's output, then share again",
            )

    async def status(self) -> dict[str, Any]:
        self._check_workers()
        launcher = self.launcher
        found: dict[str, Any] = {
            "state": str(self.state),
            "marketUrl": self.market_url,
            "error": self.error,
            "nextStep": self.next_step,
            "workerId": None,
            "provider": None,
            "earningsToday": None,
            "devices": [],
        }
        if launcher is None or not launcher.devices:
            return found
        found["workerId"] = launcher.devices[0].worker_id
        found["devices"] = [d.to_json() for d in launcher.devices]
        if self.state is SharingState.ONLINE:
            try:
                found["provider"] = (await asyncio.to_thread(self._offers, launcher))[0]
                earnings = await asyncio.to_thread(
                    launcher._call,
                    "GET",
                    f"earnings?days=1&workerId={launcher.devices[0].worker_id}",
                    token=launcher.user_token,
                )
                found["earningsToday"] = int(earnings["today"])
            except MarketRefused as exc:  # the status still answers; the panel shows why
                found["error"] = exc.message
        return found

    async def market_summary(self) -> dict[str, Any]:
        """Online offers and their price range, from the market's public listing."""
        import httpx

        url = self.market_url.rstrip("/") + "/qubix/api/providers"
        try:
            async with httpx.AsyncClient(timeout=10) as client:
                response = await client.get(url, params={"availability": "all", "limit": 200})
            response.raise_for_status()
            page = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise MarketRefused(f"the market at {self.market_url} did not answer: {exc}") from exc
        online = [o for o in page["items"] if o["isOnline"]]
        prices = [int(o["pricePerHour"]) for o in online]
        return {
            "marketUrl": self.market_url,
            "listedOffers": int(page["total"]),
            "onlineOffers": len(online),
            "minPrice": min(prices, default=None),
            "maxPrice": max(prices, default=None),
        }

    async def close(self) -> None:
        """The server stops: so does sharing (the workers drain)."""
        if self.state is not SharingState.IDLE:
            await self.stop()
