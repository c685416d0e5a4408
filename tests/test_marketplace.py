"""The marketplace on real PostgreSQL and SQLite: search (seed Property 11), registration once per
worker (Property 2), owners' edits, and every way a query or a registration can be refused."""

from __future__ import annotations

import asyncio
import dataclasses
import math
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import func, insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from qubix_jupyter.db import repositories as repo
from qubix_jupyter.db.engine import make_engine, make_sessionmaker
from qubix_jupyter.db.marketplace import (
    Page,
    quick_register,
    search_providers,
    unlist_provider,
    update_provider,
)
from qubix_jupyter.db.models import Provider
from qubix_jupyter.market.errors import InvalidAmount, QubixError, UnknownUser
from qubix_jupyter.market.marketplace import (
    MAX_PAGE_SIZE,
    Forbidden,
    InvalidMarketplaceQuery,
    InvalidOffer,
    MarketplaceQuery,
    UnknownProvider,
    WorkerIdTaken,
)
from qubix_jupyter.market.money import INT64_MAX
from qubix_jupyter.market.states import ProviderType

from .conftest import Database, DatabaseURL

RTX = {"type": "native", "vendor": "NVIDIA", "model": "RTX 4090", "vram": 24, "count": 1}
HOST = {"cpu_model": "Ryzen 9", "cpu_cores": 16, "ram_total": 64.0}


async def _user(s: AsyncSession, tag: str) -> str:
    return (await repo.create_user(s, tag.upper().ljust(60, "A")[:60])).id


async def _register(
    s: AsyncSession, user_id: str, worker_id: str, **kwargs: Any
) -> tuple[Provider, bool]:
    fields: dict[str, Any] = {
        "provider_type": ProviderType.NATIVE,
        "gpu": RTX,
        "price_per_hour": 40,
        **HOST,
        **kwargs,
    }
    return await quick_register(s, user_id, worker_id=worker_id, **fields)


def _run_in_rolled_back_transactions(
    database_url: DatabaseURL,
) -> tuple[asyncio.Runner, Callable[[Callable[[AsyncSession], Awaitable[None]]], None], Any]:
    """A runner and ``run(body)``: ``body(session)`` inside a transaction that is rolled back,
    so each Hypothesis example starts from the same empty market."""
    runner = asyncio.Runner()
    engine = make_engine(database_url.url)
    sessionmaker = make_sessionmaker(engine)

    async def once(body: Callable[[AsyncSession], Awaitable[None]]) -> None:
        async with sessionmaker() as s:
            await s.begin()
            try:
                await body(s)
            finally:
                await s.rollback()

    def run(body: Callable[[AsyncSession], Awaitable[None]]) -> None:
        runner.run(once(body))

    return runner, run, engine


# ---------------------------------------------------------------- Property 11: search


@dataclasses.dataclass(frozen=True)
class OfferRow:
    id: str
    gpu_model: str
    gpu_vram: float
    price_per_hour: int
    location: str | None
    performance_tflops: float | None
    is_online: bool
    is_available: bool
    is_listed: bool


# Small vocabularies so filters hit and prices/performance tie; case and space variants on purpose.
MODELS = ["RTX 4090", "rtx 4090", "Rtx 4090 ", "A100", "a100", "H100", "CPU only"]
LOCATIONS = ["EU", "eu", "US-East", "Asia"]
# Values on the filters' boundaries come from the same small sets as the filters, most of the
# time, so that ``>=`` against ``>`` and ``<=`` against ``<`` are told apart in most runs.
VRAM_STEPS = st.sampled_from([0.0, 8.0, 12.0, 24.0, 80.0])
PRICE_STEPS = st.sampled_from([0, 1, 10, 40, 100, 500])
VRAMS = VRAM_STEPS | VRAM_STEPS | st.floats(0, 100, allow_nan=False, allow_subnormal=False)
PRICES = PRICE_STEPS | PRICE_STEPS | st.integers(0, 1000)
PERFORMANCE = st.none() | st.sampled_from([10.0, 82.6]) | st.floats(0, 1000, allow_subnormal=False)

