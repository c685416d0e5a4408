"""The client's own view of the market's answers: small frozen dataclasses, camelCase → snake_case.

They are the client's, not the server's pydantic models (the client never imports the server):
each reads the fields it knows from the JSON answer, tolerates fields it does not know (a newer
market), and keeps the whole answer in ``raw``. Money is integer QU.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
import types
import typing
from typing import Any, Self, TypeVar

T = TypeVar("T", bound="Record")

_CAMEL = re.compile(r"_([a-z0-9])")


def camel(name: str) -> str:
    """``price_per_hour`` → ``pricePerHour``"""
    return _CAMEL.sub(lambda m: m.group(1).upper(), name)


def _parse_datetime(value: Any) -> Any:
    if isinstance(value, str):
        try:
            parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return value
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)
    return value


def _convert(hint: Any, value: Any) -> Any:
    if value is None:
        return None
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        return _convert(options[0], value) if len(options) == 1 else value
    if origin is list:
        (item,) = typing.get_args(hint)
        return [_convert(item, v) for v in value] if isinstance(value, list) else value
    if isinstance(hint, type) and issubclass(hint, Record) and isinstance(value, dict):
        return hint.from_json(value)
    if hint is dt.datetime:
        return _parse_datetime(value)
    return value


class Record:
    """Base of the answer dataclasses: ``from_json`` maps each field from its camelCase key."""

    raw: dict[str, Any]

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Self:
        hints = typing.get_type_hints(cls)
        values: dict[str, Any] = {}
        for field in dataclasses.fields(cls):  # type: ignore[arg-type]
            if field.name == "raw":
                continue
            key = field.metadata.get("json", camel(field.name))
            if key in data:
                values[field.name] = _convert(hints[field.name], data[key])
        build: Any = cls  # the dataclass's own __init__, which Record does not declare
        return build(raw=dict(data), **values)  # type: ignore[no-any-return]


@dataclasses.dataclass(frozen=True)
class Health(Record):
    status: str = ""
    version: str = ""
    role: str = ""
    database: dict[str, Any] | None = None
    raw: dict[str, Any] = dataclasses.field(default_factory=dict, repr=False, compare=False)


@dataclasses.dataclass(frozen=True)
class User(Record):
    id: str = ""
    qubic_address: str = ""
    username: str | None = None
    email: str | None = None
    role: str = ""
    balance: int = 0
    created_at: dt.datetime | None = None
    updated_at: dt.datetime | None = None
    raw: dict[str, Any] = dataclasses.field(default_factory=dict, repr=False, compare=False)


@dataclasses.dataclass(frozen=True)
class Session(Record):
    """What wallet connect answered: the signed-in user and the token's expiry."""

    user: User | None = None
    balance: int = 0
    expires_at: dt.datetime | None = None
    raw: dict[str, Any] = dataclasses.field(default_factory=dict, repr=False, compare=False)


@dataclasses.dataclass(frozen=True)
class Me(Record):
    user: User | None = None
    token_expires_at: dt.datetime | None = None
    raw: dict[str, Any] = dataclasses.field(default_factory=dict, repr=False, compare=False)


@dataclasses.dataclass(frozen=True)
class Balance(Record):
    balance: int = 0
    pending_earnings: int = 0
    raw: dict[str, Any] = dataclasses.field(default_factory=dict, repr=False, compare=False)


@dataclasses.dataclass(frozen=True)
class Offer(Record):
    """A provider as the marketplace lists it; the owner's view fills the last four fields."""

    id: str = ""
    worker_id: str = ""
    name: str | None = None
    type: str = ""
    qubic_address: str = ""
    gpu_vendor: str | None = None
    gpu_model: str = ""
    gpu_vram: float = 0.0
    gpu_count: int = 0
    cuda_capability: str | None = None
    cpu_model: str = ""
    cpu_cores: int = 0
    ram_total: float = 0.0
    location: str | None = None
    price_per_hour: int = 0
    performance_tflops: float | None = None
    status: str = ""
    is_online: bool = False
    is_available: bool = False
    total_jobs: int = 0
    registered_at: dt.datetime | None = None
    last_heartbeat: dt.datetime | None = None
    # the owner's view only
    user_id: str | None = None
    is_listed: bool | None = None
    total_earnings: int | None = None
    uptime: int | None = None
    raw: dict[str, Any] = dataclasses.field(default_factory=dict, repr=False, compare=False)


