"""Bodies of the provider liveness endpoints (heartbeat, metrics history), in the seed's
camelCase."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from .marketplace_models import WorkerId
from .models import Request, Response

Percent = Annotated[float, Field(ge=0, le=100, allow_inf_nan=False)]
Amount = Annotated[float, Field(ge=0, le=1e12, allow_inf_nan=False)]

#: Most samples one metrics request answers.
MAX_METRICS_PAGE = 1000


class ResourceUsage(Request):
    """The seed's ResourceUsage: what the worker measured when it sent the heartbeat."""

    cpuPercent: Percent
    ramPercent: Percent
    ramUsedGb: Amount
    ramTotalGb: Amount
    gpuPercent: Percent | None = None
    gpuTemp: Annotated[float, Field(ge=-100, le=200, allow_inf_nan=False)] | None = Field(
        default=None, description="°C"
    )
    gpuMemUsedMb: Amount | None = None
    gpuMemTotalMb: Amount | None = None
    # ISO 8601 text is how JSON carries a time, so this field converts it.
    timestamp: dt.datetime = Field(strict=False, description="when the worker measured it")


class HeartbeatRequest(Request):
    workerId: WorkerId | None = Field(
        default=None, description="if given, the path's workerId (the seed's body repeats it)"
    )
    usage: ResourceUsage
    status: Literal["online", "offline", "busy"] = Field(
        description="online: takes jobs; busy: online, takes none; offline: going away"
    )
    currentJob: Annotated[str, Field(min_length=1, max_length=36)] | None = Field(
        default=None, description="the job the worker is running, if any"
    )


class PendingJob(Response):
    """A job assigned to this provider that its worker has not started yet."""

    id: str
    modelType: str = Field(description="the job kind: python, cell, benchmark, …")
    computeNeeded: float = Field(description="the job's time budget, hours")
    createdAt: dt.datetime


class HeartbeatResponse(Response):
    success: bool
    pendingJobs: list[PendingJob]


class MetricsQuery(BaseModel):
    """``GET providers/{workerId}/metrics``: a time window and how many samples, at most."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    since: dt.datetime | None = Field(default=None, description="ISO 8601, inclusive")
    until: dt.datetime | None = Field(default=None, description="ISO 8601, inclusive")
    limit: int = Field(
        default=100, ge=1, le=MAX_METRICS_PAGE, description="the newest this many samples"
    )


class MetricOut(Response):
    """One sample of the seed's ProviderMetric."""

    cpuPercent: float
    ramPercent: float
    gpuPercent: float | None
    gpuTemp: float | None
    gpuMemUsed: float | None = Field(description="MB")
    timestamp: dt.datetime = Field(description="when the market received it")


class MetricsHistory(Response):
    workerId: str
    metrics: list[MetricOut] = Field(description="oldest first, newest last")