offers = st.builds(
    OfferRow,
    id=st.uuids().map(str),
    gpu_model=st.sampled_from(MODELS),
    gpu_vram=VRAMS,
    price_per_hour=PRICES,
    location=st.none() | st.sampled_from(LOCATIONS),
    performance_tflops=PERFORMANCE,
    is_online=st.booleans(),
    is_available=st.booleans(),
    is_listed=st.booleans() | st.just(True),
)
populations = st.lists(offers, min_size=10, max_size=60, unique_by=lambda o: o.id)


def sometimes(strategy: st.SearchStrategy[Any], absent: Any = None) -> st.SearchStrategy[Any]:
    """``strategy`` half of the time, else ``absent``: most queries keep results to check."""
    return st.booleans().flatmap(lambda present: strategy if present else st.just(absent))


queries = st.builds(
    MarketplaceQuery,
    gpu_models=sometimes(
        st.lists(st.sampled_from([*MODELS, "RTX 4090", "B200"]), min_size=1, max_size=4), ()
    ).map(tuple),
    min_vram=sometimes(VRAMS),
    max_price=sometimes(PRICES),
    locations=sometimes(
        st.lists(st.sampled_from([*LOCATIONS, "Mars"]), min_size=1, max_size=3), ()
    ).map(tuple),
    availability=st.sampled_from(["available", "all"]),
    sort_by=st.sampled_from(["price", "performance", "availability"]),
    limit=st.integers(1, 60),
)


async def _insert_offers(s: AsyncSession, rows: list[OfferRow]) -> None:
    owner = await _user(s, "owner")
    if rows:
        await s.execute(
            insert(Provider),
            [
                {
                    **dataclasses.asdict(row),
                    "worker_id": f"w-{row.id}",
                    "user_id": owner,
                    "qubic_address": "Q" * 60,
                    "type": ProviderType.NATIVE,
                    "gpu_count": 1,
                    **HOST,
                }
                for row in rows
            ],
        )


def test_filter_correctness(database_url: DatabaseURL) -> None:
    """**Feature: qubix-enterprise-upgrade, Property 11: For any marketplace filter combination, all returned results should match the filter criteria**

    For a random market and a random query: every item on every page matches the query, nothing
    that matches is missing, the order is the query's sort key, the pages concatenate to the full
    result without repeats, every page tells the right total, and any window equals the same
    window of the result computed in Python.
    """  # noqa: E501
    runner, run, engine = _run_in_rolled_back_transactions(database_url)

    @settings(max_examples=100, deadline=None)
    @given(
        population=populations,
        query=queries,
        data=st.data(),
    )
    def check(population: list[OfferRow], query: MarketplaceQuery, data: st.DataObject) -> None:
        # Put the bounds on some offer's own value half of the time: the boundary is where a
        # filter is most easily wrong (> for >=).
        if query.min_vram is not None and data.draw(st.booleans(), label="vram on an offer"):
            offer = data.draw(st.sampled_from(population), label="vram offer")
            query = dataclasses.replace(query, min_vram=offer.gpu_vram)
        if query.max_price is not None and data.draw(st.booleans(), label="price on an offer"):
            offer = data.draw(st.sampled_from(population), label="price offer")
            query = dataclasses.replace(query, max_price=offer.price_per_hour)
        expected = sorted((o for o in population if query.matches(o)), key=query.sort_key)
        window = data.draw(st.integers(0, len(expected) + 2), label="offset")

        async def body(s: AsyncSession) -> None:
            await _insert_offers(s, population)
            seen: list[Provider] = []
            offset = 0
            while True:
                page = await search_providers(s, dataclasses.replace(query, offset=offset))
                assert (page.offset, page.limit) == (offset, query.limit)
                assert page.total == len(expected)
                assert len(page.items) <= query.limit
                for item in page.items:
                    assert query.matches(item), item.id
                seen += page.items
                if not page.items:
                    break
                offset += query.limit
            assert [p.id for p in seen] == [o.id for o in expected]
            keys = [query.sort_key(p) for p in seen]
            assert keys == sorted(keys)

            shifted = dataclasses.replace(query, offset=window)
            page = await search_providers(s, shifted)
            assert [p.id for p in page.items] == [o.id for o in shifted.page(population)]
            assert page.total == len(expected)

        run(body)

    try:
        check()
    finally:
        runner.run(engine.dispose())
        runner.close()


