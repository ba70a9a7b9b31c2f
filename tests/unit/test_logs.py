"""Log formats: the readable text line, and with CHRONOQ_LOG_FORMAT=json one JSON object per
line whose job fields (``extra=``) are fields of their own."""

from __future__ import annotations

import io
import json
import logging
import re
from typing import Iterator

import pytest

from common.infra.config import load_settings
from common.infra.errors import ConfigError
from common.infra.logs import job_fields, make_formatter, setup_logging


@pytest.fixture
def root_handlers() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def render(log_format: str, *args: object, **kwargs: object) -> str:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(make_formatter("executor", log_format))
    logger = logging.getLogger(f"chronoq.test.logs.{log_format}")
    logger.propagate = False
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)
    logger.warning(*args, **kwargs)  # type: ignore[arg-type]
    return stream.getvalue()


def test_json_line_has_the_job_fields_as_fields() -> None:
    fields = job_fields("6f1c0b7e-0000-4000-8000-000000000001", 2, "tok-1")
    line = render("json", "job %s FAILED on attempt %d", fields["job_id"], 2, extra=fields)
    assert line.count("\n") == 1
    record = json.loads(line)
    assert record["job_id"] == "6f1c0b7e-0000-4000-8000-000000000001"
    assert record["attempt"] == 2 and record["token"] == "tok-1"
    assert record["message"] == "job 6f1c0b7e-0000-4000-8000-000000000001 FAILED on attempt 2"
    assert record["level"] == "WARNING" and record["service"] == "executor"
    assert record["logger"] == "chronoq.test.logs.json"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", record["time"])


def test_json_line_carries_the_traceback_and_survives_odd_values() -> None:
    try:
        raise ValueError("bad\nvalue")
    except ValueError:
        line = render("json", "with %s", object(), exc_info=True, extra={"job_id": "j", "weird": {1, 2}})
    record = json.loads(line)  # one line, whatever the message and the extras hold
    assert "ValueError: bad\nvalue" in record["exc_info"] and record["job_id"] == "j"


def test_job_fields_leave_out_what_is_not_known() -> None:
    assert job_fields("j") == {"job_id": "j"}
    assert job_fields("j", attempt=1) == {"job_id": "j", "attempt": 1}


def test_text_line_is_unchanged() -> None:
    line = render("text", "job %s done", "j1", extra=job_fields("j1", 1, "t"))
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z WARNING executor chronoq\.test\.logs\.text: job j1 done\n",
                        line)


def test_setup_logging_installs_the_chosen_format(root_handlers: None, capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("INFO", "scanner", "json")
    logging.getLogger("chronoq.test.setup").info("hello", extra=job_fields("j2"))
    record = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert record["service"] == "scanner" and record["job_id"] == "j2" and record["message"] == "hello"


def test_log_format_setting_is_checked() -> None:
    assert load_settings({}).log_format == "text"
    assert load_settings({"CHRONOQ_LOG_FORMAT": "JSON"}).log_format == "json"
    with pytest.raises(ConfigError, match="CHRONOQ_LOG_FORMAT"):
        load_settings({"CHRONOQ_LOG_FORMAT": "xml"})
