"""``chronoq up``: the whole system on one machine with embedded defaults. It starts a tansu
broker on a free port, migrates the database (a SQLite file in CHRONOQ_HOME unless
CHRONOQ_DATABASE_URL says otherwise), then runs the API, a scanner, executors and a result
writer as child processes, prefixing their log lines, until Ctrl-C or SIGTERM."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import IO, Callable

import requests

from common.launch.broker import LocalBroker, free_port
from common.infra.config import Settings
from common.infra.db import check_database, masked_url, session_scope
from common.infra.kafka import ensure_topics
from common.infra.metrics import endpoint_port
from common.infra.lifecycle import EXIT_OK, on_stop
from common.core import apikeys
from common.core.migrate import upgrade
from common.core.roles import Role
from common.core.secrets import Keyring, new_key
from common.infra import clock

log = logging.getLogger("chronoq.up")

# Start order; they stop in reverse, so the API stops taking jobs first and the result writer
# records the last updates before it goes.
CHILDREN = [
    ("results", "result_service"),
    ("executor", "executor_service"),
    ("scanner", "scheduler_service"),
    ("api", "api"),
]
STOP_TIMEOUT = 30.0


#: The setting that gives each background service its metrics and health port.
PORT_SETTINGS = {
    "api": ("api", "CHRONOQ_API_METRICS_PORT"),
    "scheduler_service": ("scanner", "CHRONOQ_SCANNER_METRICS_PORT"),
    "executor_service": ("executor", "CHRONOQ_EXECUTOR_METRICS_PORT"),
    "result_service": ("results", "CHRONOQ_RESULTS_METRICS_PORT"),
}


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def metrics_port(settings: Settings, module: str, index: int = 0) -> int:
    """The port a background service gets: its setting (executors: the setting plus their
    index), or a free one when that is taken (another `chronoq up` on this machine) or 0."""
    if module not in PORT_SETTINGS:
        return 0
    wanted = endpoint_port(replace(settings, health_port=0), PORT_SETTINGS[module][0])
    if wanted is None:  # `off`: the supervisor still needs /healthz, on a free port
        return free_port()
    wanted = wanted + index if wanted else 0
    return wanted if wanted and wanted <= 65535 and _port_free(wanted) else free_port()


class Child:
    """One service process whose output is copied, prefixed, to our stdout and a log file."""

    def __init__(self, name: str, module: str, env: dict[str, str], log_dir: Path, width: int,
                 metrics_port: int = 0) -> None:
        self.name = name
        # Every service gets its metrics endpoint on loopback, on the port chosen for it (the
        # supervisor asks the background services' /healthz there).
        self.health_port = metrics_port
        if module in PORT_SETTINGS:
            env = {**env, "CHRONOQ_HEALTH_PORT": "0", PORT_SETTINGS[module][1]: str(metrics_port)}
        self.log_file: IO[str] = open(log_dir / f"{name}.log", "a", encoding="utf-8")
        self.process = subprocess.Popen(
            [sys.executable, "-m", module],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            start_new_session=True,  # Ctrl-C reaches only us; we stop the children in order
        )
        self.prefix = f"{name:<{width}} | "
        self.pump = threading.Thread(target=self._copy, name=f"log-{name}", daemon=True)
        self.pump.start()

    def _copy(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            sys.stdout.write(self.prefix + line)
            sys.stdout.flush()
            self.log_file.write(line)
            self.log_file.flush()

    def stop(self, timeout: float) -> int | None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop within %.0fs; killing it", self.name, timeout)
                self.process.kill()
                self.process.wait()
        self.pump.join(timeout=2)
        self.log_file.close()
        return self.process.returncode


class GroupWatch:
    """Asks the children's health endpoints, every few seconds, whether a consumer is stuck
    outside its group; says which one has been for twice the join timeout (its own fresh
    rejoin, after one timeout, did not help)."""

    EVERY = 5.0

    def __init__(self, children: list[Child], join_timeout: float) -> None:
        self.children = children
        self.bound = 2 * join_timeout
        self._next = time.monotonic() + self.EVERY

    def stuck(self) -> str | None:
        if time.monotonic() < self._next:
            return None
        self._next = time.monotonic() + self.EVERY
        for child in self.children:
            if not child.health_port or child.process.poll() is not None:
                continue
            try:
                report = requests.get(f"http://127.0.0.1:{child.health_port}/healthz", timeout=2).json()
            except (requests.RequestException, ValueError):
                continue  # starting, stopping or busy: not a verdict
            for consumer in report.get("consumers", []):
                if consumer.get("state") == "stuck" and consumer.get("unstable_seconds", 0) > self.bound:
                    return f"{child.name}: group {consumer['group']} has not let it join for {consumer['unstable_seconds']:.0f}s"
        return None


def _auth_banner(settings: Settings, home_dir: Path) -> str:
    """The banner's lines on authentication; makes the local admin key on first start."""
    if not settings.auth_enabled:
        return ("  auth     OFF (CHRONOQ_AUTH=off): anyone who can reach the API is an admin of tenant "
                f"{settings.local_tenant!r}\n")
    key, new = local_admin_key(settings, home_dir)
    shown = key if new else f"in {home_dir / 'admin.key'}"
    return (f"  auth     admin key of tenant {settings.local_tenant!r}: {shown}\n"
            f"           curl -H \"Authorization: Bearer $(cat {home_dir / 'admin.key'})\" ...\n")