async def test_search_orders_and_filters_a_known_market(database: Database):
    async with database.sessionmaker() as s, s.begin():
        rows = [
            OfferRow("a", "RTX 4090", 24, 40, "EU", 82.6, True, True, True),
            OfferRow("b", "rtx 4090", 24, 40, "EU", None, True, True, True),
            OfferRow("c", "A100", 80, 90, "US", 150.0, True, False, True),
            OfferRow("d", "A100", 40, 10, None, 150.0, False, True, True),
            OfferRow("e", "RTX 4090", 24, 1, "EU", 99.0, True, True, False),
            OfferRow("f", "RTX 3080", 10, 40, "EU", 82.6, True, True, True),
        ]  # fmt: skip
        await _insert_offers(s, rows)

        async def ids(**kwargs: Any) -> list[str]:
            page = await search_providers(s, MarketplaceQuery(**kwargs))
            return [p.id for p in page.items]

        assert await ids() == ["a", "f", "b"]  # cheapest, then faster, unmeasured last
        assert await ids(availability="all") == ["d", "a", "f", "b", "c"]  # never unlisted "e"
        assert await ids(availability="all", sort_by="performance") == ["d", "c", "a", "f", "b"]
        assert await ids(availability="all", sort_by="availability") == ["a", "b", "f", "c", "d"]
        assert await ids(gpu_models=("rtx 4090",)) == ["a", "b"]  # case-insensitive, exact
        assert await ids(gpu_models=("RTX",)) == []  # not a substring match
        assert await ids(availability="all", min_vram=40, max_price=90) == ["d", "c"]
        assert await ids(availability="all", locations=("EU", "US")) == ["a", "f", "b", "c"]
        assert await ids(availability="all", locations=("eu",)) == []  # locations are exact

        second = await search_providers(s, MarketplaceQuery(availability="all", offset=2, limit=2))
        assert ([p.id for p in second.items], second.total) == (["f", "b"], 5)
        beyond = await search_providers(s, MarketplaceQuery(offset=10))
        assert beyond == Page(items=[], total=3, offset=10, limit=50)
        for far in (17_223_671_818, INT64_MAX - 1, INT64_MAX):  # past INTEGER, up to BIGINT's end
            for availability in ("available", "all"):
                page = await search_providers(
                    s, MarketplaceQuery(availability=availability, offset=far, limit=157)
                )
                assert (page.items, page.offset) == ([], far)
                assert page.total == (3 if availability == "available" else 5)

        # A capped count: exact below the cap, a lower bound (never above the truth) at it,
        # and never below the end of the page asked for.
        first = MarketplaceQuery(availability="all", limit=2)
        exact = await search_providers(s, first, count_cap=6)
        assert (exact.total, exact.total_is_exact) == (5, True)
        capped = await search_providers(s, first, count_cap=3)
        assert ([p.id for p in capped.items], capped.total, capped.total_is_exact) == (
            ["d", "a"],
            3,
            False,
        )
        deep = await search_providers(
            s, MarketplaceQuery(availability="all", offset=2, limit=2), count_cap=1
        )
        assert ([p.id for p in deep.items], deep.total, deep.total_is_exact) == (
            ["f", "b"],
            5,
            False,
        )


# ---------------------------------------------------------------- query validation


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"min_vram": -1}, "min_vram"),
        ({"min_vram": -0.5}, "min_vram"),
        ({"min_vram": math.nan}, "min_vram"),
        ({"min_vram": math.inf}, "min_vram"),
        ({"min_vram": "8"}, "min_vram"),
        ({"min_vram": True}, "min_vram"),
        ({"max_price": -1}, "max_price"),
        ({"max_price": 40.5}, "max_price"),
        ({"max_price": 2**63}, "max_price"),
        ({"limit": 0}, "limit"),
        ({"limit": MAX_PAGE_SIZE + 1}, "limit"),
        ({"offset": -1}, "offset"),
        ({"sort_by": "cheapest"}, "sort_by"),
        ({"availability": "online"}, "availability"),
        ({"gpu_models": "RTX 4090"}, "gpu_models"),  # a bare string is not a list
        ({"gpu_models": ("",)}, "gpu_models"),
        ({"locations": (None,)}, "locations"),
        ({"locations": ("EU",) * 51}, "locations"),
    ],
)
def test_bad_queries_are_refused_with_a_typed_422(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidMarketplaceQuery) as err:
        MarketplaceQuery(**kwargs)
    assert err.value.status == 422
    assert err.value.to_body()["error"]["code"] == "invalid_query"
    assert err.value.details["field"] == field


