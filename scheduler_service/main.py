"""``python -m scheduler_service``: run one scanner until SIGTERM."""

from __future__ import annotations

from common.infra.lifecycle import run_service
from scheduler_service.scanner import Scanner


def main() -> int:
    return run_service("scanner", Scanner)
