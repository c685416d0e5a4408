"""Request, query and response bodies of the marketplace endpoints (``providers…``), in the seed's
camelCase. Requests forbid unknown fields like every other request of the API (``models``).

The search query is a model too: query-string values arrive as strings, so it converts them
(``lax``), but it forbids unknown parameters and names each bad one in the 422's details.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from ..market.marketplace import (
    DEFAULT_PAGE_SIZE,
    MAX_FILTER_VALUES,
    MAX_GPU_MODEL_LENGTH,
    MAX_LOCATION_LENGTH,
    MAX_NAME_LENGTH,
    MAX_PAGE_SIZE,
    MAX_WORKER_ID_LENGTH,
)
from ..market.money import INT64_MAX
from .models import QU, QubicAddress, Request, Response

#: Paths under ``providers/`` that are endpoints, so never a worker's id.
RESERVED_WORKER_IDS = frozenset({"check-new", "quick-register", "provision-tokens"})


def _worker_id(value: str) -> str:
    if not value.isprintable() or "/" in value:
        raise ValueError("a workerId is printable and has no '/'")
    if value in RESERVED_WORKER_IDS:
        raise ValueError(f"{value!r} is a path of the API, not a workerId")
    return value


WorkerId = Annotated[
    str,
    Field(min_length=1, max_length=MAX_WORKER_ID_LENGTH, description="the Dask worker's name"),
    AfterValidator(_worker_id),
]


def _no_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError("must not contain NUL")
    return value


Text = AfterValidator(_no_nul)
Price = Annotated[
    int, Field(ge=0, le=INT64_MAX, description="integer QU per GPU-hour (Qubic has no decimals)")
]
Name = Annotated[str, Field(min_length=1, max_length=MAX_NAME_LENGTH), Text]
Location = Annotated[str, Field(min_length=1, max_length=MAX_LOCATION_LENGTH), Text]
ShortText = Annotated[str, Field(min_length=1, max_length=64), Text]
GPUModel = Annotated[str, Field(min_length=1, max_length=MAX_GPU_MODEL_LENGTH), Text]
Status = Literal["online", "offline", "busy"]

# ---------------------------------------------------------------------- search


class ProviderSearchQuery(BaseModel):
    """``GET providers``: the seed's ``MarketplaceFilters`` plus ``sortBy`` and a page.

    A list parameter may repeat (``gpuModel=A100&gpuModel=H100``) or hold a comma list
    (``gpuModel=A100,H100``); any other parameter may appear once.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    gpuModel: list[GPUModel] = Field(
        default_factory=list,
        max_length=MAX_FILTER_VALUES,
        description="any of these GPU models (ASCII case-insensitive, otherwise exact)",
    )
    minVram: float | None = Field(
        default=None, ge=0, allow_inf_nan=False, description="GB per GPU, at least"
    )
    maxPrice: Price | None = Field(default=None, description="QU per GPU-hour, at most")
    location: list[Location] = Field(
        default_factory=list, max_length=MAX_FILTER_VALUES, description="any of these, exactly"
    )
    availability: Literal["available", "all"] = Field(
        default="available",
        description="`available`: online and not busy; `all`: every listed offer",
    )
    sortBy: Literal["price", "performance", "availability"] = Field(
        default="price",
        description="`price`: cheapest first; `performance`: fastest measured first; "
        "`availability`: online, then busy, then offline. Ties: cheaper, then id",
    )
    offset: int = Field(default=0, ge=0, le=INT64_MAX)
    limit: int = Field(default=DEFAULT_PAGE_SIZE, ge=1, le=MAX_PAGE_SIZE)


# ---------------------------------------------------------------------- requests


class GPUInfo(Request):
    """The seed's ``GPUInfo`` plus ``count``, ``driver`` and ``cudaCapability`` (native)."""

    type: Literal["webgpu", "webgl", "native"]
    vendor: ShortText | None = None
    model: GPUModel | None = None
    renderer: GPUModel | None = None
    architecture: ShortText | None = None
    device: GPUModel | None = None
    description: GPUModel | None = None
    vram: float | None = Field(default=None, ge=0, description="GB per GPU")
    count: int | None = Field(default=None, ge=0, lt=2**31, description="GPUs of this model")
    driver: ShortText | None = None
    cudaCapability: Annotated[str, Field(min_length=1, max_length=16), Text] | None = None


class QuickRegisterRequest(Request):
    """The seed's quick-register body plus the offer's price and the host it runs on.

    ``qubicAddress`` must be the signed-in wallet's; left out, it is (a machine registering
    with a provisioning token need not know it). Registering a worker again returns the same
    provider; it refreshes the reported hardware, lists the offer again, and keeps the price,
    name and location already chosen (change those with PATCH)."""

    type: Literal["browser", "native"]
    gpu: GPUInfo
    workerId: WorkerId
    qubicAddress: QubicAddress | None = Field(
        default=None, description="your wallet's identity, the payee; left out: your own"
    )
    pricePerHour: Price
    name: Name | None = None
    location: Location | None = None
    cpuModel: Annotated[str, Field(min_length=1, max_length=128), Text] = "unknown"
    cpuCores: int = Field(default=1, ge=1, lt=2**31)
    ramTotal: float = Field(default=0.0, ge=0, description="GB")


class UpdateProviderRequest(Request):
    """What the owner may change about their offer; a field left out stays as it is."""

    pricePerHour: Price | None = None
    name: Name | None = None
    location: Location | None = None
    isAvailable: bool | None = Field(
        default=None, description="false: listed but taking no new jobs"
    )


# ---------------------------------------------------------------------- responses


class OfferOut(Response):
    """A provider as the marketplace shows it to anyone: its offer, never its owner's account."""

    id: str
    workerId: str
    name: str | None
    type: Literal["browser", "native"]
    qubicAddress: str = Field(description="the owner's public Qubic identity (payee)")
    gpuVendor: str | None
    gpuModel: str
    gpuVram: float = Field(description="GB per GPU")
    gpuCount: int
    cudaCapability: str | None
    cpuModel: str
    cpuCores: int
    ramTotal: float = Field(description="GB")
    location: str | None
    pricePerHour: QU = Field(description="QU per GPU-hour")
    performanceTflops: float | None = Field(description="measured by the benchmark job")
    status: Status = Field(description="offline; online and free; or busy")
    isOnline: bool
    isAvailable: bool
    totalJobs: int
    registeredAt: dt.datetime
    lastHeartbeat: dt.datetime | None


class ProviderOut(OfferOut):
    """The owner's view of their provider."""

    userId: str
    isListed: bool
    totalEarnings: QU
    uptime: int = Field(description="seconds online")


class OfferPage(Response):
    items: list[OfferOut]
    total: int = Field(
        description="offers matching the filters on all pages: exactly when totalIsExact, else at"
        " least this many (the count stops at 10 000, or one past the page asked for)"
    )
    totalIsExact: bool
    offset: int
    limit: int


class ProviderResponse(Response):
    success: bool
    provider: ProviderOut


class QuickRegisterResponse(ProviderResponse):
    created: bool = Field(description="false: this worker was registered before (same provider)")
    workerToken: str = Field(
        description="the worker's own bearer token for its heartbeats, job progress and results "
        "and to join the scheduler; shown once. Registering the worker again issues a new one "
        "and revokes this one."
    )


class CheckNewResponse(Response):
    newProvider: ProviderOut | None = Field(
        description="your most recently registered provider, or null if you have none"
    )
