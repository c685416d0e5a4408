"""The marketplace endpoints through the real HTTP stack, on SQLite and PostgreSQL.

The search's meaning is held to ``MarketplaceQuery.matches``/``sort_key`` by the Hypothesis
Property 11 test (tests/test_marketplace.py); these cases check that the HTTP layer passes each
filter, order and page through, and refuses bad ones with a 422 naming the parameter.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from tornado.httpclient import HTTPResponse

from qubix_jupyter.settlement.keys import KeyPair

from ..conftest import DatabaseURL
from .conftest import SEED_ALICE, SEED_BOB, Api, body_of, execute_sql, login

ALICE = KeyPair.from_seed(SEED_ALICE).identity
BOB = KeyPair.from_seed(SEED_BOB).identity
PRIVATE = {"userId", "totalEarnings", "isListed", "uptime"}


@pytest.fixture
def search(jp_fetch: Callable[..., Any]) -> Callable[..., Any]:
    """``GET providers`` with query parameters (a list of pairs: names may repeat)."""

    async def run(*pairs: tuple[str, Any]) -> HTTPResponse:
        return await jp_fetch(  # type: ignore[no-any-return]
            "qubix",
            "api",
            "providers",
            params=[(k, str(v)) for k, v in pairs],
            headers={"Authorization": ""},
            raise_error=False,
        )

    return run


def offer(worker_id: str, address: str, **changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": "native",
        "gpu": {"type": "native", "vendor": "NVIDIA", "model": "RTX 4090", "vram": 24, "count": 1},
        "workerId": worker_id,
        "qubicAddress": address,
        "pricePerHour": 40,
        "name": f"{worker_id}'s box",
        "location": "EU",
        "cpuModel": "Ryzen 9",
        "cpuCores": 16,
        "ramTotal": 64,
    }
    body.update(changes)
    return body


async def register(api: Api, token: str, body: dict[str, Any]) -> dict[str, Any]:
    response = await api("POST", "providers/quick-register", json_body=body, token=token)
    assert response.code == 200, response.body
    return body_of(response)  # type: ignore[no-any-return]


async def set_state(url: str, worker_id: str, **columns: Any) -> None:
    assignments = ", ".join(f"{column} = :{column}" for column in columns)
    await execute_sql(
        url, f"UPDATE providers SET {assignments} WHERE worker_id = :w", w=worker_id, **columns
    )


def errors_of(response: HTTPResponse) -> list[str]:
    """The parameters a 422 names."""
    assert response.code == 422, response.body
    error = body_of(response)["error"]
    assert error["code"] == "validation_failed"
    return [e["loc"][0] for e in error["details"]["errors"]]


def workers(response: HTTPResponse) -> list[str]:
    assert response.code == 200, response.body
    return [o["workerId"] for o in body_of(response)["items"]]


# ---------------------------------------------------------------------- registration


async def test_quick_register_twice_is_the_same_provider(api: Api):
    """**Feature: qubix-enterprise-upgrade, Property 2: Registration Idempotency** (end to end)"""
    token = (await login(api))["token"]
    first = await register(api, token, offer("w-1", ALICE))
    assert first["success"] is True
    assert first["created"] is True
    provider = first["provider"]
    assert provider["workerId"] == "w-1"
    assert provider["qubicAddress"] == ALICE
    assert provider["type"] == "native"
    assert (provider["gpuModel"], provider["gpuVram"], provider["gpuCount"]) == ("RTX 4090", 24, 1)
    assert provider["pricePerHour"] == 40
    assert provider["status"] == "offline"
    assert provider["isListed"] is True

    # Again, with newer hardware facts and another price: same provider; price kept.
    again = await register(
        api, token, offer("w-1", ALICE, pricePerHour=99, gpu={"type": "native", "vram": 48})
    )
    assert again["created"] is False
    assert again["provider"]["id"] == provider["id"]
    assert again["provider"]["pricePerHour"] == 40
    assert again["provider"]["gpuVram"] == 48

    listed = body_of(await api("GET", "providers", token=token))
    assert listed["total"] == 0  # offline: not in the default (available) listing


async def test_concurrent_registrations_of_one_worker_make_one_provider(api: Api):
    """Property 2 under a race: the same worker registered by several requests at once."""
    token = (await login(api))["token"]
    answers = await asyncio.gather(
        *(
            api("POST", "providers/quick-register", json_body=offer("racer", ALICE), token=token)
            for _ in range(5)
        )
    )
    assert [a.code for a in answers] == [200] * 5, [a.body for a in answers]
    bodies = [body_of(a) for a in answers]
    assert len({b["provider"]["id"] for b in bodies}) == 1
    assert sorted(b["created"] for b in bodies) == [False] * 4 + [True]


async def test_quick_register_refusals(api: Api):
    alice = (await login(api, SEED_ALICE))["token"]
    bob = (await login(api, SEED_BOB))["token"]
    await register(api, alice, offer("alices", ALICE))

    async def post(body: Any, token: str | None = alice) -> HTTPResponse:
        return await api("POST", "providers/quick-register", json_body=body, token=token)

    taken = await post(offer("alices", BOB), token=bob)
    assert taken.code == 409
    assert body_of(taken)["error"]["code"] == "worker_id_taken"

    not_mine = await post(offer("w-2", BOB))
    assert not_mine.code == 403
    assert body_of(not_mine)["error"]["code"] == "forbidden"

    bad_checksum = ALICE[:-1] + ("A" if ALICE[-1] != "A" else "B")
    assert errors_of(await post(offer("w-2", bad_checksum))) == ["qubicAddress"]
    assert errors_of(await post({**offer("w-2", ALICE), "colour": "red"})) == ["colour"]
    assert errors_of(await post(offer("w-2", ALICE, pricePerHour=1.5))) == ["pricePerHour"]
    assert errors_of(await post(offer("w-2", ALICE, pricePerHour=-1))) == ["pricePerHour"]
    assert errors_of(await post(offer("w-2", ALICE, type="cloud"))) == ["type"]
    assert errors_of(await post(offer("w-2", ALICE, gpu={"type": "cuda"}))) == ["gpu"]
    assert errors_of(await post(offer("check-new", ALICE))) == ["workerId"]
    assert errors_of(await post(offer("w-2", ALICE, name="a\x00"))) == ["name"]
    nul_gpu = {"type": "native", "model": "RTX\x00"}
    assert errors_of(await post(offer("w-2", ALICE, gpu=nul_gpu))) == ["gpu"]
    missing = {k: v for k, v in offer("w-2", ALICE).items() if k != "gpu"}
    assert errors_of(await post(missing)) == ["gpu"]

    unauthenticated = await post(offer("w-2", ALICE), token=None)
    assert unauthenticated.code == 401

    # None of the refusals registered anything.
    check = body_of(await api("GET", "providers/check-new", token=bob))
    assert check == {"newProvider": None}
    assert (await api("GET", "providers/w-2")).code == 404


async def test_check_new_is_the_latest_of_mine(api: Api):
    alice = (await login(api, SEED_ALICE))["token"]
    bob = (await login(api, SEED_BOB))["token"]
    assert body_of(await api("GET", "providers/check-new", token=alice)) == {"newProvider": None}
    assert (await api("GET", "providers/check-new")).code == 401
    await register(api, alice, offer("first", ALICE))
    await register(api, alice, offer("second", ALICE))
    await register(api, bob, offer("bobs", BOB))
    newest = body_of(await api("GET", "providers/check-new", token=alice))["newProvider"]
    assert newest["workerId"] == "second"
    assert newest["userId"] == body_of(await api("GET", "me", token=alice))["user"]["id"]


# ---------------------------------------------------------------------- the listing


@pytest.fixture
async def market(api: Api, database_url: DatabaseURL) -> dict[str, str]:
    """Six offers of two owners, five online (one busy), one offline; tokens by name."""
    alice = (await login(api, SEED_ALICE))["token"]
    bob = (await login(api, SEED_BOB))["token"]
    rows = [
        # worker, owner, model, vram, price, location, tflops, online, available
        ("a-4090", alice, "RTX 4090", 24, 40, "EU", 82.6, True, True),
        ("a-a100", alice, "A100", 80, 120, "US-East", 156.0, True, True),
        ("b-4090", bob, "rtx 4090", 24, 35, "US-East", None, True, True),
        ("b-3060", bob, "RTX 3060", 12, 10, "EU", 12.7, True, True),
        ("b-h100", bob, "H100", 80, 200, "Asia", 400.0, True, False),  # busy
        ("a-off", alice, "RTX 4090", 24, 5, "EU", 80.0, False, True),  # offline
    ]
    for worker, token, model, vram, price, location, tflops, online, available in rows:
        address = ALICE if token == alice else BOB
        gpu = {"type": "native", "model": model, "vram": vram}
        await register(
            api, token, offer(worker, address, gpu=gpu, pricePerHour=price, location=location)
        )
        await set_state(
            database_url.url,
            worker,
            performance_tflops=tflops,
            is_online=online,
            is_available=available,
        )
    return {"alice": alice, "bob": bob}


async def test_default_listing_is_available_offers_cheapest_first(search, market):
    response = await search()
    assert workers(response) == ["b-3060", "b-4090", "a-4090", "a-a100"]
    page = body_of(response)
    assert (page["total"], page["totalIsExact"], page["offset"], page["limit"]) == (4, True, 0, 50)
    first = page["items"][0]
    assert first["status"] == "online"
    assert first["qubicAddress"] == BOB
    assert PRIVATE.isdisjoint(first)


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ([("gpuModel", "RTX 4090")], ["b-4090", "a-4090"]),  # case-insensitive
        ([("gpuModel", "A100,RTX 3060")], ["b-3060", "a-a100"]),  # a comma list
        ([("gpuModel", "A100"), ("gpuModel", "H100")], ["a-a100"]),  # repeated; H100 is busy
        ([("gpuModel", "RTX 40")], []),  # no substrings
        ([("minVram", 24)], ["b-4090", "a-4090", "a-a100"]),  # at least: 24 GB is in
        ([("minVram", 24.5)], ["a-a100"]),
        ([("maxPrice", 35)], ["b-3060", "b-4090"]),  # at most: 35 is in
        ([("maxPrice", 0)], []),
        ([("location", "EU")], ["b-3060", "a-4090"]),
        ([("location", "Asia"), ("location", "US-East")], ["b-4090", "a-a100"]),
        ([("location", "eu")], []),  # locations are exact
        ([("availability", "all")], ["a-off", "b-3060", "b-4090", "a-4090", "a-a100", "b-h100"]),
        (
            [("availability", "all"), ("gpuModel", "rtx 4090"), ("maxPrice", 40), ("minVram", 8)],
            ["a-off", "b-4090", "a-4090"],
        ),
        (
            [("sortBy", "performance"), ("availability", "all")],
            ["b-h100", "a-a100", "a-4090", "a-off", "b-3060", "b-4090"],  # unmeasured last
        ),
        (
            [("sortBy", "availability"), ("availability", "all")],
            ["b-3060", "b-4090", "a-4090", "a-a100", "b-h100", "a-off"],  # online, busy, off
        ),
    ],
)
async def test_filters_and_orders(search, market, params, expected):
    assert workers(await search(*params)) == expected


async def test_statuses(search, market):
    items = body_of(await search(("availability", "all")))["items"]
    status = {o["workerId"]: o["status"] for o in items}
    assert status["a-off"] == "offline"
    assert status["b-h100"] == "busy"
    assert status["a-a100"] == "online"


async def test_pages_concatenate_to_the_whole_listing(search, market):
    whole = workers(await search(("availability", "all"), ("sortBy", "performance")))
    pages: list[str] = []
    for offset in range(0, 8, 2):
        response = await search(
            ("availability", "all"), ("sortBy", "performance"), ("offset", offset), ("limit", 2)
        )
        page = body_of(response)
        assert (page["total"], page["offset"], page["limit"]) == (6, offset, 2)
        pages += workers(response)
    assert pages == whole
    assert len(whole) == 6


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ([("minVram", "-1")], ["minVram"]),
        ([("minVram", "lots")], ["minVram"]),
        ([("minVram", "inf")], ["minVram"]),
        ([("maxPrice", "1.5")], ["maxPrice"]),
        ([("maxPrice", "-3")], ["maxPrice"]),
        ([("availability", "soon")], ["availability"]),
        ([("sortBy", "name")], ["sortBy"]),
        ([("sortBy", "price"), ("sortBy", "performance")], ["sortBy"]),
        ([("offset", "-1")], ["offset"]),
        ([("limit", "0")], ["limit"]),
        ([("limit", "201")], ["limit"]),
        ([("gpuModel", "A100,")], ["gpuModel"]),  # an empty model
        ([("gpuModel", ",".join(["A100"] * 51))], ["gpuModel"]),
        ([("colour", "red")], ["colour"]),
        ([("gpuModel", "A\x00")], ["gpuModel"]),  # PostgreSQL text cannot hold NUL
        ([("location", "\x00")], ["location"]),
        ([("limit", "0"), ("sortBy", "name")], ["sortBy", "limit"]),  # each one named
    ],
)
async def test_bad_parameters_are_422_naming_them(search, params, named):
    assert sorted(errors_of(await search(*params))) == sorted(named)


# ---------------------------------------------------------------------- one offer, owner edits


async def test_get_one_offer(api: Api, market):
    response = await api("GET", "providers/a-a100")
    assert response.code == 200, response.body
    one = body_of(response)
    assert (one["workerId"], one["gpuModel"], one["pricePerHour"]) == ("a-a100", "A100", 120)
    assert one["performanceTflops"] == 156.0
    assert PRIVATE.isdisjoint(one)
    assert (await api("GET", "providers/a\x00")).code == 404
    missing = await api("GET", "providers/nobody")
    assert missing.code == 404
    assert body_of(missing)["error"]["code"] == "unknown_provider"


async def test_owner_edits_their_offer(api: Api, search, market):
    alice, bob = market["alice"], market["bob"]
    patch = {"pricePerHour": 7, "name": "cheap now", "location": "Asia", "isAvailable": True}
    response = await api("PATCH", "providers/a-a100", json_body=patch, token=alice)
    assert response.code == 200, response.body
    edited = body_of(response)["provider"]
    assert (edited["pricePerHour"], edited["name"], edited["location"]) == (7, "cheap now", "Asia")
    assert workers(await search(("location", "Asia"))) == ["a-a100"]

    busy = await api("PATCH", "providers/a-a100", json_body={"isAvailable": False}, token=alice)
    assert body_of(busy)["provider"]["status"] == "busy"
    assert "a-a100" not in workers(await search())

    theirs = await api("PATCH", "providers/a-a100", json_body={"pricePerHour": 1}, token=bob)
    assert theirs.code == 403
    assert body_of(theirs)["error"]["code"] == "forbidden"
    assert body_of(await api("GET", "providers/a-a100"))["pricePerHour"] == 7

    bad = await api("PATCH", "providers/a-a100", json_body={"pricePerHour": "7"}, token=alice)
    assert errors_of(bad) == ["pricePerHour"]
    extra = await api("PATCH", "providers/a-a100", json_body={"userId": "x"}, token=alice)
    assert errors_of(extra) == ["userId"]
    nobody = await api("PATCH", "providers/nobody", json_body={"pricePerHour": 1}, token=alice)
    assert nobody.code == 404
    assert (await api("PATCH", "providers/a-a100", json_body={"pricePerHour": 1})).code == 401


async def test_owner_unlists_their_offer(api: Api, search, market):
    alice, bob = market["alice"], market["bob"]
    assert (await api("DELETE", "providers/a-4090", token=bob)).code == 403
    assert (await api("DELETE", "providers/a-4090")).code == 401
    assert (await api("DELETE", "providers/nobody", token=alice)).code == 404
    assert "a-4090" in workers(await search())

    response = await api("DELETE", "providers/a-4090", token=alice)
    assert response.code == 200, response.body
    assert body_of(response)["provider"]["isListed"] is False
    assert "a-4090" not in workers(await search(("availability", "all")))
    assert body_of(await search())["total"] == 3
    assert (await api("GET", "providers/a-4090")).code == 404

    # Registering the worker again lists it again: the same provider.
    again = await register(api, alice, offer("a-4090", ALICE))
    assert again["created"] is False
    assert again["provider"]["isListed"] is True
    assert "a-4090" in workers(await search())