@dataclasses.dataclass(frozen=True)
class OfferPage(Record):
    items: list[Offer] = dataclasses.field(default_factory=list)
    total: int = 0
    offset: int = 0
    limit: int = 0
    raw: dict[str, Any] = dataclasses.field(default_factory=dict, repr=False, compare=False)


@dataclasses.dataclass(frozen=True)
class Registration(Record):
    """quick-register's answer: the provider and the worker's own token (shown once)."""

    success: bool = False
    created: bool = False
    provider: Offer | None = None
    worker_token: str | None = None
    raw: dict[str, Any] = dataclasses.field(default_factory=dict, repr=False, compare=False)


@dataclasses.dataclass(frozen=True)
class PendingJob(Record):
    id: str = ""
    model_type: str = ""
    compute_needed: float = 0.0
    created_at: dt.datetime | None = None
    raw: dict[str, Any] = dataclasses.field(default_factory=dict, repr=False, compare=False)


@dataclasses.dataclass(frozen=True)
class Heartbeat(Record):
    success: bool = False
    pending_jobs: list[PendingJob] = dataclasses.field(default_factory=list)
    raw: dict[str, Any] = dataclasses.field(default_factory=dict, repr=False, compare=False)


@dataclasses.dataclass(frozen=True)
class MetricSample(Record):
    cpu_percent: float = 0.0
    ram_percent: float = 0.0
    gpu_percent: float | None = None
    gpu_temp: float | None = None
    gpu_mem_used: float | None = None
    timestamp: dt.datetime | None = None
    raw: dict[str, Any] = dataclasses.field(default_factory=dict, repr=False, compare=False)


@dataclasses.dataclass(frozen=True)
class MetricsHistory(Record):
    worker_id: str = ""
    metrics: list[MetricSample] = dataclasses.field(default_factory=list)
    raw: dict[str, Any] = dataclasses.field(default_factory=dict, repr=False, compare=False)


TERMINAL_STATES = frozenset({"COMPLETED", "FAILED", "CANCELLED"})


@dataclasses.dataclass(frozen=True)
class JobInfo(Record):
    """A job as the market reports it; ``status`` is PENDING … COMPLETED | FAILED | CANCELLED."""

    id: str = ""
    status: str = ""
    model_type: str = ""
    progress: int = dataclasses.field(default=0, metadata={"doc": "percent, 0..100"})
    compute_needed: float = 0.0
    user_id: str = ""
    provider_id: str | None = None
    worker_id: str | None = None
    input_data: Any = None
    result: Any = None
    error: str | None = None
    estimated_cost: int = 0
    actual_cost: int | None = None
    max_price: int = 0
    price_per_hour: int | None = None
    gpu_model: list[str] = dataclasses.field(default_factory=list)
    min_vram: float | None = None
    created_at: dt.datetime | None = None
    assigned_at: dt.datetime | None = None
    started_at: dt.datetime | None = None
    completed_at: dt.datetime | None = None
    raw: dict[str, Any] = dataclasses.field(default_factory=dict, repr=False, compare=False)

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL_STATES


@dataclasses.dataclass(frozen=True)
class JobCreated(Record):
    success: bool = False
    job: JobInfo | None = None
    estimated_cost: int = 0
    raw: dict[str, Any] = dataclasses.field(default_factory=dict, repr=False, compare=False)


