"""The client's server-sent-events parser (chronoq/sse.py), fed as a network would."""

from chronoq.sse import SseEvent, SseParser, parse


def test_events_comments_ids_and_retry() -> None:
    stream = (b"retry: 2000\n\n: keep-alive\n\nid: 7\nevent: job\ndata: {\"a\": 1}\n\n"
              b"data: line one\ndata: line two\n\n")
    parser = SseParser()
    events = list(parser.feed(stream))
    assert events == [SseEvent("job", '{"a": 1}', "7"), SseEvent("message", "line one\nline two", "7")]
    assert (parser.retry_ms, parser.last_id) == (2000, "7")


def test_an_event_split_anywhere_comes_whole_once_complete() -> None:
    stream = b"id: 1\r\nevent: job\r\ndata: {\"x\": \"\xc3\xa9\"}\r\n\r\nid: 2\rdata: b\r\r"
    for cut in range(1, len(stream)):
        events = list(parse([stream[:cut], stream[cut:]]))
        assert events == [SseEvent("job", '{"x": "é"}', "1"), SseEvent("message", "b", "2")], cut


def test_a_field_without_a_space_and_an_event_without_data() -> None:
    parser = SseParser()
    assert list(parser.feed(b"id:9\nevent: job\n\n")) == []  # no data: nothing dispatched
    assert parser.last_id == "9"
    assert list(parser.feed(b"data:x\n")) == []  # not complete until the blank line
    assert list(parser.feed(b"\n")) == [SseEvent("message", "x", "9")]
