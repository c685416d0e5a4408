"""Sharing this machine's GPUs (or its CPU) with a market: ``qubix provide`` and the agent.

:class:`ProviderLauncher` signs in with the user's wallet seed (the seed never leaves this
machine: only a signature over the market's challenge does), or takes a provisioning token the
user created for this machine (``qxp_…``: it can register providers and nothing else, so neither
the seed nor the user's market token need reach it), registers one provider per GPU (or
one CPU provider) through ``providers/quick-register`` under a ``workerId`` that stays the same
across restarts of this machine, asks the market where its scheduler is (``GET scheduler``, with
the worker token), and starts one worker process per provider: ``dask cuda worker`` for a GPU
when dask-cuda is installed, ``dask worker`` otherwise, named by its ``workerId``, with one
``GPU`` resource on GPU workers and the QubixWorkerPlugin preloaded. :meth:`stop` drains them:
each worker closes gracefully (its plugin reports the provider offline) before it is killed.

The JupyterLab agent drives the same class (start/status/stop) that the CLI does.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..market.credentials import PROVISION_TOKEN_PREFIX
from ..market.errors import QubixError
from ..settlement.keys import KeyPair
from ..settlement.wallet import sign_challenge
from .gpu import GPUInfo, HardwareReport, detect_gpus

PRELOAD = "qubix_jupyter.dask_provider.worker_plugin"
_MACHINE_ID_FILES = ("/etc/machine-id", "/var/lib/dbus/machine-id")


class MarketRefused(QubixError):
    """The market answered an error to the launcher (sign-in, registration, scheduler)."""

    code = "market_refused"
    status = 502


class ProvisionTokenRefused(MarketRefused):
    """The market refused the provisioning token: unknown, expired or revoked."""

    code = "provision_token_refused"


#: Variables of this process a worker does not inherit: its device's and the sign-in secrets.
_NOT_FOR_WORKERS = frozenset(
    {"QUBIX_GPU_INDEX", "QUBIX_SEED", "QUBIX_PROVISION_TOKEN", "QUBIX_TOKEN"}
)


def machine_id() -> str:
    """This machine's stable identity: systemd's machine-id, else the MAC-derived node id."""
    for path in _MACHINE_ID_FILES:
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text:
            return text
    return f"{uuid.getnode():012x}"


def worker_id_for(machine: str, gpu: GPUInfo | None) -> str:
    """The same ``workerId`` every time for this machine's GPU (by UUID, else index) or CPU."""
    device = "cpu" if gpu is None else (gpu.uuid or f"index-{gpu.index}")
    digest = hashlib.sha256(f"{machine}\0{device}".encode()).hexdigest()[:16]
    return f"qx-{digest}" if gpu is None else f"qx-{digest}-gpu{gpu.index}"


@dataclasses.dataclass(frozen=True, slots=True)
class ProvideConfig:
    """What to share and with whom. Exactly one of ``seed`` and ``provision_token`` signs in."""

    market_url: str  # the market's base URL, e.g. "https://market.example/" (its base_url)
    seed: str | None = None  # the wallet seed, kept in this process
    price_per_hour: int = dataclasses.field(kw_only=True)  # QU per GPU-hour (CPU providers too)
    name: str | None = None
    location: str | None = None
    gpus: Sequence[int] | None = None  # device indexes to share; None: all of them
    heartbeat_interval_s: float = 5.0
    nthreads: int = 1  # one job at a time per GPU, the market's unit of sale
    #: Override of the scheduler address the market announces (a test, or a private network).
    scheduler_address: str | None = None
    #: What the workerIds derive from (default: this machine's id); providers that share one
    #: machine under different wallets each give their own.
    machine: str | None = None
    #: A provisioning token (``qxp_…``) from the user's QUBIX panel or ``POST
    #: providers/provision-tokens``: registers for its owner without the seed.
    provision_token: str | None = None

    def __post_init__(self) -> None:
        if (self.seed is None) == (self.provision_token is None):
            raise ValueError(
                "give the wallet's seed or a provisioning token (qxp_…), exactly one of them"
            )
        token = self.provision_token
        if token is not None and (not token.startswith(PROVISION_TOKEN_PREFIX) or " " in token):
            raise ValueError(
                "that is not a provisioning token: they start with qxp_ "
                "(create one in the QUBIX panel of JupyterLab)"
            )


