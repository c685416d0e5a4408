"""Provider liveness endpoints: the worker's heartbeat, and the owner's metrics history.

A heartbeat is buffered (``liveness.HeartbeatBuffer``), not written: the request reads only the
provider's assigned jobs, in a read it shares with the heartbeats arriving at the same time.
Paths name a provider by its ``workerId``.
"""

from __future__ import annotations

from pydantic import BaseModel

from ..db import liveness as db
from ..market.liveness import ProviderStatus
from . import liveness_models as m
from .endpoints import Call, _utc, _utc_or_none
from .errors import Forbidden, ValidationFailed
from .liveness import Usage
from .marketplace_endpoints import _by_worker
from .route import Route


async def heartbeat(call: Call) -> BaseModel:
    worker = call.calling_worker
    worker_id = call.params["workerId"]
    if worker_id != worker.worker_id:
        async with call.services.sessionmaker() as session:
            await _by_worker(session, worker_id)  # 404 for a provider that does not exist
        raise Forbidden("this worker token is another provider's", workerId=worker_id)
    body: m.HeartbeatRequest = call.body
    if body.workerId is not None and body.workerId != worker_id:
        raise ValidationFailed(
            "workerId in the body must be the path's",
            errors=[{"loc": ["workerId"], "msg": "not the path's workerId", "type": "value"}],
        )
    u = body.usage
    call.services.liveness.record(
        worker.provider_id,
        worker_id,
        ProviderStatus(body.status),
        Usage(
            cpu_percent=u.cpuPercent,
            ram_percent=u.ramPercent,
            ram_used_gb=u.ramUsedGb,
            ram_total_gb=u.ramTotalGb,
            gpu_percent=u.gpuPercent,
            gpu_temp=u.gpuTemp,
            gpu_mem_used_mb=u.gpuMemUsedMb,
            gpu_mem_total_mb=u.gpuMemTotalMb,
            timestamp=_utc(u.timestamp),
        ),
        body.currentJob,
    )
    jobs = await call.services.liveness.assigned_jobs(worker.provider_id)
    return m.HeartbeatResponse(
        success=True,
        pendingJobs=[
            m.PendingJob(
                id=j.id,
                modelType=j.model_type,
                computeNeeded=j.compute_seconds / 3600,
                createdAt=_utc(j.created_at),
            )
            for j in jobs
        ],
    )


async def metrics(call: Call) -> BaseModel:
    q: m.MetricsQuery = call.query
    async with call.services.sessionmaker() as session:
        provider = await _by_worker(session, call.params["workerId"])
        if provider.user_id != call.caller.user.id:
            raise Forbidden("only the provider's owner may read its metrics")
        rows = await db.metrics_history(
            session,
            provider.id,
            since=_utc_or_none(q.since),
            until=_utc_or_none(q.until),
            limit=q.limit,
        )
    return m.MetricsHistory(
        workerId=provider.worker_id,
        metrics=[
            m.MetricOut(
                cpuPercent=r.cpu_percent,
                ramPercent=r.ram_percent,
                gpuPercent=r.gpu_percent,
                gpuTemp=r.gpu_temp,
                gpuMemUsed=r.gpu_mem_used,
                timestamp=_utc(r.timestamp),
            )
            for r in rows
        ],
    )


ROUTES: tuple[Route, ...] = (
    Route(
        "POST",
        r"providers/(?P<workerId>[^/]+)/heartbeat",
        heartbeat,
        "The worker's heartbeat: its usage and status; answers the jobs assigned to it",
        m.HeartbeatResponse,
        body=m.HeartbeatRequest,
        auth="worker",
        tag="providers",
        errors=(403, 404, 422),
    ),
    Route(
        "GET",
        r"providers/(?P<workerId>[^/]+)/metrics",
        metrics,
        "Your provider's metrics history (one sample per metrics_sample_seconds), newest last",
        m.MetricsHistory,
        query=m.MetricsQuery,
        tag="providers",
        errors=(403, 404, 422),
    ),
)
