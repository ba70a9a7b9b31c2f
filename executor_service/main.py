"""``python -m executor_service``: run one executor until SIGTERM."""

from __future__ import annotations

from common.infra.lifecycle import run_service
from executor_service.service import Executor


def main() -> int:
    return run_service("executor", Executor)
