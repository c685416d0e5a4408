"""Marketplace search latency on PostgreSQL against primary-key lookups on the same engine.

Starts a throwaway PostgreSQL cluster, migrates it, bulk-inserts a market of providers (100 000
by default: 30 GPU models with case variants, 20 locations, a fifth unmeasured, 40 % online,
95 % listed), ANALYZEs it, then through one async engine measures

* ``search_ms``: random filter combinations (models, min VRAM, max price, locations,
  availability, each of the three sort keys), first page of 50, through ``search_providers``:
  each one session, its item query and, where the page does not tell the total, its count
  (capped at ``--count-cap``, by default the server's ``TOTAL_COUNT_CAP``; a huge cap measures
  the exact count); one query of each shape in the plan runs untimed first (its statement is
  built and compiled once per shape, as in a server that has answered it before);
* ``search_exact_total_ms``: the same queries, interleaved, with an exact ``total`` (no cap);
* ``pk_lookup_ms``: the same number of ``SELECT … FROM providers WHERE id = $1`` through the same
  engine and ORM path, the floor any query pays.

Prints one JSON line with p50/p95/p99 (target: search p99 ≤ 25 ms) and the slowest query shapes.

    python benchmarks/marketplace_search.py [--providers 100000] [--queries 1000] [--seed 1]
                                            [--count-cap N] [--pg-setting NAME=VALUE]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import random
import statistics
import sys
import time
from typing import Any

from sqlalchemy import insert, select, text

from qubix_jupyter.db import migrate
from qubix_jupyter.db.engine import make_engine, make_sessionmaker
from qubix_jupyter.db.marketplace import TOTAL_COUNT_CAP, search_providers
from qubix_jupyter.db.models import Provider, User, new_id
from qubix_jupyter.db.pg_cluster import PgCluster
from qubix_jupyter.market.marketplace import MarketplaceQuery
from qubix_jupyter.market.states import ProviderType

#: model → VRAM (GB) and a typical TFLOP/s
GPUS: dict[str, tuple[float, float]] = {
    "RTX 4090": (24, 82.6), "RTX 4080": (16, 48.7), "RTX 4070 Ti": (12, 40.1),
    "RTX 4070": (12, 29.1), "RTX 4060 Ti": (16, 22.1), "RTX 4060": (8, 15.1),
    "RTX 3090": (24, 35.6), "RTX 3080": (10, 29.8), "RTX 3070": (8, 20.3),
    "RTX 3060": (12, 12.7), "RTX 2080 Ti": (11, 13.4), "GTX 1080 Ti": (11, 11.3),
    "A100": (80, 156.0), "A100 40GB": (40, 156.0), "H100": (80, 267.0), "H200": (141, 267.0),
    "L40S": (48, 91.6), "L4": (24, 30.3), "A10": (24, 31.2), "T4": (16, 8.1),
    "V100": (32, 15.7), "A6000": (48, 38.7), "RX 7900 XTX": (24, 61.4), "RX 7900 XT": (20, 51.6),
    "RX 6800 XT": (16, 20.7), "MI250": (128, 45.3), "M2 Max": (32, 13.6), "M3 Max": (48, 16.4),
    "Arc A770": (16, 19.7), "CPU only": (0, 0.5),
}  # fmt: skip
LOCATIONS = [
    "US-East", "US-West", "US-Central", "Canada", "Brazil", "EU-West", "EU-Central", "EU-North",
    "UK", "France", "Germany", "Poland", "India", "Singapore", "Japan", "Korea", "Australia",
    "South Africa", "UAE", "Mexico",
]  # fmt: skip
BATCH = 5_000
#: a cap no market reaches: the exact total, measured in the same run for comparison
EXACT = 10**12


def make_rows(rng: random.Random, count: int, users: list[str]) -> list[dict[str, Any]]:
    models = list(GPUS)
    weights = [1 / (i + 1) for i in range(len(models))]  # a few popular cards, a long tail
    rows = []
    for _ in range(count):
        model = rng.choices(models, weights)[0]
        vram, tflops = GPUS[model]
        if rng.random() < 0.1:
            model = rng.choice([model.lower(), model.upper()])  # browsers report as they like
        online = rng.random() < 0.4
        rows.append(
            {
                "id": new_id(),
                "worker_id": new_id(),
                "user_id": rng.choice(users),
                "qubic_address": "Q" * 60,
                "type": ProviderType.NATIVE if rng.random() < 0.7 else ProviderType.BROWSER,
                "gpu_model": model,
                "gpu_vram": vram,
                "gpu_count": 0 if model == "CPU only" else rng.choice([1, 1, 1, 2, 4, 8]),
                "cpu_model": "x86-64",
                "cpu_cores": rng.choice([4, 8, 16, 32, 64]),
                "ram_total": rng.choice([16.0, 32.0, 64.0, 128.0]),
                "performance_tflops": (
                    None if rng.random() < 0.2 else round(tflops * rng.uniform(0.8, 1.1), 2)
                ),
                "location": None if rng.random() < 0.05 else rng.choice(LOCATIONS),
                "price_per_hour": max(1, int(tflops * rng.uniform(0.5, 2.0))),
                "is_online": online,
                "is_available": rng.random() < 0.7,
                "is_listed": rng.random() < 0.95,
            }
        )
    return rows


def random_query(rng: random.Random) -> MarketplaceQuery:
    models = list(GPUS)
    return MarketplaceQuery(
        gpu_models=tuple(rng.sample(models, rng.randint(1, 3))) if rng.random() < 0.5 else (),
        min_vram=rng.choice([8, 12, 16, 24, 48, 80]) if rng.random() < 0.4 else None,
        max_price=rng.choice([10, 25, 50, 100, 200]) if rng.random() < 0.4 else None,
        locations=tuple(rng.sample(LOCATIONS, rng.randint(1, 2))) if rng.random() < 0.3 else (),
        availability="available" if rng.random() < 0.8 else "all",
        sort_by=rng.choice(["price", "performance", "availability"]),
        limit=50,
    )


def percentiles(samples: list[float]) -> dict[str, float]:
    cuts = statistics.quantiles(samples, n=100, method="inclusive")
    return {
        "p50": round(cuts[49], 3),
        "p95": round(cuts[94], 3),
        "p99": round(cuts[98], 3),
        "max": round(max(samples), 3),
    }


def shape(q: MarketplaceQuery) -> str:
    parts = [f"sort={q.sort_by}", f"availability={q.availability}"]
    parts += ["models"] if q.gpu_models else []
    parts += ["min_vram"] if q.min_vram is not None else []
    parts += ["max_price"] if q.max_price is not None else []
    parts += ["locations"] if q.locations else []
    return ",".join(parts)


async def load(sessionmaker: Any, engine: Any, rng: random.Random, providers: int) -> list[str]:
    """The market, bulk-inserted and analyzed; returns the provider ids."""
    async with sessionmaker() as s, s.begin():
        users = [new_id() for _ in range(max(1, providers // 50))]
        await s.execute(
            insert(User),
            [{"id": u, "qubic_address": f"U{i:059d}"} for i, u in enumerate(users)],
        )
        rows = make_rows(rng, providers, users)
        for start in range(0, len(rows), BATCH):
            await s.execute(insert(Provider), rows[start : start + BATCH])
    # VACUUM as autovacuum would after a bulk load (it also sets the visibility map, which
    # index-only counts need), and ANALYZE for the planner's statistics.
    async with engine.connect() as conn:
        conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
        await conn.execute(text("VACUUM ANALYZE providers"))
        await conn.execute(text("ANALYZE users"))
    return [r["id"] for r in rows]


async def measure(
    sessionmaker: Any, ids: list[str], rng: random.Random, queries: int, count_cap: int
) -> dict[str, Any]:
    plan = [random_query(rng) for _ in range(queries)]
    lookups = [rng.choice(ids) for _ in range(queries)]

    async def search(q: MarketplaceQuery, cap: int = count_cap) -> float:
        start = time.perf_counter()
        async with sessionmaker() as s:
            page = await search_providers(s, q, count_cap=cap)
        elapsed = (time.perf_counter() - start) * 1000
        assert len(page.items) <= q.limit
        return elapsed

    async def lookup(provider_id: str) -> float:
        start = time.perf_counter()
        async with sessionmaker() as s:
            found = (await s.scalars(select(Provider).where(Provider.id == provider_id))).one()
        elapsed = (time.perf_counter() - start) * 1000
        assert found.id == provider_id
        return elapsed

    # The bulk load's garbage is not part of any search: collect it and keep the survivors out of
    # later collections, or a full collection of them lands inside a timed query.
    gc.collect()
    gc.freeze()
    for q in plan[:50]:  # warm the pool, the plan cache and the buffers
        await search(q)
    # A server compiles each query shape once in its life (the statements are cached by shape):
    # run one query of every shape of the plan first, so no timed query is a shape's first.
    first_of_shape = {shape(q): q for q in reversed(plan)}
    for q in first_of_shape.values():
        await search(q)
    for provider_id in lookups[:50]:
        await lookup(provider_id)
    # interleaved, so both see the same machine state
    search_ms: list[float] = []
    exact_ms: list[float] = []
    pk_ms: list[float] = []
    for q, provider_id in zip(plan, lookups, strict=True):
        search_ms.append(await search(q))
        exact_ms.append(await search(q, EXACT))
        pk_ms.append(await lookup(provider_id))

    timed = list(zip(search_ms, plan, strict=True))
    slowest = sorted(timed, key=lambda t: -t[0])[:5]
    found, pk = percentiles(search_ms), percentiles(pk_ms)
    return {
        "search_ms": found,
        "search_exact_total_ms": percentiles(exact_ms),
        "pk_lookup_ms": pk,
        "p99_ratio_to_pk": round(found["p99"] / pk["p99"], 2),
        "target_p99_ms": 25,
        "meets_target": found["p99"] <= 25,
        "search_ms_by": {
            f"{availability}/{key}": percentiles(
                [ms for ms, q in timed if (q.availability, q.sort_by) == (availability, key)]
            )["p99"]
            for availability in ("available", "all")
            for key in ("price", "performance", "availability")
        },
        "slowest": [{"ms": round(ms, 2), "shape": shape(q)} for ms, q in slowest],
    }


async def run(url: str, providers: int, queries: int, seed: int, count_cap: int) -> dict[str, Any]:
    rng = random.Random(seed)
    engine = make_engine(url)
    sessionmaker = make_sessionmaker(engine)
    try:
        t0 = time.perf_counter()
        ids = await load(sessionmaker, engine, rng, providers)
        load_s = time.perf_counter() - t0
        figures = await measure(sessionmaker, ids, rng, queries, count_cap)
        async with engine.connect() as conn:
            version = (await conn.execute(text("SHOW server_version"))).scalar_one()
    finally:
        await engine.dispose()
    return {
        "benchmark": "marketplace_search",
        "postgresql": version,
        "providers": providers,
        "queries": queries,
        "page_size": 50,
        "count_cap": count_cap,
        "load_s": round(load_s, 1),
        **figures,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--providers", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=1_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--count-cap",
        type=int,
        default=TOTAL_COUNT_CAP,
        help="count matches up to this many (a huge value: the exact total)",
    )
    parser.add_argument(
        "--pg-setting",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a PostgreSQL setting for the throwaway cluster, e.g. random_page_cost=1.1 (SSD)",
    )
    args = parser.parse_args(argv)
    pg_settings = dict(item.split("=", 1) for item in args.pg_setting)
    with PgCluster(settings=pg_settings) as cluster:
        url = cluster.create_database("marketplace")
        migrate.upgrade(url)
        result = asyncio.run(run(url, args.providers, args.queries, args.seed, args.count_cap))
    load = [round(x, 1) for x in os.getloadavg()]  # other work on the machine meanwhile
    print(json.dumps({**result, "pg_settings": pg_settings, "load_average_1_5_15": load}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