@dataclasses.dataclass(frozen=True)
class Payment(Record):
    """How a finished or cancelled job was settled (QU)."""

    cost: int = 0
    provider_earning: int = 0
    platform_fee: int = 0
    refund: int = 0
    raw: dict[str, Any] = dataclasses.field(default_factory=dict, repr=False, compare=False)


@dataclasses.dataclass(frozen=True)
class JobCancelled(Record):
    success: bool = False
    job: JobInfo | None = None
    payment: Payment | None = None
    raw: dict[str, Any] = dataclasses.field(default_factory=dict, repr=False, compare=False)


@dataclasses.dataclass(frozen=True)
class JobPage(Record):
    items: list[JobInfo] = dataclasses.field(default_factory=list)
    total: int = 0
    offset: int = 0
    limit: int = 0
    raw: dict[str, Any] = dataclasses.field(default_factory=dict, repr=False, compare=False)


@dataclasses.dataclass(frozen=True)
class JobResult(Record):
    """``GET jobs/{id}/result``: the result as the worker sent it (JSON), or the error."""

    job_id: str = ""
    status: str = ""
    result: Any = None
    error: str | None = None
    raw: dict[str, Any] = dataclasses.field(default_factory=dict, repr=False, compare=False)


@dataclasses.dataclass(frozen=True)
class Transaction(Record):
    """A ledger entry of your wallet; ``amount`` is signed: + in, - out."""

    id: str = ""
    type: str = ""
    amount: int = 0
    direction: str = ""
    status: str = ""
    job_id: str | None = None
    qubic_tx_hash: str | None = None
    created_at: dt.datetime | None = None
    raw: dict[str, Any] = dataclasses.field(default_factory=dict, repr=False, compare=False)


@dataclasses.dataclass(frozen=True)
class TransactionPage(Record):
    items: list[Transaction] = dataclasses.field(default_factory=list)
    total: int = 0
    offset: int = 0
    limit: int = 0
    raw: dict[str, Any] = dataclasses.field(default_factory=dict, repr=False, compare=False)


@dataclasses.dataclass(frozen=True)
class DepositAddress(Record):
    address: str = ""
    backend: str = ""
    simulated: bool = False
    instructions: str = ""
    raw: dict[str, Any] = dataclasses.field(default_factory=dict, repr=False, compare=False)


@dataclasses.dataclass(frozen=True)
class Deposit(Record):
    success: bool = False
    simulated: bool = False
    amount: int = 0
    qubic_tx_hash: str = ""
    balance: int = 0
    raw: dict[str, Any] = dataclasses.field(default_factory=dict, repr=False, compare=False)


@dataclasses.dataclass(frozen=True)
class WithdrawalInfo(Record):
    id: str = ""
    amount: int = 0
    to_address: str = ""
    status: str = ""
    status_text: str = ""
    delayed: bool = False
    attempts: int = 0
    qubic_tx_hash: str | None = None
    target_tick: int | None = None
    confirmed_tick: int | None = None
    last_error: str | None = None
    created_at: dt.datetime | None = None
    updated_at: dt.datetime | None = None
    raw: dict[str, Any] = dataclasses.field(default_factory=dict, repr=False, compare=False)


@dataclasses.dataclass(frozen=True)
class Withdrawal(Record):
    success: bool = False
    withdrawal: WithdrawalInfo | None = None
    balance: int = 0
    raw: dict[str, Any] = dataclasses.field(default_factory=dict, repr=False, compare=False)


@dataclasses.dataclass(frozen=True)
class EarningDay(Record):
    date: str = ""
    amount: int = 0
    job_count: int = 0
    raw: dict[str, Any] = dataclasses.field(default_factory=dict, repr=False, compare=False)


@dataclasses.dataclass(frozen=True)
class Earnings(Record):
    total: int = 0
    today: int = 0
    this_week: int = 0
    this_month: int = 0
    history: list[EarningDay] = dataclasses.field(default_factory=list)
    raw: dict[str, Any] = dataclasses.field(default_factory=dict, repr=False, compare=False)
