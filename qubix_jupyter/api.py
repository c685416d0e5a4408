"""The consumer's API: ``qubix.connect``, ``qubix.submit``, ``qubix.map`` and :class:`Job`.

.. code-block:: python

    import qubix_jupyter as qubix

    qubix.connect("https://market.example/", seed_file="~/.qubix/seed")
    job = qubix.submit(train, data, gpu="RTX 4090", max_price=40, hours=0.5)
    job.result(timeout=600)           # the market answers the moment the job ends

A ``python`` job's ``inputData`` is ``{"kind": "python", "payload": base64(cloudpickle.dumps(
(fn, args, kwargs)))}``; a result that is not JSON comes back as ``{"kind": "pickle",
"payload": base64(pickle)}`` and is unpickled here. Everything goes over HTTP and the events
WebSocket (:mod:`qubix_jupyter.client`).
"""

from __future__ import annotations

import asyncio
import builtins
import pickle
import threading
import time
from collections.abc import Callable, Generator, Iterable
from typing import Any

from .client import AsyncMarketClient, MarketClient
from .client.errors import Conflict, JobFailed, ResultTimeout
from .client.models import JobInfo
from .market import payloads

#: How long one ``GET jobs/{id}/result?wait=`` of ``Job.result`` is held at the market (seconds).
RESULT_WAIT_SECONDS = 30.0

_lock = threading.Lock()
_default: MarketClient | None = None


def connect(
    url: str | None = None,
    token: str | None = None,
    seed_file: str | None = None,
    *,
    seed: str | None = None,
) -> MarketClient:
    """Connect to a market and make it the default of ``submit``/``map``.

    ``url`` defaults to $QUBIX_MARKET_URL, else ``http://127.0.0.1:8888/``; ``token`` to
    $QUBIX_TOKEN; ``seed_file`` to $QUBIX_SEED_FILE. With a seed and no token it signs in with
    the wallet right away (the seed stays on this machine).
    """
    global _default
    client = MarketClient(url, token, seed=seed, seed_file=seed_file)
    if client.token is None and client.aio.can_sign_in:
        client.sign_in()
    with _lock:
        _default = client
    return client


def default_client() -> MarketClient:
    """The client of the last :func:`connect`, or one made from the environment."""
    with _lock:
        if _default is not None:
            return _default
    return connect()


