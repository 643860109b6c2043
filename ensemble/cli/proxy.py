"""``ensemble storage-proxy``: Optuna's gRPC proxy in front of a run's database, for fleets of workers."""

from __future__ import annotations

import argparse
import os

from ensemble.search.storage import DEFAULT_GRPC_PORT, STORAGE_ENV


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "storage-proxy",
        help="serve a database storage to many workers through Optuna's gRPC proxy (--storage grpc://HOST:PORT)",
        description="Runs optuna.storages.run_grpc_proxy_server in front of the database given by --storage "
        "(or $ENSEMBLE_STORAGE) until interrupted. Workers, search and run then take "
        "--storage grpc://THIS_HOST:PORT: one process holds the database connections and caches what the "
        "workers read. Worth it for dozens of workers or short trials (docs/distributed.md); Optuna's "
        "heartbeat does not pass through the proxy, so a killed worker's trial is not retried by the others.",
    )
    p.add_argument(
        "--storage",
        metavar="URL",
        default=os.environ.get(STORAGE_ENV) or None,
        help=f"the database, e.g. postgresql://user:PASSWORD@host/db (default: ${STORAGE_ENV})",
    )
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default: 127.0.0.1, this machine only). The proxy has no authentication: "
        "whoever reaches it reads and writes every run in the database. Reach it through an SSH tunnel "
        "(ssh -L) or give a private network's address, never a public one (docs/distributed.md)",
    )
    p.add_argument("--port", type=int, default=DEFAULT_GRPC_PORT, help=f"port (default: {DEFAULT_GRPC_PORT})")
    p.set_defaults(func=cmd_proxy)


def cmd_proxy(args: argparse.Namespace) -> int:
    from ensemble.errors import UsageError
    from ensemble.search.storage import serve_proxy

    if not args.storage:
        raise UsageError("ensemble storage-proxy needs the database: --storage URL or $ENSEMBLE_STORAGE")
    serve_proxy(args.storage, host=args.host, port=args.port)
    return 0
