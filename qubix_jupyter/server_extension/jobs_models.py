"""Request, query and response bodies of the jobs endpoints (``jobs…``), in the seed's camelCase.

Requests forbid unknown fields and coerce nothing, like every request of the API (``models``).
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, RootModel

from ..db.models import Job
from ..market.jobs import MAX_COMPUTE_SECONDS, hours_of
from ..market.marketplace import DEFAULT_PAGE_SIZE, MAX_FILTER_VALUES, MAX_PAGE_SIZE
from ..market.money import SECONDS_PER_HOUR
from ..market.states import JobStatus
from .marketplace_models import GPUModel, Price, WorkerId
from .models import QU, QubicAddress, Request, Response

Status = Literal["PENDING", "ASSIGNED", "RUNNING", "COMPLETED", "FAILED", "CANCELLED"]
#: The most an error message from a worker may hold (characters).
MAX_ERROR_LENGTH = 20_000


def _timestamp(value: str) -> str:
    try:
        dt.datetime.fromisoformat(value)
    except ValueError:
        raise ValueError("an ISO 8601 date-time, e.g. 2026-01-01T12:00:00Z") from None
    return value


def _utc(moment: dt.datetime | None) -> dt.datetime | None:
    if moment is None:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=dt.UTC)


Timestamp = Annotated[str, Field(min_length=1, max_length=64), AfterValidator(_timestamp)]
JobKind = Annotated[
    str,
    Field(
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9_.:-]+$",
        description="the job kind: python, cell, benchmark, or one a plugin registers",
        examples=["python"],
    ),
]

# ---------------------------------------------------------------------- requests


class CreateJobRequest(Request):
    """``POST jobs/create``: the seed's body, plus the offer constraints a consumer may set."""

    modelType: JobKind
    computeNeeded: float = Field(
        gt=0,
        le=MAX_COMPUTE_SECONDS / SECONDS_PER_HOUR,
        allow_inf_nan=False,
        description="time budget in hours (rounded up to a whole second), at most 7 days",
        examples=[0.5],
    )
    inputData: Any = Field(default=None, description="the job's payload, as its kind reads it")
    maxPrice: Price
    qubicAddress: QubicAddress
    gpuModel: list[GPUModel] = Field(
        default_factory=list,
        max_length=MAX_FILTER_VALUES,
        description="any of these GPU models (ASCII case-insensitive); empty: any",
    )
    minVram: float | None = Field(
        default=None, ge=0, allow_inf_nan=False, description="GB per GPU, at least"
    )


class JobMetrics(Request):
    """What the worker measured (the seed's ``JobMetrics``); the market charges its own clock."""

    processingTimeSeconds: float = Field(ge=0, allow_inf_nan=False)
    cpuUsageAvg: float = Field(ge=0, allow_inf_nan=False)
    ramUsageAvg: float = Field(ge=0, allow_inf_nan=False)
    gpuUsageAvg: float | None = Field(default=None, ge=0, allow_inf_nan=False)


class ProgressRequest(Request):
    workerId: WorkerId
    progress: float = Field(
        allow_inf_nan=False, description="percent done; stored clamped to 0..100, never lower"
    )
    timestamp: Timestamp


class CompleteRequest(Request):
    workerId: WorkerId
    status: Literal["completed", "failed"]
    result: Any = None
    error: str | None = Field(default=None, max_length=MAX_ERROR_LENGTH)
    metrics: JobMetrics


