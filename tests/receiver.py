"""An HTTP receiver for `http` jobs: logs every call (path, arrival time, Idempotency-Key)."""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass(frozen=True)
class Call:
    path: str
    arrived: datetime
    key: str | None  # the Idempotency-Key header: "<job id>:<attempt>"


class Receiver:
    """Answers 200 to every POST on 127.0.0.1 and remembers it."""

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                arrived = datetime.now(timezone.utc)
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with receiver.lock:
                    receiver.calls.append(Call(self.path, arrived, self.headers.get("Idempotency-Key")))
                body = b'{"ok": true}'
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> "Receiver":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def snapshot(self) -> list[Call]:
        with self.lock:
            return list(self.calls)

    def paths(self) -> list[str]:
        return [call.path for call in self.snapshot()]

    def duplicate_keys(self) -> dict[str, int]:
        """Idempotency keys (job and attempt) called more than once: double starts."""
        counts = Counter(call.key for call in self.snapshot() if call.key)
        return {key: n for key, n in counts.items() if n > 1}