def test_queries_from_the_api_use_the_seed_names() -> None:
    q = MarketplaceQuery.from_api(
        {
            "gpuModel": ["RTX 4090"],
            "minVram": 16,
            "maxPrice": 50,
            "location": ["EU"],
            "availability": "all",
            "sortBy": "performance",
            "offset": 50,
            "limit": 25,
        }
    )
    assert q == MarketplaceQuery(("RTX 4090",), 16.0, 50, ("EU",), "all", "performance", 50, 25)
    assert MarketplaceQuery.from_api({"maxPrice": None}) == MarketplaceQuery()
    with pytest.raises(InvalidMarketplaceQuery) as err:
        MarketplaceQuery.from_api({"gpu": "RTX 4090"})
    assert err.value.details["unknown"] == ["gpu"]


# ---------------------------------------------------------------- Property 2: registration

WORKER_IDS = st.text(
    st.characters(categories=["L", "N", "P", "S"], include_characters=" "), min_size=1, max_size=128
)
GPUS = st.fixed_dictionaries(
    {"type": st.sampled_from(["native", "webgpu", "webgl"])},
    optional={
        "vendor": st.sampled_from(["NVIDIA", "AMD", "Apple"]),
        "model": st.sampled_from(["RTX 4090", "A100", "M2 Max"]),
        "renderer": st.sampled_from(["ANGLE (NVIDIA GeForce RTX 3080)", "Apple GPU"]),
        "vram": st.integers(0, 80) | st.floats(0, 80, allow_subnormal=False),
        "count": st.integers(0, 8),
        "driver": st.sampled_from(["550.54", "535.104"]),
        "cudaCapability": st.sampled_from(["8.9", "8.0"]),
    },
)
ATTEMPTS = st.lists(
    st.fixed_dictionaries(
        {
            "worker": st.integers(0, 3),
            "by_other_user": st.booleans(),
            "gpu": GPUS,
            "cpu_cores": st.integers(1, 128),
            "price_per_hour": st.integers(0, 10_000),
            "provider_type": st.sampled_from(list(ProviderType)),
        }
    ),
    min_size=1,
    max_size=12,
)


def test_registration_idempotency(database_url: DatabaseURL) -> None:
    """**Feature: qubix-enterprise-upgrade, Property 2: For any provider with a given workerId, multiple registration attempts should result in the same provider record without duplicates**

    Random workers registered in random order, again and again, sometimes by a second user: the
    first registration creates the provider, every later one by its owner returns the same id
    with the hardware it reports and the price first chosen, another user is refused, and each
    workerId has exactly one row.
    """  # noqa: E501
    runner, run, engine = _run_in_rolled_back_transactions(database_url)

    @settings(max_examples=100, deadline=None)
    @given(workers=st.lists(WORKER_IDS, min_size=1, max_size=4, unique=True), attempts=ATTEMPTS)
    def check(workers: list[str], attempts: list[dict[str, Any]]) -> None:
        async def body(s: AsyncSession) -> None:
            users = [await _user(s, "first"), await _user(s, "second")]
            known: dict[str, tuple[str, str, int]] = {}  # worker → (owner, provider id, price)
            for attempt in attempts:
                worker = workers[attempt["worker"] % len(workers)]
                user = users[attempt["by_other_user"]]
                kwargs = {k: attempt[k] for k in ("gpu", "cpu_cores", "price_per_hour")}
                kwargs["provider_type"] = attempt["provider_type"]
                if worker in known and known[worker][0] != user:
                    with pytest.raises(WorkerIdTaken):
                        await _register(s, user, worker, **kwargs)
                    continue
                provider, created = await _register(s, user, worker, **kwargs)
                assert created == (worker not in known)
                known.setdefault(worker, (user, provider.id, attempt["price_per_hour"]))
                owner, provider_id, price = known[worker]
                assert (provider.id, provider.user_id, provider.worker_id) == (
                    provider_id,
                    owner,
                    worker,
                )
                assert provider.price_per_hour == price
                assert provider.cpu_cores == attempt["cpu_cores"]
                assert provider.type == attempt["provider_type"]
                assert provider.gpu_vram == float(attempt["gpu"].get("vram", 0.0))
            rows = (await s.execute(select(Provider.worker_id, Provider.id))).all()
            assert sorted(rows) == sorted((w, pid) for w, (_, pid, _) in known.items())

        run(body)

    try:
        check()
    finally:
        runner.run(engine.dispose())
        runner.close()


