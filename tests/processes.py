"""Run chronoq's services as real processes for end-to-end tests, and stop them by PID."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

from common.launch.process import terminate, terminate_all
from common.infra.config import Settings, settings_env

MODULES = {"api": "api", "scanner": "scheduler_service", "executor": "executor_service", "results": "result_service"}


def service_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment that gives a service process exactly these settings."""
    env = settings_env(settings)
    env["CHRONOQ_LOG_LEVEL"] = "INFO"
    env["PYTHONUNBUFFERED"] = "1"
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
        return terminate(process, timeout, sig)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class System:
    """The four services over one database and broker, each one restartable by name."""

    def __init__(self, settings: Settings, log_dir: Path, executors: int = 1, scanners: int = 1,
                 env: dict[str, str] | None = None) -> None:
        self.settings = settings
        self.env = service_env(settings, **(env or {}))  # env: more variables, e.g. OTEL_*
        self.log_dir = log_dir
        names = ["results"] + [f"scanner{i + 1}" for i in range(scanners)] + ["api"]
        names += [f"executor{i + 1}" for i in range(executors)]
        self.services = {n: Service(n, self.env, log_dir / f"{n}.log") for n in names}
        self.base_url = f"http://127.0.0.1:{settings.api_port}"
        #: What every request of the tests sends: an admin key's Authorization header when the
        #: system runs with authentication on (tests/e2e/conftest.py makes one).
        self.headers: dict[str, str] = {}

    def add(self, name: str) -> Service:
        """Start one more service process (e.g. "executor3")."""
        service = self.services[name] = Service(name, self.env, self.log_dir / f"{name}.log")
        return service.start()

    def kill(self, name: str) -> None:
        """SIGKILL, as a crash would."""
        self.services[name].stop(signal.SIGKILL)

    def restart(self, name: str) -> None:
        service = self.services[name]
        service.restarts += 1
        service.start()

    def start(self, timeout: float = 60.0) -> "System":
        for service in self.services.values():
            service.start()
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for service in self.services.values():
                if service.process is not None and service.process.poll() is not None:
                    raise RuntimeError(f"{service.name} exited at start-up:\n{service.log()[-3000:]}")
            try:
                if requests.get(f"{self.base_url}/readyz", timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.1)
        raise RuntimeError("the API did not become ready:\n" + self.services["api"].log()[-3000:])

    def stop(self, timeout: float = 30.0) -> dict[str, int | None]:
        """SIGTERM to every service at once, each then stopping cleanly on its own: the time of
        the slowest, not the sum (nothing the tests check depends on the order)."""
        processes = {name: service.process for name, service in self.services.items()}
        for service in self.services.values():
            service.process = None
        return dict(zip(processes, terminate_all(list(processes.values()), timeout)))

    def logs(self, tail: int = 4000) -> str:
        return "\n".join(f"==== {n}\n{s.log()[-tail:]}" for n, s in self.services.items())
