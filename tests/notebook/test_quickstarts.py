"""The quickstart notebooks, end to end: executed by nbclient in a real kernel against a real
embedded market, started by the very command Binder's ``start`` script runs."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbclient import NotebookClient

from qubix_jupyter import embedded

from .test_magics import text_of

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = ROOT / "notebooks"
BINDER = ROOT / "binder"
BIN = Path(sys.executable).parent
#: The line of binder/start that launches the market.
LAUNCH = re.compile(r"^qubix embedded --background\b.*$", re.MULTILINE)


def launch_command() -> str:
    found = LAUNCH.search((BINDER / "start").read_text())
    assert found is not None, "binder/start does not launch the embedded market"
    return found.group(0)


@pytest.fixture(scope="module")
def embedded_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The embedded market, started as Binder starts it; the kernels find it by the home."""
    home = tmp_path_factory.mktemp("embedded")
    with pytest.MonkeyPatch.context() as env:
        env.setenv(embedded.HOME_ENV, str(home))
        env.setenv("PATH", f"{BIN}{os.pathsep}{os.environ['PATH']}")
        for name in ("QUBIX_DATABASE_URL", "QUBIX_MARKET_URL", "QUBIX_TOKEN", "QUBIX_SEED_FILE"):
            env.delenv(name, raising=False)
        # The start script's own line, run by bash as Binder runs it (its `|| echo` included).
        started = subprocess.run(
            ["bash", "-c", f"set -o pipefail; {launch_command().split(' || ')[0]}"],
            capture_output=True,
            text=True,
            timeout=300,
        )
        try:
            assert started.returncode == 0, started.stdout + started.stderr
            assert "QUBIX embedded market at http://127.0.0.1:" in started.stdout
            yield home
        finally:
            assert embedded.stop(home) or started.returncode != 0
    assert embedded.running(home) is None


def execute(name: str, tmp_path: Path) -> list[Any]:
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": tmp_path}}
    ).execute()
    return [cell for cell in notebook.cells if cell.cell_type == "code"]


def output_with(cells: list[Any], needle: str) -> str:
    for cell in cells:
        text = text_of(cell)
        if needle in text:
            return text
    raise AssertionError(f"no cell printed {needle!r}")


def number(pattern: str, text: str) -> int:
    found = re.search(pattern, text)
    assert found is not None, f"{pattern!r} not in {text!r}"
    return int(found.group(1))


def widget_shown(cells: list[Any], source_start: str) -> bool:
    cell = next(c for c in cells if c.source.startswith(source_start))
    view = "application/vnd.jupyter.widget-view+json"
    return any(view in output.get("data", {}) for output in cell.outputs)


def test_the_consumer_quickstart_funds_runs_a_function_and_a_cell_and_shows_cost_and_refund(
    embedded_home: Path, tmp_path: Path
) -> None:
    cells = execute("consumer-quickstart.ipynb", tmp_path)
    market = embedded.running(embedded_home)
    assert market is not None
    assert f"QUBIX embedded market at {market.url}" in text_of(cells[0])
    assert "signed in as" in text_of(cells[1])
    assert number(r"balance before: (\d+) QU", output_with(cells, "balance before:")) >= 1_000
    assert widget_shown(cells, "from qubix_jupyter.widgets import MarketplacePanel")
    offers = output_with(cells, "QU/h  online")
    assert "alice's" in offers
    assert "bob's" in offers

    progress = output_with(cells, "progress ")
    assert "progress 100 %" in progress  # reported from inside the job, live
    result = output_with(cells, "estimate_pi(100000) = ")
    assert 2.9 < float(result.split("= ")[1].split()[0]) < 3.4
    assert "COMPLETED, progress 100 %" in result

    remote = output_with(cells, "hello from the provider")
    assert "back in the namespace: total, squares" in remote
    assert output_with(cells, "[0, 1, 4, 9]").strip() == "45 [0, 1, 4, 9]"

    money = output_with(cells, "the jobs cost")
    costs = re.findall(r"estimated (\d+) QU, actual (\d+) QU, refunded (\d+) QU", money)
    assert len(costs) == 2  # the python job and the cell
    for estimated, actual, refunded in ((int(a), int(b), int(c)) for a, b, c in costs):
        assert 0 < actual < estimated
        assert refunded == estimated - actual
    before = number(r"balance before (\d+) QU", money)
    after = number(r"after (\d+) QU", money)
    spent = number(r"the jobs cost (\d+) QU", money)
    assert spent == sum(int(actual) for _, actual, _ in costs)
    assert before - after == spent  # only what was used left the wallet
    assert "COMPLETED" in text_of(cells[-1])


def test_the_provider_quickstart_shares_gets_a_job_and_earns(
    embedded_home: Path, tmp_path: Path
) -> None:
    cells = execute("provider-quickstart.ipynb", tmp_path)
    assert widget_shown(cells, "import os")  # the ShareGPUPanel
    assert "sharing: online, as qx-" in output_with(cells, "sharing: online")
    assert "at 3000 QU/h, online: True, status: online" in output_with(cells, "online: True")
    job = output_with(cells, "(yours: ")
    assert "loss 0.015625" in job
    assert "(yours: True)" in job  # the job arrived on this notebook's worker
    paid = number(r"paid (\d+) QU", job)
    assert paid > 0
    assert widget_shown(cells, "from qubix_jupyter.widgets import ProviderDashboard")
    earnings = output_with(cells, "earnings: ")
    total = number(r"total (\d+) QU", earnings)
    assert 0 < total <= paid  # the provider's share, after the platform fee
    assert output_with(cells, "sharing: idle")


def test_committed_notebooks_carry_no_outputs() -> None:
    notebooks = sorted(NOTEBOOKS.glob("*.ipynb"))
    assert {n.name for n in notebooks} >= {
        "consumer-quickstart.ipynb",
        "provider-quickstart.ipynb",
    }
    for path in notebooks:
        notebook = nbformat.read(path, as_version=4)
        nbformat.validate(notebook)
        for cell in notebook.cells:
            if cell.cell_type == "code":
                assert cell.outputs == [], f"{path.name}: a cell has outputs"
                assert cell.execution_count is None, f"{path.name}: an execution count"


def test_binder_installs_the_package_and_starts_the_market_the_notebooks_use() -> None:
    requirements = (BINDER / "requirements.txt").read_text().splitlines()
    wanted = {line.split(">=")[0] for line in requirements if line and not line.startswith("#")}
    assert {"jupyterlab", "ipykernel", "ipywidgets"} <= wanted
    post_build = (BINDER / "postBuild").read_text()
    start = (BINDER / "start").read_text()
    for script in ("postBuild", "start"):
        path = BINDER / script
        assert os.access(path, os.X_OK), f"binder/{script} is not executable"
        assert path.read_text().startswith("#!/bin/bash\n")
        subprocess.run(["bash", "-n", str(path)], check=True)  # it parses
    assert "pip install --no-cache-dir ." in post_build
    # The start script launches the market, then hands over to Binder's command.
    assert start.rstrip().splitlines()[-1] == 'exec "$@"'
    assert start.index(launch_command()) < start.index('exec "$@"')
    # The notebooks' qubix.embedded_market() is the same launch as `qubix embedded --background`.
    args = shlex.split(launch_command().split(" || ")[0])
    assert args == ["qubix", "embedded", "--background"]
    for name in ("consumer-quickstart.ipynb", "provider-quickstart.ipynb"):
        sources = [c["source"] for c in json.loads((NOTEBOOKS / name).read_text())["cells"]]
        assert any("qubix.embedded_market()" in "".join(s) for s in sources)