def restart_broker(broker: LocalBroker, settings: Settings, why: str) -> LocalBroker:
    """Replace the local broker with a fresh one on the same port. It holds nothing the
    database cannot rebuild: the scanner re-dispatches what was in flight once its lease ran
    out, and executors wrote every attempt's end to the database as well."""
    log.warning(
        "%s. The local broker (tansu) can wedge a consumer group for good (docs/tansu-group-wedge.md); "
        "restarting it on port %d. Jobs that were queued are dispatched again after their lease (%gs).",
        why, broker.port, settings.lease_seconds,
    )
    broker.stop()
    fresh = LocalBroker(port=broker.port, log_path=broker.log_path).start()
    ensure_topics(settings)
    log.warning("local broker restarted (pid %d); services reconnect by themselves", fresh.process.pid if fresh.process else -1)
    return fresh


#: What the local demo's http jobs may reach besides public hosts: this machine (the demo's own
#: receivers). Said here, in the local run's configuration, not by weakening the default.
LOCAL_ALLOW_PRIVATE = "127.0.0.0/8,::1/128"


def _private_file(path: Path, make: Callable[[], str]) -> str:
    """The text of ``path``, written first (readable by its owner only) when missing."""
    if not path.exists():
        path.touch(mode=0o600)
        path.write_text(make() + "\n")
    return path.read_text().strip()


def local_admin_key(settings: Settings, home_dir: Path) -> tuple[str, bool]:
    """The admin key of the local tenant, kept in ``<home>/admin.key``; made on first start (or
    when the database no longer knows it). Returns the key and whether it is new."""
    path = home_dir / "admin.key"
    keyring = Keyring.from_settings(settings)
    kept = path.read_text().strip() if path.exists() else ""
    with session_scope(settings) as session:
        if kept and apikeys.find_key(session, kept) is not None:
            return kept, False
        made = apikeys.create_key(session, tenant=settings.local_tenant, role=Role.ADMIN, name="chronoq up",
                                  created_by="chronoq up", keyring=keyring, now=clock.utcnow())
    path.unlink(missing_ok=True)
    _private_file(path, lambda: made.key)
    return made.key, True


