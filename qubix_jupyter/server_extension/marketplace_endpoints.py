"""The marketplace endpoints: the public listing, and the provider's register / edit / unlist.

Each opens one database transaction and calls ``db.marketplace``; what a search means is
``market.marketplace.MarketplaceQuery``. Paths name a provider by its ``workerId``.
"""

from __future__ import annotations

from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from ..db import marketplace as db
from ..db.auth_store import add_worker_token, note_provision_use
from ..db.models import Provider, utcnow
from ..market.liveness import status_of
from ..market.marketplace import InvalidMarketplaceQuery, MarketplaceQuery, UnknownProvider
from ..market.states import ProviderType
from . import marketplace_models as m
from . import provider_events
from .endpoints import Call, _utc, _utc_or_none
from .errors import Forbidden, ValidationFailed
from .route import Route

#: MarketplaceQuery's field → the API's parameter, to name a refused value in its 422.
_PARAMETER = {
    "gpu_models": "gpuModel",
    "min_vram": "minVram",
    "max_price": "maxPrice",
    "locations": "location",
    "availability": "availability",
    "sort_by": "sortBy",
    "offset": "offset",
    "limit": "limit",
}


def _status(provider: Provider) -> m.Status:
    if not provider.is_online:
        return "offline"
    return "online" if provider.is_available else "busy"


def _offer_fields(provider: Provider) -> dict[str, object]:
    return {
        "id": provider.id,
        "workerId": provider.worker_id,
        "name": provider.name,
        "type": provider.type.value.lower(),
        "qubicAddress": provider.qubic_address,
        "gpuVendor": provider.gpu_vendor,
        "gpuModel": provider.gpu_model,
        "gpuVram": provider.gpu_vram,
        "gpuCount": provider.gpu_count,
        "cudaCapability": provider.cuda_capability,
        "cpuModel": provider.cpu_model,
        "cpuCores": provider.cpu_cores,
        "ramTotal": provider.ram_total,
        "location": provider.location,
        "pricePerHour": provider.price_per_hour,
        "performanceTflops": provider.performance_tflops,
        "status": _status(provider),
        "isOnline": provider.is_online,
        "isAvailable": provider.is_available,
        "totalJobs": provider.total_jobs,
        "registeredAt": _utc(provider.registered_at),
        "lastHeartbeat": _utc_or_none(provider.last_heartbeat),
    }


def offer_out(provider: Provider) -> m.OfferOut:
    return m.OfferOut.model_validate(_offer_fields(provider))


def provider_out(provider: Provider) -> m.ProviderOut:
    return m.ProviderOut.model_validate(
        {
            **_offer_fields(provider),
            "userId": provider.user_id,
            "isListed": provider.is_listed,
            "totalEarnings": provider.total_earnings,
            "uptime": provider.uptime,
        }
    )


async def _by_worker(session: AsyncSession, worker_id: str) -> Provider:
    provider = None
    if "\x00" not in worker_id:  # PostgreSQL text cannot hold NUL: no worker has one
        provider = (
            await session.scalars(select(Provider).where(Provider.worker_id == worker_id))
        ).one_or_none()
    if provider is None:
        raise UnknownProvider(f"no provider with workerId {worker_id!r}", workerId=worker_id)
    return provider


# ---------------------------------------------------------------------- public


async def list_providers(call: Call) -> BaseModel:
    q: m.ProviderSearchQuery = call.query
    try:
        query = MarketplaceQuery(
            gpu_models=tuple(q.gpuModel),
            min_vram=q.minVram,
            max_price=q.maxPrice,
            locations=tuple(q.location),
            availability=q.availability,
            sort_by=q.sortBy,
            offset=q.offset,
            limit=q.limit,
        )
    except InvalidMarketplaceQuery as exc:  # the model checks as much; this keeps them in step
        name = _PARAMETER.get(str(exc.details.get("field")), "query")
        raise ValidationFailed(
            exc.message, errors=[{"loc": [name], "msg": exc.message, "type": exc.code}]
        ) from exc
    async with call.services.sessionmaker() as session:
        page = await db.search_providers(session, query)
    return m.OfferPage(
        items=[offer_out(p) for p in page.items],
        total=page.total,
        totalIsExact=page.total_is_exact,
        offset=page.offset,
        limit=page.limit,
    )


async def get_provider(call: Call) -> BaseModel:
    async with call.services.sessionmaker() as session:
        provider = await _by_worker(session, call.params["workerId"])
    if not provider.is_listed:
        raise UnknownProvider(
            f"no provider with workerId {provider.worker_id!r}", workerId=provider.worker_id
        )
    return offer_out(provider)


# ---------------------------------------------------------------------- the provider's own


