"""Provider liveness: what a heartbeat means, when a silent provider is offline, and how often a
heartbeat's usage becomes a row of the metrics history.

Pure domain, no I/O and no clock of its own: every rule takes ``now``. The market's heartbeat
buffer (``server_extension.liveness``) applies these rules to the database.

A provider's status is derived from two flags of its row:

=============  ============  ===============
``status``     ``is_online``  ``is_available``
=============  ============  ===============
``offline``    false          (kept)
``online``     true           true
``busy``       true           false
=============  ============  ===============

Freshness (seed Property 9: an online provider's metrics are never older than 60 s). A provider
is offline once its last heartbeat is older than ``missed_heartbeats × heartbeat_interval``, and
the monitor checks for that every ``heartbeat_interval``; each heartbeat carries its usage, and
the history keeps one sample per ``metrics_sample_seconds``; heartbeats reach the database within
``flush_interval``. So the newest stored sample of an online provider is at most
:attr:`LivenessPolicy.worst_metrics_age` old, and a policy is accepted only when that is within
:data:`METRICS_FRESHNESS`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum

#: Seed Property 9: the oldest the metrics of an online provider may be.
METRICS_FRESHNESS = dt.timedelta(seconds=60)


class ProviderStatus(enum.StrEnum):
    ONLINE = "online"
    OFFLINE = "offline"
    BUSY = "busy"


def status_of(is_online: bool, is_available: bool) -> ProviderStatus:
    if not is_online:
        return ProviderStatus.OFFLINE
    return ProviderStatus.ONLINE if is_available else ProviderStatus.BUSY


def flags_after(
    status: ProviderStatus, is_available: bool, *, holds_job: bool = False
) -> tuple[bool, bool]:
    """``(is_online, is_available)`` of a provider that reported ``status`` (offline keeps the
    availability it had: going offline is not a change of mind about taking jobs).

    A provider the market gave a job (``holds_job``) stays unavailable whatever it reports:
    only the job's end frees it, so a worker that has not started the job yet, or reports a
    stale view, cannot be given a second one.
    """
    if status is ProviderStatus.OFFLINE:
        return False, is_available
    if holds_job:
        return True, False
    return True, status is ProviderStatus.ONLINE


class InvalidLivenessPolicy(ValueError):
    """Intervals that cannot keep an online provider's metrics within 60 s, or are not > 0."""


@dataclasses.dataclass(frozen=True, slots=True)
class LivenessPolicy:
    """The intervals of liveness, in seconds (each > 0)."""

    heartbeat_interval: float = 5.0
    metrics_sample_seconds: float = 10.0
    flush_interval: float = 1.0
    missed_heartbeats: int = 3

    def __post_init__(self) -> None:
        for field in ("heartbeat_interval", "metrics_sample_seconds", "flush_interval"):
            if not getattr(self, field) > 0:
                raise InvalidLivenessPolicy(f"{field} must be > 0, not {getattr(self, field)}")
        if self.missed_heartbeats < 1:
            raise InvalidLivenessPolicy("missed_heartbeats must be >= 1")
        if self.worst_metrics_age > METRICS_FRESHNESS:
            raise InvalidLivenessPolicy(
                "an online provider's metrics could be "
                f"{self.worst_metrics_age.total_seconds():g} s old (the limit is "
                f"{METRICS_FRESHNESS.total_seconds():g} s): (missed heartbeats + 1) × "
                "heartbeat_interval + metrics_sample_seconds + heartbeat_flush_interval "
                "must be at most 60"
            )

    @property
    def offline_after(self) -> dt.timedelta:
        """A provider silent for longer than this is offline."""
        return dt.timedelta(seconds=self.missed_heartbeats * self.heartbeat_interval)

    @property
    def monitor_interval(self) -> float:
        """Seconds between two liveness checks."""
        return self.heartbeat_interval

    @property
    def worst_metrics_age(self) -> dt.timedelta:
        """The oldest the newest stored sample of an online provider can be."""
        return dt.timedelta(
            seconds=(self.missed_heartbeats + 1) * self.heartbeat_interval
            + self.metrics_sample_seconds
            + self.flush_interval
        )

    def is_stale(self, last_heartbeat: dt.datetime | None, now: dt.datetime) -> bool:
        return last_heartbeat is None or now - last_heartbeat > self.offline_after

    def sample_due(self, last_sample: dt.datetime | None, at: dt.datetime) -> bool:
        """Does a heartbeat received ``at`` become a row of the metrics history?"""
        return last_sample is None or (at - last_sample).total_seconds() >= (
            self.metrics_sample_seconds
        )
