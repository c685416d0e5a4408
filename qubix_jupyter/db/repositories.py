"""Creation and lookup of market records that the ledger settles against.

Each function works inside the caller's session and transaction.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from ..market.errors import UnknownJob, UnknownUser
from ..market.money import escrow_for, require_amount
from ..market.states import (
    AccountKind,
    JobStatus,
    ProviderType,
    Role,
    check_transition,
    escrow_account_id,
)
from ..market.states import wallet_account_id as _wallet
from .models import Account, Job, Provider, User, utcnow


async def create_user(
    session: AsyncSession,
    qubic_address: str,
    *,
    username: str | None = None,
    email: str | None = None,
    role: Role = Role.CONSUMER,
) -> User:
    """A user and their wallet account, in one transaction."""
    user = User(qubic_address=qubic_address, username=username, email=email, role=role)
    session.add(user)
    await session.flush()
    session.add(Account(id=_wallet(user.id), kind=AccountKind.WALLET, user_id=user.id))
    await session.flush()
    return user


async def create_provider(
    session: AsyncSession,
    user_id: str,
    *,
    worker_id: str,
    price_per_hour: int,
    gpu_model: str = "CPU only",
    gpu_vram: float = 0.0,
    gpu_count: int = 0,
    cpu_model: str = "unknown",
    cpu_cores: int = 1,
    ram_total: float = 0.0,
    provider_type: ProviderType = ProviderType.NATIVE,
    **fields: Any,
) -> Provider:
    require_amount(price_per_hour, name="price_per_hour", allow_zero=True)
    user = await session.get(User, user_id)
    if user is None:
        raise UnknownUser(f"no user {user_id!r}", user_id=user_id)
    provider = Provider(
        user_id=user_id,
        worker_id=worker_id,
        qubic_address=user.qubic_address,
        type=provider_type,
        gpu_model=gpu_model,
        gpu_vram=gpu_vram,
        gpu_count=gpu_count,
        cpu_model=cpu_model,
        cpu_cores=cpu_cores,
        ram_total=ram_total,
        price_per_hour=price_per_hour,
        **fields,
    )
    session.add(provider)
    await session.flush()
    return provider


async def create_job(
    session: AsyncSession,
    user_id: str,
    *,
    model_type: str,
    compute_seconds: int,
    max_price: int,
    input_data: Any = None,
    constraints: dict[str, Any] | None = None,
) -> Job:
    """A PENDING job whose estimated cost is the most it may cost at ``max_price``."""
    require_amount(max_price, name="max_price", allow_zero=True)
    require_amount(compute_seconds, name="compute_seconds")
    if await session.get(User, user_id) is None:
        raise UnknownUser(f"no user {user_id!r}", user_id=user_id)
    job = Job(
        user_id=user_id,
        model_type=model_type,
        compute_seconds=compute_seconds,
        max_price=max_price,
        input_data=input_data if input_data is not None else {},
        constraints=constraints or {},
        estimated_cost=escrow_for(max_price, compute_seconds),
    )
    session.add(job)
    await session.flush()
    # Every job has its escrow account from birth, so settling a job never depends on whether
    # anything was locked yet.
    session.add(Account(id=escrow_account_id(job.id), kind=AccountKind.ESCROW, job_id=job.id))
    await session.flush()
    return job


async def assign_job(
    session: AsyncSession,
    job_id: str,
    provider: Provider,
    *,
    status: JobStatus = JobStatus.ASSIGNED,
) -> Job:
    """Pin a job to a provider at the provider's price."""
    job = await session.get(Job, job_id, with_for_update=True)
    if job is None:
        raise UnknownJob(f"no job {job_id!r}", job_id=job_id)
    check_transition(job.status, JobStatus.ASSIGNED)
    job.provider_id = provider.id
    job.price_per_hour = provider.price_per_hour
    job.estimated_cost = escrow_for(provider.price_per_hour, job.compute_seconds)
    job.assigned_at = utcnow()
    job.status = JobStatus.ASSIGNED
    provider.last_assigned_at = job.assigned_at
    if status is JobStatus.RUNNING:
        check_transition(job.status, JobStatus.RUNNING)
        job.status = JobStatus.RUNNING
        job.started_at = utcnow()
    await session.flush()
    return job
