from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from typing import Any

import pytest

from qubix_jupyter import __version__
from qubix_jupyter.db.pg_cluster import PgCluster

from ..conftest import TEMPLATE_DB
from .conftest import Api, body_of

_names = itertools.count()


async def test_health_is_public_and_reports_the_database(api: Api, database_url):
    response = await api("GET", "health")
    assert response.code == 200
    assert body_of(response) == {
        "status": "ok",
        "version": __version__,
        "role": "both",
        "database": {"reachable": True, "backend": database_url.kind},
    }


class TestDatabaseDown:
    @pytest.fixture
    def lost_database(self, pg_cluster: PgCluster) -> Iterator[str]:
        name = f"health_{os.getpid()}_{next(_names)}"
        url = pg_cluster.create_database(name, template=TEMPLATE_DB)
        yield url
        pg_cluster.drop_database(name)

    @pytest.fixture
    def jp_server_config(self, lost_database: str) -> dict[str, Any]:
        return {
            "ServerApp": {
                "jpserver_extensions": {"qubix_jupyter": True, "jupyter_server_terminals": False},
                "allow_unauthenticated_access": False,
            },
            "QubixExtension": {"database_url": lost_database},
        }

    async def test_health_is_503_when_the_database_stops_answering(
        self, api: Api, pg_cluster: PgCluster, lost_database: str
    ):
        assert (await api("GET", "health")).code == 200
        name = lost_database.rsplit("/", 1)[1]
        with pg_cluster.admin() as conn:
            conn.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS false')  # type: ignore[arg-type]
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                (name,),
            )
        response = await api("GET", "health")
        assert response.code == 503
        body = body_of(response)
        assert body["status"] == "degraded"
        assert body["database"] == {"reachable": False, "backend": "postgresql"}
