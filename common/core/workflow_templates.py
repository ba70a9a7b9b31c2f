"""The data that flows between a workflow's tasks, as pure functions: paths into what earlier
tasks produced (``tasks.export.output.files[0].name``), the conditions of ``run_if``, and the
``{{ … }}`` references of a task's payload, rendered when the task is released.

Nothing here executes user code: a reference is a path, looked up in plain JSON data; a
condition is a path, an operator from a fixed list and a JSON value (docs/workflows.md)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping

#: ``{{ path }}``, spaces optional.
TEMPLATE = re.compile(r"\{\{\s*([^{}]*?)\s*\}\}")
_KEY = r"[A-Za-z_][A-Za-z0-9_-]*"
#: A task key: also a path segment, so no dots or brackets.
KEY = re.compile(rf"^{_KEY}$")
_SEGMENT = re.compile(rf"\.({_KEY}|[0-9]+)|\[([0-9]+)\]|\[\"([^\"]*)\"\]")
#: What a path may start with, and what each offers.
TASK_FIELDS = ("output", "status", "id", "error")
WORKFLOW_FIELDS = ("id", "name", "execute_at")

OPERATORS = ("eq", "ne", "gt", "gte", "lt", "lte", "in", "not_in", "exists", "not_exists")
#: Operators that take no ``value``.
UNARY = ("exists", "not_exists")


class PathError(ValueError):
    """A path that is not well formed (caught at creation, with the reason)."""


class Missing(LookupError):
    """A well-formed path that names nothing in the data (at render or evaluation time)."""


@dataclass(frozen=True)
class Path:
    """A parsed reference: ``tasks.<task>.<field>…`` (``task`` set) or ``workflow.<field>``."""

    text: str
    task: str | None
    steps: tuple[str | int, ...]  # after ``tasks.<task>`` or ``workflow``: the field, then keys/indexes


def parse_path(text: str) -> Path:
    """Parse ``tasks.<key>.(output|status|id|error)[.key|[n]]…`` or ``workflow.(id|name|execute_at)``."""
    raw = text.strip()
    head, _, rest = raw.partition(".")
    steps: list[str | int] = []
    position = 0
    rest = "." + rest if rest else ""
    while position < len(rest):
        match = _SEGMENT.match(rest, position)
        if match is None:
            raise PathError(f"{raw!r} is not a path (expected e.g. tasks.export.output.rows or tasks.export.output.files[0])")
        name, index, quoted = match.groups()
        if index is not None:
            steps.append(int(index))
        elif quoted is not None:
            steps.append(quoted)
        else:
            steps.append(int(name) if name.isdigit() else name)
        position = match.end()
    if head == "workflow":
        if len(steps) != 1 or steps[0] not in WORKFLOW_FIELDS:
            raise PathError(f"{raw!r}: a workflow path is one of {', '.join('workflow.' + f for f in WORKFLOW_FIELDS)}")
        return Path(raw, None, tuple(steps))
    if head != "tasks" or not steps or not isinstance(steps[0], str) or not KEY.match(steps[0]):
        raise PathError(f"{raw!r} must start with tasks.<task key> or workflow.")
    task, fields = steps[0], steps[1:]
    if not fields or fields[0] not in TASK_FIELDS:
        raise PathError(f"{raw!r}: after tasks.{task} comes one of {', '.join(TASK_FIELDS)}")
    if fields[0] != "output" and len(fields) > 1:
        raise PathError(f"{raw!r}: only output has fields inside it")
    return Path(raw, task, tuple(fields))


def lookup(path: Path, context: Mapping[str, Any]) -> Any:
    """The value ``path`` names in ``context`` (``{"tasks": {key: {"output", "status", "id",
    "error"}}, "workflow": {...}}``); :class:`Missing` when it names nothing."""
    value: Any = context["workflow"] if path.task is None else context["tasks"].get(path.task)
    if value is None:
        raise Missing(f"{path.text}: task {path.task!r} has no result")
    walked = "workflow" if path.task is None else f"tasks.{path.task}"
    for step in path.steps:
        if isinstance(step, int) and isinstance(value, list) and -len(value) <= step < len(value):
            value = value[step]
        elif isinstance(value, dict) and str(step) in value:
            value = value[str(step)]
        else:
            raise Missing(f"{path.text}: {walked} has no {step!r}")
        walked += f"[{step}]" if isinstance(step, int) else f".{step}"
    return value


# --- conditions ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Condition:
    path: Path
    op: str
    value: Any = None

    def describe(self) -> str:
        return self.path.text + f" {self.op}" + ("" if self.op in UNARY else f" {json.dumps(self.value)}")


def parse_condition(raw: Mapping[str, Any]) -> Condition:
    """A ``run_if`` condition ``{"path", "op", "value"}``; ValueError naming what is wrong."""
    unknown = set(raw) - {"path", "op", "value"}
    if unknown:
        raise ValueError(f"unknown condition fields {sorted(unknown)}; a condition has path, op and value")
    if not isinstance(raw.get("path"), str):
        raise ValueError("a condition needs a path, e.g. tasks.export.output.rows")
    path = parse_path(raw["path"])
    if path.task is None or path.steps[0] not in ("output", "status"):
        raise ValueError(f"{path.text}: a condition reads a dependency's output or status (tasks.<key>.output…)")
    op = raw.get("op", "eq")
    if op not in OPERATORS:
        raise ValueError(f"unknown op {op!r}; one of {', '.join(OPERATORS)}")
    if op in UNARY:
        if "value" in raw:
            raise ValueError(f"op {op} takes no value")
    elif "value" not in raw:
        raise ValueError(f"op {op} needs a value")
    elif op in ("in", "not_in") and not isinstance(raw["value"], list):
        raise ValueError(f"op {op} needs a list as its value")
    return Condition(path, op, raw.get("value"))


def _ordered(a: Any, b: Any) -> bool:
    """Whether ``a`` and ``b`` may be compared with < and >: two numbers or two strings."""
    numbers = (int, float)
    if isinstance(a, bool) or isinstance(b, bool):
        return False
    return (isinstance(a, numbers) and isinstance(b, numbers)) or (isinstance(a, str) and isinstance(b, str))


def _equal(a: Any, b: Any) -> bool:
    """JSON equality: 1 equals 1.0, but neither equals true (Python's 1 == True is not JSON's)."""
    return a == b and (type(a) is type(b) or _ordered(a, b))


_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "eq": _equal,
    "ne": lambda a, b: not _equal(a, b),
    "gt": lambda a, b: _ordered(a, b) and a > b,
    "gte": lambda a, b: _ordered(a, b) and a >= b,
    "lt": lambda a, b: _ordered(a, b) and a < b,
    "lte": lambda a, b: _ordered(a, b) and a <= b,
    "in": lambda a, b: any(_equal(a, item) for item in b),
    "not_in": lambda a, b: not any(_equal(a, item) for item in b),
}


def evaluate(condition: Condition, context: Mapping[str, Any]) -> tuple[bool, str]:
    """Whether ``condition`` holds on ``context``, and why (for the skipped task's error). A
    missing value satisfies only ``not_exists``; values of different kinds are never ordered
    (``"10" gt 9`` is false) and never equal (``1 eq true`` is false)."""
    try:
        actual = lookup(condition.path, context)
    except Missing as exc:
        held = condition.op == "not_exists"
        return held, f"condition {condition.describe()} {'holds' if held else 'is false'}: {exc}"
    if condition.op in UNARY:
        held = condition.op == "exists"
    else:
        held = _COMPARE[condition.op](actual, condition.value)
    shown = json.dumps(actual, default=str)
    if len(shown) > 200:
        shown = shown[:200] + "…"
    return held, f"condition {condition.describe()} {'holds' if held else 'is false'} (the value is {shown})"


# --- templates ----------------------------------------------------------------------------


def references(value: Any) -> Iterator[str]:
    """Every ``{{ path }}`` text inside ``value`` (strings nested in lists and objects)."""
    if isinstance(value, str):
        for match in TEMPLATE.finditer(value):
            yield match.group(1)
    elif isinstance(value, dict):
        for item in value.values():
            yield from references(item)
    elif isinstance(value, list):
        for item in value:
            yield from references(item)


def has_references(value: Any) -> bool:
    return next(references(value), None) is not None


def render(value: Any, context: Mapping[str, Any]) -> Any:
    """``value`` with each reference replaced by what it names. A string that is exactly one
    reference becomes the value itself (a number stays a number, an object an object); a
    reference inside a longer string is written in: strings as they are, anything else as JSON.
    :class:`Missing` for a reference that names nothing; :class:`PathError` for a malformed one."""
    if isinstance(value, dict):
        return {key: render(item, context) for key, item in value.items()}
    if isinstance(value, list):
        return [render(item, context) for item in value]
    if not isinstance(value, str) or "{{" not in value:
        return value
    whole = TEMPLATE.fullmatch(value.strip())
    if whole is not None:
        return lookup(parse_path(whole.group(1)), context)

    def written(match: re.Match[str]) -> str:
        found = lookup(parse_path(match.group(1)), context)
        return found if isinstance(found, str) else json.dumps(found, default=str)

    return TEMPLATE.sub(written, value)
