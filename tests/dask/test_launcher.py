"""The launcher's own decisions: stable workerIds, and the worker command and environment."""

from __future__ import annotations

from qubix_jupyter.dask_provider.gpu import GPUInfo
from qubix_jupyter.dask_provider.launcher import (
    PRELOAD,
    ProvideConfig,
    ProviderLauncher,
    SharedDevice,
    worker_id_for,
)

GPU = GPUInfo(index=1, model="RTX 4090", vram_mb=24564, uuid="GPU-1234")


def test_worker_ids_are_stable_and_distinct() -> None:
    assert worker_id_for("machine-a", GPU) == worker_id_for("machine-a", GPU)
    assert worker_id_for("machine-a", GPU) != worker_id_for("machine-b", GPU)
    assert worker_id_for("machine-a", None) != worker_id_for("machine-a", GPU)
    other = GPUInfo(index=0, model="RTX 4090", vram_mb=24564, uuid="GPU-5678")
    assert worker_id_for("machine-a", other) != worker_id_for("machine-a", GPU)
    assert worker_id_for("machine-a", GPU).endswith("-gpu1")
    assert "/" not in worker_id_for("m", None)


def _launcher() -> ProviderLauncher:
    launcher = ProviderLauncher(
        ProvideConfig(market_url="http://m.example/", seed="a" * 55, price_per_hour=9)
    )
    launcher.scheduler_address = "tls://sched.example:8786"
    return launcher


def test_a_gpu_worker_has_one_gpu_slot_its_device_and_its_token_in_the_environment() -> None:
    launcher = _launcher()
    device = SharedDevice("qx-1-gpu1", GPU, "qxw_secret")
    command = launcher.worker_command(device)
    assert "tls://sched.example:8786" in command
    assert command[command.index("--name") + 1] == "qx-1-gpu1"
    assert command[command.index("--resources") + 1] == "GPU=1"
    assert command[command.index("--preload") + 1] == PRELOAD
    assert "qxw_secret" not in " ".join(command)  # never on a command line
    env = launcher.worker_env(device)
    assert env["QUBIX_WORKER_TOKEN"] == "qxw_secret"
    assert env["CUDA_VISIBLE_DEVICES"] == "GPU-1234"
    assert env["QUBIX_GPU_INDEX"] == "1"
    assert env["QUBIX_MARKET_URL"] == "http://m.example/"
    # The job's child process needs a worker that may have children (a nanny's is daemonic).
    assert env["DASK_DISTRIBUTED__WORKER__DAEMON"] == "False"


def test_a_cpu_worker_has_no_gpu_slot() -> None:
    launcher = _launcher()
    device = SharedDevice("qx-cpu", None, "qxw_cpu")
    command = launcher.worker_command(device)
    assert "--resources" not in command
    assert "distributed.cli.dask_worker" in command
    assert "QUBIX_GPU_INDEX" not in launcher.worker_env(device)


def test_providers_sharing_one_machine_register_distinct_worker_ids() -> None:
    """Two wallets on one machine (the demo) each name their machine; the ids stay stable."""
    answers: list[dict[str, object]] = []

    class Market:
        def request(self, method: str, path: str, json: object = None, headers: object = None):
            answers.append({"path": path, "body": json})
            return _Answer({"workerToken": "qxw_t"})

    ids = []
    for machine in ("demo-alice", "demo-bob", "demo-alice"):
        launcher = ProviderLauncher(
            ProvideConfig(
                market_url="http://m.example/",
                seed="a" * 55,
                price_per_hour=9,
                gpus=[],
                machine=machine,
            ),
            http=Market(),
        )
        launcher.user_token = "qxu_t"
        launcher._identity = "A" * 60
        ids.append(launcher.register()[0].worker_id)
    assert ids[0] != ids[1]
    assert ids[0] == ids[2]
    assert [a["body"]["workerId"] for a in answers] == ids  # type: ignore[index]


class _Answer:
    status_code = 200

    def __init__(self, body: dict[str, object]) -> None:
        self._body = body

    def json(self) -> dict[str, object]:
        return self._body


def test_a_worker_inherits_none_of_the_sign_in_secrets(monkeypatch) -> None:
    """Consumers' code runs under the worker: the seed, a provisioning token or a market token
    in ``qubix provide``'s environment must not reach it."""
    for name, value in {
        "QUBIX_SEED": "a" * 55,
        "QUBIX_PROVISION_TOKEN": "qxp_secret",
        "QUBIX_TOKEN": "user-token",
        "QUBIX_GPU_INDEX": "3",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("SOMETHING_ELSE", "kept")
    env = _launcher().worker_env(SharedDevice("qx-cpu", None, "qxw_cpu"))
    for name in ("QUBIX_SEED", "QUBIX_PROVISION_TOKEN", "QUBIX_TOKEN", "QUBIX_GPU_INDEX"):
        assert name not in env
    assert env["SOMETHING_ELSE"] == "kept"
    assert env["QUBIX_WORKER_TOKEN"] == "qxw_cpu"


def test_with_a_provisioning_token_the_market_names_the_payee() -> None:
    """No seed, no sign-in: quick-register gets the token and no qubicAddress, and the
    launcher learns the wallet from the answer."""
    sent: list[tuple[str, object, object]] = []

    class Market:
        def request(self, method: str, path: str, json: object = None, headers: object = None):
            sent.append((path, json, headers))
            return _Answer({"workerToken": "qxw_t", "provider": {"qubicAddress": "B" * 60}})

    launcher = ProviderLauncher(
        ProvideConfig(
            market_url="http://m.example/",
            provision_token="qxp_machine",
            price_per_hour=4,
            gpus=[],
        ),
        http=Market(),
    )
    launcher.register()
    ((path, body, headers),) = sent
    assert path == "providers/quick-register"
    assert headers == {"Authorization": "Bearer qxp_machine"}
    assert "qubicAddress" not in body  # type: ignore[operator]
    assert launcher._identity == "B" * 60
