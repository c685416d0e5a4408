"""The ``qubix`` command."""

from __future__ import annotations

import argparse
import gc
import sys
from collections.abc import Sequence

from .config import default_database_url
from .market.errors import QubixError


def _add_database_url(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--database-url",
        default=None,
        help="postgresql://user@host/db or sqlite:///path (default: $QUBIX_DATABASE_URL, "
        "else SQLite under the Jupyter data dir)",
    )


def _db_upgrade(args: argparse.Namespace) -> int:
    from .db import migrate

    url = args.database_url or default_database_url()
    before = migrate.current_revision(url)
    migrate.upgrade(url, args.revision)
    after = migrate.current_revision(url)
    print(f"database upgraded: {before or 'empty'} → {after}")
    return 0


def _db_current(args: argparse.Namespace) -> int:
    from .db import migrate

    url = args.database_url or default_database_url()
    current = migrate.current_revision(url)
    head = migrate.head_revision()
    state = "up to date" if current == head else "needs `qubix db upgrade`"
    print(f"{current or 'empty'} (head {head}: {state})")
    return 0 if current == head else 1


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return 0 if run_demo(args.database_url, postgres=args.postgres) else 1


def _embedded(args: argparse.Namespace) -> int:
    from . import embedded

    if args.stop:
        stopped = embedded.stop(args.home)
        print("embedded market stopped" if stopped else "no embedded market was running")
        return 0
    if args.background:
        try:
            market = embedded.embedded_market(args.home)
        except RuntimeError as exc:
            print(f"qubix: {exc}", file=sys.stderr)
            return 1
        print(market)
        print(f"your wallet: {market.seed_file}")
        return 0
    return embedded.serve(args.home)


def _serve(args: argparse.Namespace) -> int:
    """A Jupyter server whose only job is the market: the qubix extension, no browser."""
    from jupyter_server.serverapp import ServerApp
    from jupyter_server.utils import url_path_join
    from traitlets.config import Config

    config = Config()
    config.ServerApp.jpserver_extensions = {"qubix_jupyter": True}
    config.ServerApp.ip = args.ip
    config.ServerApp.port = args.port
    config.ServerApp.port_retries = 0  # the port asked for, or a clear failure
    config.ServerApp.open_browser = False
    config.ServerApp.allow_root = args.allow_root
    # A market that cannot start (old schema, bad config) must stop here, not serve without it.
    config.ServerApp.reraise_server_extension_failures = True
    if args.database_url:
        config.QubixExtension.database_url = args.database_url
    app = ServerApp.instance(config=config)
    app.initialize(argv=[])
    print(f"QUBIX market API: {url_path_join(app.connection_url, 'qubix/api/health')}", flush=True)
    settle_heap()
    app.start()
    return 0


#: The cyclic collector's thresholds for the market process (CPython's default: 700, 10, 10).
#: A young collection every 50 000 net allocations instead of every 700: each one promotes
#: whatever is alive at that moment (requests in flight, a fan-out's frames), and promoted
#: objects are what trigger the full collections, which walk every connection the server
#: holds: ~0.7 s at 10 000 WebSocket clients on 2 vCPUs, every event behind it delayed.
GC_THRESHOLDS = (50_000, 20, 10)


def settle_heap() -> None:
    """Before serving: take the start-up heap out of the collector's passes, collect rarely.

    Everything loaded so far (Jupyter, SQLAlchemy, Dask, the route table) lives as long as the
    process: frozen, the full passes no longer walk it again and again under load. Cycles still
    die; objects without cycles never needed the collector (reference counts free them).
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def _provide_credential(args: argparse.Namespace) -> tuple[str | None, str | None]:
    """``(seed, provision_token)``: what signs this machine in, exactly one of them.

    Given on the command line (``--seed-file``, ``--token``, ``--token-file``: at most one),
    else from the environment (``$QUBIX_PROVISION_TOKEN``, else ``$QUBIX_SEED``).
    """
    import os

    from .settlement.wallet import read_seed_file

    given = [name for name in ("seed_file", "token", "token_file") if getattr(args, name)]
    if len(given) > 1:
        flags = " and ".join("--" + name.replace("_", "-") for name in given)
        raise ValueError(f"give one of --seed-file, --token and --token-file, not {flags}")
    if args.seed_file:
        return read_seed_file(args.seed_file), None
    if args.token:
        return None, args.token.strip()
    if args.token_file:
        with open(os.path.expanduser(args.token_file), encoding="utf-8") as file:
            token = file.readline().strip()
        if not token:
            raise ValueError(f"{args.token_file} holds no provisioning token")
        return None, token
    token = os.environ.get("QUBIX_PROVISION_TOKEN", "").strip()
    if token:
        return None, token
    seed = os.environ.get("QUBIX_SEED", "")
    if seed:
        return seed, None
    raise ValueError(
        "give --token qxp_… (a provisioning token from the QUBIX panel, or "
        "$QUBIX_PROVISION_TOKEN) or --seed-file PATH (or $QUBIX_SEED): the wallet that gets paid"
    )


def _provide(args: argparse.Namespace) -> int:
    """Share this machine's GPUs (or CPU) until Ctrl-C or SIGTERM, then drain the workers."""
    import signal

    from .dask_provider.launcher import ProvideConfig, ProviderLauncher

    seed, token = _provide_credential(args)
    gpus = [int(i) for i in args.gpus.split(",") if i.strip()] if args.gpus else None
    launcher = ProviderLauncher(
        ProvideConfig(
            market_url=args.market,
            seed=seed,
            provision_token=token,
            price_per_hour=args.price,
            name=args.name,
            location=args.location,
            gpus=gpus,
            scheduler_address=args.scheduler,
        )
    )

    class Stop(Exception):
        pass

    def stop(signum: int, _frame: object) -> None:
        # Only interrupt here: draining inside the handler would wait on the worker processes
        # while the interrupted wait below still holds their lock, and never return.
        raise Stop

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        for device in launcher.start():
            label = device.gpu.model if device.gpu is not None else "CPU"
            print(
                f"sharing {label} as {device.worker_id} → {launcher.scheduler_address}",
                flush=True,
            )
        launcher.wait()
    except Stop:
        print("qubix: stopping the workers (draining)…", file=sys.stderr, flush=True)
    finally:
        # The drain is bounded (a worker still there after it is killed): let it finish.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        launcher.stop()
    return 0


