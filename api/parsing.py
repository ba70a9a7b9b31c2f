"""How request bodies are read: webargs' Flask parser, but strict about what JSON is."""

from __future__ import annotations

import json
from typing import Any, NoReturn

from flask import Request, request
from flask_smorest import Blueprint
from flask_smorest import abort as http_abort
from webargs import core
from webargs.flaskparser import FlaskParser, abort, is_json_request


class _NotJsonNumber(ValueError):
    pass


def _reject_constant(constant: str) -> NoReturn:
    raise _NotJsonNumber(f"{constant} is not a JSON number")


def _invalid(reason: str) -> NoReturn:
    abort(400, messages={"json": [f"Invalid JSON body: {reason}."]})


class JsonParser(FlaskParser):
    """Reads a JSON body as RFC 8259 defines it, and answers 400 for everything Python's
    decoder fails on, not only its ``JSONDecodeError`` (which is all webargs catches; the rest
    were 500s): the ``NaN``/``Infinity`` literals Python accepts (PostgreSQL's json type does
    not), nesting deep enough for a ``RecursionError``, and integers longer than ``int()``
    accepts (``sys.get_int_max_str_digits``)."""

    def _raw_load_json(self, req: Request) -> Any:
        if not is_json_request(req):
            return core.missing
        text = req.get_data(cache=True).decode("utf-8")  # UnicodeDecodeError: webargs answers 400
        try:
            return json.loads(text, parse_constant=_reject_constant)
        except json.JSONDecodeError:
            raise  # webargs: an empty body is "missing", anything else a 400
        except _NotJsonNumber as exc:
            _invalid(str(exc))
        except RecursionError:
            _invalid("it is nested too deeply")
        except ValueError:
            _invalid("a number has too many digits")


def json_blueprint(name: str, import_name: str, **kwargs: Any) -> Blueprint:
    """A flask-smorest blueprint whose bodies are read by :class:`JsonParser` and that answers
    415 to a body that is not JSON: otherwise a form or text body would be read as "no body"
    and answered with a list of missing fields, which hides the real mistake."""
    blp = Blueprint(name, import_name, **kwargs)
    blp.ARGUMENTS_PARSER = JsonParser()  # before the views: @blp.arguments reads it

    @blp.before_request
    def _require_json_body() -> None:
        if request.method in ("POST", "PUT", "PATCH") and request.content_length and not request.is_json:
            http_abort(415, message="Send the request body as JSON (Content-Type: application/json).")

    return blp