def run_local(settings: Settings, *, port: int | None = None, home: str | None = None, executors: int = 1) -> int:
    """Run everything until stopped; returns the exit code. Raises :class:`ConfigError` or
    :class:`DatabaseUnavailable` (naming CHRONOQ_DATABASE_URL) before starting anything when
    the database cannot be used."""
    home_dir = Path(home or settings.home).resolve()
    settings = replace(settings, home=str(home_dir), api_port=port or settings.api_port)
    sqlite = not settings.database_url
    # Before anything starts: a database that cannot be used is one line (ConfigError or
    # DatabaseUnavailable, reported by the CLI), not a traceback after the broker came up.
    check_database(settings)
    log_dir = home_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    if not settings.secret_key:
        # Secret header and env values need a key; the local run keeps its own beside its data.
        settings = replace(settings, secret_key=_private_file(home_dir / "secret.key", new_key))
    if not settings.http_allow_private:
        settings = replace(settings, http_allow_private=tuple(LOCAL_ALLOW_PRIVATE.split(",")))

    broker = LocalBroker(log_path=log_dir / "broker.log").start()
    (home_dir / "broker.port").write_text(f"{broker.port}\n")
    children: list[Child] = []
    crashed = False
    try:
        settings = replace(settings, kafka_bootstrap=broker.bootstrap)
        ensure_topics(settings)
        upgrade(settings)
        auth_lines = _auth_banner(settings, home_dir)
        env = {
            **os.environ,
            "CHRONOQ_SECRET_KEY": settings.secret_key,
            "CHRONOQ_HTTP_ALLOW_PRIVATE": ",".join(settings.http_allow_private),
            "CHRONOQ_HOME": settings.home,
            "CHRONOQ_DATABASE_URL": settings.resolved_database_url,
            "CHRONOQ_KAFKA_BOOTSTRAP": broker.bootstrap,
            "CHRONOQ_API_PORT": str(settings.api_port),
            # One machine: a short group session makes the executors join in seconds.
            "CHRONOQ_KAFKA_SESSION_TIMEOUT_MS": os.environ.get("CHRONOQ_KAFKA_SESSION_TIMEOUT_MS", "6000"),
            "CHRONOQ_KAFKA_MAX_POLL_INTERVAL_MS": os.environ.get("CHRONOQ_KAFKA_MAX_POLL_INTERVAL_MS", "10000"),
            "CHRONOQ_GROUP_JOIN_TIMEOUT_SECONDS": os.environ.get("CHRONOQ_GROUP_JOIN_TIMEOUT_SECONDS", "20"),
            "CHRONOQ_HEALTH_HOST": "127.0.0.1",
            "PYTHONUNBUFFERED": "1",
        }
        if sqlite:
            env.setdefault("CHRONOQ_API_WORKERS", "1")  # one SQLite writer is plenty locally
        names = [(n, m, 0) for n, m in CHILDREN if n != "executor"]
        names[1:1] = [(f"executor{i + 1}" if executors > 1 else "executor", "executor_service", i)
                      for i in range(executors)]
        width = max(len(n) for n, _, _ in names)
        with on_stop(threading.Event(), "chronoq up") as stop:
            for name, module, index in names:
                children.append(Child(name, module, env, log_dir, width, metrics_port(settings, module, index)))
            base = f"http://{'127.0.0.1' if settings.api_host in ('0.0.0.0', '') else settings.api_host}:{settings.api_port}"
            metrics_lines = "".join(
                f"  {'metrics' if i == 0 else '':<8} {child.name:<{width}} http://127.0.0.1:{child.health_port}/metrics\n"
                for i, child in enumerate(c for c in children if c.health_port)
            )
            print(
                f"\nchronoq is up (state in {settings.home})\n"
                f"  API      {base}/api/jobs\n"
                f"  UI       {base}/ui/  (the dashboard; sign in with an API key)\n"
                f"  docs     {base}/docs  (OpenAPI: {base}/openapi.json)\n"
                f"  database {masked_url(settings.resolved_database_url)}\n"
                f"  broker   {broker.bootstrap} (tansu, memory storage)\n"
                f"  logs     {log_dir}\n"
                f"{metrics_lines}"
                f"  http     jobs may call {', '.join(settings.http_allow_private)} (CHRONOQ_HTTP_ALLOW_PRIVATE) "
                "besides public hosts\n"
                f"{auth_lines}"
                "Press Ctrl-C to stop.\n",
                flush=True,
            )
            watch = GroupWatch(children, float(env["CHRONOQ_GROUP_JOIN_TIMEOUT_SECONDS"]))
            while not stop.wait(0.5):
                stuck = watch.stuck()
                if stuck:
                    broker = restart_broker(broker, settings, stuck)
                dead = [c for c in children if c.process.poll() is not None]
                if dead:
                    log.error(
                        "%s exited with code %s; stopping everything",
                        dead[0].name, dead[0].process.returncode,
                    )
                    crashed = True
                    break
        return 1 if crashed else EXIT_OK
    finally:
        started = time.monotonic()
        for child in reversed(children):
            code = child.stop(STOP_TIMEOUT)
            log.info("%s stopped (exit code %s)", child.name, code)
        broker.stop()
        log.info("broker stopped; everything stopped in %.1fs", time.monotonic() - started)
