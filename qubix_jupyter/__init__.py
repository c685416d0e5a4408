"""QUBIX for Jupyter."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def progress(fraction: float) -> None:
    """Inside a job running on a provider: report ``fraction`` (0–1) done. Elsewhere a no-op."""
    from .dask_provider.progress import progress as report

    report(fraction)


#: The consumer API (``qubix.connect``, ``qubix.submit``…), imported on first use so that
#: ``import qubix_jupyter`` stays light.
_API = frozenset({"connect", "submit", "run", "map", "Job", "MarketClient", "AsyncMarketClient"})


def __getattr__(name: str) -> Any:
    if name in _API:
        from . import api

        return getattr(api, name)
    if name == "embedded_market":  # the notebooks' local market (qubix_jupyter.embedded)
        from .embedded import embedded_market

        return embedded_market
    raise AttributeError(f"module 'qubix_jupyter' has no attribute {name!r}")


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext qubix_jupyter``: the ``%qubix`` magics."""
    from .magics import load_ipython_extension as load

    load(ipython)


def _jupyter_server_extension_points() -> list[dict[str, Any]]:
    """Jupyter server 2 finds the ``qubix`` extension here (enabled by the wheel's config file)."""
    # Imported on demand: `import qubix_jupyter` in a kernel must not pull in the server.
    from .server_extension.app import QubixExtension

    return [{"module": "qubix_jupyter.server_extension.app", "app": QubixExtension}]


def _jupyter_labextension_paths() -> list[dict[str, str]]:
    """The prebuilt QUBIX sidebar, for JupyterLab (the wheel installs it enabled)."""
    return [{"src": "labextension", "dest": "qubix-jupyter"}]
