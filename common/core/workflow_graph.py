"""A workflow's graph as pure functions: checking a definition (unknown keys, cycles, tasks that
can never run, references to tasks that are not upstream, too many tasks), deciding what a
task whose dependencies have all settled does (run or be SKIPPED, by its ``run_if``), which
tasks ``fail_fast`` cancels, and the workflow's own final status.

No I/O here: common/core/workflow_release.py reads the rows, asks these functions and writes
what they decide."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

from common.core.states import JobStatus
from common.core.workflow_templates import (
    KEY,
    Condition,
    PathError,
    evaluate,
    parse_condition,
    parse_path,
    references,
)

RUN_IF = ("success", "failure", "always")
POLICIES = ("fail_fast", "continue")

WAITING = JobStatus.WAITING.value
SCHEDULED = JobStatus.SCHEDULED.value
SUCCESS = JobStatus.SUCCESS.value
FAILED = JobStatus.FAILED.value
CANCELLED = JobStatus.CANCELLED.value
SKIPPED = JobStatus.SKIPPED.value
SETTLED = frozenset({SUCCESS, FAILED, CANCELLED, SKIPPED})
#: Tasks that have not started: what fail_fast and a workflow's cancel cancel.
NOT_STARTED = (WAITING, SCHEDULED, JobStatus.QUEUED.value)


class WorkflowStatus:
    RUNNING = "RUNNING"
    SUCCESS = "SUCCESS"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    ALL = ("RUNNING", "SUCCESS", "FAILED", "CANCELLED")
    ENDED = ("SUCCESS", "FAILED", "CANCELLED")


@dataclass(frozen=True)
class TaskNode:
    """One task's place in the graph."""

    key: str
    depends_on: tuple[str, ...] = ()
    run_if: str | Condition = "success"
    allow_failure: bool = False

    @property
    def handler(self) -> bool:
        """A task meant to run after a failure (``failure`` or ``always``): fail_fast leaves it be."""
        return self.run_if in ("failure", "always")


def run_if_of(raw: Any) -> str | Condition:
    """``run_if`` as given: one of :data:`RUN_IF`, or a condition object; ValueError if neither."""
    if raw is None:
        return "success"
    if isinstance(raw, str):
        if raw not in RUN_IF:
            raise ValueError(f"unknown run_if {raw!r}; one of {', '.join(RUN_IF)}, or a condition "
                             '{"path": "tasks.<key>.output…", "op": "eq", "value": …}')
        return raw
    if isinstance(raw, Mapping):
        return parse_condition(raw)
    raise ValueError("run_if is a string (success, failure, always) or a condition object")


def node_of(spec: Mapping[str, Any]) -> TaskNode:
    """The :class:`TaskNode` of a stored (already validated) task spec."""
    return TaskNode(spec["key"], tuple(spec.get("depends_on") or ()), run_if_of(spec.get("run_if")),
                    bool(spec.get("allow_failure")))


def describe_run_if(run_if: str | Condition) -> str:
    return run_if if isinstance(run_if, str) else run_if.describe()


# --- checking a definition ----------------------------------------------------------------


