// One workflow: its fields, its task graph (SVG), its tasks, and cancel / rerun failed as the
// status and the caller's role allow (the API checks them again); live through the event
// stream, re-reading the workflow when one of its tasks changes.

import {api} from "../api.js";
import {badge, fieldTable, fill, h, pretty, when} from "../dom.js";
import {subscribe, throttle} from "../live.js";
import {layout, NODE, pathOf, runIfText} from "./graph.js";

// The SVG namespace is a name, not an address: nothing is fetched from it.
const SVG_NS = "http://www.w3.org/2000/svg";

/** An SVG element, like dom.js's h(): attributes set one by one, text as text. */
function svg(tag, attrs = {}, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value !== undefined && value !== null && value !== false) el.setAttribute(name, String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

/** ``text`` cut to ``max`` characters (the whole of it in the node's tooltip). */
function clip(text, max) {
  const value = String(text);
  return value.length > max ? `${value.slice(0, max - 1)}…` : value;
}

const lower = (status) => String(status || "").toLowerCase();

/** The task graph: a box per task (key, status, run_if), an arrow per dependency. */
function graph(tasks) {
  const {nodes, edges, width, height} = layout(tasks);
  const arrow = svg("marker", {id: "arrow", viewBox: "0 0 10 10", refX: 10, refY: 5, markerWidth: 7,
    markerHeight: 7, orient: "auto-start-reverse"}, svg("path", {d: "M 0 0 L 10 5 L 0 10 z", class: "arrow-head"}));
  const lines = edges.map(({from, to, points}) => svg("path", {class: `edge from-${lower(nodes.get(from).task.status)}`,
    "data-from": from, "data-to": to, d: pathOf(points), "marker-end": "url(#arrow)"}));
  const boxes = [...nodes.values()].map(({task, x, y}) => {
    const condition = runIfText(task.run_if);
    const note = [condition, task.allow_failure ? "may fail" : null].filter(Boolean).join(" · ");
    const tip = [`${task.key} (${task.name || task.type})`, task.status, condition, task.allow_failure ? "allow_failure" : null,
      task.error].filter(Boolean).join("\n");
    const textX = x + 10;
    return svg("a", {href: `#/jobs/${encodeURIComponent(task.id)}`, class: "node-link"},
      svg("g", {class: `node s-${lower(task.status)}`, "data-key": task.key, "data-status": task.status,
        "data-task-id": task.id},
      svg("title", {}, tip),
      svg("rect", {x, y, width: NODE.width, height: NODE.height, rx: 6, ry: 6}),
      svg("text", {x: textX, y: y + 19, class: "node-key"}, clip(task.key, 22)),
      svg("text", {x: textX, y: y + 37, class: "node-status"}, task.status),
      note ? svg("text", {x: textX, y: y + 54, class: "node-note"}, clip(note, 28)) : null));
  });
  return svg("svg", {id: "workflow-graph", class: "graph", width, height, viewBox: `0 0 ${width} ${height}`,
    role: "group", "aria-label": `task graph: ${tasks.length} tasks, ${edges.length} dependencies`},
  svg("defs", {}, arrow), svg("g", {class: "edges"}, lines), svg("g", {class: "nodes"}, boxes));
}

export function workflowView({me, main}, workflowId) {
  const head = h("div", {class: "workflow-head"});
  const actions = h("div", {class: "actions", id: "workflow-actions"});
  const message = h("p", {class: "notice", id: "action-message", role: "status"});
  const fields = h("section", {id: "workflow-fields"});
  const picture = h("div", {class: "graph-box", id: "graph-box"});
  const rows = h("tbody");
  const path = `/api/workflows/${encodeURIComponent(workflowId)}`;
  let taskIds = new Set();
  let shown = false;  // a workflow is on the page (a failed re-read keeps it)

  fill(main, h("p", {}, h("a", {href: "#/workflows"}, "← Workflows")), head, actions, message, fields,
    h("h2", {}, "Tasks"), picture,
    h("table", {class: "list", id: "tasks"},
      h("thead", {}, h("tr", {}, h("th", {}, "Key"), h("th", {}, "Status"), h("th", {}, "Depends on"),
        h("th", {}, "Started (UTC)"), h("th", {}, "Finished (UTC)"), h("th", {}, "Attempts"), h("th", {}, "Error"))),
      rows));

  async function load() {
    try {
      render(await api(path));
    } catch (failure) {
      if (!shown) fill(head, h("h1", {}, "Workflow"));
      fill(message, failure.status === 404 ? `No workflow ${workflowId} (or not yours to see).` : failure.message);
    }
  }

  /** Show ``workflow``; an answer without its tasks (an action's) keeps the graph shown. */
  function render(workflow) {
    shown = true;
    main.dataset.workflowStatus = workflow.status;
    fill(head, h("h1", {}, h("span", {class: "workflow-title"}, workflow.name), " ", badge(workflow.status)));
    fill(actions, buttons(workflow));
    const counts = Object.entries(workflow.task_counts || {});
    fill(fields, fieldTable([
      ["id", h("code", {}, workflow.id)],
      ["tenant", workflow.tenant],
      ["status", h("span", {id: "workflow-status"}, badge(workflow.status))],
      ["failure policy", workflow.failure_policy],
      ["due (execute_at)", when(workflow.execute_at)],
      ["schedule", workflow.schedule_id ? h("a", {href: `#/schedules/${encodeURIComponent(workflow.schedule_id)}`}, workflow.schedule_id) : null],
      ["scheduled for", workflow.scheduled_for ? when(workflow.scheduled_for) : null],
      ["created", when(workflow.created_at)],
      ["started", when(workflow.started_at)],
      ["finished", when(workflow.finished_at)],
      ["runs", h("span", {id: "workflow-runs"}, workflow.runs)],
      ["tasks", counts.length ? counts.map(([s, n]) => h("span", {class: "pair"}, badge(s), ` ${n}`)) : null],
      ["metadata", workflow.metadata && Object.keys(workflow.metadata).length ? pretty(workflow.metadata) : null],
    ]));
    if (!Array.isArray(workflow.tasks)) return;
    const tasks = workflow.tasks;
    taskIds = new Set(tasks.map((task) => task.id));
    fill(picture, tasks.length ? graph(tasks) : h("p", {class: "muted"}, "No tasks."));
    fill(rows, tasks.map((task) => h("tr", {"data-key": task.key, "data-status": task.status},
      h("td", {}, h("a", {href: `#/jobs/${encodeURIComponent(task.id)}`, class: "task-key"}, task.key)),
      h("td", {}, badge(task.status)),
      h("td", {}, (task.depends_on || []).join(", ") || "—"),
      h("td", {class: "time"}, when(task.started_at)),
      h("td", {class: "time"}, when(task.finished_at)),
      h("td", {class: "num"}, task.attempts),
      h("td", {class: "error-text task-error"}, task.error || ""))));
  }

  function buttons(workflow) {
    if (!me.canWrite) return [];
    const act = (label, id, method, target, done) => h("button", {type: "button", id, onclick: async (event) => {
      event.target.disabled = true;
      try {
        const result = await api(target, {method});
        fill(message, done(result));
        render(result);  // at once, before the re-read: the answer is the workflow
      } catch (failure) {
        fill(message, failure.message);
      }
      load();
    }}, label);
    return [
      workflow.status === "RUNNING"
        ? act("Cancel workflow", "cancel-workflow", "DELETE", path, () => "Cancelled: tasks not started will not run.") : null,
      workflow.status === "FAILED" || workflow.status === "CANCELLED"
        ? act("Rerun failed", "rerun-workflow", "POST", `${path}/rerun`, (w) => `Rerun: run ${w.runs} starts now.`) : null,
    ];
  }

  const refresh = throttle(load, 250);  // at most 4 reads a second, however many events
  load();
  // The workflow's own status changes in the transaction that settles its last task, so its
  // tasks' events are all the page needs to follow.
  const stopLive = subscribe({}, (event) => {
    if (event === null || taskIds.has(event.job_id)) refresh();
  });
  return () => {
    stopLive();
    delete main.dataset.workflowStatus;
  };
}