async def test_registering_again_refreshes_hardware_and_keeps_the_owners_choices(
    database: Database,
):
    async with database.sessionmaker() as s, s.begin():
        user = await _user(s, "owner")
        first, created = await _register(
            s, user, "w-1", price_per_hour=40, name="Box", location="EU"
        )
        assert created
        assert (first.gpu_model, first.gpu_count, first.is_listed) == (
            "RTX 4090",
            1,
            True,
        )
        await unlist_provider(s, first.id, user)
    async with database.sessionmaker() as s, s.begin():
        again, created = await _register(
            s,
            user,
            "w-1",
            gpu={"type": "webgpu", "renderer": "ANGLE (Apple M2)", "vram": 16},
            price_per_hour=1,
            name="Other",
            location="US",
        )
    assert not created
    assert again.id == first.id
    assert (again.type, again.gpu_model, again.gpu_vram, again.gpu_count) == (
        ProviderType.NATIVE,
        "ANGLE (Apple M2)",
        16.0,
        1,
    )
    assert (again.price_per_hour, again.name, again.location) == (40, "Box", "EU")
    assert again.is_listed  # registering again shares the GPU again


async def test_concurrent_registrations_of_one_worker_make_one_row(database: Database):
    async with database.sessionmaker() as s, s.begin():
        user = await _user(s, "owner")
    # On PostgreSQL every transaction is open before any registers, so all 20 race for the
    # insert; SQLite takes the write lock at BEGIN, so there they queue.
    barrier = asyncio.Barrier(20) if database.kind == "postgresql" else None

    async def register() -> tuple[str, bool]:
        async with database.sessionmaker() as s, s.begin():
            if barrier is not None:
                await s.execute(select(1))
                await barrier.wait()
            provider, created = await _register(s, user, "w-race")
            return provider.id, created

    results = await asyncio.gather(*(register() for _ in range(20)))
    assert len({pid for pid, _ in results}) == 1
    assert sum(created for _, created in results) == 1
    async with database.sessionmaker() as s:
        count = select(func.count()).select_from(Provider).where(Provider.worker_id == "w-race")
        assert (await s.execute(count)).scalar_one() == 1


async def test_concurrent_registrations_by_different_users_have_one_winner(database: Database):
    async with database.sessionmaker() as s, s.begin():
        users = [await _user(s, f"user{i}") for i in range(8)]
    barrier = asyncio.Barrier(len(users)) if database.kind == "postgresql" else None

    async def register(user: str) -> str | None:
        try:
            async with database.sessionmaker() as s, s.begin():
                if barrier is not None:
                    await s.execute(select(1))
                    await barrier.wait()
                provider, _ = await _register(s, user, "w-contested")
                return provider.user_id
        except WorkerIdTaken:
            return None

    winners = [w for w in await asyncio.gather(*map(register, users)) if w is not None]
    assert len(winners) == 1
    async with database.sessionmaker() as s:
        rows = (await s.scalars(select(Provider.user_id))).all()
    assert rows == winners


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"worker_id": ""}, InvalidOffer),
        ({"worker_id": "w" * 129}, InvalidOffer),
        ({"worker_id": "w\n1"}, InvalidOffer),
        ({"gpu": {"model": "RTX 4090"}}, InvalidOffer),  # no detection type
        ({"gpu": {"type": "native", "vram": -1}}, InvalidOffer),
        ({"gpu": {"type": "native", "vram": math.nan}}, InvalidOffer),
        ({"gpu": {"type": "native", "count": -1}}, InvalidOffer),
        ({"cpu_cores": 0}, InvalidOffer),
        ({"ram_total": math.inf}, InvalidOffer),
        ({"price_per_hour": -1}, InvalidAmount),
        ({"price_per_hour": 1.5}, InvalidAmount),
        ({"location": "x" * 101}, InvalidOffer),
        ({"provider_type": "CLOUD"}, InvalidOffer),
    ],
)
async def test_bad_registrations_are_refused_and_write_nothing(
    database: Database, kwargs: dict[str, Any], error: type[QubixError]
):
    async with database.sessionmaker() as s, s.begin():
        user = await _user(s, "owner")
        fields = dict(kwargs)
        worker = fields.pop("worker_id", "w-1")
        with pytest.raises(error) as err:
            await _register(s, user, worker, **fields)
        assert err.value.status == 422
        assert (await s.execute(select(func.count()).select_from(Provider))).scalar_one() == 0


