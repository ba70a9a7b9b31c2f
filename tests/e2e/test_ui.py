"""The dashboard at /ui in a real browser (Debian's Chromium, headless, driven by Playwright)
against chronoq running as processes with authentication on: sign in with a key, create jobs
through the form, watch one fire and its attempts appear without a reload, cancel one, rerun a
failed one, check that a viewer gets no action buttons and that a job name is shown as text,
and visit the overview and schedules pages; and the workflow pages: a diamond's task graph drawn
as SVG and turning green live, a failed workflow with a failure handler and a skipped task rerun
from its page, a viewer without buttons, the list (filters, paging, a name shown as text) and a
cancel. Every page visited is saved as a screenshot under the test's temporary folder (the paths
are printed); UPDATE_UI_SCREENSHOT=1 also copies the overview's and the diamond's to
docs/ui-overview.png and docs/ui-workflow.png for the README."""

from __future__ import annotations

import os
import re
import shutil
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import requests

from common.launch.broker import LocalBroker
from tests.conftest import _unavailable
from tests.e2e.conftest import key_headers, module_system
from tests.helpers import wait_for
from tests.processes import System
from tests.receiver import Receiver

pytestmark = pytest.mark.e2e

CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
ROOT = Path(__file__).resolve().parents[2]
TENANT = "ui"
#: How long the browser waits for something to appear (the machine is shared and slow at times).
WAIT_MS = 30_000
XSS_NAME = '<img src=x onerror="window.__xss=1">'


@pytest.fixture(scope="module")
def system(pg_url: str, broker: LocalBroker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    """chronoq with authentication on; streams send keep-alives every second, so a stream the
    browser closed frees its slot (CHRONOQ_EVENTS_MAX_STREAMS) quickly, and end after 2 s, so
    the pages reconnect and resume (Last-Event-ID) many times during the tests."""
    yield from module_system(pg_url, broker, tmp_path_factory.mktemp("ui-logs"), auth_enabled=True,
                             events_keepalive_seconds=1.0, events_stream_seconds=2.0)


@pytest.fixture(scope="module")
def keys(system: System) -> dict[str, dict[str, str]]:
    """An Authorization header per role, of keys of tenant ``ui``."""
    return {role: key_headers(system.settings, TENANT, role) for role in ("viewer", "writer", "admin")}


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One headless Chromium for the module: Debian's, never a downloaded one."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        _unavailable("Playwright (pip install playwright)", exc)
    if not CHROMIUM.exists():
        _unavailable("Chromium", FileNotFoundError(f"{CHROMIUM} (apt-get install chromium)"))
    args = ["--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--no-first-run", "--disable-dev-shm-usage"]
    if os.geteuid() == 0:
        args.append("--no-sandbox")  # Chromium's sandbox refuses to run as root
    with sync_playwright() as playwright:
        try:
            launched = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=args)
        except Exception as exc:  # noqa: BLE001 - any failure to start means "not available"
            _unavailable("Chromium", exc)
        yield launched
        launched.close()


