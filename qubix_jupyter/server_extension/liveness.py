"""The heartbeat buffer and the liveness monitor: provider heartbeats without a database write
each.

A heartbeat request only :meth:`HeartbeatBuffer.record`\\s the provider's latest heartbeat in
memory (a newer one replaces it). Every ``flush_interval`` seconds one transaction writes them
all: one UPDATE of ``providers`` executed for every row (``last_heartbeat``, ``is_online``,
``is_available``) and the INSERT of the ``provider_metrics`` samples that are due (one per
provider per ``metrics_sample_seconds``). ``current_job_id`` is the market's: a heartbeat never
writes it, and its ``status`` cannot make a provider holding a job available (the job's end
does). After the commit it broadcasts each provider's GPU_METRICS_UPDATE and every status
change (``provider_events``).

Every ``heartbeat_interval`` seconds the monitor takes offline each online provider silent for
more than ``missed_heartbeats × heartbeat_interval`` (whose fresh heartbeat is not waiting in the
buffer) and broadcasts it; about once a minute it deletes samples older than the retention.
Flushes and checks take turns (one lock), so a check never sees a heartbeat half written.

The clock is injectable (``clock``: an aware UTC ``datetime``), so the rules can be driven
through simulated time; the market's own periodic tasks run on the server's event loop from
:meth:`start` to :meth:`stop`, which flushes what is left.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
from collections.abc import Awaitable, Callable, Collection, Sequence
from typing import Any

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ..db import liveness as db
from ..db.models import Provider, utcnow
from ..market.events import EventType
from ..market.liveness import LivenessPolicy, ProviderStatus, flags_after, status_of
from . import periodic, provider_events
from .batching import SharedReads
from .events import EventHub
from .marketplace_endpoints import offer_out

log = logging.getLogger(__name__)

Clock = Callable[[], dt.datetime]

#: Seconds of the clock between two sweeps of the metrics history.
PRUNE_EVERY = 60.0


@dataclasses.dataclass(frozen=True, slots=True)
class Usage:
    """The seed's ResourceUsage, as the worker reported it."""

    cpu_percent: float
    ram_percent: float
    ram_used_gb: float
    ram_total_gb: float
    gpu_percent: float | None = None
    gpu_temp: float | None = None
    gpu_mem_used_mb: float | None = None
    gpu_mem_total_mb: float | None = None
    #: When the worker took the sample (its clock; liveness uses the market's).
    timestamp: dt.datetime | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "cpuPercent": self.cpu_percent,
            "ramPercent": self.ram_percent,
            "ramUsedGb": self.ram_used_gb,
            "ramTotalGb": self.ram_total_gb,
            "gpuPercent": self.gpu_percent,
            "gpuTemp": self.gpu_temp,
            "gpuMemUsedMb": self.gpu_mem_used_mb,
            "gpuMemTotalMb": self.gpu_mem_total_mb,
            "timestamp": None if self.timestamp is None else self.timestamp.isoformat(),
        }


@dataclasses.dataclass(frozen=True, slots=True)
class Heartbeat:
    provider_id: str
    worker_id: str
    status: ProviderStatus
    usage: Usage
    current_job: str | None
    #: The market's clock when the heartbeat arrived.
    received_at: dt.datetime


@dataclasses.dataclass(frozen=True, slots=True)
class FlushReport:
    heartbeats: int = 0
    samples: int = 0
    status_changes: int = 0


