"""Where providers' workers reach the market's Dask scheduler.

The address is known only once the embedded scheduler listens (or from ``scheduler_address``
config for an external one), after the services are built, hence a small mutable holder.
"""

from __future__ import annotations


class SchedulerDirectory:
    def __init__(self, address: str = "") -> None:
        #: ``tcp://host:port`` or ``tls://host:port`` that workers dial; empty: none yet.
        self.address = address