class Dashboard:
    """One signed-in browser tab on the dashboard, failing the test on any script error."""

    def __init__(self, browser: Any, system: System, headers: dict[str, str], shots: Path) -> None:
        self.context = browser.new_context(viewport={"width": 1280, "height": 900})
        self.page = self.context.new_page()
        self.page.set_default_timeout(WAIT_MS)
        self.errors: list[str] = []
        self.page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        self.base = f"{system.base_url}/ui/"
        self.shots = shots
        self.page.goto(self.base)
        self.page.fill("#credential", headers["Authorization"].removeprefix("Bearer "))
        self.page.click("#signin button[type=submit]")
        self.page.locator("#who .role").wait_for()

    def go(self, route: str) -> Any:
        self.page.evaluate("(route) => { location.hash = route; }", route)
        return self.page

    def shot(self, name: str) -> Path:
        path = self.shots / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        print(f"screenshot: {path}")
        return path

    def create_job(self, name: str, job_type: str = "noop", delay: float = 1, payload: str = "{}",
                   max_retries: int | None = None) -> str:
        """Fill in and send the New job form; the id of the job page it opens."""
        page = self.go("#/jobs")
        page.click("#create-details summary")
        form = page.locator("#create-job")
        form.locator("input[name=name]").fill(name)
        form.locator("select[name=type]").select_option(job_type)
        form.locator("input[name=delay_seconds]").fill(str(delay))
        form.locator("textarea[name=payload]").fill(payload)
        if max_retries is not None:
            form.locator("input[name=max_retries]").fill(str(max_retries))
        page.click("#create-submit")
        page.wait_for_url(re.compile(r".*#/jobs/[0-9a-f-]{36}$"))
        return page.url.rsplit("/", 1)[1]

    def wait_status(self, status: str) -> None:
        self.page.locator(f"#main[data-job-status={status}]").wait_for()

    def close(self) -> None:
        self.context.close()
        assert self.errors == [], self.errors


@pytest.fixture
def dashboard(browser: Any, system: System, tmp_path: Path) -> Iterator[Callable[[dict[str, str]], Dashboard]]:
    opened: list[Dashboard] = []

    def open_(headers: dict[str, str]) -> Dashboard:
        opened.append(Dashboard(browser, system, headers, tmp_path))
        return opened[-1]

    yield open_
    for board in opened:
        board.close()


def api(system: System, headers: dict[str, str], method: str, path: str, **kwargs: Any) -> Any:
    response = requests.request(method, f"{system.base_url}{path}", headers=headers, timeout=10, **kwargs)
    assert response.ok, response.text
    return response.json() if response.content else None


def test_a_job_made_in_the_form_runs_and_its_attempt_appears_live(
        dashboard: Callable[..., Dashboard], system: System, keys: dict[str, dict[str, str]]) -> None:
    board = dashboard(keys["writer"])
    page = board.page
    assert page.locator("#who .role").inner_text() == "writer"
    # Due in an hour, so that the page surely shows it before it runs; then run now.
    job_id = board.create_job(XSS_NAME, delay=3600)
    page.evaluate("() => { window.__notReloaded = true; }")
    # The name is user input: shown as text, never as markup.
    assert page.locator(".job-title").inner_text() == XSS_NAME
    assert page.locator("#main img").count() == 0
    board.wait_status("SCHEDULED")
    page.locator("#no-attempts").wait_for()
    page.click("#trigger")
    # It fires and the page follows by itself, through the event stream.
    board.wait_status("SUCCESS")
    attempt = page.locator('li.attempt[data-attempt="1"][data-status="SUCCESS"]')
    attempt.wait_for()
    assert page.evaluate("() => window.__notReloaded") is True
    # The stream brings every change (the module instance the page uses: same URL, same module).
    # The page may show SUCCESS first from its own re-read of the job (it re-reads on a change),
    # a poll interval before the SUCCESS event itself arrives: wait for the event, not the text.
    page.evaluate("() => import('/ui/static/live.js').then((m) => { window.__live = m; })")
    seen = "(id) => window.__live.seen(id).map((e) => e.status)"
    page.wait_for_function(
        f"(id) => ['SCHEDULED', 'QUEUED', 'RUNNING', 'SUCCESS'].every((x) => ({seen})(id).includes(x))",
        arg=job_id, timeout=15_000, polling=100)
    statuses = page.evaluate(seen, job_id)
    assert {"SCHEDULED", "QUEUED", "RUNNING", "SUCCESS"} <= set(statuses), statuses
    for step in ("scheduled", "dispatched", "started", "finished"):
        assert "done" in attempt.locator(f'li.step[data-step="{step}"]').get_attribute("class"), step
    assert re.search(r"\d+(\.\d+)? (ms|s) (late|early)", attempt.locator('li.step[data-step="started"]').inner_text())
    assert page.evaluate("() => window.__xss") is None
    board.shot("job-success")
    # …and in the list, filtered by its name, as text again.
    board.go(f"#/jobs?name={requests.utils.quote(XSS_NAME)}")
    row = page.locator(f'tr[data-job-id="{job_id}"]')
    row.wait_for()
    assert row.locator(".job-name").inner_text() == XSS_NAME and page.locator("#jobs tbody tr").count() == 1
    board.shot("jobs-list")
    assert api(system, keys["writer"], "GET", f"/api/jobs/{job_id}")["status"] == "SUCCESS"