class HeartbeatBuffer:
    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        events: EventHub,
        policy: LivenessPolicy,
        *,
        retention: dt.timedelta,
        clock: Clock = utcnow,
    ) -> None:
        self._sessionmaker = sessionmaker
        self._events = events
        self.policy = policy
        self.retention = retention
        self._clock = clock
        #: provider id → its latest heartbeat not yet written
        self._pending: dict[str, Heartbeat] = {}
        #: provider id → the time of its newest sample in the history
        self._sampled: dict[str, dt.datetime] = {}
        self._turn = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()
        self._last_prune: dt.datetime | None = None
        #: Called with the workerIds each liveness check took offline (their jobs move on).
        self.on_offline: list[Callable[[list[str]], Awaitable[object]]] = []
        self._assigned: SharedReads[str, Sequence[db.AssignedJob]] = SharedReads(
            self._read_assigned, ()
        )

    async def assigned_jobs(self, provider_id: str) -> Sequence[db.AssignedJob]:
        """The provider's ASSIGNED jobs, oldest first, read after this call was made.

        Heartbeats arriving together share one read (``batching.SharedReads``).
        """
        return await self._assigned.get(provider_id)

    async def _read_assigned(
        self, provider_ids: Collection[str]
    ) -> dict[str, list[db.AssignedJob]]:
        async with self._sessionmaker() as session:
            return await db.assigned_jobs(session, provider_ids)

    @property
    def pending(self) -> int:
        return len(self._pending)

    def record(
        self,
        provider_id: str,
        worker_id: str,
        status: ProviderStatus,
        usage: Usage,
        current_job: str | None = None,
    ) -> Heartbeat:
        """Keep this provider's heartbeat until the next flush (no I/O)."""
        heartbeat = Heartbeat(provider_id, worker_id, status, usage, current_job, self._clock())
        self._pending[provider_id] = heartbeat
        return heartbeat

    # ------------------------------------------------------------------ flush

    async def flush(self) -> FlushReport:
        """Write the buffered heartbeats in one transaction, then broadcast."""
        async with self._turn:
            batch, self._pending = self._pending, {}
            if not batch:
                return FlushReport()
            try:
                return await self._write(batch)
            except BaseException:
                # Not written: keep them, unless a newer heartbeat arrived meanwhile.
                self._pending = {**batch, **self._pending}
                raise

    async def _write(self, batch: dict[str, Heartbeat]) -> FlushReport:
        writes: list[db.HeartbeatWrite] = []
        samples: list[db.MetricSample] = []
        changed: dict[str, ProviderStatus] = {}
        async with self._sessionmaker() as session, session.begin():
            flags = await db.flags_of(session, list(batch))
            for provider_id, beat in batch.items():
                before = flags.get(provider_id)
                if before is None:
                    continue  # no such provider any more
                is_online, is_available = flags_after(
                    beat.status, before.is_available, holds_job=before.current_job_id is not None
                )
                writes.append(
                    db.HeartbeatWrite(provider_id, beat.received_at, is_online, is_available)
                )
                if self.policy.sample_due(self._sampled.get(provider_id), beat.received_at):
                    samples.append(_sample(beat))
                was = status_of(before.is_online, before.is_available)
                if status_of(is_online, is_available) is not was:
                    changed[provider_id] = was
            await db.write_heartbeats(session, writes)
            await db.add_samples(session, samples)
            rows = await db.providers_by_id(session, list(changed))
            changes = [(_offer(p), changed[p.id], p.is_listed) for p in rows]
        for sample in samples:
            self._sampled[sample.provider_id] = sample.timestamp
        provider_events.status_changed(self._events, changes)
        for write in writes:
            self._publish_metrics(batch[write.provider_id])
        return FlushReport(len(writes), len(samples), len(changes))

    def _publish_metrics(self, beat: Heartbeat) -> None:
        channel = provider_events.own_channel(beat.worker_id)
        if channel is not None:
            self._events.publish(
                channel,
                EventType.GPU_METRICS_UPDATE,
                {
                    "workerId": beat.worker_id,
                    "status": beat.status.value,
                    "usage": beat.usage.to_json(),
                    "currentJob": beat.current_job,
                    "receivedAt": beat.received_at.isoformat(),
                },
            )

    # ------------------------------------------------------------------ liveness

    async def check_liveness(self) -> list[str]:
        """Take offline every silent provider; the workerIds taken offline."""
        async with self._turn:
            cutoff = self._clock() - self.policy.offline_after
            async with self._sessionmaker() as session, session.begin():
                taken = await db.take_offline_stale(session, cutoff, spare=set(self._pending))
                rows = await db.providers_by_id(session, taken)
                changes = [(_offer(p), status_of(True, p.is_available), p.is_listed) for p in rows]
            provider_events.status_changed(self._events, changes)
            return [p.worker_id for p in rows]

    async def prune(self) -> int:
        """Delete the samples older than the retention; how many went."""
        async with self._sessionmaker() as session, session.begin():
            return await db.prune_samples(session, self._clock() - self.retention)

    async def _monitor(self) -> None:
        taken = await self.check_liveness()
        if taken:
            for hook in list(self.on_offline):
                try:
                    await hook(taken)
                except Exception:  # the next check goes on; the hook's failure is its own
                    log.exception("QUBIX liveness: offline hook %r failed", hook)
        now = self._clock()
        if self._last_prune is None or (now - self._last_prune).total_seconds() >= PRUNE_EVERY:
            self._last_prune = now
            await self.prune()

    # ------------------------------------------------------------------ periodic tasks

    def start(self) -> None:
        """Start flushing and monitoring on the running loop (again: nothing more)."""
        if self._tasks:
            return
        self._stopping = stopping = asyncio.Event()
        self._tasks = [
            asyncio.create_task(self._every(stopping, self.policy.flush_interval, self.flush)),
            asyncio.create_task(self._every(stopping, self.policy.monitor_interval, self._monitor)),
        ]

    async def stop(self) -> None:
        """Stop the periodic tasks (a pass under way finishes) and write what is buffered."""
        tasks, self._tasks = self._tasks, []
        if tasks:
            self._stopping.set()
        for task in tasks:
            await periodic.finish(task)
        try:
            await self.flush()
        except (SQLAlchemyError, OSError) as exc:
            # Stopping goes on: the workers' next heartbeats bring the rows up to date.
            log.error("QUBIX liveness: %d heartbeats not written at stop: %s", self.pending, exc)

    @staticmethod
    async def _every(
        stopping: asyncio.Event, seconds: float, step: Callable[[], Awaitable[object]]
    ) -> None:
        while not await periodic.pause(stopping, seconds):
            try:
                await step()
            except Exception:
                # A database outage must not end liveness for good: log it, try next time.
                log.exception("QUBIX liveness: %s failed", getattr(step, "__name__", step))


def _offer(provider: Provider) -> dict[str, Any]:
    return offer_out(provider).model_dump(mode="json")


def _sample(beat: Heartbeat) -> db.MetricSample:
    usage = beat.usage
    return db.MetricSample(
        provider_id=beat.provider_id,
        timestamp=beat.received_at,
        cpu_percent=usage.cpu_percent,
        ram_percent=usage.ram_percent,
        gpu_percent=usage.gpu_percent,
        gpu_temp=usage.gpu_temp,
        gpu_mem_used=usage.gpu_mem_used_mb,
    )
