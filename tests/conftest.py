"""Shared fixtures: a throwaway PostgreSQL cluster for the session and fresh migrated databases.

Every ledger test runs on both PostgreSQL and SQLite through the ``database`` fixture. A machine
without PostgreSQL fails these tests (it does not skip them) unless QUBIX_ALLOW_NO_POSTGRES=1.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from qubix_jupyter.db import migrate
from qubix_jupyter.db.engine import make_engine, make_sessionmaker
from qubix_jupyter.db.ledger import Ledger
from qubix_jupyter.db.pg_cluster import PgCluster, PostgresNotFound

TEMPLATE_DB = "qubix_template"
_counter = itertools.count()


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    """A PostgreSQL server for the whole test session, with the migrated template database."""
    try:
        cluster = PgCluster(settings={"fsync": "off", "synchronous_commit": "off"})
    except PostgresNotFound as exc:
        if os.environ.get("QUBIX_ALLOW_NO_POSTGRES") == "1":
            pytest.skip(str(exc))
        pytest.fail(f"{exc} (set QUBIX_ALLOW_NO_POSTGRES=1 to skip PostgreSQL tests locally)")
    with cluster:
        migrate.upgrade(cluster.create_database(TEMPLATE_DB))
        yield cluster


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sqlite") / "template.db"
    migrate.upgrade(f"sqlite:///{path}")
    return path


@dataclasses.dataclass
class DatabaseURL:
    kind: str
    url: str


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[DatabaseURL]:
    """A fresh database at the head revision, on SQLite or on the session's PostgreSQL."""
    if request.param == "sqlite":
        path = tmp_path / "qubix.db"
        shutil.copyfile(request.getfixturevalue("sqlite_template"), path)
        yield DatabaseURL("sqlite", f"sqlite:///{path}")
        return
    cluster: PgCluster = request.getfixturevalue("pg_cluster")
    name = f"test_{os.getpid()}_{next(_counter)}"
    url = cluster.create_database(name, template=TEMPLATE_DB)
    yield DatabaseURL("postgresql", url)
    cluster.drop_database(name)


@dataclasses.dataclass
class Database:
    kind: str
    url: str
    engine: AsyncEngine
    sessionmaker: async_sessionmaker[AsyncSession]
    ledger: Ledger


@pytest.fixture
async def database(database_url: DatabaseURL) -> AsyncIterator[Database]:
    engine = make_engine(database_url.url)
    sessionmaker = make_sessionmaker(engine)
    yield Database(database_url.kind, database_url.url, engine, sessionmaker, Ledger(sessionmaker))
    await engine.dispose()
