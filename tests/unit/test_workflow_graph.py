"""A workflow's graph, its conditions and its templates as pure functions: no database, no
services (common/core/workflow_graph.py, common/core/workflow_templates.py)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings, strategies as st

from common.core import workflow_graph as graph
from common.core.workflow_graph import TaskNode
from common.core.workflow_templates import Missing, PathError, evaluate, parse_condition, parse_path, render


def t(key: str, *deps: str, **fields: Any) -> dict[str, Any]:
    return {"key": key, "depends_on": list(deps), **fields}


def errors_of(tasks: list[dict[str, Any]], max_tasks: int = 100) -> dict[tuple[int, str], list[str]]:
    found = graph.validate(tasks, max_tasks=max_tasks)
    return {(index, name): messages for index, fields in found.get("tasks", {}).items() for name, messages in fields.items()}


# --- validation -----------------------------------------------------------------------------


def test_a_diamond_is_valid() -> None:
    assert graph.validate([t("a"), t("b", "a"), t("c", "a"), t("d", "b", "c")], max_tasks=4) == {}


def test_unknown_dependencies_and_self_dependencies_name_the_task() -> None:
    found = errors_of([t("a", "a"), t("b", "zz")])
    assert found[(0, "depends_on")] == ["task 'a' depends on itself"]
    assert found[(1, "depends_on")] == ["task 'b' depends on unknown task 'zz'"]


def test_a_cycle_names_every_task_on_it_and_the_path() -> None:
    found = errors_of([t("root"), t("a", "root", "c"), t("b", "a"), t("c", "b"), t("d", "c")])
    assert set(found) == {(1, "depends_on"), (2, "depends_on"), (3, "depends_on")}
    assert all("is in a cycle" in found[key][0] for key in found)
    path = found[(1, "depends_on")][0].split(": ", 1)[1]
    assert set(path.split(" → ")) == {"a", "b", "c"} and path.count("→") == 3


def test_too_many_and_no_tasks_are_refused_as_a_whole() -> None:
    assert graph.validate([t(f"k{i}") for i in range(4)], max_tasks=3) == {
        "tasks": ["has 4 tasks; the limit is 3 (CHRONOQ_WORKFLOW_MAX_TASKS)"]}
    assert graph.validate([], max_tasks=3) == {"tasks": ["a workflow needs at least one task"]}


@pytest.mark.parametrize("key", ["", "1abc", "a.b", "a b", "x" * 65, None])
def test_keys_that_cannot_be_a_path_segment_are_refused(key: Any) -> None:
    assert (0, "key") in errors_of([{"key": key}])


def test_tasks_that_can_never_run_are_found_through_the_graph() -> None:
    found = errors_of([
        t("a", run_if="failure"),                  # a root has nothing to fail
        t("b", "a"),                               # needs a to succeed
        t("c", "b", run_if="failure"),             # needs b to fail: b never runs
        t("d", "a", run_if="always"),              # runs whatever a did
        t("e", "d", "b", run_if="failure"),        # d can fail
    ])
    assert set(found) == {(0, "run_if"), (1, "run_if"), (2, "run_if")}
    assert found[(0, "run_if")] == ["task 'a' can never run: run_if 'failure' needs a dependency"]


def test_conditions_and_references_must_read_upstream_tasks() -> None:
    found = errors_of([
        t("a"), t("b"),
        t("c", "a", run_if={"path": "tasks.b.output.n", "op": "eq", "value": 1}),
        t("d", "c", payload={"x": ["{{ tasks.a.output.n }}", "{{ tasks.b.id }}"]}),
        t("e", "a", payload={"x": "{{ nonsense }}"}),
    ])
    assert "not one of its dependencies" in found[(2, "run_if")][0]
    assert found[(3, "payload")] == ["task 'd': {{ tasks.b.id }} reads task 'b', which is not upstream of it "
                                     "(add it to depends_on)"]
    assert "must start with tasks.<task key> or workflow." in found[(4, "payload")][0]


@pytest.mark.parametrize("run_if, message", [
    ("sometimes", "unknown run_if 'sometimes'"),
    ({"path": "tasks.a.output.n", "op": "eq"}, "op eq needs a value"),
    ({"path": "tasks.a.output.n", "op": "exists", "value": 1}, "op exists takes no value"),
    ({"path": "tasks.a.output.n", "op": "in", "value": 1}, "op in needs a list"),
    ({"path": "workflow.name", "op": "eq", "value": 1}, "a condition reads a dependency's output or status"),
    ({"path": "tasks.a.output.n", "op": "eq", "value": 1, "extra": 2}, "unknown condition fields ['extra']"),
    (5, "run_if is a string"),
])
def test_malformed_run_if_says_what_is_wrong(run_if: Any, message: str) -> None:
    found = errors_of([t("a"), t("b", "a", run_if=run_if)])
    assert message in found[(1, "run_if")][0]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.integers(0, 7), max_size=3), min_size=1, max_size=8))
def test_validation_accepts_exactly_the_acyclic_graphs(edges: list[list[int]]) -> None:
    """Any graph of up to 8 tasks: valid iff it has no cycle (every run_if is success, every
    dependency exists); and for a valid one the topological order puts dependencies first."""
    tasks = [t(f"k{i}", *sorted({f"k{d}" for d in deps if d < len(edges) and d != i})) for i, deps in enumerate(edges)]
    nodes = {task["key"]: task["depends_on"] for task in tasks}
    cyclic = graph._cycle(nodes) is not None
    assert (graph.validate(tasks, max_tasks=8) != {}) == cyclic
    if not cyclic:
        order = [node.key for node in graph.topological([TaskNode(k, tuple(v)) for k, v in nodes.items()])]
        assert sorted(order) == sorted(nodes)
        for key, deps in nodes.items():
            assert all(order.index(dep) < order.index(key) for dep in deps)


# --- deciding -------------------------------------------------------------------------------

NO_DATA = lambda: {"tasks": {}, "workflow": {}}  # noqa: E731


def nodes(*specs: dict[str, Any]) -> list[TaskNode]:
    return [graph.node_of(spec) for spec in specs]


def test_plan_releases_only_tasks_whose_dependencies_all_settled() -> None:
    diamond = nodes(t("a"), t("b", "a"), t("c", "a"), t("d", "b", "c"))
    decided = graph.plan(diamond, {"a": "SUCCESS", "b": "SUCCESS", "c": "RUNNING", "d": "WAITING"}, NO_DATA)
    assert decided.release == [] and decided.skip == {}
    decided = graph.plan(diamond, {"a": "SUCCESS", "b": "SUCCESS", "c": "SUCCESS", "d": "WAITING"}, NO_DATA)
    assert decided.release == ["d"]


def test_plan_follows_skips_down_the_graph_but_always_runs() -> None:
    chain = nodes(t("a"), t("b", "a"), t("c", "b"), t("d", "c", run_if="always"), t("e", "d"))
    decided = graph.plan(chain, {"a": "FAILED", "b": "WAITING", "c": "WAITING", "d": "WAITING", "e": "WAITING"},
                         NO_DATA)
    assert decided.skip == {"b": "skipped: dependency 'a' ended FAILED", "c": "skipped: dependency 'b' ended SKIPPED"}
    assert decided.release == ["d"]


@pytest.mark.parametrize("run_if, dependency, runs", [
    ("success", "SUCCESS", True), ("success", "FAILED", False), ("success", "CANCELLED", False),
    ("failure", "FAILED", True), ("failure", "SUCCESS", False), ("failure", "SKIPPED", False),
    ("always", "FAILED", True), ("always", "CANCELLED", True), ("always", "SKIPPED", True),
])
def test_run_if_against_each_outcome(run_if: str, dependency: str, runs: bool) -> None:
    node = TaskNode("b", ("a",), run_if)
    assert graph.decide(node, {"a": dependency}, NO_DATA)[0] is runs


def test_failure_runs_if_any_dependency_failed_success_needs_all() -> None:
    statuses = {"a": "SUCCESS", "b": "FAILED"}
    assert graph.decide(TaskNode("c", ("a", "b"), "failure"), statuses, NO_DATA) == (True, None)
    assert graph.decide(TaskNode("c", ("a", "b")), statuses, NO_DATA) == (False, "skipped: dependency 'b' ended FAILED")


def test_fail_fast_spares_running_tasks_and_handlers() -> None:
    specs = nodes(t("a"), t("b", "a"), t("c", "a"), t("h", "b", run_if="failure"), t("z", "c", run_if="always"),
                  t("q", "c"))
    statuses = {"a": "SUCCESS", "b": "FAILED", "c": "QUEUED", "h": "WAITING", "z": "WAITING", "q": "WAITING"}
    assert graph.failing(specs, statuses) == "b"
    assert graph.fail_fast_victims(specs, statuses) == ["c", "q"]
    allowed = nodes(t("a"), t("b", "a", allow_failure=True))
    assert graph.failing(allowed, {"a": "SUCCESS", "b": "FAILED"}) is None


@pytest.mark.parametrize("statuses, expected", [
    ({"a": "SUCCESS", "b": "SKIPPED"}, "SUCCESS"),
    ({"a": "FAILED", "b": "SUCCESS"}, "FAILED"),
    ({"a": "SUCCESS", "b": "CANCELLED"}, "CANCELLED"),
    ({"a": "FAILED", "b": "CANCELLED"}, "FAILED"),
    ({"a": "SUCCESS", "b": "RUNNING"}, None),
])
def test_final_status(statuses: dict[str, str], expected: str | None) -> None:
    assert graph.final_status(nodes(t("a"), t("b", "a", run_if="always")), statuses) == expected


def test_an_allowed_failure_does_not_fail_the_workflow() -> None:
    assert graph.final_status(nodes(t("a", allow_failure=True)), {"a": "FAILED"}) == "SUCCESS"


# --- paths, conditions, templates -----------------------------------------------------------

CONTEXT = {
    "tasks": {"export": {"output": {"rows": 3, "path": "s3://x", "files": [{"name": "f1"}], "ok": True,
                                    "weird key": 1},
                         "status": "SUCCESS", "id": "j-1", "error": None}},
    "workflow": {"id": "w-1", "name": "nightly", "execute_at": "2030-01-01T00:00:00.000Z"},
}


@pytest.mark.parametrize("path, value", [
    ("tasks.export.output.rows", 3),
    ("tasks.export.output.files[0].name", "f1"),
    ("tasks.export.output.files.0.name", "f1"),
    ('tasks.export.output["weird key"]', 1),
    ("tasks.export.status", "SUCCESS"),
    ("workflow.name", "nightly"),
])
def test_paths_look_up_json(path: str, value: Any) -> None:
    from common.core.workflow_templates import lookup
    assert lookup(parse_path(path), CONTEXT) == value


@pytest.mark.parametrize("path", ["tasks", "tasks.export", "tasks.export.payload", "tasks.export.status.x",
                                  "workflow.payload", "jobs.x.output", "tasks.export.output.[", "tasks.1x.output"])
def test_malformed_paths_are_refused(path: str) -> None:
    with pytest.raises(PathError):
        parse_path(path)


@pytest.mark.parametrize("op, value, holds", [
    ("eq", 3, True), ("eq", 3.0, True), ("eq", "3", False), ("ne", "3", True), ("gt", 2, True), ("gt", 3, False),
    ("gte", 3, True), ("lt", 4, True), ("lte", 2, False), ("in", [1, 3], True), ("not_in", [1, 3], False),
    ("gt", "2", False),
])
def test_conditions_compare_like_json(op: str, value: Any, holds: bool) -> None:
    condition = parse_condition({"path": "tasks.export.output.rows", "op": op, "value": value})
    assert evaluate(condition, CONTEXT)[0] is holds


def test_booleans_are_not_numbers_and_missing_values_only_satisfy_not_exists() -> None:
    assert evaluate(parse_condition({"path": "tasks.export.output.ok", "op": "eq", "value": 1}), CONTEXT)[0] is False
    assert evaluate(parse_condition({"path": "tasks.export.output.ok", "op": "eq", "value": True}), CONTEXT)[0]
    missing = {"path": "tasks.export.output.nope"}
    assert evaluate(parse_condition({**missing, "op": "not_exists"}), CONTEXT)[0] is True
    held, why = evaluate(parse_condition({**missing, "op": "gt", "value": 0}), CONTEXT)
    assert held is False and why == "condition tasks.export.output.nope gt 0 is false: tasks.export.output.nope: " \
                                    "tasks.export.output has no 'nope'"


def test_render_keeps_types_for_whole_references_and_writes_text_inside_strings() -> None:
    payload = {
        "url": "https://h/{{ tasks.export.output.path }}?n={{tasks.export.output.rows}}",
        "rows": "{{ tasks.export.output.rows }}",
        "files": "{{ tasks.export.output.files }}",
        "list": ["{{ workflow.id }}", 5, None, {"deep": "{{ tasks.export.output.ok }}!"}],
        "plain": "no {braces} here",
    }
    assert render(payload, CONTEXT) == {
        "url": "https://h/s3://x?n=3", "rows": 3, "files": [{"name": "f1"}],
        "list": ["w-1", 5, None, {"deep": "true!"}], "plain": "no {braces} here",
    }


def test_render_of_a_missing_value_raises_naming_it() -> None:
    with pytest.raises(Missing, match="tasks.export.output.files\\[3\\]: tasks.export.output.files has no 3"):
        render({"x": "{{ tasks.export.output.files[3] }}"}, CONTEXT)
    with pytest.raises(Missing, match="task 'other' has no result"):
        render("{{ tasks.other.output }}", CONTEXT)
