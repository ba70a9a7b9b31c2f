"""The ``chronoq`` command: ``up`` (everything locally), ``migrate``, ``topics``, ``config``,
and one subcommand per service (``api``, ``scanner``, ``executor``, ``results``), which replaces
itself with ``python -m <service>`` so signals reach the service directly."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from common.infra.config import options, options_help, shown_value
from common.infra.errors import ChronoqError, ConfigError
from common.infra.lifecycle import EXIT_CONFIG, EXIT_OK, EXIT_UNAVAILABLE, load_or_exit
from common.infra.logs import setup_logging

SERVICES = {
    "api": ("api", "the HTTP API under gunicorn"),
    "scanner": ("scheduler_service", "the scanner: dispatches due jobs to Kafka"),
    "executor": ("executor_service", "an executor: fires jobs on time, retries failures"),
    "results": ("result_service", "the result writer: records status and history"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="chronoq",
        description="chronoq runs jobs at an exact future time.",
        epilog=options_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    up = sub.add_parser("up", help="start everything locally: broker, database, API, scanner, executor, results")
    up.add_argument("--port", type=int, help="API port (CHRONOQ_API_PORT, default 8080)")
    up.add_argument("--home", help="directory for local state (CHRONOQ_HOME, default ./.chronoq)")
    up.add_argument("--executors", type=int, default=1, help="executor processes to start (default 1)")
    sub.add_parser("migrate", help="create or upgrade the database schema (CHRONOQ_DATABASE_URL)")
    sub.add_parser("topics", help="create the Kafka topics (CHRONOQ_KAFKA_BOOTSTRAP, CHRONOQ_TOPIC_*)")
    sub.add_parser("config", help="print the effective settings")
    for name, (_module, help_text) in SERVICES.items():
        sub.add_parser(name, help=f"run {help_text}")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command in SERVICES:
        module = SERVICES[args.command][0]
        os.execv(sys.executable, [sys.executable, "-m", module])
    settings = load_or_exit(args.command)
    setup_logging(settings.log_level, "chronoq")
    log = logging.getLogger("chronoq")
    try:
        if args.command == "up":
            from common.launch.localrun import run_local

            return run_local(settings, port=args.port, home=args.home, executors=args.executors)
        if args.command == "migrate":
            from common.core.migrate import upgrade
            from common.infra.db import check_database

            check_database(settings)  # one line naming CHRONOQ_DATABASE_URL, not Alembic's traceback
            upgrade(settings)
        elif args.command == "topics":
            from common.infra.kafka import ensure_topics

            ensure_topics(settings)
            log.info("topics ready: %s", ", ".join(settings.topics))
        elif args.command == "config":
            for env, _help, _default in options():
                print(f"{env}={shown_value(settings, env.removeprefix('CHRONOQ_').lower())!r}")
    except ConfigError as exc:
        log.error("invalid setting %s", exc)
        return EXIT_CONFIG
    except ChronoqError as exc:
        log.error("%s", exc)
        return EXIT_UNAVAILABLE
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
