"""Real ``dask worker`` processes for the scheduler tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

WORKER = [sys.executable, "-m", "distributed.cli.dask_worker"]


def start_worker(
    address: str, name: str, token: str, tmp_path: Path, *, resources: str | None = None
) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "QUBIX_WORKER_TOKEN": token,
        "QUBIX_HEARTBEAT_INTERVAL_S": "1",
        # Quiet children: a worker's own warnings are not the test's.
        "PYTHONWARNINGS": "ignore",
    }
    command = [
        *WORKER,
        address,
        "--name",
        name,
        "--nthreads",
        "1",
        "--no-nanny",
        "--no-dashboard",
        "--local-directory",
        str(tmp_path / name),
        "--preload",
        "qubix_jupyter.dask_provider.worker_plugin",
    ]
    if resources:
        command += ["--resources", resources]
    with open(tmp_path / f"{name}.log", "ab") as log:  # the child keeps its own descriptor
        return subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.kill()
    process.wait(30)