def _wallet_new(args: argparse.Namespace) -> int:
    from .settlement.wallet import wallet_new_command

    return wallet_new_command(args.seed_file) or 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qubix", description="QUBIX for Jupyter: a GPU-time marketplace settled in Qubic."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser(
        "demo", help="run the whole market end to end: providers, jobs, money, audit"
    )
    _add_database_url(demo)
    demo.add_argument(
        "--postgres",
        action="store_true",
        help="run on a throwaway PostgreSQL cluster instead of a temporary SQLite file",
    )
    demo.set_defaults(func=_demo)

    embedded = commands.add_parser(
        "embedded",
        help="a market with two local providers and a wallet for you, for the notebooks",
    )
    embedded.add_argument(
        "--home",
        default=None,
        help="where its database, wallets and state live (default: $QUBIX_EMBEDDED_HOME, "
        "else ~/.qubix/embedded)",
    )
    action = embedded.add_mutually_exclusive_group()
    action.add_argument(
        "--background",
        action="store_true",
        help="start it detached (unless one runs already), wait until it is ready, print its URL",
    )
    action.add_argument("--stop", action="store_true", help="stop the one running")
    embedded.set_defaults(func=_embedded)

    serve = commands.add_parser(
        "serve", help="run the market server (a Jupyter server with the qubix extension)"
    )
    serve.add_argument("--port", type=int, default=8888, help="TCP port (default: 8888)")
    serve.add_argument(
        "--ip", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)"
    )
    _add_database_url(serve)
    serve.add_argument(
        "--allow-root", action="store_true", help="allow running as root (Jupyter refuses it)"
    )
    serve.set_defaults(func=_serve)

    provide = commands.add_parser(
        "provide", help="share this machine's GPUs (or CPU) with a market, until Ctrl-C"
    )
    provide.add_argument(
        "--market", required=True, help="the market's URL, e.g. https://m.example/"
    )
    provide.add_argument(
        "--seed-file", default=None, help="your wallet seed file (default: $QUBIX_SEED)"
    )
    provide.add_argument(
        "--token",
        default=None,
        help="a provisioning token (qxp_…) from the QUBIX panel: registers this machine for "
        "your wallet without its seed (default: $QUBIX_PROVISION_TOKEN). Other users of this "
        "machine can read a command line: on a shared machine prefer --token-file",
    )
    provide.add_argument(
        "--token-file", default=None, help="a file whose first line is the provisioning token"
    )
    provide.add_argument(
        "--price", type=int, default=10, help="QU per GPU-hour, an integer (default: 10)"
    )
    provide.add_argument("--name", default=None, help="the offer's name in the marketplace")
    provide.add_argument("--location", default=None, help='where it runs, e.g. "EU-West"')
    provide.add_argument(
        "--gpus", default=None, help="device indexes to share, e.g. 0,1 (default: all)"
    )
    provide.add_argument(
        "--scheduler",
        default=None,
        help="the scheduler address, when not the one the market announces (private network)",
    )
    provide.set_defaults(func=_provide)

    db = commands.add_parser("db", help="database schema").add_subparsers(
        dest="db_command", required=True, metavar="ACTION"
    )
    upgrade = db.add_parser("upgrade", help="apply schema migrations")
    _add_database_url(upgrade)
    upgrade.add_argument("revision", nargs="?", default="head", help="target (default: head)")
    upgrade.set_defaults(func=_db_upgrade)
    current = db.add_parser("current", help="show the schema revision; exit 1 if behind")
    _add_database_url(current)
    current.set_defaults(func=_db_current)

    wallet = commands.add_parser(
        "wallet", help="your Qubic wallet, kept on this machine"
    ).add_subparsers(dest="wallet_command", required=True, metavar="ACTION")
    new = wallet.add_parser("new", help="generate a seed locally and print its identity")
    new.add_argument(
        "--seed-file",
        default=None,
        help="write the seed to this file (mode 0600, never overwritten) and print only the "
        "identity; without it the seed is printed once",
    )
    new.set_defaults(func=_wallet_new)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except QubixError as exc:
        print(f"qubix: {exc.message}", file=sys.stderr)
        return 2
    except (ValueError, OSError) as exc:
        print(f"qubix: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
