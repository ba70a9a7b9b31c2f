"""``chronoq jobs import``: reading a JSON-lines file and counting the answers (pure)."""

from chronoq import importer
from chronoq.models import BatchItem


def test_lines_keep_their_numbers_and_get_stable_keys() -> None:
    raw = b'{"name": "a"}\n\n# note\n[1]\n{"name": "b", "idempotency_key": "mine"}\n{oops\n'
    lines, bad = importer.read_lines(raw)
    assert [(line.number, line.job["name"]) for line in lines] == [(1, "a"), (5, "b")]
    assert lines[1].job["idempotency_key"] == "mine"
    assert lines[0].job["idempotency_key"].startswith("import-") and lines[0].job["idempotency_key"].endswith("-1")
    assert importer.read_lines(raw)[0][0].job == lines[0].job  # the same file: the same keys
    assert importer.read_lines(raw + b"\n")[0][0].job != lines[0].job  # another file: other keys
    assert [(f.line, f.code) for f in bad] == [(4, 0), (6, 0)] and "not a JSON object" in bad[0].errors[0][1]


def test_answers_are_counted_by_line() -> None:
    lines, _ = importer.read_lines(b'{"n": 1}\n{"n": 2}\n{"n": 3}\n')
    assert [len(chunk) for chunk in importer.chunks(lines, 2)] == [2, 1]
    summary = importer.Summary(lines=3)
    importer.count(summary, lines, [
        BatchItem.from_json({"index": 0, "code": 201, "job": {"id": "x", "status": "QUEUED"}}),
        BatchItem.from_json({"index": 1, "code": 200, "job": {"id": "y", "status": "SUCCESS"}}),
        BatchItem.from_json({"index": 2, "code": 422, "errors": {"payload": {"url": ["Missing data."]}}}),
    ])
    assert (summary.created, summary.existing, summary.failed) == (1, 1, 1)
    assert summary.as_json()["failures"] == [{"line": 3, "code": 422, "errors": {"payload.url": "Missing data."}}]