def test_the_job_list_filters_and_pages(
        dashboard: Callable[..., Dashboard], system: System, keys: dict[str, dict[str, str]]) -> None:
    made = api(system, keys["writer"], "POST", "/api/jobs/batch", json={"jobs": [
        {"name": "paged", "type": "noop", "delay_seconds": 3600 + n} for n in range(30)]})
    assert made["created"] == 30
    board = dashboard(keys["viewer"])
    page = board.page
    board.go("#/jobs")
    page.fill("#filters input[name=name]", "paged")
    page.check("#filters input[value=SCHEDULED]")
    page.click("#filters button[type=submit]")
    page.wait_for_url(re.compile(r".*#/jobs\?status=SCHEDULED&name=paged$"))
    page.locator("#page-info", has_text="page 1 · 25 jobs").wait_for()
    first = page.locator("#jobs tbody tr").first.get_attribute("data-job-id")
    assert first == made["items"][0]["job"]["id"]  # in execute_at order
    page.click("#next-page")
    page.locator("#page-info", has_text="page 2 · 5 jobs").wait_for()
    assert page.locator("#next-page").is_disabled()
    assert page.locator("#jobs tbody tr").last.get_attribute("data-job-id") == made["items"][-1]["job"]["id"]
    board.shot("jobs-page-2")
    page.click("#prev-page")
    page.locator("#page-info", has_text="page 1 · 25 jobs").wait_for()
    page.uncheck("#filters input[value=SCHEDULED]")
    page.check("#filters input[value=FAILED]")
    page.click("#filters button[type=submit]")
    page.locator("#jobs tbody tr td.muted", has_text="No jobs match.").wait_for()


def test_the_live_stream_resumes_across_reconnects(
        dashboard: Callable[..., Dashboard], system: System, keys: dict[str, dict[str, str]]) -> None:
    """Streams end every 2 s here: the page reconnects with Last-Event-ID and gets every change."""
    board = dashboard(keys["viewer"])
    page = board.page
    page.evaluate("""() => import('/ui/static/live.js').then((m) => {
        window.__created = new Set();
        m.subscribe({status: ["SCHEDULED"]}, (e) => { if (e) window.__created.add(e.job_id); });
    })""")
    made = []
    deadline = time.monotonic() + 5  # spans two stream ends at least
    while time.monotonic() < deadline:
        made.append(api(system, keys["writer"], "POST", "/api/jobs",
                        json={"name": "streamed", "type": "noop", "delay_seconds": 3600})["id"])
        time.sleep(0.25)
    wait_for(lambda: set(made) <= set(page.evaluate("() => [...window.__created]")), timeout=WAIT_MS / 1000,
             what="every creation streamed")
    # Streams that ended (those still open are not in the list yet).
    ended = page.evaluate("() => performance.getEntriesByType('resource')"
                          ".filter((r) => r.name.endsWith('/api/events')).length")
    assert ended >= 2, ended


