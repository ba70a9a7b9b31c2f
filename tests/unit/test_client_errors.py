"""The client's errors and the CLI's exit codes (pure)."""

import pytest
import requests

from chronoq import cli, errors
from chronoq.client import _never_sent, error_from


def answer(status: int, body: bytes, headers: dict[str, str] | None = None) -> requests.Response:
    response = requests.Response()
    response.status_code = status
    response._content = body
    response.headers.update(headers or {"Content-Type": "application/json"})
    response.reason = "Reason"
    return response


def test_the_api_error_shape_becomes_a_typed_error_naming_each_field() -> None:
    exc = error_from(answer(422, b'{"code": 422, "status": "Unprocessable Entity", "message": "The request is '
                                 b'invalid; see errors.", "errors": {"json": {"execute_at": ["Not a valid aware '
                                 b'datetime."], "payload": {"url": ["Missing data for required field."]}}}}'))
    assert isinstance(exc, errors.Unprocessable) and (exc.status, exc.reason) == (422, "Unprocessable Entity")
    assert exc.field_errors() == [("execute_at", "Not a valid aware datetime."),
                                  ("payload.url", "Missing data for required field.")]
    assert str(exc).splitlines()[1:] == ["  execute_at: Not a valid aware datetime.",
                                         "  payload.url: Missing data for required field."]


@pytest.mark.parametrize("status, cls, code", [
    (400, errors.BadRequest, cli.EXIT_USAGE), (401, errors.Unauthorized, cli.EXIT_AUTH),
    (403, errors.Forbidden, cli.EXIT_AUTH), (404, errors.NotFound, cli.EXIT_NOT_FOUND),
    (409, errors.Conflict, cli.EXIT_CONFLICT), (413, errors.PayloadTooLarge, cli.EXIT_USAGE),
    (415, errors.BadRequest, cli.EXIT_USAGE), (422, errors.Unprocessable, cli.EXIT_USAGE),
    (429, errors.RateLimited, cli.EXIT_LIMIT), (500, errors.ServerError, cli.EXIT_UNAVAILABLE),
    (503, errors.ServiceUnavailable, cli.EXIT_UNAVAILABLE), (418, errors.ApiError, cli.EXIT_FAILED),
])
def test_each_status_has_its_class_and_exit_code(status: int, cls: type, code: int) -> None:
    exc = error_from(answer(status, b"<html>proxy page</html>", {"Content-Type": "text/html", "Retry-After": "3"}))
    assert type(exc) is cls and exc.status == status and exc.retry_after == 3.0
    assert "proxy page" in exc.message  # a body not of the API's shape is still shown
    assert cli.exit_code(exc) == code


def test_the_other_exit_codes_are_distinct() -> None:
    assert cli.exit_code(errors.Unavailable("down")) == cli.EXIT_UNAVAILABLE
    assert cli.exit_code(errors.WaitTimeout("slow", None)) == cli.EXIT_TIMEOUT
    codes = [cli.EXIT_OK, cli.EXIT_FAILED, cli.EXIT_USAGE, cli.EXIT_UNAVAILABLE, cli.EXIT_NOT_FOUND,
             cli.EXIT_CONFLICT, cli.EXIT_AUTH, cli.EXIT_LIMIT, cli.EXIT_TIMEOUT, cli.EXIT_INTERRUPTED]
    assert len(set(codes)) == len(codes) and set(cli.EXIT_CODES) == set(codes)


def test_a_refused_connection_was_never_sent_and_a_dropped_one_may_have_been() -> None:
    import urllib3

    refused = requests.ConnectionError(urllib3.exceptions.MaxRetryError(
        None, "/", urllib3.exceptions.NewConnectionError(None, "refused")))
    dropped = requests.ConnectionError(urllib3.exceptions.ProtocolError("Connection aborted."))
    assert _never_sent(refused) and _never_sent(requests.exceptions.ConnectTimeout())
    assert not _never_sent(dropped) and not _never_sent(requests.ReadTimeout())