@dataclasses.dataclass(slots=True)
class SharedDevice:
    worker_id: str
    gpu: GPUInfo | None
    worker_token: str
    process: subprocess.Popen[bytes] | None = None

    def to_json(self) -> dict[str, Any]:
        process = self.process
        return {
            "workerId": self.worker_id,
            "gpu": self.gpu.to_json() if self.gpu is not None else None,
            "pid": process.pid if process is not None else None,
            "running": process is not None and process.poll() is None,
            "exitCode": process.poll() if process is not None else None,
        }


def _gpu_body(gpu: GPUInfo | None) -> dict[str, Any]:
    if gpu is None:
        return {"type": "native", "count": 0}
    return {
        "type": "native",
        "vendor": gpu.vendor,
        "model": gpu.model,
        "vram": gpu.vram_gb,
        "count": 1,
        "driver": gpu.driver,
        "cudaCapability": gpu.cuda_capability,
    }


class ProviderLauncher:
    def __init__(
        self,
        config: ProvideConfig,
        *,
        detect: Callable[..., HardwareReport] = detect_gpus,
        http: Any = None,
        python: str = sys.executable,
    ) -> None:
        self.config = config
        self._detect = detect
        self._http = http
        self._owns_http = http is None
        self._python = python
        self.devices: list[SharedDevice] = []
        self.scheduler_address: str | None = None
        self.user_token: str | None = None
        self._identity: str | None = None

    # ---------------------------------------------------------------- the market

    def _client(self) -> Any:
        if self._http is None:
            import httpx

            self._http = httpx.Client(base_url=self.config.market_url.rstrip("/") + "/qubix/api/")
        return self._http

    def _call(self, method: str, path: str, *, token: str | None = None, body: Any = None) -> Any:
        import httpx

        headers = {"Authorization": f"Bearer {token}"} if token else {}
        try:
            response = self._client().request(method, path, json=body, headers=headers)
        except httpx.HTTPError as exc:
            raise MarketRefused(
                f"the market at {self.config.market_url} did not answer: {exc}"
            ) from exc
        if response.status_code >= 300:
            try:
                error = response.json()["error"]
                text = f"{error['code']}: {error['message']}"
            except (ValueError, KeyError, TypeError):
                text = response.text[:300]
            raise MarketRefused(
                f"{method} {path}: HTTP {response.status_code} {text}",
                httpStatus=response.status_code,
                reason=text,
            )
        return response.json()

    def sign_in(self) -> str | None:
        """Sign in with the seed: the wallet's identity. With a provisioning token there is
        nothing to sign: the token registers for its owner (None until ``register``)."""
        if self.config.provision_token is not None:
            return self._identity
        assert self.config.seed is not None
        identity = KeyPair.from_seed(self.config.seed).identity
        challenge = self._call("POST", "auth/challenge", body={"qubicAddress": identity})
        signed = sign_challenge(self.config.seed, challenge["challenge"])
        connected = self._call(
            "POST",
            "wallet/connect",
            body={
                "qubicAddress": identity,
                "challenge": challenge["challenge"],
                "signature": signed["signature"],
            },
        )
        self.user_token = connected["token"]
        self._identity = identity
        return identity

    def _register_one(self, body: dict[str, Any]) -> Any:
        token = self.config.provision_token
        if token is None:
            return self._call("POST", "providers/quick-register", token=self.user_token, body=body)
        try:
            return self._call("POST", "providers/quick-register", token=token, body=body)
        except MarketRefused as exc:
            if exc.details.get("httpStatus") != 401:
                raise
            raise ProvisionTokenRefused(
                f"the provisioning token was refused: {exc.details['reason']}; "
                "create a new one in the QUBIX panel"
            ) from exc

    def register(self) -> list[SharedDevice]:
        """quick-register each shared GPU (or the CPU); a worker token for each."""
        if self.user_token is None and self.config.provision_token is None:
            self.sign_in()
        report = self._detect(only=self.config.gpus)
        machine = self.config.machine or machine_id()
        import psutil

        devices: list[GPUInfo | None] = list(report.gpus) or [None]
        self.devices = []
        for gpu in devices:
            worker_id = worker_id_for(machine, gpu)
            body: dict[str, Any] = {
                "type": "native",
                "gpu": _gpu_body(gpu),
                "workerId": worker_id,
                "pricePerHour": self.config.price_per_hour,
                "cpuCores": os.cpu_count() or 1,
                "ramTotal": round(psutil.virtual_memory().total / 2**30, 1),
            }
            if self.config.name:
                suffix = f" #{gpu.index}" if gpu is not None and len(devices) > 1 else ""
                body["name"] = self.config.name + suffix
            if self.config.location:
                body["location"] = self.config.location
            if self._identity is not None:  # with a token: the token's owner, said by the market
                body["qubicAddress"] = self._identity
            answer = self._register_one(body)
            if self._identity is None:
                self._identity = answer["provider"]["qubicAddress"]
            self.devices.append(SharedDevice(worker_id, gpu, answer["workerToken"]))
        return self.devices

    def find_scheduler(self) -> str:
        if self.config.scheduler_address:
            self.scheduler_address = self.config.scheduler_address
        else:
            token = self.devices[0].worker_token
            self.scheduler_address = self._call("GET", "scheduler", token=token)["address"]
        return self.scheduler_address

    # ---------------------------------------------------------------- the workers

    def worker_command(self, device: SharedDevice) -> list[str]:
        assert self.scheduler_address is not None
        cuda = device.gpu is not None and importlib.util.find_spec("dask_cuda") is not None
        module = "dask_cuda.cli" if cuda else "distributed.cli.dask_worker"
        command = [self._python, "-m", module]
        if cuda:
            command.append("worker")  # `dask cuda worker`
        command += [
            self.scheduler_address,
            "--name",
            device.worker_id,
            "--nthreads",
            str(self.config.nthreads),
            "--preload",
            PRELOAD,
        ]
        if device.gpu is not None:
            command += ["--resources", "GPU=1"]
        return command

    def worker_env(self, device: SharedDevice) -> dict[str, str]:
        # Consumers' code runs under the worker: it gets none of the credentials that signed
        # this machine in, only its own worker token.
        env = {k: v for k, v in os.environ.items() if k not in _NOT_FOR_WORKERS}
        env.update(
            {
                # The token travels in the environment, never on a command line others can read.
                "QUBIX_WORKER_TOKEN": device.worker_token,
                "QUBIX_MARKET_URL": self.config.market_url,
                "QUBIX_HEARTBEAT_INTERVAL_S": str(self.config.heartbeat_interval_s),
                # A job runs in a child process of the worker; a nanny's worker is daemonic by
                # default, and a daemonic process may not have children.
                "DASK_DISTRIBUTED__WORKER__DAEMON": "False",
            }
        )
        if device.gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = device.gpu.uuid or str(device.gpu.index)
            env["QUBIX_GPU_INDEX"] = str(device.gpu.index)
        return env

    def start(self) -> list[SharedDevice]:
        """Sign in, register, find the scheduler and start the workers; returns the devices."""
        if self.running:
            raise RuntimeError("the provider is already running; stop it first")
        self.register()
        self.find_scheduler()
        return self.start_workers()

    def start_workers(self) -> list[SharedDevice]:
        """One worker process per registered device (after ``register`` and ``find_scheduler``)."""
        for device in self.devices:
            device.process = subprocess.Popen(
                self.worker_command(device), env=self.worker_env(device)
            )
        return self.devices

    @property
    def running(self) -> bool:
        return any(d.process is not None and d.process.poll() is None for d in self.devices)

    def status(self) -> dict[str, Any]:
        return {
            "market": self.config.market_url,
            "scheduler": self.scheduler_address,
            "running": self.running,
            "devices": [d.to_json() for d in self.devices],
        }

    def stop(self, timeout_s: float = 30.0) -> None:
        """Drain: SIGTERM closes each worker gracefully; one still there at the end is killed."""
        live = [d.process for d in self.devices if d.process is not None]
        for process in live:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in live:
            try:
                process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.close()

    def close(self) -> None:
        """Close the connection to the market (``stop`` does it too)."""
        if self._http is not None and self._owns_http:
            self._http.close()
            self._http = None

    def wait(self) -> int:
        """Block until every worker has exited (``qubix provide`` in the foreground)."""
        codes = [d.process.wait() for d in self.devices if d.process is not None]
        return max(codes, default=0)
