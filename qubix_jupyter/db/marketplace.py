"""The marketplace in SQL: search the listing, register a worker once, let owners edit their offer.

Each function works inside the caller's session and transaction. What a search means is defined
in plain Python by ``market.marketplace.MarketplaceQuery``; :func:`search_providers` is that
definition as one SQL query (plus one count when the page does not tell the total).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    bindparam,
    case,
    false,
    func,
    select,
    true,
    union_all,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from ..market.errors import UnknownUser
from ..market.marketplace import (
    Forbidden,
    InvalidOffer,
    MarketplaceQuery,
    UnknownProvider,
    WorkerIdTaken,
    hardware_from_gpu_info,
    host_fields,
    require_location,
    require_name,
    require_price,
    require_provider_type,
    require_worker_id,
)
from ..market.money import INT64_MAX
from ..market.states import ProviderType
from .models import Provider, User, new_id, utcnow

#: A search counts its matches up to this many (or to the end of the page asked for, if that is
#: further); past it ``total`` is a lower bound. An exact count over a large market reads every
#: matching entry, and no one pages through ten thousand offers.
TOTAL_COUNT_CAP = 10_000


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a search and the number of offers that match it on all pages: exactly when
    ``total_is_exact``, else at least ``total``."""

    items: list[Provider]
    total: int
    offset: int
    limit: int
    total_is_exact: bool = True


@dataclass(frozen=True, slots=True)
class _Shape:
    """What a search's SQL depends on; the values (models, bounds, page) are its parameters."""

    availability: str
    sort_by: str
    models: bool
    min_vram: bool
    max_price: bool
    locations: bool

    @classmethod
    def of(cls, query: MarketplaceQuery) -> _Shape:
        return cls(
            query.availability,
            query.sort_by,
            bool(query.folded_models),
            query.min_vram is not None,
            query.max_price is not None,
            bool(query.locations),
        )


