"""The jobs endpoints: a consumer's create / read / cancel / result, and a worker's poll,
progress and completion. Each makes one call to the job service (``jobs``)."""

from __future__ import annotations

from pydantic import BaseModel

from ..db.models import Job
from ..market.errors import InvalidState
from ..market.jobs import compute_seconds
from ..market.matching import JobConstraints
from ..market.states import TERMINAL_JOB_STATES, JobStatus
from . import jobs_models as m
from .endpoints import Call, Held
from .errors import Forbidden
from .jobs import JobService
from .route import Route


def _jobs(call: Call) -> JobService:
    return call.services.jobs


# ---------------------------------------------------------------------- the consumer's


async def create_job(call: Call) -> BaseModel | Held:
    body: m.CreateJobRequest = call.body
    wait = call.query.wait
    user = call.caller.user
    if body.qubicAddress != user.qubic_address:
        raise Forbidden(
            "qubicAddress must be your own wallet's identity", qubicAddress=body.qubicAddress
        )
    jobs = _jobs(call)
    # Watched from before it exists: a job that ends the moment it is created is seen ending.
    watch = jobs.watch(jobs.job_id_of(call.request_key)) if wait > 0 else None
    try:
        job, provider = await jobs.create(
            user.id,
            request_key=call.request_key,
            model_type=body.modelType,
            compute_seconds=compute_seconds(body.computeNeeded),
            constraints=JobConstraints(
                max_price=body.maxPrice, gpu_models=tuple(body.gpuModel), min_vram=body.minVram
            ),
            input_data=body.inputData,
            claim=call.claim,
        )
    except BaseException:
        if watch is not None:
            watch.close()
        raise
    created = _created(job, None if provider is None else provider.worker_id)
    if watch is None:
        return created

    async def ended() -> BaseModel:
        with watch:
            # A retried create of a job that has ended: that job, read now.
            timeout = 0 if job.status in TERMINAL_JOB_STATES else wait
            return _created(*await watch.end(timeout), with_result=True)

    return Held(created, ended, watch.close)


def _created(job: Job, worker_id: str | None, with_result: bool = False) -> BaseModel:
    out = m.job_out(job, worker_id=worker_id, with_result=with_result)
    return m.CreateJobResponse(success=True, job=out, estimatedCost=job.estimated_cost)


async def list_jobs(call: Call) -> BaseModel:
    q: m.JobListQuery = call.query
    status = None if q.status is None else JobStatus(q.status)
    items, total = await _jobs(call).of_consumer(
        call.caller.user.id, status=status, offset=q.offset, limit=q.limit
    )
    return m.JobPage(
        items=[m.job_out(job, worker_id=worker_id) for job, worker_id in items],
        total=total,
        offset=q.offset,
        limit=q.limit,
    )


async def get_job(call: Call) -> BaseModel:
    user_id = call.caller.user.id
    job, provider = await _jobs(call).visible_to(call.params["jobId"], user_id)
    worker_id = None if provider is None else provider.worker_id
    mine = job.user_id == user_id
    return m.job_out(job, worker_id=worker_id, with_result=mine, with_input=mine)


async def cancel_job(call: Call) -> BaseModel:
    job, payment = await _jobs(call).cancel(
        call.params["jobId"], call.caller.user.id, request_key=call.request_key
    )
    _, provider = await _jobs(call).get(job.id)
    out = m.job_out(job, worker_id=None if provider is None else provider.worker_id)
    return m.CancelResponse(success=True, job=out, payment=payment.out())


async def job_result(call: Call) -> BaseModel:
    q: m.ResultQuery = call.query
    job = await _jobs(call).finished(call.params["jobId"], call.caller.user.id, wait=q.wait)
    if job.status not in TERMINAL_JOB_STATES:
        raise InvalidState(
            f"job {job.id} is {job.status.value}: its result is not there yet",
            jobId=job.id,
            status=job.status.value,
        )
    return m.ResultResponse(
        jobId=job.id, status=job.status.value, result=job.result, error=job.error
    )


