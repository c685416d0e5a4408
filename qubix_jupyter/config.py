"""Where QUBIX keeps its data when nothing is configured."""

from __future__ import annotations

import os
from pathlib import Path


def jupyter_data_dir() -> Path:
    try:
        from jupyter_core.paths import jupyter_data_dir as _jupyter_data_dir
    except ImportError:  # jupyter_core is absent in a bare install of the library
        base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
        return Path(os.environ.get("JUPYTER_DATA_DIR") or Path(base) / "jupyter")
    return Path(_jupyter_data_dir())


def default_database_url() -> str:
    """$QUBIX_DATABASE_URL, else the embedded SQLite file under the Jupyter data dir."""
    configured = os.environ.get("QUBIX_DATABASE_URL")
    if configured:
        return configured
    path = jupyter_data_dir() / "qubix" / "qubix.db"
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"
