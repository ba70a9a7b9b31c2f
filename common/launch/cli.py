"""The ``chronoq`` command: ``up`` (everything locally), ``migrate``, ``topics``, ``config``,
and one subcommand per service (``api``, ``scanner``, ``executor``, ``results``), which replaces
itself with ``python -m <service>`` so signals reach the service directly; and the API
client's ``jobs`` and ``schedules`` (chronoq/cli.py), which read no server setting."""

from __future__ import annotations

import argparse
import getpass
import logging
import os
import sys

from common.core.roles import ROLE_NAMES
from common.infra.config import Settings, options_help, shown_settings
from common.infra.errors import ChronoqError, ConfigError
from common.infra.lifecycle import EXIT_CONFIG, EXIT_OK, EXIT_UNAVAILABLE, load_or_exit

EXIT_USAGE = 64  # EX_USAGE: the command was given something it cannot use
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
    sub.add_parser("config", help="print the effective settings (credentials masked)")
    keys = sub.add_parser("keys", help="API keys: create, list, revoke").add_subparsers(dest="action", required=True)
    create = keys.add_parser("create", help="make a key and print it (once; only its hash is stored)")
    create.add_argument("--tenant", required=True, help="tenant of the key (created if new)")
    create.add_argument("--role", required=True, choices=ROLE_NAMES, help="what the key may do")
    create.add_argument("--name", required=True, help="what the key is for")
    listing = keys.add_parser("list", help="list keys (never their secrets)")
    listing.add_argument("--tenant", help="only this tenant's keys")
    revoke = keys.add_parser(
        "revoke", help="revoke a key by its id: it stops working within CHRONOQ_KEY_CACHE_SECONDS (2 s)"
    )
    revoke.add_argument("key_id")
    secrets = sub.add_parser("secrets", help="encryption keys of stored secrets").add_subparsers(dest="action", required=True)
    secrets.add_parser("new-key", help="print a new Fernet key for CHRONOQ_SECRET_KEY")
    secrets.add_parser("rotate", help="re-encrypt every stored secret with the first key of CHRONOQ_SECRET_KEY")
    for name, (_module, help_text) in SERVICES.items():
        sub.add_parser(name, help=f"run {help_text}")
    # The API's client commands (jobs, schedules, workflows): argument declarations only; the client
    # itself is imported when one of them runs.
    from chronoq.cli import add_parsers

    add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from chronoq.cli import COMMANDS

    if args.command in COMMANDS:  # the client (jobs, schedules, workflows): no server settings read
        from chronoq.cli import run

        return run(args)
    if args.command in SERVICES:
        module = SERVICES[args.command][0]
        os.execv(sys.executable, [sys.executable, "-m", module])
    settings = load_or_exit(args.command)
    setup_logging(settings.log_level, "chronoq", settings.log_format)
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
        elif args.command == "keys":
            return _keys(settings, args)
        elif args.command == "secrets":
            return _secrets(settings, args)
        elif args.command == "config":
            for env, value in shown_settings(settings):
                print(f"{env}={value!r}")
    except ConfigError as exc:
        log.error("invalid setting %s", exc)
        return EXIT_CONFIG
    except ChronoqError as exc:
        log.error("%s", exc)
        return EXIT_UNAVAILABLE
    return EXIT_OK


def _keys(settings: Settings, args: argparse.Namespace) -> int:
    import uuid

    from common.core import apikeys
    from common.core.roles import Role
    from common.core.secrets import Keyring
    from common.infra import clock
    from common.infra.db import check_database, session_scope

    check_database(settings)
    with session_scope(settings) as session:
        if args.action == "create":
            try:
                made = apikeys.create_key(
                    session, tenant=args.tenant, role=Role.parse(args.role), name=args.name,
                    created_by=f"cli:{getpass.getuser()}", keyring=Keyring.from_settings(settings), now=clock.utcnow(),
                )
            except ValueError as exc:
                print(f"chronoq keys create: {exc}", file=sys.stderr)
                return EXIT_USAGE
            print(made.key)
            print(f"key {made.row.id}: tenant {made.row.tenant}, role {made.row.role}, name {made.row.name!r}. "
                  "Shown once; send it as 'Authorization: Bearer <key>'.", file=sys.stderr)
        elif args.action == "list":
            rows = apikeys.list_keys(session, args.tenant)
            print(f"{'ID':<36}  {'PREFIX':<12}  {'TENANT':<16}  {'ROLE':<6}  {'STATE':<7}  NAME")
            for row in rows:
                state = "revoked" if row.revoked_at else "active"
                print(f"{row.id!s:<36}  {row.prefix:<12}  {row.tenant:<16}  {row.role:<6}  {state:<7}  {row.name}")
        elif args.action == "revoke":
            try:
                key_id = uuid.UUID(args.key_id)
            except ValueError:
                key_id = None
            row = apikeys.revoke_key(session, key_id, now=clock.utcnow()) if key_id else None
            if row is None:
                print(f"chronoq keys revoke: no key {args.key_id!r} (see 'chronoq keys list')", file=sys.stderr)
                return EXIT_USAGE
            print(f"key {row.id} ({row.tenant}, {row.name!r}) revoked")
    return EXIT_OK


def _secrets(settings: Settings, args: argparse.Namespace) -> int:
    if args.action == "new-key":
        from common.core.secrets import new_key

        print(new_key())
        return EXIT_OK
    from common.core.rekey import rotate_all
    from common.infra.db import check_database

    check_database(settings)
    result = rotate_all(settings)
    print(f"re-encrypted: {result}")
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
