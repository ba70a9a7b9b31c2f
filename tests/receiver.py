"""An HTTP receiver for `http` jobs: logs every call (path, arrival time, Idempotency-Key) and
answers 200, or the statuses a test scripted for the path."""

from __future__ import annotations

import threading
from collections import Counter, defaultdict, deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass(frozen=True)
class Call:
    path: str
    arrived: datetime
    key: str | None  # the Idempotency-Key header: "<job id>:<attempt>"
    run: str | None  # X-Chronoq-Attempt: which run of the job (its history row) this is
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: object, client_address: object) -> None:
        pass  # an executor killed mid-request hangs up; that is part of the test


class Receiver:
    """Answers every POST on 127.0.0.1 and remembers it: with the statuses scripted for its path
    by :meth:`answer`, in order, and 200 once they run out."""

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.script: dict[str, deque[int]] = defaultdict(deque)
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                arrived = datetime.now(timezone.utc)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with receiver.lock:
                    receiver.calls.append(Call(
                        self.path, arrived, self.headers.get("Idempotency-Key"),
                        self.headers.get("X-Chronoq-Attempt"), dict(self.headers.items()), body,
                    ))
                    planned = receiver.script[self.path]
                    status = planned.popleft() if planned else 200
                body = b'{"ok": true}'
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = _QuietServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> "Receiver":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def answer(self, path: str, *statuses: int) -> str:
        """Script the answers to ``path`` (then 200); its URL."""
        with self.lock:
            self.script[path].extend(statuses)
        return self.url + path

    def to(self, path: str) -> list[Call]:
        """The calls to ``path`` so far."""
        return [call for call in self.snapshot() if call.path == path]

    def snapshot(self) -> list[Call]:
        with self.lock:
            return list(self.calls)

    def paths(self) -> list[str]:
        return [call.path for call in self.snapshot()]

    def double_starts(self) -> dict[str, int]:
        """Runs (job id, run number) that reached the receiver more than once."""
        counts = Counter(f"{call.key.split(':')[0]}#{call.run}" for call in self.snapshot() if call.key)
        return {run: n for run, n in counts.items() if n > 1}

    def reruns(self) -> dict[str, int]:
        """Idempotency keys sent by more than one run: an attempt re-run after its executor died."""
        runs: dict[str, set[str | None]] = {}
        for call in self.snapshot():
            if call.key:
                runs.setdefault(call.key, set()).add(call.run)
        return {key: len(r) for key, r in runs.items() if len(r) > 1}
