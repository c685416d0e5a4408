from __future__ import annotations

from qubix_jupyter import __version__

from .conftest import Api, body_of


async def test_health_is_public_and_reports_the_database(api: Api, database_url):
    response = await api("GET", "health")
    assert response.code == 200
    assert body_of(response) == {
        "status": "ok",
        "version": __version__,
        "role": "both",
        "database": {"reachable": True, "backend": database_url.kind},
    }
