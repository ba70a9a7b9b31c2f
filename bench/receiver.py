"""A fast HTTP receiver for the fire-precision benchmark: it answers 200 to every POST and
records, for each, the arrival time (``time.time_ns()`` when the request's first bytes are
read), the job's identifier and what the JSON body says about it.

    .venv/bin/python -m bench.receiver --port 8099

The body of a benchmark call is ``{"b": <bench id>, "i": <job index>, "t": <planned time, ns
since the epoch>}``; the ``X-Chronoq-Job-Id`` header (set by chronoq's ``http`` job type) is
kept too. Lateness is then ``arrival - planned``.

It is a bare asyncio protocol (on uvloop when installed) in a process of its own: chronoq's
``http`` type opens a new connection per call, and accepting connections is what costs here —
about a fifth of aiohttp's per-connection CPU, so a few thousand calls a second take a fraction
of one core. It speaks just enough HTTP/1.1 for its clients (Content-Length bodies,
keep-alive). Control endpoints, for the benchmark driving it:

- ``GET /_count?b=ID``: ``{"count": n}``, the calls of that bench id so far;
- ``GET /_records?b=ID``: ``{"records": [[arrival_ns, i, planned_ns, job_id], ...]}``;
- ``POST /_forget?b=ID``: drop that bench id's records.

:class:`ReceiverProcess` starts it as a subprocess and speaks to those endpoints."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import socket
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import requests

#: One call: (arrival ns, job index, planned ns, X-Chronoq-Job-Id).
Record = tuple[int, Any, Any, Any]

MAX_HEAD = 64 * 1024
MAX_BODY = 1024 * 1024


def _response(status: str, body: bytes, close: bool) -> bytes:
    head = f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    return (head + ("Connection: close\r\n" if close else "") + "\r\n").encode() + body


class Store:
    """The records, by bench id, and the control endpoints' answers."""

    def __init__(self) -> None:
        self.records: dict[Any, list[Record]] = defaultdict(list)

    def hit(self, arrived: int, body: bytes, job_id: str | None) -> None:
        try:
            data = json.loads(body) if body else {}
        except ValueError:
            data = {}
        if not isinstance(data, dict):
            data = {}
        self.records[data.get("b")].append((arrived, data.get("i"), data.get("t"), job_id))

    def control(self, method: str, target: str) -> tuple[str, bytes]:
        url = urlsplit(target)
        bench = parse_qs(url.query).get("b", [None])[0]
        if method == "GET" and url.path == "/_count":
            return "200 OK", json.dumps({"count": len(self.records.get(bench, ()))}).encode()
        if method == "GET" and url.path == "/_records":
            return "200 OK", json.dumps({"records": self.records.get(bench, [])}).encode()
        if method == "POST" and url.path == "/_forget":
            self.records.pop(bench, None)
            return "200 OK", b'{"ok":true}'
        return "404 Not Found", b'{"error":"not found"}'


class Connection(asyncio.Protocol):
    """One client connection: parse requests as they come, answer each at once."""

    OK = _response("200 OK", b'{"ok":true}', close=False)
    OK_CLOSE = _response("200 OK", b'{"ok":true}', close=True)

    def __init__(self, store: Store) -> None:
        self.store = store
        self.buffer = bytearray()
        self.arrived = 0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if not self.buffer:
            self.arrived = time.time_ns()  # the first bytes of a new request
        self.buffer += data
        while self.transport is not None and self._one():
            pass

    def _one(self) -> bool:
        """Handle one complete request from the buffer; False when more bytes are needed."""
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buffer) > MAX_HEAD:
                self._fail("431 Request Header Fields Too Large")
            return False
        lines = bytes(self.buffer[:end]).decode("latin-1").split("\r\n")
        try:
            method, target, version = lines[0].split(" ", 2)
        except ValueError:
            self._fail("400 Bad Request")
            return False
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if "chunked" in headers.get("transfer-encoding", "").lower():
            self._fail("411 Length Required")  # its clients always send Content-Length
            return False
        length = int(headers.get("content-length") or 0)
        if length > MAX_BODY:
            self._fail("413 Payload Too Large")
            return False
        if len(self.buffer) < end + 4 + length:
            return False
        body = bytes(self.buffer[end + 4:end + 4 + length])
        del self.buffer[:end + 4 + length]
        arrived, self.arrived = self.arrived, time.time_ns()  # a pipelined next request is already here
        close = headers.get("connection", "").lower() == "close" or version == "HTTP/1.0"
        assert self.transport is not None
        if method == "POST" and not target.startswith("/_"):
            self.store.hit(arrived, body, headers.get("x-chronoq-job-id"))
            self.transport.write(self.OK_CLOSE if close else self.OK)
        else:
            status, answer = self.store.control(method, target)
            self.transport.write(_response(status, answer, close))
        if close:
            self.transport.close()
            self.transport = None
            return False
        return True

    def _fail(self, status: str) -> None:
        assert self.transport is not None
        self.transport.write(_response(status, b'{"error":"unsupported request"}', close=True))
        self.transport.close()
        self.transport = None

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


async def _serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    store = Store()
    # backlog: a burst of fires opens hundreds of connections at once, and a full accept
    # queue would show up as lateness that is the receiver's, not the sender's.
    server = await loop.create_server(lambda: Connection(store), host, port, backlog=4096, reuse_address=True)
    print(f"receiver listening on http://{host}:{port}", flush=True)
    async with server:
        await stop.wait()


def serve(host: str, port: int) -> None:
    """Serve until SIGTERM or SIGINT."""
    try:
        import uvloop  # a cheaper accept and read path than the default loop
    except ImportError:
        asyncio.run(_serve(host, port))
    else:
        uvloop.run(_serve(host, port))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ReceiverProcess:
    """The receiver as a child process on a free loopback port, stopped by its PID."""

    port: int = 0
    process: subprocess.Popen | None = None  # type: ignore[type-arg]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> "ReceiverProcess":
        self.port = self.port or free_port()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.receiver", "--port", str(self.port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the receiver exited with code {self.process.returncode}")
            try:
                self.count("-")
                return self
            except requests.RequestException:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"the receiver did not answer on port {self.port} within {timeout:.0f}s")

    def count(self, bench: str) -> int:
        return int(requests.get(f"{self.url}/_count", params={"b": bench}, timeout=10).json()["count"])

    def records(self, bench: str) -> list[Record]:
        answer = requests.get(f"{self.url}/_records", params={"b": bench}, timeout=60).json()
        return [tuple(r) for r in answer["records"]]  # type: ignore[misc]

    def forget(self, bench: str) -> None:
        requests.post(f"{self.url}/_forget", params={"b": bench}, timeout=10)

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8099)
    args = parser.parse_args()
    serve(args.host, args.port)


if __name__ == "__main__":
    main()