def test_a_far_future_job_is_cancelled_from_its_page(
        dashboard: Callable[..., Dashboard], system: System, keys: dict[str, dict[str, str]]) -> None:
    board = dashboard(keys["writer"])
    job_id = board.create_job("far away", delay=3600)
    board.wait_status("SCHEDULED")
    board.page.click("#cancel")
    board.wait_status("CANCELLED")
    assert board.page.locator("#action-message").inner_text() == "Cancelled."
    assert board.page.locator("#cancel").count() == 0 and board.page.locator("#rerun").count() == 1
    board.shot("job-cancelled")
    assert api(system, keys["writer"], "GET", f"/api/jobs/{job_id}")["status"] == "CANCELLED"


def test_a_failed_job_is_rerun_and_its_second_attempt_appears(
        dashboard: Callable[..., Dashboard], system: System, keys: dict[str, dict[str, str]], receiver: Receiver) -> None:
    url = receiver.answer("/ui-rerun", 500)  # then 200
    board = dashboard(keys["writer"])
    page = board.page
    job_id = board.create_job("flaky hook", job_type="http", delay=1, max_retries=0, payload=f'{{"url": "{url}"}}')
    board.wait_status("FAILED")
    page.locator('li.attempt[data-attempt="1"][data-status="FAILED"]').wait_for()
    assert "500" in page.locator("#job-error").inner_text()
    page.click("#rerun")
    board.wait_status("SUCCESS")
    page.locator('li.attempt[data-attempt="2"][data-status="SUCCESS"]').wait_for()
    assert page.locator("li.attempt").count() == 2
    board.shot("job-rerun")
    assert len(receiver.to("/ui-rerun")) == 2
    assert [a["status"] for a in api(system, keys["writer"], "GET", f"/api/jobs/{job_id}/attempts")["items"]] == \
        ["FAILED", "SUCCESS"]


def test_a_viewer_sees_no_action_and_a_bad_key_is_refused(
        dashboard: Callable[..., Dashboard], browser: Any, system: System, keys: dict[str, dict[str, str]]) -> None:
    job = api(system, keys["writer"], "POST", "/api/jobs", json={"name": "look only", "type": "noop",
                                                                  "delay_seconds": 3600})
    schedule = api(system, keys["writer"], "POST", "/api/schedules",
                   json={"name": "viewer's", "interval_seconds": 3600, "job": {"name": "tick", "type": "noop"}})
    board = dashboard(keys["viewer"])
    page = board.page
    assert page.locator("#who .role").inner_text() == "viewer"
    board.go(f"#/jobs/{job['id']}")
    board.wait_status("SCHEDULED")
    assert page.locator("#job-actions button").count() == 0
    board.shot("viewer-job")
    board.go("#/jobs?name=look%20only")
    page.locator(f'tr[data-job-id="{job["id"]}"]').wait_for()
    assert page.locator("#create-job").count() == 0
    board.go("#/schedules")
    page.locator(f'tr[data-schedule-id="{schedule["id"]}"]').wait_for()
    assert page.locator("#schedules button").count() == 0
    # The API refuses what the page does not offer.
    assert requests.delete(f"{system.base_url}/api/jobs/{job['id']}", headers=keys["viewer"], timeout=10).status_code == 403
    api(system, keys["writer"], "DELETE", f"/api/schedules/{schedule['id']}")

    stranger = browser.new_page()
    try:
        stranger.goto(f"{system.base_url}/ui/")
        stranger.fill("#credential", "cq_nope_" + "x" * 40)
        stranger.click("#signin button[type=submit]")
        stranger.locator("#signin-error", has_text="refused").wait_for(timeout=WAIT_MS)
        assert stranger.locator("#nav").is_hidden()
    finally:
        stranger.close()


