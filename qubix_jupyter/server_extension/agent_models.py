"""Bodies and answers of the agent routes (the JupyterLab panel's ``agent/*``)."""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from pydantic import Field

from .auth import PROVISION_TTL_MAX, PROVISION_TTL_MIN
from .marketplace_models import Location, Name, Price
from .models import QU, Request, Response
from .provision_models import ProvisionTokenOut

SharingStateName = Literal[
    "idle", "detecting", "registering", "starting", "online", "stopping", "error"
]


class ShareRequest(Request):
    price: Price = Field(description="QU per GPU-hour asked for this machine's offer")
    name: Name | None = Field(default=None, description="the offer's name in the marketplace")
    location: Location | None = Field(default=None, description='where it runs, e.g. "EU-West"')


class NativeGPU(Response):
    type: Literal["native"]
    index: int
    vendor: str
    model: str
    vram: float = Field(description="GB")
    driver: str | None
    cudaCapability: str | None
    uuid: str | None


class DetectResponse(Response):
    source: Literal["nvml", "nvidia-smi", "none"] = Field(
        description="where the answer came from: NVML, nvidia-smi, or nothing found"
    )
    gpus: list[NativeGPU]
    count: int
    cpuOnly: bool = Field(description="no GPU: this machine shares its CPU, clearly labelled")
    label: str
    notes: list[str] = Field(description="why a probe found nothing (no driver, no device…)")


class SharedDevice(Response):
    workerId: str
    gpu: NativeGPU | None
    pid: int | None
    running: bool
    exitCode: int | None


class AgentStatus(Response):
    state: SharingStateName
    marketUrl: str = Field(description="the market this agent shares with")
    error: str | None = Field(description="what went wrong, in the state error")
    nextStep: str | None = Field(description="what to do about it")
    workerId: str | None = Field(description="the first shared device's provider")
    provider: dict[str, Any] | None = Field(
        description="the market's listing of that provider (GET providers/{workerId}), online"
    )
    earningsToday: QU | None = Field(description="what the provider earned since 00:00 UTC")
    devices: list[SharedDevice]


class MarketSummary(Response):
    marketUrl: str
    listedOffers: int
    onlineOffers: int
    minPrice: QU | None = Field(description="the cheapest online offer, QU per GPU-hour")
    maxPrice: QU | None = Field(description="the dearest online offer, QU per GPU-hour")


class InstallCommandRequest(Request):
    price: Price = Field(description="QU per GPU-hour the other machine asks for its offer")
    ttlSeconds: int | None = Field(
        default=None,
        ge=PROVISION_TTL_MIN,
        le=PROVISION_TTL_MAX,
        description="seconds the command's token stays valid (default a day, at most 30 days)",
    )


class InstallCommand(Response):
    command: str = Field(
        description="run it on the machine to share: pip install qubix-jupyter && qubix provide "
        "--market URL --token qxp_… --price P"
    )
    marketUrl: str = Field(description="the market the command registers with")
    price: QU
    tokenId: str = Field(description="the provisioning token's id, to revoke it")
    expiresAt: dt.datetime = Field(description="when the token stops registering")


class RevokedInstallToken(Response):
    provisionToken: ProvisionTokenOut
