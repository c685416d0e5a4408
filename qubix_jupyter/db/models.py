"""SQLAlchemy 2 typed models for the market.

The seed's schema (User, Provider, Job, Transaction, ProviderMetric) with DESIGN.md §4's changes:
money is integer QU in BIGINT columns, balances live in double-entry ``accounts`` whose cached
balance is updated in the same database transaction as the ``transactions`` rows that move it,
and every money-moving request is recorded once under its idempotency key.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Annotated, Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    func,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from ..market.states import (
    AccountKind,
    EntryStatus,
    EntryType,
    JobStatus,
    ProviderType,
    Role,
)

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

#: QU: integer, BIGINT in SQL. Never float.
QU = Annotated[int, mapped_column(BigInteger)]
UUID = Annotated[str, mapped_column(String(36))]
Timestamp = Annotated[dt.datetime, mapped_column(DateTime(timezone=True))]


def new_id() -> str:
    return str(uuid.uuid4())


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _enum(cls: type, name: str) -> Enum:
    # VARCHAR + CHECK instead of native types: portable across PostgreSQL and SQLite and
    # simple to extend in a migration.
    return Enum(
        cls,
        name=name,
        native_enum=False,
        create_constraint=True,
        length=20,
        values_callable=lambda e: [m.value for m in e],
        validate_strings=True,
    )


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class User(Base):
    __tablename__ = "users"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    qubic_address: Mapped[str] = mapped_column(String(60), unique=True)
    email: Mapped[str | None] = mapped_column(String(320), unique=True)
    username: Mapped[str | None] = mapped_column(String(100))
    role: Mapped[Role] = mapped_column(_enum(Role, "role"), default=Role.CONSUMER)
    created_at: Mapped[Timestamp] = mapped_column(default=utcnow, server_default=func.now())
    updated_at: Mapped[Timestamp] = mapped_column(
        default=utcnow, onupdate=utcnow, server_default=func.now()
    )


class Provider(Base):
    __tablename__ = "providers"
    __table_args__ = (
        CheckConstraint("price_per_hour >= 0", name="price_non_negative"),
        CheckConstraint("total_earnings >= 0", name="earnings_non_negative"),
        # The marketplace listing filters online/available offers and sorts by price.
        Index(None, "is_online", "is_available", "price_per_hour"),
        Index(None, "gpu_model"),
        Index(None, "location"),
        Index(None, "gpu_vram"),
        Index(None, "performance_tflops"),
        Index(None, "user_id"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    worker_id: Mapped[str] = mapped_column(String(128), unique=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="RESTRICT"))
    qubic_address: Mapped[str] = mapped_column(String(60))
    name: Mapped[str | None] = mapped_column(String(100))
    type: Mapped[ProviderType] = mapped_column(_enum(ProviderType, "provider_type"))

    gpu_vendor: Mapped[str | None] = mapped_column(String(64))
    gpu_model: Mapped[str] = mapped_column(String(128))
    gpu_vram: Mapped[float] = mapped_column(Float)  # GB per GPU, as the seed's minVram filter
    gpu_count: Mapped[int] = mapped_column(Integer, default=0)
    driver_version: Mapped[str | None] = mapped_column(String(64))
    cuda_capability: Mapped[str | None] = mapped_column(String(16))
    cpu_model: Mapped[str] = mapped_column(String(128))
    cpu_cores: Mapped[int] = mapped_column(Integer)
    ram_total: Mapped[float] = mapped_column(Float)  # GB
    performance_tflops: Mapped[float | None] = mapped_column(Float)  # measured by the benchmark job

    location: Mapped[str | None] = mapped_column(String(100))
    price_per_hour: Mapped[QU]  # QU per GPU-hour

    is_online: Mapped[bool] = mapped_column(Boolean, default=False)
    is_available: Mapped[bool] = mapped_column(Boolean, default=True)
    is_listed: Mapped[bool] = mapped_column(Boolean, default=True)
    current_job_id: Mapped[str | None] = mapped_column(String(36))

    total_earnings: Mapped[QU] = mapped_column(default=0)
    total_jobs: Mapped[int] = mapped_column(Integer, default=0)
    uptime: Mapped[int] = mapped_column(Integer, default=0)  # seconds online

    registered_at: Mapped[Timestamp] = mapped_column(default=utcnow, server_default=func.now())
    last_heartbeat: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    last_assigned_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))


def _listing_index(name: str, *sort: Any) -> Index:
    """A PostgreSQL index for one sort order of the marketplace listing: it leads with the
    availability cell, covers every filter column, and holds only listed offers, so a page's keys
    and a (capped) count are read from the index alone; ``lower(gpu_model)`` is computed from the
    included ``gpu_model``. SQLite has no INCLUDE and no NULLS LAST in an index; it uses the
    plain indexes above."""
    return Index(
        name,
        Provider.is_online,
        Provider.is_available,
        *sort,
        Provider.id,
        postgresql_include=["gpu_model", "gpu_vram", "location"],
        postgresql_where=Provider.is_listed,
    ).ddl_if(dialect="postgresql")


_listing_index(
    "ix_providers_listed_cell_price",
    Provider.price_per_hour,
    Provider.performance_tflops.desc().nulls_last(),
)
_listing_index(
    "ix_providers_listed_cell_performance",
    Provider.performance_tflops.desc().nulls_last(),
    Provider.price_per_hour,
)
# The model filter compares case-folded names.
Index("ix_providers_lower_gpu_model", func.lower(Provider.gpu_model)).ddl_if(dialect="postgresql")


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        CheckConstraint("progress >= 0 AND progress <= 100", name="progress_range"),
        CheckConstraint("compute_seconds > 0", name="compute_positive"),
        CheckConstraint("max_price >= 0", name="max_price_non_negative"),
        CheckConstraint("estimated_cost >= 0", name="estimated_cost_non_negative"),
        CheckConstraint("actual_cost IS NULL OR actual_cost >= 0", name="actual_cost_non_negative"),
        Index(None, "status", "created_at"),
        Index(None, "user_id", "created_at"),
        Index(None, "provider_id", "status"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="RESTRICT"))
    provider_id: Mapped[str | None] = mapped_column(ForeignKey("providers.id", ondelete="RESTRICT"))

    model_type: Mapped[str] = mapped_column(String(64))  # the job kind: python, cell, benchmark, …
    #: Time budget in whole seconds; the seed's computeNeeded (hours) is this / 3600.
    compute_seconds: Mapped[int] = mapped_column(Integer)
    input_data: Mapped[Any] = mapped_column(JSON, default=dict)
    constraints: Mapped[Any] = mapped_column(JSON, default=dict)
    max_price: Mapped[QU]  # QU per GPU-hour the consumer accepts
    price_per_hour: Mapped[int | None] = mapped_column(BigInteger)  # agreed at assignment

    status: Mapped[JobStatus] = mapped_column(
        _enum(JobStatus, "job_status"), default=JobStatus.PENDING
    )
    progress: Mapped[int] = mapped_column(Integer, default=0)
    reassignments: Mapped[int] = mapped_column(Integer, default=0)

    result: Mapped[Any | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)

    estimated_cost: Mapped[QU]
    actual_cost: Mapped[int | None] = mapped_column(BigInteger)

    created_at: Mapped[Timestamp] = mapped_column(default=utcnow, server_default=func.now())
    assigned_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    started_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    completed_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))


class Account(Base):
    """A ledger account. ``balance`` is a cache of Σ credits − Σ debits, kept in the same
    transaction as the entries; the audit recomputes it."""

    __tablename__ = "accounts"
    __table_args__ = (
        CheckConstraint("kind = 'EXTERNAL' OR balance >= 0", name="internal_balance_non_negative"),
        Index(None, "user_id"),
        Index(None, "job_id"),
    )

    id: Mapped[str] = mapped_column(String(80), primary_key=True)
    kind: Mapped[AccountKind] = mapped_column(_enum(AccountKind, "account_kind"))
    user_id: Mapped[str | None] = mapped_column(ForeignKey("users.id", ondelete="RESTRICT"))
    job_id: Mapped[str | None] = mapped_column(ForeignKey("jobs.id", ondelete="RESTRICT"))
    balance: Mapped[QU] = mapped_column(default=0)
    created_at: Mapped[Timestamp] = mapped_column(default=utcnow, server_default=func.now())


class IdempotencyKey(Base):
    """One row per money-moving request: the key, what was asked, and what was answered."""

    __tablename__ = "idempotency_keys"

    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    operation: Mapped[str] = mapped_column(String(40))
    request_hash: Mapped[str] = mapped_column(String(64))
    response: Mapped[Any | None] = mapped_column(JSON)
    created_at: Mapped[Timestamp] = mapped_column(default=utcnow, server_default=func.now())


class Transaction(Base):
    """One ledger entry: ``amount`` QU moves from the debit account to the credit account."""

    __tablename__ = "transactions"
    __table_args__ = (
        CheckConstraint("amount > 0", name="amount_positive"),
        CheckConstraint("debit_account_id <> credit_account_id", name="distinct_accounts"),
        # Each entry is written once and read by user (history), by job, or by chain tx hash.
        # Every index costs each money-moving request a write, so the accounts and keys are not
        # indexed here: the audit scans the table whole anyway.
        Index(None, "user_id", "created_at"),
        Index(None, "job_id"),
        Index(
            None,
            "qubic_tx_hash",
            postgresql_where=text("qubic_tx_hash IS NOT NULL"),
            sqlite_where=text("qubic_tx_hash IS NOT NULL"),
        ),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    #: The user whose history shows this entry (consumer for escrow/refund, provider for earning).
    user_id: Mapped[str | None] = mapped_column(ForeignKey("users.id", ondelete="RESTRICT"))
    job_id: Mapped[str | None] = mapped_column(ForeignKey("jobs.id", ondelete="RESTRICT"))
    debit_account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id", ondelete="RESTRICT"))
    credit_account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id", ondelete="RESTRICT"))
    type: Mapped[EntryType] = mapped_column(_enum(EntryType, "entry_type"))
    amount: Mapped[QU]
    status: Mapped[EntryStatus] = mapped_column(
        _enum(EntryStatus, "entry_status"), default=EntryStatus.COMPLETED
    )
    qubic_tx_hash: Mapped[str | None] = mapped_column(String(60))
    #: Deferred: PostgreSQL's ledger functions write the key with its receipt after the entries.
    idempotency_key: Mapped[str] = mapped_column(
        ForeignKey(
            "idempotency_keys.key", ondelete="RESTRICT", deferrable=True, initially="DEFERRED"
        )
    )
    created_at: Mapped[Timestamp] = mapped_column(default=utcnow, server_default=func.now())
    completed_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))


class ProviderMetric(Base):
    __tablename__ = "provider_metrics"
    __table_args__ = (Index(None, "provider_id", "timestamp"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    provider_id: Mapped[str] = mapped_column(ForeignKey("providers.id", ondelete="CASCADE"))
    cpu_percent: Mapped[float] = mapped_column(Float)
    ram_percent: Mapped[float] = mapped_column(Float)
    gpu_percent: Mapped[float | None] = mapped_column(Float)
    gpu_temp: Mapped[float | None] = mapped_column(Float)
    gpu_mem_used: Mapped[float | None] = mapped_column(Float)  # MB
    timestamp: Mapped[Timestamp] = mapped_column(default=utcnow, server_default=func.now())