def test_schedules_and_overview_pages(
        dashboard: Callable[..., Dashboard], system: System, keys: dict[str, dict[str, str]]) -> None:
    schedule = api(system, keys["writer"], "POST", "/api/schedules",
                   json={"name": "every second", "interval_seconds": 1, "job": {"name": "tick", "type": "noop"}})
    try:
        board = dashboard(keys["writer"])
        page = board.page
        board.go("#/schedules")
        row = page.locator(f'tr[data-schedule-id="{schedule["id"]}"]')
        row.locator(".next-fire").wait_for()
        assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", row.locator(".next-fire").inner_text())
        # Its page: the next fire times, and on-time figures once an occurrence has run.
        board.go(f"#/schedules/{schedule['id']}")
        page.locator("#preview tbody tr").nth(9).wait_for()
        assert page.locator("#preview tbody tr").count() == 10
        page.locator("#on-time", has_text="p50").wait_for()
        board.shot("schedule")
        page.click("button[data-action=pause]")
        page.locator("button[data-action=resume]").wait_for()
        assert api(system, keys["writer"], "GET", f"/api/schedules/{schedule['id']}")["paused"] is True
        board.go("#/schedules")
        row.locator("button[data-action=resume]").wait_for()
        assert row.locator(".next-fire").inner_text() == "paused"
        board.shot("schedules")
    finally:
        api(system, keys["writer"], "DELETE", f"/api/schedules/{schedule['id']}")

    # The overview, as an admin (who also sees the dead-letter count), with jobs due soon.
    for delay in (70, 130, 135, 250, 260, 270):
        api(system, keys["writer"], "POST", "/api/jobs", json={"name": "soon", "type": "noop", "delay_seconds": delay})
    board = dashboard(keys["admin"])
    page = board.page
    board.go("#/overview")
    page.locator("#by-status").wait_for()
    due = [int(n) for n in page.locator("#due td.num").all_inner_texts()]
    assert len(due) == 10 and sum(due) >= 6, due
    wait_for(lambda: int(page.locator('#by-status [data-status="SUCCESS"] .figure').inner_text()) > 0,
             timeout=WAIT_MS / 1000, what="SUCCESS jobs counted")
    assert re.fullmatch(r"\d+", page.locator("#card-dead-letters .figure").inner_text())
    assert re.search(r"\d", page.locator("#card-p50 .figure").inner_text())
    shot = board.shot("overview")
    if os.environ.get("UPDATE_UI_SCREENSHOT"):
        shutil.copyfile(shot, ROOT / "docs" / "ui-overview.png")


# --- the workflow pages ---------------------------------------------------------------------

WORKFLOW_TENANT = "ui-wf"


@pytest.fixture(scope="module")
def wf_keys(system: System) -> dict[str, dict[str, str]]:
    """An Authorization header per role, of keys of the workflow pages' own tenant."""
    return {role: key_headers(system.settings, WORKFLOW_TENANT, role) for role in ("viewer", "writer")}


def make_workflow(system: System, headers: dict[str, str], name: str, tasks: list[dict[str, Any]],
                  **fields: Any) -> dict[str, Any]:
    body = {"name": name, "delay_seconds": 0, **fields, "tasks": tasks}
    response = requests.post(f"{system.base_url}/api/workflows", json=body, headers=headers, timeout=10)
    assert response.status_code == 201, response.text
    return response.json()


def node(page: Any, key: str, status: str | None = None) -> Any:
    """The graph's box of task ``key`` (in ``status``, when given)."""
    selector = f'#workflow-graph g.node[data-key="{key}"]'
    return page.locator(selector + (f'[data-status="{status}"]' if status else ""))


def wait_workflow(page: Any, status: str) -> None:
    page.locator(f"#main[data-workflow-status={status}]").wait_for()


