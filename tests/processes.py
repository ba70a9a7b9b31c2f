"""Run chronoq's services as real processes for end-to-end tests, and stop them by PID."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

from common.config import Settings

MODULES = {"api": "api", "scanner": "scheduler_service", "executor": "executor_service", "results": "result_service"}


def service_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment that gives a service process these settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHRONOQ_")}
    env.update({
        "CHRONOQ_DATABASE_URL": settings.resolved_database_url,
        "CHRONOQ_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "CHRONOQ_TOPIC_JOBS": settings.topic_jobs,
        "CHRONOQ_TOPIC_UPDATES": settings.topic_updates,
        "CHRONOQ_TOPIC_DLQ": settings.topic_dlq,
        "CHRONOQ_KAFKA_SESSION_TIMEOUT_MS": str(settings.kafka_session_timeout_ms),
        "CHRONOQ_KAFKA_MAX_POLL_INTERVAL_MS": str(settings.kafka_max_poll_interval_ms),
        "CHRONOQ_SCAN_INTERVAL_SECONDS": str(settings.scan_interval_seconds),
        "CHRONOQ_SWEEP_INTERVAL_SECONDS": str(settings.sweep_interval_seconds),
        "CHRONOQ_LEASE_SECONDS": str(settings.lease_seconds),
        "CHRONOQ_RETRY_BACKOFF_SECONDS": str(settings.retry_backoff_seconds),
        "CHRONOQ_RETRY_BACKOFF_MAX_SECONDS": str(settings.retry_backoff_max_seconds),
        "CHRONOQ_RETRY_JITTER": str(settings.retry_jitter),
        "CHRONOQ_API_PORT": str(settings.api_port),
        "CHRONOQ_API_WORKERS": str(settings.api_workers),
        "CHRONOQ_LOG_LEVEL": "INFO",
        "PYTHONUNBUFFERED": "1",
    })
    env.update(extra)
    return env


@dataclass
class Service:
    name: str
    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen | None = None  # type: ignore[type-arg]
    restarts: int = field(default=0)

    def start(self) -> "Service":
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", MODULES[self.name.rstrip("0123456789")]],
            env=self.env, stdout=log, stderr=subprocess.STDOUT,
        )
        log.close()
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int | None:
        process, self.process = self.process, None
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(sig)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        return process.returncode

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class System:
    """The four services over one database and broker."""

    def __init__(self, settings: Settings, log_dir: Path, executors: int = 1) -> None:
        self.settings = settings
        env = service_env(settings)
        names = ["results", "scanner", "api"] + [f"executor{i + 1}" for i in range(executors)]
        self.services = {n: Service(n, env, log_dir / f"{n}.log") for n in names}
        self.base_url = f"http://127.0.0.1:{settings.api_port}"

    def start(self, timeout: float = 60.0) -> "System":
        for service in self.services.values():
            service.start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for service in self.services.values():
                assert service.process is not None
                if service.process.poll() is not None:
                    raise RuntimeError(f"{service.name} exited at start-up:\n{service.log()[-3000:]}")
            try:
                if requests.get(f"{self.base_url}/readyz", timeout=1).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.1)
        raise RuntimeError("the API did not become ready:\n" + self.services["api"].log()[-3000:])

    def stop(self) -> dict[str, int | None]:
        return {name: service.stop() for name, service in reversed(list(self.services.items()))}

    def logs(self) -> str:
        return "\n".join(f"==== {n}\n{s.log()[-4000:]}" for n, s in self.services.items())
