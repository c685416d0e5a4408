"""The scheduler over TLS (``distributed.Security``), with a self-signed certificate made here."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from distributed import Client, Scheduler, Security, Worker

from qubix_jupyter.dask_provider.scheduler import (
    TOKEN_KEY,
    SchedulerCallbacks,
    SchedulerGuard,
    start_scheduler,
    trust_certificate,
)

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl tool")


def self_signed(directory: Path, name: str = "localhost") -> tuple[str, str]:
    cert, key = directory / f"{name}-cert.pem", directory / f"{name}-key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-keyout", str(key), "-out", str(cert), "-subj", f"/CN={name}",
            "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return str(cert), str(key)


def bundle(path: Path, *certificates: str) -> str:
    """One CA file trusting each self-signed certificate."""
    path.write_text("".join(Path(c).read_text() for c in certificates))
    return str(path)


async def test_workers_join_over_tls_and_the_market_client_still_runs_jobs(tmp_path: Path):
    cert, key = self_signed(tmp_path)
    security = Security(
        tls_ca_file=cert,
        tls_scheduler_cert=cert,
        tls_scheduler_key=key,
        tls_worker_cert=cert,
        tls_worker_key=key,
        tls_client_cert=cert,
        tls_client_key=key,
        require_encryption=True,
    )
    online: list[str] = []
    market = await start_scheduler(
        lambda name, token: token == "qxw_tls",
        SchedulerCallbacks(worker_online=lambda name, address, resources: online.append(name)),
        security=security,
    )
    try:
        assert market.worker_address.startswith("tls://")
        async with Worker(
            market.worker_address,
            name="w-tls",
            nthreads=1,
            dashboard=False,
            security=security,
            startup_information={TOKEN_KEY: lambda _worker: "qxw_tls"},
        ):
            assert online == ["w-tls"]
            assert await market.client.submit(sum, [1, 2, 3], pure=False) == 6
        # Without a certificate the worker cannot even reach the scheduler's handshake.
        with pytest.raises((OSError, TimeoutError)):
            await Worker(
                market.worker_address.replace("tls://", "tcp://"),
                name="w-plain",
                nthreads=1,
                dashboard=False,
                startup_information={TOKEN_KEY: lambda _worker: "qxw_tls"},
                death_timeout=3,
            )
        assert online == ["w-tls"]
    finally:
        await market.close()


async def test_an_external_scheduler_trusts_the_market_by_its_certificate(tmp_path: Path):
    market_cert, market_key = self_signed(tmp_path, "qubix-market")
    worker_cert, worker_key = self_signed(tmp_path, "qubix-worker")
    ca = bundle(tmp_path / "ca.pem", market_cert, worker_cert)

    def security(cert: str, key: str) -> Security:
        return Security(
            tls_ca_file=ca,
            tls_scheduler_cert=cert,
            tls_scheduler_key=key,
            tls_worker_cert=cert,
            tls_worker_key=key,
            tls_client_cert=cert,
            tls_client_key=key,
            require_encryption=True,
        )

    scheduler = Scheduler(
        host="127.0.0.1",
        protocol="tls",
        security=security(worker_cert, worker_key),
        dashboard=False,
        dashboard_address=None,
    )
    guard = SchedulerGuard(
        scheduler,
        lambda name, token: token == "qxw_ext",
        is_trusted=trust_certificate("qubix-market"),
    )
    async with scheduler:
        worker_security = security(worker_cert, worker_key)
        async with Worker(
            scheduler.address,
            name="w-ext",
            nthreads=1,
            dashboard=False,
            security=worker_security,
            startup_information={TOKEN_KEY: lambda _worker: "qxw_ext"},
        ):
            # A client with a worker's certificate is not the market.
            with pytest.raises(Exception, match="only the market"):
                await Client(scheduler.address, asynchronous=True, security=worker_security)
            async with Client(
                scheduler.address,
                asynchronous=True,
                security=security(market_cert, market_key),
            ) as market:
                assert await market.submit(sum, [4, 5], pure=False) == 9
    assert [op for op, _ in guard.refused] == ["register-client"]
