// Workflows: the list, newest first, filtered by status and name, with keyset paging; live.

import {badge, fill, h, when} from "../dom.js";
import {pagedList} from "../paging.js";
import {subscribe, throttle} from "../live.js";

export const WORKFLOW_STATUSES = ["RUNNING", "SUCCESS", "FAILED", "CANCELLED"];

/** A workflow's task counts as badges ("SUCCESS 3 RUNNING 1"). */
export function taskCounts(counts) {
  const entries = Object.entries(counts || {});
  if (!entries.length) return "—";
  return entries.map(([status, n]) => h("span", {class: "pair", "data-status": status}, badge(status), ` ${n}`));
}

export function workflowsView({me, main, params}) {
  const filters = {status: params.get("status") || "", name: params.get("name") || "",
    schedule_id: params.get("schedule_id") || ""};
  const error = h("p", {class: "error", role: "alert"});
  const row = (workflow) => h("tr", {"data-workflow-id": workflow.id, "data-status": workflow.status},
    h("td", {}, h("a", {href: `#/workflows/${encodeURIComponent(workflow.id)}`, class: "workflow-name"}, workflow.name)),
    h("td", {class: "workflow-status"}, badge(workflow.status)),
    h("td", {class: "time"}, when(workflow.execute_at)),
    h("td", {class: "task-counts"}, taskCounts(workflow.task_counts)),
    h("td", {class: "num"}, workflow.runs),
    h("td", {class: "time"}, when(workflow.finished_at)),
    me.all_tenants ? h("td", {}, workflow.tenant) : null);
  const list = pagedList({path: "/api/workflows", query: filters, row, columns: 6, empty: "No workflows match.",
    noun: "workflows", error});

  // Filters are kept in the address, so a filtered list can be bookmarked and shared.
  const filterForm = h("form", {id: "filters", class: "card filters", onsubmit: (event) => {
    event.preventDefault();
    const data = new FormData(filterForm);
    const query = new URLSearchParams();
    for (const name of ["status", "name"]) if (data.get(name)) query.set(name, data.get(name).trim());
    location.hash = `#/workflows${query.toString() ? `?${query}` : ""}`;
  }},
  h("div", {class: "row"},
    h("label", {}, "Status", h("select", {name: "status"}, h("option", {value: ""}, "any"),
      WORKFLOW_STATUSES.map((s) => h("option", {value: s, selected: s === filters.status}, s)))),
    h("label", {}, "Name", h("input", {name: "name", value: filters.name, size: 16})),
    h("button", {type: "submit", class: "primary"}, "Filter"),
    h("a", {href: "#/workflows", class: "button"}, "Clear")));

  fill(main,
    h("h1", {}, "Workflows"),
    h("p", {class: "muted"}, "Create workflows through the API (POST /api/workflows); here you follow them, cancel them and rerun their failed tasks."),
    filterForm,
    error,
    h("table", {class: "list", id: "workflows"},
      h("thead", {}, h("tr", {}, h("th", {}, "Name"), h("th", {}, "Status"), h("th", {}, "Due (UTC)"),
        h("th", {}, "Tasks"), h("th", {}, "Runs"), h("th", {}, "Finished (UTC)"), me.all_tenants ? h("th", {}, "Tenant") : null)),
      list.rows),
    list.pager);
  list.load();
  // Any job's change may be a task's: read the page again, at most once a second.
  return subscribe({}, throttle(list.load, 1000));
}