def _parameters(
    query: MarketplaceQuery, shape: _Shape, cap: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The values of the page's statement and of the count's."""
    filters: dict[str, Any] = {}
    if shape.models:
        filters["models"] = list(query.folded_models)
    if shape.min_vram:
        filters["min_vram"] = query.min_vram
    if shape.max_price:
        filters["max_price"] = query.max_price
    if shape.locations:
        filters["locations"] = list(query.locations)
    page = {**filters, "page_offset": query.offset, "page_limit": query.limit}
    if shape.availability != "available":  # each cell's branch reads up to the page's end
        page["window"] = min(query.offset + query.limit, INT64_MAX)
    return page, {**filters, "cap": cap}


def _conditions(shape: _Shape) -> list[ColumnElement[bool]]:
    # ``col = true`` rather than ``col IS true``: only the former can use an index on PostgreSQL.
    where = [Provider.is_listed == true()]
    if shape.availability == "available":
        where += [Provider.is_online == true(), Provider.is_available == true()]
    if shape.models:
        where.append(func.lower(Provider.gpu_model).in_(bindparam("models", expanding=True)))
    if shape.min_vram:
        where.append(Provider.gpu_vram >= bindparam("min_vram"))
    if shape.max_price:
        where.append(Provider.price_per_hour <= bindparam("max_price"))
    if shape.locations:
        where.append(Provider.location.in_(bindparam("locations", expanding=True)))
    return where


#: The (is_online, is_available) cells an ``availability=all`` search reads, best availability
#: rank first (``available`` reads only the first, and ``_conditions`` holds it).
_ALL_CELLS = ((True, True), (True, False), (False, True), (False, False))


def _order(shape: _Shape, offer: Any) -> list[Any]:
    """SQL for ``MarketplaceQuery.sort_key`` within one cell (where the availability rank is
    constant); every order ends in the primary key."""
    price = offer.price_per_hour.asc()
    perf = offer.performance_tflops.desc().nulls_last()
    if shape.sort_by == "price":
        return [price, perf, offer.id]
    if shape.sort_by == "performance":
        return [perf, price, offer.id]
    return [price, offer.id]


def _rank(offer: Any) -> Any:
    """``market.marketplace.availability_rank`` in SQL."""
    online_rank = case((offer.is_available == true(), 0), else_=1)
    return case((offer.is_online == true(), online_rank), else_=2)


#: What a page is chosen and ordered by: the sort columns, the availability cell and the key.
_KEYS = ("id", "price_per_hour", "performance_tflops", "is_online", "is_available")


def _items(shape: _Shape, where: list[ColumnElement[bool]]) -> Any:
    """One statement for the page: choose the page's keys, then join their rows.

    Choosing reads only the filter and sort columns, so an index that holds them all can answer
    it without visiting the table, however far it must read to fill a page; only the page's rows
    are then read whole. Across cells the choice is a UNION ALL of one ordered, limited branch
    per cell, merged: each branch is a range of an index on (is_online, is_available, <sort
    columns>) read in order, where one ORDER BY over all cells would sort every listed offer.
    """
    keys = [getattr(Provider, name) for name in _KEYS]
    if shape.availability == "available":  # ``where`` already holds the cell
        chosen = select(*keys).where(*where).order_by(*_order(shape, Provider))
    else:
        branches = [
            select(*keys)
            .where(
                *where,
                Provider.is_online == (true() if online else false()),
                Provider.is_available == (true() if available else false()),
            )
            .order_by(*_order(shape, Provider))
            .limit(bindparam("window", type_=BigInteger))
            .subquery()
            .select()
            for online, available in _ALL_CELLS
        ]
        merged = union_all(*branches).subquery("cells")
        chosen = select(merged).order_by(*_full_order(shape, merged.c))
    page = (
        chosen.offset(bindparam("page_offset", type_=BigInteger))
        .limit(bindparam("page_limit", type_=BigInteger))
        .subquery("page")
    )
    return (
        select(Provider).join(page, Provider.id == page.c.id).order_by(*_full_order(shape, page.c))
    )


def _full_order(shape: _Shape, offer: Any) -> list[Any]:
    order = _order(shape, offer)
    if shape.sort_by == "availability" and shape.availability != "available":
        order.insert(0, _rank(offer))
    return order


@functools.cache
def _statements(shape: _Shape) -> tuple[Any, Any]:
    """The page's statement and the capped count's, built once per shape (at most 2 × 3 × 16):
    building them cost more than PostgreSQL took to run them."""
    where = _conditions(shape)
    matches = select(Provider.id).where(*where).limit(bindparam("cap", type_=BigInteger))
    count = select(func.count()).select_from(matches.subquery("matches"))
    return _items(shape, where), count


async def search_providers(
    session: AsyncSession, query: MarketplaceQuery, *, count_cap: int = TOTAL_COUNT_CAP
) -> Page:
    """The listed offers that match ``query``, in its order, one page of them, and their total.

    The total is exact up to ``count_cap`` matches (or up to one past the page, if further);
    beyond, the page says ``total_is_exact=False`` and ``total`` is the cap, a lower bound.
    """
    shape = _Shape.of(query)
    items_statement, count_statement = _statements(shape)
    # Bound by BIGINT: an offset may be anything up to INT64_MAX (an empty page, not an error).
    cap = min(max(count_cap, query.offset + query.limit + 1), INT64_MAX)
    page_values, count_values = _parameters(query, shape, cap)
    items = list((await session.scalars(items_statement, page_values)).all())
    if len(items) < query.limit and (items or query.offset == 0):
        # the last page: it tells the total by itself
        total, exact = query.offset + len(items), True
    else:
        total = (await session.execute(count_statement, count_values)).scalar_one()
        exact = total < cap
    return Page(
        items=items, total=total, offset=query.offset, limit=query.limit, total_is_exact=exact
    )


# --------------------------------------------------------------------------------- registration


async def _locked(session: AsyncSession, stmt: Any) -> Provider | None:
    return (await session.scalars(stmt.with_for_update())).one_or_none()


def _insert_once(session: AsyncSession, values: dict[str, Any]) -> Any:
    """INSERT … ON CONFLICT (worker_id) DO NOTHING RETURNING the row, in the session's dialect."""
    dialect = session.get_bind().dialect.name
    insert: Any = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}[dialect]
    return (
        insert(Provider)
        .values(**values)
        .on_conflict_do_nothing(index_elements=[Provider.worker_id])
        .returning(Provider)
    )


