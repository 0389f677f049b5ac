"""The `tapefit` command: run the API and workers, migrate the database; and, as a client of
a running server (TAPEFIT_URL), submit, list, follow, cancel and query jobs."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from service.cli import commands as client_commands
from service.config import get_settings
from service.observability.logs import configure_logging

log = logging.getLogger("tapefit")

# Workers run as their own processes (`python -m worker`): the API process never loads
# TensorFlow, and a worker's crash cannot take the API down.
WORKER_COMMAND = [sys.executable, "-m", "worker"]


class _Parser(argparse.ArgumentParser):
    """argparse, with a wrong argument told in one line (and where to find the usage)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="tapefit", description=__doc__)
    commands = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=_Parser
    )

    serve = commands.add_parser("serve", help="run the API with N embedded worker processes")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument(
        "--workers", type=int, default=1, help="worker processes to start (0: the API alone)"
    )

    commands.add_parser("worker", help="run one worker process (more workers, other machines)")
    commands.add_parser(
        "bench", help="measure training speed, service latency and serving (see --help)",
        add_help=False,
    )

    db = commands.add_parser("db", help="database schema")
    db_commands = db.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    db_commands.add_parser("upgrade", help="apply the migrations up to the newest")
    db_commands.add_parser(
        "compact",
        help="SQLite: rewrite the file so deletions give space back to the disk (VACUUM; "
        "needs as much free disk again; best with the service stopped)",
    )
    client_commands.add_parsers(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `tapefit` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:
        # The benchmark loads TensorFlow, so it runs as its own module, like the worker.
        os.execv(sys.executable, [sys.executable, "-m", "benchmarks", *argv[1:]])
    args = _parser().parse_args(argv)
    if args.command in client_commands.COMMANDS:
        return client_commands.run(args)
    configure_logging(get_settings().log_format)
    if args.command == "serve":
        return serve(host=args.host, port=args.port, workers=args.workers)
    if args.command == "worker":
        os.execv(WORKER_COMMAND[0], WORKER_COMMAND)
    if args.command == "db":
        from service.migrate import upgrade

        upgrade(get_settings().sqlalchemy_url)
        if args.db_command == "compact":
            return compact()
        print("database at head")
    return 0


def compact() -> int:
    """`tapefit db compact`: switch a SQLite file made before incremental vacuum existed, and
    give its free pages back to the disk."""
    from service.db import Database
    from service.queue.sweeper import make_incremental

    settings = get_settings()
    database = Database(settings.sqlalchemy_url, busy_timeout=settings.sqlite_busy_timeout)
    try:
        if not database.is_sqlite:
            print("tapefit: PostgreSQL reclaims space by itself (autovacuum); nothing to do",
                  file=sys.stderr)
            return 0
        switched = make_incremental(database)
    finally:
        database.dispose()
    print("compacted; space freed by deletions now goes back to the disk" if switched
          else "compacted (it already gave space back after deletions)")
    return 0


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def serve(*, host: str, port: int, workers: int) -> int:
    """Migrate, start the worker processes (restarting any that dies), serve the API until
    interrupted, stop the workers."""
    from service.api.app import create_app
    from service.cli.server import run_api
    from service.cli.supervisor import Supervisor
    from service.migrate import upgrade

    if workers < 0:
        print("tapefit: --workers must be 0 or more", file=sys.stderr)
        return 2
    settings = get_settings()
    if settings.api_token is None and not is_loopback(host):
        print(
            f"tapefit: refusing to serve on {host} without a token: anyone who can reach it "
            "could train and read models. Set TAPEFIT_API_TOKEN, or serve on 127.0.0.1.",
            file=sys.stderr,
        )
        return 2
    upgrade(settings.sqlalchemy_url)
    supervisor = Supervisor(WORKER_COMMAND, workers)
    supervisor.start()
    try:
        run_api(create_app(settings), host=host, port=port, settings=settings)
    finally:
        supervisor.stop()  # SIGTERM: each worker hands its job back and exits
    return 0


if __name__ == "__main__":
    sys.exit(main())
