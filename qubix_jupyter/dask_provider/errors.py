"""Typed errors of running a job on a provider's machine.

Each one says whose fault a failure is, because the market settles them differently
(DESIGN.md §5): the consumer's code or limits (charged for the time used) or the provider's
machine (reassigned). They pickle with their details so they cross the Dask comm intact.
"""

from __future__ import annotations

from typing import Any

from ..market.errors import QubixError


class JobExecutionError(QubixError):
    """A job did not produce a result."""

    code = "job_failed"
    status = 422
    #: Whose fault: "consumer" (code, budget, limits) or "provider" (the machine failed it).
    fault = "consumer"

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.message, self.details))


def _rebuild(cls: type[JobExecutionError], message: str, details: dict[str, Any]) -> Any:
    return cls(message, **details)


class JobCodeFailed(JobExecutionError):
    """The consumer's code raised; ``details["traceback"]`` is its traceback as text."""

    code = "job_code_failed"


class TimeBudgetExceeded(JobExecutionError):
    """The job ran past its time budget and was stopped."""

    code = "time_budget_exceeded"


class MemoryLimitExceeded(JobExecutionError):
    """The job asked for more memory than its limit allows."""

    code = "memory_limit_exceeded"


class ResultTooLarge(JobExecutionError):
    """The pickled result is over the size cap; nothing of it was sent."""

    code = "result_too_large"
    status = 413


class UnknownJobKind(JobExecutionError):
    """No runner is registered for the job's kind (``qubix.job_kinds`` entry points)."""

    code = "unknown_job_kind"


class InvalidPayload(JobExecutionError):
    """The job's payload does not fit its kind."""

    code = "invalid_payload"


class JobProcessDied(JobExecutionError):
    """The job's process ended without an answer (killed by a signal, the OOM killer, a crash)."""

    code = "job_process_died"
    fault = "provider"