def test_a_diamond_is_drawn_and_turns_green_live(
        dashboard: Callable[..., Dashboard], system: System, wf_keys: dict[str, dict[str, str]]) -> None:
    board = dashboard(wf_keys["writer"])
    page = board.page
    # ``a`` sleeps, so ``d`` is surely still WAITING when the page first shows the graph.
    workflow = make_workflow(system, wf_keys["writer"], "diamond", [
        {"key": "a", "type": "sleep", "payload": {"seconds": 1.5}},
        {"key": "b", "type": "noop", "depends_on": ["a"]},
        {"key": "c", "type": "sleep", "payload": {"seconds": 0.2}, "depends_on": ["a"]},
        {"key": "d", "type": "noop", "depends_on": ["b", "c"]},
    ], delay_seconds=1)
    board.go(f"#/workflows/{workflow['id']}")
    page.evaluate("() => { window.__notReloaded = true; }")
    node(page, "d", "WAITING").wait_for()
    assert page.locator("#workflow-graph g.node").count() == 4
    edges = page.locator("#workflow-graph path.edge")
    assert {(edges.nth(i).get_attribute("data-from"), edges.nth(i).get_attribute("data-to"))
            for i in range(edges.count())} == {("a", "b"), ("a", "c"), ("b", "d"), ("c", "d")}
    # Layers left to right by the longest path from the root.
    x = {key: float(node(page, key).locator("rect").get_attribute("x")) for key in "abcd"}
    assert x["a"] < x["b"] == x["c"] < x["d"], x
    tasks = {task["key"]: task["id"] for task in workflow["tasks"]}
    assert node(page, "b").locator("xpath=..").get_attribute("href") == f"#/jobs/{tasks['b']}"

    # The event stream moves the boxes on, without a reload.
    for key in "abcd":
        node(page, key, "SUCCESS").wait_for()
    wait_workflow(page, "SUCCESS")
    assert page.evaluate("() => window.__notReloaded") is True
    assert page.locator("#tasks tbody tr[data-status=SUCCESS]").count() == 4
    assert "s-success" in node(page, "d").get_attribute("class")
    shot = board.shot("workflow")
    if os.environ.get("UPDATE_UI_SCREENSHOT"):
        shutil.copyfile(shot, ROOT / "docs" / "ui-workflow.png")

    # A task's box opens its job, whose page links back to the workflow.
    node(page, "d").click()
    page.wait_for_url(re.compile(rf".*#/jobs/{tasks['d']}$"))
    page.click("#job-workflow a")
    page.wait_for_url(re.compile(rf".*#/workflows/{workflow['id']}$"))
    wait_workflow(page, "SUCCESS")


def test_a_failed_workflow_shows_its_handler_and_skipped_task_and_is_rerun(
        dashboard: Callable[..., Dashboard], system: System, wf_keys: dict[str, dict[str, str]]) -> None:
    workflow = make_workflow(system, wf_keys["writer"], "breaks", [
        {"key": "boom", "type": "fail", "payload": {"message": "it broke"}, "max_retries": 0},
        {"key": "alert", "type": "noop", "depends_on": ["boom"], "run_if": "failure"},
        {"key": "after", "type": "noop", "depends_on": ["boom"]},
    ], failure_policy="continue")  # (fail_fast would cancel ``after`` rather than skip it)
    board = dashboard(wf_keys["writer"])
    page = board.page
    board.go(f"#/workflows/{workflow['id']}")
    wait_workflow(page, "FAILED")
    for key, status in (("boom", "FAILED"), ("alert", "SUCCESS"), ("after", "SKIPPED")):
        node(page, key, status).wait_for()
    assert node(page, "alert").locator(".node-note").text_content() == "if failure"
    assert node(page, "after").locator(".node-note").count() == 0
    assert "it broke" in page.locator('#tasks tr[data-key="boom"] .task-error').inner_text()
    assert page.locator("#cancel-workflow").count() == 0
    board.shot("workflow-failed")

    # Every value the page's status takes, however briefly (the rerun fails again at once).
    page.evaluate("""() => {
        window.__statuses = [];
        const main = document.getElementById('main');
        new MutationObserver(() => window.__statuses.push(main.dataset.workflowStatus))
            .observe(main, {attributes: true, attributeFilter: ['data-workflow-status']});
    }""")
    page.click("#rerun-workflow")
    page.locator("#workflow-runs", has_text="2").wait_for()
    assert "RUNNING" in page.evaluate("() => window.__statuses")
    wait_workflow(page, "FAILED")
    node(page, "boom", "FAILED").wait_for()
    assert node(page, "alert", "SUCCESS").count() == 1  # a success keeps its result
    again = api(system, wf_keys["writer"], "GET", f"/api/workflows/{workflow['id']}")
    assert again["runs"] == 2 and again["status"] == "FAILED"

    viewer = dashboard(wf_keys["viewer"])
    viewer.go(f"#/workflows/{workflow['id']}")
    wait_workflow(viewer.page, "FAILED")
    node(viewer.page, "boom", "FAILED").wait_for()
    assert viewer.page.locator("#workflow-actions button").count() == 0
    # The API refuses what the page does not offer.
    refused = requests.post(f"{system.base_url}/api/workflows/{workflow['id']}/rerun", headers=wf_keys["viewer"],
                            timeout=10)
    assert refused.status_code == 403