async def test_registering_needs_a_known_user(database: Database):
    async with database.sessionmaker() as s, s.begin():
        with pytest.raises(UnknownUser):
            await _register(s, "no-such-user", "w-1")


async def test_a_worker_without_a_gpu_is_listed_as_cpu_only(database: Database):
    async with database.sessionmaker() as s, s.begin():
        user = await _user(s, "owner")
        provider, _ = await _register(s, user, "w-cpu", gpu={"type": "native"})
    assert (provider.gpu_model, provider.gpu_count, provider.gpu_vram) == ("CPU only", 0, 0.0)


# ---------------------------------------------------------------- owners' edits


async def _owned_provider(database: Database) -> tuple[str, str, str]:
    async with database.sessionmaker() as s, s.begin():
        owner, other = await _user(s, "owner"), await _user(s, "other")
        provider, _ = await _register(s, owner, "w-1", price_per_hour=40)
        provider.is_online = True
    return owner, other, provider.id


async def _listed(database: Database, **kwargs: Any) -> list[Provider]:
    async with database.sessionmaker() as s:
        return (await search_providers(s, MarketplaceQuery(**kwargs))).items


async def test_the_owner_updates_the_offer(database: Database):
    owner, _, provider_id = await _owned_provider(database)
    async with database.sessionmaker() as s, s.begin():
        updated = await update_provider(
            s, provider_id, owner, price_per_hour=25, name="Lab box", location="EU"
        )
    assert (updated.price_per_hour, updated.name, updated.location) == (25, "Lab box", "EU")
    [listed] = await _listed(database, max_price=25, locations=("EU",))
    assert listed.id == provider_id

    async with database.sessionmaker() as s, s.begin():
        busy = await update_provider(s, provider_id, owner, is_available=False)
    assert (busy.price_per_hour, busy.name, busy.is_available) == (25, "Lab box", False)
    assert await _listed(database) == []
    assert [p.id for p in await _listed(database, availability="all")] == [provider_id]


async def test_only_the_owner_may_update_or_unlist(database: Database):
    owner, other, provider_id = await _owned_provider(database)
    async with database.sessionmaker() as s, s.begin():
        with pytest.raises(Forbidden) as err:
            await update_provider(s, provider_id, other, price_per_hour=1)
        assert err.value.status == 403
        with pytest.raises(Forbidden):
            await unlist_provider(s, provider_id, other)
        with pytest.raises(UnknownProvider) as missing:
            await update_provider(s, "no-such-provider", owner, price_per_hour=1)
        assert missing.value.status == 404
        with pytest.raises(UnknownProvider):
            await unlist_provider(s, "no-such-provider", owner)
    [listed] = await _listed(database)
    assert (listed.price_per_hour, listed.is_listed) == (40, True)


async def test_bad_updates_are_refused_before_anything_changes(database: Database):
    owner, _, provider_id = await _owned_provider(database)
    async with database.sessionmaker() as s, s.begin():
        with pytest.raises(InvalidAmount):
            await update_provider(s, provider_id, owner, price_per_hour=-5)
        with pytest.raises(InvalidOffer):
            await update_provider(s, provider_id, owner, name="")
        with pytest.raises(InvalidOffer):
            await update_provider(s, provider_id, owner, is_available="no")  # type: ignore[arg-type]
    [listed] = await _listed(database)
    assert (listed.price_per_hour, listed.name, listed.is_available) == (40, None, True)


async def test_an_unlisted_offer_leaves_the_marketplace(database: Database):
    owner, _, provider_id = await _owned_provider(database)
    async with database.sessionmaker() as s, s.begin():
        unlisted = await unlist_provider(s, provider_id, owner)
    assert not unlisted.is_listed
    assert await _listed(database, availability="all") == []
    async with database.sessionmaker() as s, s.begin():
        again, created = await _register(s, owner, "w-1")
    assert (again.id, created, again.is_listed) == (provider_id, False, True)
