"""Logging set-up shared by every service: one line per event, UTC timestamps, the service name."""

from __future__ import annotations

import logging
import sys
import time


def setup_logging(level: str = "INFO", service: str = "chronoq") -> None:
    """Log to stderr as ``2026-11-22T14:03:07.250Z INFO scanner common.core.store: …``."""
    formatter = logging.Formatter(
        fmt=f"%(asctime)s.%(msecs)03dZ %(levelname)s {service} %(name)s: %(message)s",
        datefmt="%Y-%m-%dT%H:%M:%S",
    )
    formatter.converter = time.gmtime
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # kafka-python is chatty at INFO about every connection; its warnings still show.
    logging.getLogger("kafka").setLevel(logging.WARNING)
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
