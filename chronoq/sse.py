"""A parser of server-sent events (text/event-stream), as the HTML standard defines them:
pure, fed bytes as they arrive, so the client reads a live stream without waiting for a
buffer to fill."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator


@dataclass(frozen=True)
class SseEvent:
    """One dispatched event: its ``event`` type (``message`` when unnamed), ``data`` (lines
    joined with newlines) and the stream's last ``id`` at that point (None if none was sent)."""

    event: str
    data: str
    id: str | None


class SseParser:
    """Feed it chunks of the stream; it yields each complete event. ``last_id`` (to resume with
    ``Last-Event-ID``) and ``retry_ms`` (the server's reconnection delay) persist across events;
    comments (``: keep-alive``) are skipped."""

    def __init__(self) -> None:
        self._buffer = b""
        self._data: list[str] = []
        self._event = ""
        self.last_id: str | None = None
        self.retry_ms: int | None = None

    def feed(self, chunk: bytes) -> Iterator[SseEvent]:
        """The events completed by ``chunk``."""
        self._buffer += chunk
        while True:
            line, found = self._next_line()
            if not found:
                return
            event = self._line(line)
            if event is not None:
                yield event

    def finish(self) -> Iterator[SseEvent]:
        """At the end of the stream: a final ``\r`` held back (it might have begun ``\r\n``)
        ends its line after all. An event without its blank line is dropped, as the standard says."""
        if self._buffer.endswith(b"\r"):
            self._buffer += b"\n"
            yield from self.feed(b"")
        self._buffer, self._data, self._event = b"", [], ""

    def _next_line(self) -> tuple[str, bool]:
        buf = self._buffer
        for index, byte in enumerate(buf):
            if byte == 0x0A:  # \n
                line, self._buffer = buf[:index], buf[index + 1:]
                break
            if byte == 0x0D:  # \r, or \r\n: wait for the next byte to know which
                if index + 1 == len(buf):
                    return "", False
                skip = 2 if buf[index + 1] == 0x0A else 1
                line, self._buffer = buf[:index], buf[index + skip:]
                break
        else:
            return "", False
        return line.decode("utf-8", errors="replace"), True

    def _line(self, line: str) -> SseEvent | None:
        if line == "":
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id":
            if "\x00" not in value:
                self.last_id = value
        elif name == "retry" and value.isdigit():
            self.retry_ms = int(value)
        return None

    def _dispatch(self) -> SseEvent | None:
        data, event = self._data, self._event
        self._data, self._event = [], ""
        if not data:
            return None
        return SseEvent(event=event or "message", data="\n".join(data), id=self.last_id)


def parse(chunks: Iterable[bytes]) -> Iterator[SseEvent]:
    """Every event of a whole stream given as chunks."""
    parser = SseParser()
    for chunk in chunks:
        yield from parser.feed(chunk)
    yield from parser.finish()
