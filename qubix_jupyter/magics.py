"""The ``%qubix`` magics: the market from a notebook cell, through :mod:`qubix_jupyter.client`.

.. code-block:: text

    %load_ext qubix_jupyter
    %qubix connect [URL] [--seed-file PATH] [--token T]
    %qubix balance | jobs | market | share | dashboard
    %qubix submit --max-price 40 [--gpu MODEL] [--min-vram GB] [--hours H] FUNCTION_OR_FILE [ARG…]
    %%qubix submit --gpu "RTX 4090" --min-vram 16 --max-price 40 --hours 0.5 --out model,loss

The cell magic runs the cell as a ``cell`` job (its source and the names to bring back), shows a
:class:`~qubix_jupyter.widgets.JobWidget` while it runs, then prints what the cell printed and
puts the ``--out`` variables into the notebook's namespace. Bad options answer a usage message.
"""

from __future__ import annotations

import argparse
import ast
import pickle
import shlex
from pathlib import Path
from typing import Any, NoReturn

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, magics_class
from IPython.display import display

from .client import MarketClient, MarketError
from .client.errors import JobFailed
from .client.models import JobInfo


class _Usage(Exception):
    """argparse's way out (a bad option, or --help), kept from exiting the kernel."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise _Usage(f"{self.format_usage()}{self.prog}: error: {message}")

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        raise _Usage(message or "")

    def print_help(self, file: Any = None) -> None:
        raise _Usage(self.format_help())


def _names(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    for name in names:
        if not name.isidentifier():
            raise argparse.ArgumentTypeError(f"{name!r} is not a variable name")
    return names


def _parser() -> _Parser:
    parser = _Parser(prog="%qubix", description="The QUBIX GPU market from a notebook.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    connect = commands.add_parser("connect", help="connect to a market and sign in")
    connect.add_argument("url", nargs="?", help="the market's URL (default $QUBIX_MARKET_URL)")
    connect.add_argument("--seed-file", help="the wallet's seed file (default $QUBIX_SEED_FILE)")
    connect.add_argument("--token", help="a market bearer token instead of the wallet")
    commands.add_parser("balance", help="your wallet's balance")
    jobs = commands.add_parser("jobs", help="your recent jobs")
    jobs.add_argument("--status", help="only jobs in this state (e.g. RUNNING)")
    jobs.add_argument("--limit", type=int, default=20)
    commands.add_parser("market", help="the marketplace panel")
    share = commands.add_parser("share", help="the share-my-GPU panel")
    share.add_argument("--price", type=int, default=40, help="QU per GPU-hour")
    dashboard = commands.add_parser("dashboard", help="the provider dashboard")
    dashboard.add_argument("--worker-id", help="which listing (default: your newest)")
    submit = commands.add_parser("submit", help="run a function, a file or (%%%%) this cell")
    submit.add_argument("--gpu", action="append", help="a GPU model (repeat for several)")
    submit.add_argument("--min-vram", type=float, help="GB per GPU at least")
    submit.add_argument("--max-price", type=int, required=True, help="QU per GPU-hour at most")
    submit.add_argument("--hours", type=float, default=0.25, help="time budget (escrowed)")
    submit.add_argument("--out", type=_names, default=[], help="variables to bring back: a,b")
    submit.add_argument("--timeout", type=float, help="seconds to wait (default: --hours + 5 min)")
    submit.add_argument("--no-wait", action="store_true", help="return the job without waiting")
    submit.add_argument("target", nargs="?", help="a function in the namespace, or a .py file")
    submit.add_argument("args", nargs="*", help="the function's arguments (Python literals)")
    return parser


@magics_class
class QubixMagics(Magics):
    """``%qubix`` and ``%%qubix``; the client of ``%qubix connect`` is also ``qubix.submit``'s."""

    client: MarketClient | None = None

    @line_cell_magic
    def qubix(self, line: str, cell: str | None = None) -> Any:
        try:
            args = _parser().parse_args(shlex.split(line))
        except _Usage as usage:
            raise UsageError(str(usage).strip()) from None
        except ValueError as exc:  # shlex: an unclosed quote
            raise UsageError(f"%qubix: {exc}") from None
        if cell is not None and args.command != "submit":
            raise UsageError("%%qubix runs a cell only with submit: %%qubix submit --max-price N")
        try:
            return getattr(self, f"_{args.command}")(args, cell)
        except MarketError as exc:
            raise UsageError(
                f"the market answered {exc.status} {exc.code}: {exc.message}"
            ) from None

    # ------------------------------------------------------------------ commands

    def _market(self) -> MarketClient:
        if self.client is None:
            from .api import default_client

            self.client = default_client()
        return self.client

    def _connect(self, args: argparse.Namespace, _cell: str | None) -> None:
        from .api import connect

        self.client = connect(args.url, args.token, args.seed_file)
        who = self.client.identity or "a token"
        balance = self.client.balance().balance if self.client.token else None
        tail = f", balance {balance} QU" if balance is not None else ""
        print(f"connected to {self.client.url} as {who}{tail}")

    def _balance(self, _args: argparse.Namespace, _cell: str | None) -> None:
        balance = self._market().balance()
        print(f"balance {balance.balance} QU, pending earnings {balance.pending_earnings} QU")

    def _jobs(self, args: argparse.Namespace, _cell: str | None) -> None:
        page = self._market().jobs(status=args.status, limit=args.limit)
        if not page.items:
            print("no jobs yet")
            return
        print(f"{'JOB':<38} {'KIND':<10} {'STATUS':<10} {'PROGRESS':>8} {'COST':>8}")
        for job in page.items:
            cost = job.actual_cost if job.actual_cost is not None else job.estimated_cost
            print(
                f"{job.id:<38} {job.model_type:<10} {job.status:<10} {job.progress:>7}% "
                f"{cost:>5} QU"
            )

    def _show(self, args: argparse.Namespace, _cell: str | None) -> None:
        from . import widgets

        client = self._market()
        if args.command == "market":
            display(widgets.MarketplacePanel(client))
        elif args.command == "share":
            display(widgets.ShareGPUPanel(client, price_per_hour=args.price))
        else:
            display(widgets.ProviderDashboard(client, args.worker_id))

    _share = _show
    _dashboard = _show

    def _submit(self, args: argparse.Namespace, cell: str | None) -> Any:
        if cell is not None:
            if args.target:
                raise UsageError("%%qubix submit runs the cell: give no function or file")
            return self._run_cell(args, cell)
        if not args.target:
            raise UsageError("%qubix submit needs a FUNCTION_NAME or a .py FILE")
        target = args.target
        namespace = self.shell.user_ns if self.shell is not None else {}
        if target in namespace and callable(namespace[target]):
            from .api import Job, submit

            values = [_literal(a) for a in args.args]
            job: Job = submit(
                namespace[target],
                *values,
                gpu=args.gpu,
                min_vram=args.min_vram,
                max_price=args.max_price,
                hours=args.hours,
                client=self._market(),
            )
            return job
        path = Path(target).expanduser()
        if not path.is_file():
            raise UsageError(f"{target!r} is neither a function in the namespace nor a file")
        return self._run_cell(args, path.read_text())

    def _run_cell(self, args: argparse.Namespace, source: str) -> Any:
        from .api import Job, decode_result
        from .widgets import JobWidget

        try:
            ast.parse(source)
        except SyntaxError as exc:
            raise UsageError(f"the cell does not parse: {exc}") from None
        client = self._market()
        created = client.create_job(
            "cell",
            {"source": source, "variables": list(args.out)},  # the cell kind's payload
            compute_needed=args.hours,
            max_price=args.max_price,
            gpu_model=args.gpu,
            min_vram=args.min_vram,
        )
        assert created.job is not None
        if args.no_wait:
            return Job(client, created.job)
        widget = JobWidget(client, created.job, live=False)
        display(widget)
        timeout = args.timeout if args.timeout is not None else args.hours * 3600 + 300
        try:
            info = widget.wait(timeout)
        except KeyboardInterrupt:
            info = widget.cancel()
            print(f"interrupted: job {info.id} {info.status}")
            return None
        if not info.terminal:
            print(f"job {info.id} is still {info.status} after {timeout:g} s; it goes on")
            return Job(client, info)
        if info.status != "COMPLETED":
            raise UsageError(f"job {info.id} {info.status}: {info.error or 'no reason given'}")
        try:
            result = decode_result(client.job_result(info.id).result)
        except (JobFailed, pickle.UnpicklingError) as exc:
            raise UsageError(f"job {info.id}: its result could not be read: {exc}") from None
        return self._deliver(info, result)

    def _deliver(self, info: JobInfo, result: Any) -> Any:
        if not isinstance(result, dict):
            return result
        if result.get("stdout"):
            print(result["stdout"], end="")
        if result.get("stderr"):
            import sys

            print(result["stderr"], end="", file=sys.stderr)
        variables = result.get("variables") or {}
        if self.shell is not None:
            self.shell.user_ns.update(variables)
        if result.get("missing"):
            print(f"not defined by the cell: {', '.join(result['missing'])}")
        cost = info.actual_cost if info.actual_cost is not None else info.estimated_cost
        print(f"job {info.id} completed, cost {cost} QU" + (
            f"; back in the namespace: {', '.join(variables)}" if variables else ""
        ))  # fmt: skip
        output = result.get("output")
        return _Repr(output) if output is not None else None


class _Repr:
    """The remote cell's last value as the notebook would have shown it (its repr)."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


def _literal(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text  # a bare word is a string


def load_ipython_extension(ipython: Any) -> None:
    ipython.register_magics(QubixMagics)
