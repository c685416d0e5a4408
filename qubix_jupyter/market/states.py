"""Job lifecycle and ledger vocabulary, with the allowed transitions in one table."""

from __future__ import annotations

import enum

from .errors import InvalidState


class JobStatus(enum.StrEnum):
    PENDING = "PENDING"
    ASSIGNED = "ASSIGNED"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


TERMINAL_JOB_STATES = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED})
#: A job on a provider: assigned to it or running there (its escrow may still pay that provider).
OPEN_JOB_STATES = frozenset({JobStatus.ASSIGNED, JobStatus.RUNNING})

#: from → allowed next states. ASSIGNED/RUNNING → ASSIGNED is a reassignment after provider loss.
JOB_TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.PENDING: frozenset({JobStatus.ASSIGNED, JobStatus.FAILED, JobStatus.CANCELLED}),
    JobStatus.ASSIGNED: frozenset(
        {JobStatus.ASSIGNED, JobStatus.RUNNING, JobStatus.FAILED, JobStatus.CANCELLED}
    ),
    JobStatus.RUNNING: frozenset(
        {
            JobStatus.ASSIGNED,
            JobStatus.COMPLETED,
            JobStatus.FAILED,
            JobStatus.CANCELLED,
        }
    ),
    JobStatus.COMPLETED: frozenset(),
    JobStatus.FAILED: frozenset(),
    JobStatus.CANCELLED: frozenset(),
}


def check_transition(current: JobStatus, target: JobStatus) -> None:
    if target not in JOB_TRANSITIONS[current]:
        raise InvalidState(
            f"a {current.value} job cannot become {target.value}",
            current=current.value,
            target=target.value,
        )


class AccountKind(enum.StrEnum):
    WALLET = "WALLET"  # a user's spendable QU
    ESCROW = "ESCROW"  # QU locked for one job
    PLATFORM = "PLATFORM"  # platform fees
    EXTERNAL = (
        "EXTERNAL"  # the outside world (the Qubic chain); the only account that may go negative
    )


class EntryType(enum.StrEnum):
    """Ledger entry types: the seed's five plus DEPOSIT, WITHDRAWAL and FEE."""

    PAYMENT = "PAYMENT"
    EARNING = "EARNING"
    REFUND = "REFUND"
    ESCROW_LOCK = "ESCROW_LOCK"
    ESCROW_RELEASE = "ESCROW_RELEASE"
    DEPOSIT = "DEPOSIT"
    WITHDRAWAL = "WITHDRAWAL"
    FEE = "FEE"


class EntryStatus(enum.StrEnum):
    PENDING = "PENDING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"


class Role(enum.StrEnum):
    CONSUMER = "CONSUMER"
    PROVIDER = "PROVIDER"
    BOTH = "BOTH"


class ProviderType(enum.StrEnum):
    BROWSER = "BROWSER"
    NATIVE = "NATIVE"


PLATFORM_ACCOUNT_ID = "platform:fees"
EXTERNAL_ACCOUNT_ID = "external:qubic"


def wallet_account_id(user_id: str) -> str:
    return f"wallet:{user_id}"


def escrow_account_id(job_id: str) -> str:
    return f"escrow:{job_id}"