def test_the_list_filters_pages_shows_names_as_text_and_a_workflow_is_cancelled(
        dashboard: Callable[..., Dashboard], system: System, wf_keys: dict[str, dict[str, str]]) -> None:
    later = {"delay_seconds": 3600}
    hostile = make_workflow(system, wf_keys["writer"], XSS_NAME, [{"key": "only", "type": "noop"}], **later)
    paged = f"paged-{uuid.uuid4().hex[:6]}"
    made = [make_workflow(system, wf_keys["writer"], paged, [{"key": "t", "type": "noop"}], **later)["id"]
            for _ in range(26)]
    board = dashboard(wf_keys["writer"])
    page = board.page
    board.go(f"#/workflows?name={requests.utils.quote(XSS_NAME)}")
    row = page.locator(f'tr[data-workflow-id="{hostile["id"]}"]')
    row.wait_for()
    # The name is user input: shown as text, never as markup.
    assert row.locator(".workflow-name").inner_text() == XSS_NAME
    assert page.locator("#main img").count() == 0 and page.evaluate("() => window.__xss") is None
    assert row.locator(".workflow-status").inner_text() == "RUNNING"
    assert re.fullmatch(r"(WAITING|SCHEDULED) 1", row.locator(".task-counts").inner_text().strip())
    board.shot("workflows-list")

    # Paged newest first, filtered by name and status through the form.
    board.go("#/workflows")
    page.fill("#filters input[name=name]", paged)
    page.select_option("#filters select[name=status]", "RUNNING")
    page.click("#filters button[type=submit]")
    page.wait_for_url(re.compile(rf".*#/workflows\?status=RUNNING&name={paged}$"))
    page.locator("#page-info", has_text="page 1 · 25 workflows").wait_for()
    assert page.locator("#workflows tbody tr").first.get_attribute("data-workflow-id") == made[-1]
    page.click("#next-page")
    page.locator("#page-info", has_text="page 2 · 1 workflows").wait_for()
    assert page.locator("#workflows tbody tr").first.get_attribute("data-workflow-id") == made[0]
    assert page.locator("#next-page").is_disabled()

    # Cancelled from its page: then it may be rerun, and the list shows it CANCELLED.
    board.go(f"#/workflows/{hostile['id']}")
    wait_workflow(page, "RUNNING")
    assert page.locator(".workflow-title").inner_text() == XSS_NAME
    page.click("#cancel-workflow")
    wait_workflow(page, "CANCELLED")
    node(page, "only", "CANCELLED").wait_for()
    assert page.locator("#cancel-workflow").count() == 0 and page.locator("#rerun-workflow").count() == 1
    board.go(f"#/workflows?status=CANCELLED&name={requests.utils.quote(XSS_NAME)}")
    page.locator(f'tr[data-workflow-id="{hostile["id"]}"][data-status=CANCELLED]').wait_for()
    assert page.locator("#workflows tbody tr").count() == 1