async def quick_register(call: Call) -> BaseModel:
    body: m.QuickRegisterRequest = call.body
    user = call.caller.user
    if body.qubicAddress is not None and body.qubicAddress != user.qubic_address:
        raise Forbidden(
            "qubicAddress must be your own wallet's identity", qubicAddress=body.qubicAddress
        )
    now = utcnow()
    async with call.services.sessionmaker() as session, session.begin():
        provider, created = await db.quick_register(
            session,
            user.id,
            worker_id=body.workerId,
            provider_type=ProviderType(body.type.upper()),
            gpu=body.gpu.model_dump(exclude_none=True),
            cpu_model=body.cpuModel,
            cpu_cores=body.cpuCores,
            ram_total=body.ramTotal,
            price_per_hour=body.pricePerHour,
            name=body.name,
            location=body.location,
        )
        worker_token, hashed = call.services.auth.new_worker_token()
        await add_worker_token(session, provider.id, hashed, now=now)
        if call.provisioning:
            await note_provision_use(session, call.caller.token_id, now=now)
        out = provider_out(provider)
        offer = offer_out(provider).model_dump(mode="json")
    call.services.auth.forget_worker(provider.id)
    if created:
        provider_events.registered(call.services.events, offer)
    else:  # registered again: its hardware facts changed, and it is listed again
        provider_events.offers_changed(call.services.events, [offer])
    return m.QuickRegisterResponse(
        success=True, provider=out, created=created, workerToken=worker_token
    )


async def check_new(call: Call) -> BaseModel:
    async with call.services.sessionmaker() as session:
        provider = (
            await session.scalars(
                select(Provider)
                .where(Provider.user_id == call.caller.user.id)
                .order_by(Provider.registered_at.desc(), Provider.id.desc())
                .limit(1)
            )
        ).one_or_none()
        return m.CheckNewResponse(newProvider=None if provider is None else provider_out(provider))


async def update_provider(call: Call) -> BaseModel:
    body: m.UpdateProviderRequest = call.body
    async with call.services.sessionmaker() as session, session.begin():
        found = await _by_worker(session, call.params["workerId"])
        was = status_of(found.is_online, found.is_available)
        provider = await db.update_provider(
            session,
            found.id,
            call.caller.user.id,
            price_per_hour=body.pricePerHour,
            name=body.name,
            location=body.location,
            is_available=body.isAvailable,
        )
        out = provider_out(provider)
        offer = offer_out(provider).model_dump(mode="json")
    events = call.services.events
    if status_of(provider.is_online, provider.is_available) is not was:
        provider_events.status_changed(events, [(offer, was, provider.is_listed)])
    elif provider.is_listed:
        provider_events.offers_changed(events, [offer])
    return m.ProviderResponse(success=True, provider=out)


async def unlist_provider(call: Call) -> BaseModel:
    async with call.services.sessionmaker() as session, session.begin():
        found = await _by_worker(session, call.params["workerId"])
        provider = await db.unlist_provider(session, found.id, call.caller.user.id)
        out = provider_out(provider)
    provider_events.unlisted(call.services.events, provider.worker_id)
    return m.ProviderResponse(success=True, provider=out)


ROUTES: tuple[Route, ...] = (
    # Marketplace. The fixed paths come before providers/{workerId}, which would match them.
    Route(
        "GET",
        "providers",
        list_providers,
        "The marketplace: listed GPU offers, filtered, sorted and paged",
        m.OfferPage,
        query=m.ProviderSearchQuery,
        auth="public",
        tag="marketplace",
        errors=(422,),
    ),
    Route(
        "POST",
        "providers/quick-register",
        quick_register,
        "Register your worker as a provider and list its offer; again with the same workerId "
        "returns the same provider. Takes your market token or a provisioning token",
        m.QuickRegisterResponse,
        body=m.QuickRegisterRequest,
        tag="marketplace",
        errors=(403, 409),
        provisioning=True,
    ),
    Route(
        "GET",
        "providers/check-new",
        check_new,
        "Your most recently registered provider, or null",
        m.CheckNewResponse,
        tag="marketplace",
    ),
    Route(
        "GET",
        r"providers/(?P<workerId>[^/]+)",
        get_provider,
        "One listed offer",
        m.OfferOut,
        auth="public",
        tag="marketplace",
        errors=(404,),
    ),
    Route(
        "PATCH",
        r"providers/(?P<workerId>[^/]+)",
        update_provider,
        "Change your offer: price, name, location, availability",
        m.ProviderResponse,
        body=m.UpdateProviderRequest,
        tag="marketplace",
        errors=(403, 404),
    ),
    Route(
        "DELETE",
        r"providers/(?P<workerId>[^/]+)",
        unlist_provider,
        "Take your offer off the marketplace (registering the worker again lists it again)",
        m.ProviderResponse,
        tag="marketplace",
        errors=(403, 404),
    ),
)
