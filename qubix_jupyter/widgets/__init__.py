"""The notebook panels (ipywidgets 8): they talk to the market only through
:mod:`qubix_jupyter.client`.

* :class:`MarketplacePanel` — browse and filter offers, live; rent one.
* :class:`ShareGPUPanel` — share this machine's GPU: detect, list, start a worker.
* :class:`ProviderDashboard` — earnings, live GPU metrics, jobs, status.
* :class:`JobWidget` — one job's progress, state, cost, logs and a cancel button.
"""

from __future__ import annotations

from .dashboard import ProviderDashboard
from .job import JobWidget
from .marketplace import MarketplacePanel, submit_line
from .share import ShareGPUPanel

__all__ = ["JobWidget", "MarketplacePanel", "ProviderDashboard", "ShareGPUPanel", "submit_line"]
