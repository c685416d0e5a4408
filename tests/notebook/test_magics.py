"""The ``%qubix`` magics in a real IPython kernel, run by nbclient on a notebook built here."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nbformat
from nbclient import NotebookClient

from qubix_jupyter.client import MarketClient
from qubix_jupyter.dask_provider.gpu import HardwareReport
from qubix_jupyter.widgets import ShareGPUPanel

from .conftest import SEED_ALICE, Market

SEED_ERIN = "e" * 55


def text_of(cell: Any) -> str:
    parts = []
    for output in cell.outputs:
        if output.output_type == "stream":
            parts.append(output.text)
        elif output.output_type == "error":
            parts.append(f"{output.ename}: {output.evalue}\n" + "\n".join(output.traceback))
        elif "text/plain" in output.get("data", {}):
            parts.append(output.data["text/plain"])
    return "".join(parts)


def run_notebook(sources: list[str], tmp_path: Path, errors: set[int] = frozenset()) -> Any:
    cells = []
    for index, source in enumerate(sources):
        cell = nbformat.v4.new_code_cell(source)
        if index in errors:
            cell.metadata["tags"] = ["raises-exception"]
        cells.append(cell)
    notebook = nbformat.v4.new_notebook(cells=cells)
    NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": tmp_path}}
    ).execute()
    return notebook


def test_the_magics_connect_show_the_balance_run_a_cell_and_bring_back_its_variables(
    market: Market, tmp_path: Path
) -> None:
    seed_file = tmp_path / "seed"
    seed_file.write_text(SEED_ALICE)
    seed_file.chmod(0o600)
    with MarketClient(market.url, seed=SEED_ALICE, retries=1) as alice:
        alice.sign_in()
        alice.deposit(500)
    erin = MarketClient(market.url, seed=SEED_ERIN, retries=1)
    erin.sign_in()
    provider = ShareGPUPanel(
        erin, price_per_hour=30, detect=lambda **_: HardwareReport("none", ()), location="EU"
    )
    try:
        provider.share(block=True, timeout=120)
        assert provider.state == "online", provider.message.value
        notebook = run_notebook(
            [
                "%load_ext qubix_jupyter",
                f"%qubix connect {market.url} --seed-file {seed_file}",
                "%qubix balance",
                "%qubix submit --max-price lots f",
                "%qubix frobnicate",
                "%%qubix submit --max-price 40 --hours 0.05 --out total,squares\n"
                "total = sum(range(10))\nsquares = [i * i for i in range(4)]\n"
                'print("hello from the provider")\ntotal * 2',
                "print(total, squares)",
                "%qubix jobs",
                "%qubix balance",
            ],
            tmp_path,
            errors={3, 4},
        )
    finally:
        if provider.launcher is not None:
            provider.launcher.stop()
        erin.close()
    cells = notebook.cells
    assert "connected to" in text_of(cells[1])
    assert "balance 500 QU" in text_of(cells[1])
    assert text_of(cells[2]).strip() == "balance 500 QU, pending earnings 0 QU"
    usage = text_of(cells[3])
    assert usage.startswith("UsageError: usage: %qubix submit")
    assert "invalid int value: 'lots'" in usage
    assert "Traceback" not in usage
    assert "invalid choice: 'frobnicate'" in text_of(cells[4])

    remote = text_of(cells[5])
    assert "hello from the provider" in remote
    assert "back in the namespace: total, squares" in remote
    assert remote.strip().endswith("90")  # the cell's last value, as the notebook shows it
    widget_views = [o for o in cells[5].outputs if "application/vnd.jupyter.widget-view+json"
                    in o.get("data", {})]  # fmt: skip
    assert widget_views  # the JobWidget showed the job while it ran
    assert text_of(cells[6]).strip() == "45 [0, 1, 4, 9]"
    assert "cell" in text_of(cells[7])
    assert "COMPLETED" in text_of(cells[7])
    balance = int(text_of(cells[8]).split()[1])
    assert 0 < 500 - balance <= 2  # 40 QU/h × 0.05 h escrowed at most; the rest came back
