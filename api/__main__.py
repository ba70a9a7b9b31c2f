"""``python -m api``: serve the HTTP API with gunicorn. Every option is an environment variable."""

from __future__ import annotations

import argparse
import sys

from common.infra.config import options_help
from common.infra.lifecycle import load_or_exit
from common.infra.logs import setup_logging


def main(argv: list[str] | None = None) -> int:
    """Parse (only) --help, load the settings, and serve."""
    argparse.ArgumentParser(
        prog="python -m api",
        description="Serve chronoq's HTTP API with gunicorn.",
        epilog=options_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    ).parse_args(argv)
    settings = load_or_exit("api")
    setup_logging(settings.log_level, "api", settings.log_format)
    from api.server import serve  # after logging, so import-time log lines are formatted

    serve(settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
