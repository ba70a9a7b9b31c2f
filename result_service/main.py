"""``python -m result_service``: run one result writer until SIGTERM."""

from __future__ import annotations

from common.infra.lifecycle import run_service
from result_service.writer import ResultWriter


def main() -> int:
    return run_service("results", ResultWriter)