def encode_python_job(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """The ``inputData`` of a ``python`` job (:mod:`qubix_jupyter.market.payloads`)."""
    import cloudpickle  # type: ignore[import-untyped]

    return payloads.python_input(cloudpickle.dumps((fn, args, kwargs)))


def decode_result(result: Any) -> Any:
    """A job's result as sent by the market: pickled results are unpickled, JSON is as it is.

    Unpickling runs code of whoever made the pickle: only results of your own jobs come here.
    """
    if payloads.is_pickled_result(result):
        return pickle.loads(payloads.pickled_result_bytes(result))
    return result


class Job:
    """A job on the market: a future for its result.

    ``status``, ``progress`` (percent) and ``logs`` ask the market each time; ``result(timeout)``
    blocks; ``await job`` awaits the result in async code.
    """

    def __init__(self, client: MarketClient, info: JobInfo) -> None:
        self.client = client
        self.id = info.id
        self.info = info

    def __repr__(self) -> str:
        return f"<qubix Job {self.id} {self.info.status} {self.info.progress}%>"

    def _ipython_display_(self) -> None:
        """In a notebook a job shows as a live JobWidget (progress, cost, logs, cancel)."""
        from IPython.display import display

        from .widgets import JobWidget

        display(JobWidget(self.client, self.info))

    def refresh(self) -> JobInfo:
        self.info = self.client.job(self.id)
        return self.info

    @property
    def status(self) -> str:
        return self.refresh().status

    @property
    def progress(self) -> int:
        return self.refresh().progress

    @property
    def logs(self) -> str:
        """What the job printed, when its kind reports it (a ``cell`` job's stdout/stderr)."""
        info = self.refresh()
        result = info.result if isinstance(info.result, dict) else {}
        return "".join(str(result.get(k) or "") for k in ("stdout", "stderr")) or (info.error or "")

    def done(self) -> bool:
        return self.refresh().terminal

    def cancel(self) -> JobInfo:
        cancelled = self.client.cancel_job(self.id)
        if cancelled.job is not None:
            self.info = cancelled.job
        return self.info

    def result(self, timeout: float | None = None) -> Any:
        """The job's result; JobFailed if it failed or was cancelled, ResultTimeout on timeout.

        Asked on this thread, each ask held at the market until the job ends (at most
        ``RESULT_WAIT_SECONDS``, and never past ``timeout``)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            wait = RESULT_WAIT_SECONDS
            if deadline is not None:
                wait = max(0.0, min(wait, deadline - time.monotonic()))
            try:
                answer = self.client.job_result(self.id, wait=wait)
            except Conflict:  # not finished within the wait
                if deadline is not None and time.monotonic() >= deadline:
                    raise ResultTimeout(f"job {self.id} did not finish in {timeout} s") from None
                continue
            return _outcome(answer.status, answer.result, answer.error, answer.raw)

    def __await__(self) -> Generator[Any, None, Any]:
        loop_future = asyncio.wrap_future(
            asyncio.run_coroutine_threadsafe(
                wait_for_result(self.client.aio, self.id), self.client._loop.loop
            )
        )
        return loop_future.__await__()


async def wait_for_result(client: AsyncMarketClient, job_id: str) -> Any:
    """Wait until the job is terminal, its result then: each call is held at the market until
    the job ends (or RESULT_WAIT_SECONDS pass, and it is asked again)."""
    while True:
        try:
            answer = await client.job_result(job_id, wait=RESULT_WAIT_SECONDS)
            break
        except Conflict:  # not finished within the wait
            continue
    return _outcome(answer.status, answer.result, answer.error, answer.raw)


def _outcome(status: str, result: Any, error: str | None, raw: dict[str, Any]) -> Any:
    """A finished job's result; JobFailed if it failed or was cancelled."""
    if status != "COMPLETED":
        raise JobFailed(409, status.lower(), error or f"job {status}", body=raw)
    return decode_result(result)


def submit(
    fn: Callable[..., Any],
    *args: Any,
    gpu: str | Iterable[str] | None = None,
    min_vram: float | None = None,
    max_price: int,
    hours: float = 0.25,
    client: MarketClient | None = None,
    **kwargs: Any,
) -> Job:
    """Run ``fn(*args, **kwargs)`` on a rented GPU; returns the :class:`Job` at once.

    ``gpu``: a GPU model or several; ``min_vram``: GB per GPU; ``max_price``: QU per GPU-hour at
    most; ``hours``: the time budget (escrow ``max_price × hours`` is locked until it ends).
    """
    market = client or default_client()
    return Job(market, _create(market, fn, args, kwargs, gpu, min_vram, max_price, hours))


def _create(
    market: MarketClient,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    gpu: str | Iterable[str] | None,
    min_vram: float | None,
    max_price: int,
    hours: float,
    wait: float | None = None,
) -> JobInfo:
    """A ``python`` job of ``fn(*args, **kwargs)``: the job as the create's answer gives it."""
    created = market.create_job(
        "python",
        encode_python_job(fn, args, kwargs),
        compute_needed=hours,
        max_price=max_price,
        gpu_model=gpu,
        min_vram=min_vram,
        wait=wait,
    )
    assert created.job is not None
    return created.job


def run(
    fn: Callable[..., Any],
    *args: Any,
    gpu: str | Iterable[str] | None = None,
    min_vram: float | None = None,
    max_price: int,
    hours: float = 0.25,
    timeout: float | None = None,
    client: MarketClient | None = None,
    **kwargs: Any,
) -> Any:
    """``fn(*args, **kwargs)`` run on a rented GPU: its result (or JobFailed, ResultTimeout).

    One exchange with the market for a job that ends within ``RESULT_WAIT_SECONDS``: the
    create's answer is held until the job ends and carries its result. A longer job is then
    waited for as :meth:`Job.result` does, ``timeout`` seconds in all.
    """
    market = client or default_client()
    wait = RESULT_WAIT_SECONDS if timeout is None else min(RESULT_WAIT_SECONDS, timeout)
    info = _create(market, fn, args, kwargs, gpu, min_vram, max_price, hours, wait)
    if info.terminal:
        return _outcome(info.status, info.result, info.error, info.raw)
    return Job(market, info).result(None if timeout is None else max(0.0, timeout - wait))


def map(
    fn: Callable[..., Any],
    items: Iterable[Any],
    *,
    gpu: str | Iterable[str] | None = None,
    min_vram: float | None = None,
    max_price: int,
    hours: float = 0.25,
    client: MarketClient | None = None,
) -> builtins.list[Job]:
    """One job per item: ``[submit(fn, item, …) for item in items]``."""
    return [
        submit(
            fn, item, gpu=gpu, min_vram=min_vram, max_price=max_price, hours=hours, client=client
        )
        for item in items
    ]


def progress(fraction: float) -> None:
    """Inside a job running on a provider: report ``fraction`` (0–1) done. Elsewhere a no-op."""
    from .dask_provider.progress import progress as report

    report(fraction)