class JobListQuery(BaseModel):
    """``GET jobs``: your jobs as a consumer, newest first, optionally of one status."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    status: Status | None = None
    offset: int = Field(default=0, ge=0, le=2**31 - 1)
    limit: int = Field(default=DEFAULT_PAGE_SIZE, ge=1, le=MAX_PAGE_SIZE)


#: The longest a ``GET jobs/{id}/result?wait=`` holds its answer back.
MAX_RESULT_WAIT_SECONDS = 60


def _wait(description: str) -> Any:
    """A ``wait`` query parameter: seconds, 0 to MAX_RESULT_WAIT_SECONDS."""
    return Field(
        default=0, ge=0, le=MAX_RESULT_WAIT_SECONDS, allow_inf_nan=False, description=description
    )


class CreateJobQuery(BaseModel):
    """``POST jobs/create``: ``wait`` seconds to hold the answer until the job has ended."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    wait: float = _wait(
        "seconds to hold the answer until the job ends (0: answer once it is created); the "
        "answer is the job as it ended, with its result, or as it stands once the wait is "
        "over. A retry under the same Idempotency-Key is answered at once, with the job as it "
        "was created"
    )


class ResultQuery(BaseModel):
    """``GET jobs/{id}/result``: ``wait`` seconds to wait for an unfinished job to end."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    wait: float = _wait(
        "seconds to hold the answer while the job is not finished (0: answer now); it comes "
        "the moment the job ends, or as 409 once the wait is over"
    )


# ---------------------------------------------------------------------- responses


class JobOut(Response):
    id: str
    userId: str
    providerId: str | None
    workerId: str | None
    modelType: str
    computeNeeded: float = Field(description="time budget in hours")
    status: Status
    progress: int = Field(ge=0, le=100)
    inputData: Any = Field(default=None, description="the payload: to its consumer and worker")
    result: Any = Field(default=None, description="in GET jobs/{jobId} to its consumer only")
    error: str | None = None
    estimatedCost: QU = Field(description="what the escrow holds at most: the budget's price")
    actualCost: QU | None = None
    maxPrice: QU
    pricePerHour: QU | None = Field(description="the provider's price, agreed at assignment")
    gpuModel: list[str]
    minVram: float | None
    createdAt: dt.datetime
    assignedAt: dt.datetime | None
    startedAt: dt.datetime | None
    completedAt: dt.datetime | None


class PendingJobs(RootModel[list[JobOut]]):
    """The seed's ``Job[]``: what the worker is to run, with each job's ``inputData``."""

    model_config = ConfigDict(frozen=True)


class CreateJobResponse(Response):
    success: bool
    job: JobOut
    estimatedCost: QU


class JobResponse(Response):
    success: bool
    job: JobOut


class JobPage(Response):
    items: list[JobOut]
    total: int
    offset: int
    limit: int


class ResultResponse(Response):
    jobId: str
    status: Status
    result: Any = None
    error: str | None = None


class ProgressResponse(Response):
    success: bool
    progress: int = Field(ge=0, le=100, description="the stored progress after this report")


class PaymentInfo(Response):
    cost: QU = Field(description="charged to the consumer")
    providerEarning: QU
    platformFee: QU
    refund: QU = Field(description="escrow given back to the consumer at the end")


class CompleteResponse(Response):
    success: bool
    payment: PaymentInfo


class CancelResponse(Response):
    success: bool
    job: JobOut
    payment: PaymentInfo


def job_out(
    job: Job, *, worker_id: str | None = None, with_result: bool = False, with_input: bool = False
) -> JobOut:
    constraints = job.constraints or {}
    return JobOut(
        id=job.id,
        userId=job.user_id,
        providerId=job.provider_id,
        workerId=worker_id,
        modelType=job.model_type,
        computeNeeded=hours_of(job.compute_seconds),
        status=JobStatus(job.status).value,
        progress=job.progress,
        inputData=job.input_data if with_input else None,
        result=job.result if with_result else None,
        error=job.error,
        estimatedCost=job.estimated_cost,
        actualCost=job.actual_cost,
        maxPrice=job.max_price,
        pricePerHour=job.price_per_hour,
        gpuModel=list(constraints.get("gpuModels") or []),
        minVram=constraints.get("minVram"),
        createdAt=_utc(job.created_at),  # type: ignore[arg-type]
        assignedAt=_utc(job.assigned_at),
        startedAt=_utc(job.started_at),
        completedAt=_utc(job.completed_at),
    )