def _cycle(nodes: Mapping[str, Sequence[str]]) -> list[str] | None:
    """A cycle among ``nodes`` (key → dependencies), as the keys along it, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for start in nodes:
        if state.get(start):
            continue
        path: list[str] = []
        stack: list[tuple[str, Iterable[str]]] = [(start, iter(nodes[start]))]
        state[start] = 1
        path.append(start)
        while stack:
            key, deps = stack[-1]
            for dep in deps:
                if dep not in nodes:
                    continue
                if state.get(dep) == 1:
                    return path[path.index(dep):] + [dep]
                if not state.get(dep):
                    state[dep] = 1
                    path.append(dep)
                    stack.append((dep, iter(nodes[dep])))
                    break
            else:
                stack.pop()
                path.pop()
                state[key] = 2
    return None


def upstream(nodes: Mapping[str, Sequence[str]], key: str) -> set[str]:
    """Every task ``key`` depends on, directly or not (``nodes``: key → dependencies, acyclic)."""
    seen: set[str] = set()
    todo = list(nodes.get(key, ()))
    while todo:
        dep = todo.pop()
        if dep not in seen and dep in nodes:
            seen.add(dep)
            todo.extend(nodes[dep])
    return seen


def validate(tasks: Sequence[Mapping[str, Any]], *, max_tasks: int) -> dict[str, Any]:
    """What is wrong with ``tasks`` (each with ``key``, ``depends_on``, ``run_if``, ``payload``),
    as the API's error body has it: ``{"tasks": [message]}`` for the whole list, else
    ``{"tasks": {index: {field: [message naming the task]}}}``; empty when nothing is."""
    if not tasks:
        return {"tasks": ["a workflow needs at least one task"]}
    if len(tasks) > max_tasks:
        return {"tasks": [f"has {len(tasks)} tasks; the limit is {max_tasks} (CHRONOQ_WORKFLOW_MAX_TASKS)"]}
    errors: dict[int, dict[str, list[str]]] = {}

    def wrong(index: int, name: str, message: str) -> None:
        errors.setdefault(index, {}).setdefault(name, []).append(message)

    keys: dict[str, int] = {}
    for index, task in enumerate(tasks):
        key = task.get("key")
        if not isinstance(key, str) or not KEY.match(key) or len(key) > 64:
            wrong(index, "key", f"{key!r} is not a task key: letters, digits, _ and -, starting with a "
                                "letter or _, at most 64")
        elif key in keys:
            wrong(index, "key", f"task {key!r} is defined twice (tasks {keys[key]} and {index})")
        else:
            keys[key] = index
    graph: dict[str, list[str]] = {}
    runs: dict[str, str | Condition] = {}
    for index, task in enumerate(tasks):
        key = task.get("key")
        name = f"task {key!r}"
        deps = list(task.get("depends_on") or ())
        for dep in deps:
            if dep == key:
                wrong(index, "depends_on", f"{name} depends on itself")
            elif dep not in keys:
                wrong(index, "depends_on", f"{name} depends on unknown task {dep!r}")
        if len(set(deps)) != len(deps):
            wrong(index, "depends_on", f"{name} lists a dependency twice")
        try:
            run_if = run_if_of(task.get("run_if"))
        except (ValueError, PathError) as exc:
            wrong(index, "run_if", f"{name}: {exc}")
            run_if = "success"
        if isinstance(run_if, Condition) and run_if.path.task not in deps:
            wrong(index, "run_if", f"{name}: its condition reads tasks.{run_if.path.task}, which is not one of "
                                   "its dependencies (add it to depends_on)")
        if key in keys and keys[key] == index:
            graph[key] = [d for d in deps if d in keys and d != key]
            runs[key] = run_if
    cycle = _cycle(graph)
    if cycle is not None:
        shown = " → ".join(cycle)
        for key in set(cycle):
            wrong(keys[key], "depends_on", f"task {key!r} is in a cycle: {shown}")
        return {"tasks": errors}
    for index, task in enumerate(tasks):
        key = task.get("key")
        if key not in graph or keys[key] != index:
            continue
        above = upstream(graph, key)
        for text in references(task.get("payload")):
            try:
                path = parse_path(text)
            except PathError as exc:
                wrong(index, "payload", f"task {key!r}: {{{{ {text} }}}}: {exc}")
                continue
            if path.task is not None and path.task not in above:
                wrong(index, "payload", f"task {key!r}: {{{{ {text} }}}} reads task {path.task!r}, which is not "
                                        "upstream of it (add it to depends_on)")
    for key in _never_run(graph, runs):
        reason = (f"task {key!r} can never run: run_if {describe_run_if(runs[key])!r} needs a dependency"
                  if not graph[key] else
                  f"task {key!r} can never run: the dependencies its run_if needs can never run")
        wrong(keys[key], "run_if", reason)
    return {"tasks": errors} if errors else {}


def _never_run(graph: Mapping[str, Sequence[str]], runs: Mapping[str, str | Condition]) -> list[str]:
    """Tasks no outcome of the others can start: a task without dependencies whose run_if needs
    one (``failure``, a condition), and tasks that need such a task to succeed (or, for
    ``failure``, all of whose dependencies are such tasks)."""
    dead: set[str] = set()
    for key in _topological(graph):
        deps, run_if = graph[key], runs[key]
        if not deps:
            blocked = run_if != "success" and run_if != "always"
        elif run_if == "always":
            blocked = False
        elif run_if == "failure":
            blocked = all(dep in dead for dep in deps)
        else:
            blocked = any(dep in dead for dep in deps)
        if blocked:
            dead.add(key)
    return [key for key in graph if key in dead]


def _topological(graph: Mapping[str, Sequence[str]]) -> list[str]:
    """The keys of an acyclic ``graph``, each after its dependencies."""
    order: list[str] = []
    placed: set[str] = set()

    def place(key: str) -> None:
        stack = [(key, False)]
        while stack:
            current, expanded = stack.pop()
            if current in placed:
                continue
            if expanded:
                placed.add(current)
                order.append(current)
                continue
            stack.append((current, True))
            stack.extend((dep, False) for dep in graph[current] if dep not in placed)

    for key in graph:
        place(key)
    return order


def topological(nodes: Sequence[TaskNode]) -> list[TaskNode]:
    """``nodes`` each after its dependencies."""
    by_key = {node.key: node for node in nodes}
    return [by_key[key] for key in _topological({node.key: node.depends_on for node in nodes})]


# --- deciding -------------------------------------------------------------------------------


def decide(node: TaskNode, statuses: Mapping[str, str], context: Callable[[], Mapping[str, Any]]) -> tuple[bool, str | None]:
    """Whether ``node``, all of whose dependencies have settled, runs; if not, why (the skipped
    task's error). ``context`` gives the data a condition reads (called only for a condition)."""
    deps = {dep: statuses[dep] for dep in node.depends_on}
    if node.run_if == "always":
        return True, None
    if node.run_if == "failure":
        if any(status == FAILED for status in deps.values()):
            return True, None
        return False, "skipped: run_if failure, and no dependency failed"
    for dep, status in deps.items():
        if status != SUCCESS:
            return False, f"skipped: dependency {dep!r} ended {status}"
    if isinstance(node.run_if, Condition):
        held, why = evaluate(node.run_if, context())
        return (True, None) if held else (False, f"skipped: {why}")
    return True, None


@dataclass
class Plan:
    """What to do with the WAITING tasks whose dependencies have settled: tasks to release
    (SCHEDULED, due now) and tasks to skip, with the reason, in an order where each skip comes
    after the skips it follows from."""

    release: list[str] = field(default_factory=list)
    skip: dict[str, str] = field(default_factory=dict)


def plan(nodes: Sequence[TaskNode], statuses: Mapping[str, str], context: Callable[[], Mapping[str, Any]]) -> Plan:
    """Decide every WAITING task whose dependencies have settled, following skips through the
    graph (a skipped task settles, so its dependents may be decided in turn)."""
    current = dict(statuses)
    result = Plan()
    for node in topological(nodes):
        if current.get(node.key) != WAITING:
            continue
        if not all(current.get(dep) in SETTLED for dep in node.depends_on):
            continue
        runs, why = decide(node, current, context)
        if runs:
            result.release.append(node.key)
            current[node.key] = SCHEDULED
        else:
            result.skip[node.key] = why or "skipped"
            current[node.key] = SKIPPED
    return result


def failing(nodes: Sequence[TaskNode], statuses: Mapping[str, str]) -> str | None:
    """The first task (in the given order) that failed and may not (no ``allow_failure``), or None."""
    for node in nodes:
        if statuses.get(node.key) == FAILED and not node.allow_failure:
            return node.key
    return None


def fail_fast_victims(nodes: Sequence[TaskNode], statuses: Mapping[str, str]) -> list[str]:
    """Under ``fail_fast``, after a failure: the tasks to cancel, those that have not started,
    except the ones meant to run after a failure (``run_if`` failure or always)."""
    return [node.key for node in nodes if statuses.get(node.key) in NOT_STARTED and not node.handler]


def final_status(nodes: Sequence[TaskNode], statuses: Mapping[str, str]) -> str | None:
    """The workflow's status once every task has settled (None before): FAILED if a task failed
    that may not; else CANCELLED if a task was cancelled that may not be; else SUCCESS (skipped
    tasks do not fail a workflow)."""
    if not all(statuses.get(node.key) in SETTLED for node in nodes):
        return None
    if failing(nodes, statuses) is not None:
        return WorkflowStatus.FAILED
    if any(statuses.get(node.key) == CANCELLED and not node.allow_failure for node in nodes):
        return WorkflowStatus.CANCELLED
    return WorkflowStatus.SUCCESS