async def quick_register(
    session: AsyncSession,
    user_id: str,
    *,
    worker_id: str,
    provider_type: ProviderType | str,
    gpu: dict[str, Any],
    cpu_model: str,
    cpu_cores: int,
    ram_total: float,
    price_per_hour: int,
    name: str | None = None,
    location: str | None = None,
) -> tuple[Provider, bool]:
    """Register ``worker_id`` as ``user_id``'s provider, once (seed Property 2).

    A first registration creates a listed, offline provider and returns ``(provider, True)``.
    Registering the same worker again returns the same provider and ``False``: it refreshes what
    the machine reports (type, GPU, host) and lists the offer again, but keeps what the owner
    chose (price, name, location: change those with :func:`update_provider`). A worker that
    belongs to another user is :class:`WorkerIdTaken` (409). Concurrent registrations of one
    worker make one row: the insert skips on the unique ``worker_id`` and the loser re-reads.
    """
    worker_id = require_worker_id(worker_id)
    reported: dict[str, Any] = {
        "type": require_provider_type(provider_type),
        **hardware_from_gpu_info(gpu),
        **host_fields(cpu_model=cpu_model, cpu_cores=cpu_cores, ram_total=ram_total),
    }
    chosen = {
        "price_per_hour": require_price(price_per_hour),
        "name": require_name(name),
        "location": require_location(location),
    }
    user = await session.get(User, user_id)
    if user is None:
        raise UnknownUser(f"no user {user_id!r}", user_id=user_id)

    by_worker = select(Provider).where(Provider.worker_id == worker_id)
    provider = await _locked(session, by_worker)
    if provider is None:
        values = {
            "id": new_id(),
            "worker_id": worker_id,
            "user_id": user_id,
            "qubic_address": user.qubic_address,
            "registered_at": utcnow(),
            **reported,
            **chosen,
        }
        created = (await session.scalars(_insert_once(session, values))).one_or_none()
        if created is not None:
            return created, True
        # Another transaction registered this worker between our read and our insert.
        provider = await _locked(session, by_worker)
        assert provider is not None, "ON CONFLICT skipped the insert, so the row exists"

    if provider.user_id != user_id:
        raise WorkerIdTaken(
            f"worker {worker_id!r} is registered by another user", worker_id=worker_id
        )
    for column, value in reported.items():
        setattr(provider, column, value)
    provider.is_listed = True
    await session.flush()
    return provider, False


async def _owned(session: AsyncSession, provider_id: str, user_id: str) -> Provider:
    provider = await _locked(session, select(Provider).where(Provider.id == provider_id))
    if provider is None:
        raise UnknownProvider(f"no provider {provider_id!r}", provider_id=provider_id)
    if provider.user_id != user_id:
        raise Forbidden("this provider belongs to another user", provider_id=provider_id)
    return provider


async def update_provider(
    session: AsyncSession,
    provider_id: str,
    user_id: str,
    *,
    price_per_hour: int | None = None,
    name: str | None = None,
    location: str | None = None,
    is_available: bool | None = None,
) -> Provider:
    """The owner changes their offer; ``None`` leaves a field as it is. Not the owner:
    :class:`Forbidden` (403); no such provider: :class:`UnknownProvider` (404)."""
    changes: dict[str, Any] = {}
    if price_per_hour is not None:
        changes["price_per_hour"] = require_price(price_per_hour)
    if name is not None:
        changes["name"] = require_name(name)
    if location is not None:
        changes["location"] = require_location(location)
    if is_available is not None:
        if not isinstance(is_available, bool):
            raise InvalidOffer("is_available must be true or false", field="is_available")
        changes["is_available"] = is_available
    provider = await _owned(session, provider_id, user_id)
    for column, value in changes.items():
        setattr(provider, column, value)
    await session.flush()
    return provider


async def unlist_provider(session: AsyncSession, provider_id: str, user_id: str) -> Provider:
    """The owner takes their offer off the marketplace (the row and its history stay).
    Registering the worker again lists it again."""
    provider = await _owned(session, provider_id, user_id)
    provider.is_listed = False
    await session.flush()
    return provider
