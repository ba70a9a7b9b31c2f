"""``python -m api``: serve the HTTP API with gunicorn. Every option is an environment variable."""

from __future__ import annotations

import argparse
import sys

from common.config import PREFIX, load_settings, options
from common.errors import ConfigError
from common.lifecycle import EXIT_CONFIG
from common.logs import setup_logging

# The settings the API reads; the rest belong to the other services.
_API_OPTIONS = {
    "DATABASE_URL", "DB_POOL_SIZE", "HOME", "KAFKA_BOOTSTRAP", "TOPIC_JOBS", "TOPIC_DLQ", "SCAN_INTERVAL_SECONDS",
    "LEASE_SECONDS", "DEFAULT_MAX_RETRIES", "DEFAULT_TIMEOUT_SECONDS", "SHELL_ENABLED", "HANDLERS", "API_HOST",
    "API_PORT", "API_WORKERS", "MAX_PAYLOAD_BYTES", "MAX_REQUEST_BYTES", "PAST_TOLERANCE_SECONDS", "LOG_LEVEL",
}


def _help() -> str:
    lines = ["environment variables:"]
    for env, text, default in options():
        if env.removeprefix(PREFIX) in _API_OPTIONS:
            lines.append(f"  {env:<34} {text} (default: {default!r})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Parse (only) --help, load the settings, and serve."""
    argparse.ArgumentParser(
        prog="python -m api",
        description="Serve chronoq's HTTP API with gunicorn.",
        epilog=_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    ).parse_args(argv)
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"chronoq-api: invalid setting {exc}", file=sys.stderr)
        return EXIT_CONFIG
    setup_logging(settings.log_level, "api")
    from api.server import serve  # after logging, so import-time log lines are formatted

    serve(settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