# ---------------------------------------------------------------------- the worker's


async def pending_jobs(call: Call) -> BaseModel:
    jobs = await _jobs(call).pending_for(call.calling_worker, call.params["workerId"])
    worker_id = call.calling_worker.worker_id
    return m.PendingJobs([m.job_out(job, worker_id=worker_id, with_input=True) for job in jobs])


async def report_progress(call: Call) -> BaseModel:
    body: m.ProgressRequest = call.body
    stored, _ = await _jobs(call).progress(
        call.params["jobId"], call.calling_worker, worker_id=body.workerId, reported=body.progress
    )
    return m.ProgressResponse(success=True, progress=stored)


async def complete_job(call: Call) -> BaseModel:
    body: m.CompleteRequest = call.body
    settled = await _jobs(call).complete(
        call.params["jobId"],
        call.calling_worker,
        worker_id=body.workerId,
        succeeded=body.status == "completed",
        result=body.result,
        error=body.error,
        request_key=call.request_key,
    )
    assert settled is not None  # None only for an answer of a given run (``step``)
    return m.CompleteResponse(success=True, payment=settled[1].out())


_JOB = r"jobs/(?P<jobId>[^/]+)"

ROUTES: tuple[Route, ...] = (
    # The fixed paths come before jobs/{jobId}, which would match them.
    Route(
        "POST",
        "jobs/create",
        create_job,
        "Submit a job: its escrow (maxPrice × computeNeeded) is locked and it is assigned to the "
        "cheapest matching offer at once, or within assignTimeout, or it fails unassignable. "
        "With wait=S the answer comes when the job ends (with its result), or after S seconds",
        m.CreateJobResponse,
        body=m.CreateJobRequest,
        query=m.CreateJobQuery,
        idempotent=True,
        claims_in_call=True,
        tag="jobs",
        errors=(402, 403, 409, 422),
    ),
    Route(
        "GET",
        "jobs",
        list_jobs,
        "Your jobs as a consumer, newest first, optionally of one status",
        m.JobPage,
        query=m.JobListQuery,
        tag="jobs",
        errors=(422,),
    ),
    Route(
        "GET",
        r"jobs/pending/(?P<workerId>[^/]+)",
        pending_jobs,
        "Jobs assigned to the calling worker and not started yet (worker token)",
        m.PendingJobs,
        auth="worker",
        tag="jobs",
        errors=(403,),
    ),
    Route(
        "GET",
        _JOB,
        get_job,
        "One job: yours, or one on your provider",
        m.JobOut,
        tag="jobs",
        errors=(403, 404),
    ),
    Route(
        "POST",
        _JOB + "/cancel",
        cancel_job,
        "Cancel your job: a pending one is refunded whole; a running one is charged the time "
        "it used and refunded the rest",
        m.CancelResponse,
        idempotent=True,
        tag="jobs",
        errors=(403, 404, 409),
    ),
    Route(
        "GET",
        _JOB + "/result",
        job_result,
        "Your finished job's result and error (409 while it is not finished; with wait=S the "
        "answer comes when the job ends, or as that 409 after S seconds)",
        m.ResultResponse,
        query=m.ResultQuery,
        tag="jobs",
        errors=(403, 404, 409, 422),
    ),
    Route(
        "POST",
        _JOB + "/progress",
        report_progress,
        "Report progress of a job on the calling worker (stored clamped, never lower)",
        m.ProgressResponse,
        body=m.ProgressRequest,
        auth="worker",
        tag="jobs",
        errors=(403, 404, 409, 422),
    ),
    Route(
        "POST",
        _JOB + "/complete",
        complete_job,
        "The calling worker finished a job: it is charged the time the market measured, the "
        "provider paid, the rest refunded",
        m.CompleteResponse,
        body=m.CompleteRequest,
        auth="worker",
        idempotent=True,
        tag="jobs",
        errors=(403, 404, 409, 413, 422),
    ),
)
