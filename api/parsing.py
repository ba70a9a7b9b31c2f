"""How request bodies are read: webargs' Flask parser, but strict about what JSON is."""

from __future__ import annotations

import json
from typing import Any, NoReturn

from flask import Request
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
