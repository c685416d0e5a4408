"""The ``qubix`` command: schema upgrades, wallet creation and clear errors (``qubix demo`` runs
as a subprocess in tests/test_demo.py)."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from qubix_jupyter.cli import GC_THRESHOLDS, main
from qubix_jupyter.db import migrate
from qubix_jupyter.settlement.identity import is_valid_identity


def test_db_upgrade_and_current(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    url = f"sqlite:///{tmp_path / 'q.db'}"
    assert main(["db", "current", "--database-url", url]) == 1
    assert "needs `qubix db upgrade`" in capsys.readouterr().out
    assert main(["db", "upgrade", "--database-url", url]) == 0
    assert f"empty → {migrate.head_revision()}" in capsys.readouterr().out
    assert main(["db", "current", "--database-url", url]) == 0
    assert "up to date" in capsys.readouterr().out


def test_default_database_lives_under_the_jupyter_data_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    monkeypatch.delenv("QUBIX_DATABASE_URL", raising=False)
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(tmp_path / "jupyter"))
    assert main(["db", "upgrade"]) == 0
    assert (tmp_path / "jupyter" / "qubix" / "qubix.db").exists()


def test_unsupported_database_is_a_clear_error(capsys: pytest.CaptureFixture[str]):
    assert main(["db", "upgrade", "--database-url", "mysql://localhost/x"]) == 2
    err = capsys.readouterr().err
    assert "unsupported database 'mysql'" in err
    assert "Traceback" not in err


def test_wallet_new_writes_a_private_seed_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    seed_file = tmp_path / "seed"
    assert main(["wallet", "new", "--seed-file", str(seed_file)]) == 0
    identity = capsys.readouterr().out.strip()
    assert is_valid_identity(identity)
    assert stat.S_IMODE(seed_file.stat().st_mode) == 0o600
    assert identity not in seed_file.read_text()
    # never overwritten
    before = seed_file.read_text()
    assert main(["wallet", "new", "--seed-file", str(seed_file)]) == 1
    assert seed_file.read_text() == before


def test_console_script_is_installed():
    result = subprocess.run(
        [str(Path(sys.executable).with_name("qubix")), "--help"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0
    for command in ("demo", "db", "wallet", "serve"):
        assert command in result.stdout


def test_usage_errors_print_usage_not_a_traceback():
    result = subprocess.run(
        [str(Path(sys.executable).with_name("qubix")), "db", "sideways"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert "usage:" in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_settles_the_heap_before_it_starts_serving():
    """`qubix serve` freezes its start-up heap and collects rarely (``GC_THRESHOLDS``) by the
    time the server starts; cycles made after that are still collected. Run in a child so this
    process's collector is left as it is."""
    script = """
import gc, json, weakref
from jupyter_server.serverapp import ServerApp
from qubix_jupyter import cli

class Stub:
    connection_url = "http://127.0.0.1:1/"
    def initialize(self, argv):
        pass
    def start(self):
        class Node:
            pass
        a, b = Node(), Node()
        a.b, b.a = b, a  # a cycle made while serving
        alive = weakref.ref(a)
        del a, b
        gc.collect()
        print(json.dumps({"threshold": gc.get_threshold(), "frozen": gc.get_freeze_count(),
                          "cycle_collected": alive() is None}))

ServerApp.instance = classmethod(lambda cls, config=None: Stub())
gc.set_threshold(700, 10, 10)
raise SystemExit(cli.main(["serve", "--port", "1"]))
"""
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=False, timeout=120
    )
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert tuple(figures["threshold"]) == GC_THRESHOLDS != (700, 10, 10)
    assert figures["frozen"] > 10_000  # the imports of a Jupyter server, at least
    assert figures["cycle_collected"] is True
