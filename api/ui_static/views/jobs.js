// Jobs: the list with filters and keyset paging, and the form that creates a job.

import {api} from "../api.js";
import {badge, fill, h, when} from "../dom.js";
import {pagedList} from "../paging.js";
import {subscribe, throttle} from "../live.js";

export const STATUSES = ["WAITING", "SCHEDULED", "QUEUED", "RUNNING", "RETRYING", "SUCCESS", "FAILED", "CANCELLED", "SKIPPED"];
const TYPES = ["noop", "http", "fail", "sleep", "shell"];

/** A datetime-local value (the browser's zone) as ISO 8601 in UTC, or undefined. */
function isoOf(local) {
  if (!local) return undefined;
  const d = new Date(local);
  return Number.isNaN(d.getTime()) ? undefined : d.toISOString();
}

/** An ISO time as a datetime-local value in the browser's zone. */
function localOf(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return "";
  const shifted = new Date(d.getTime() - d.getTimezoneOffset() * 60000);
  return shifted.toISOString().slice(0, 19);
}

export function jobsView({me, main, params}) {
  const filters = {
    status: params.getAll("status"),
    type: params.get("type") || "",
    name: params.get("name") || "",
    schedule_id: params.get("schedule_id") || "",
    execute_after: params.get("execute_after") || "",
    execute_before: params.get("execute_before") || "",
  };
  const error = h("p", {class: "error", role: "alert"});
  const row = (job) => h("tr", {"data-job-id": job.id},
    h("td", {}, h("a", {href: `#/jobs/${encodeURIComponent(job.id)}`, class: "job-name"}, job.name)),
    h("td", {}, job.type),
    h("td", {}, badge(job.status)),
    h("td", {class: "time"}, when(job.execute_at)),
    h("td", {class: "num"}, job.attempts),
    h("td", {}, job.schedule_id ? h("a", {href: `#/schedules/${job.schedule_id}`}, "schedule") : ""),
    me.all_tenants ? h("td", {}, job.tenant) : null);
  const list = pagedList({path: "/api/jobs", query: filters, row, columns: 7, empty: "No jobs match.", noun: "jobs", error});

  // --- filters: kept in the address, so a filtered list can be bookmarked and shared.
  const statusBoxes = STATUSES.map((status) => h("label", {class: "check"},
    h("input", {type: "checkbox", name: "status", value: status, checked: filters.status.includes(status)}), status));
  const text = (name, label, attrs = {}) => h("label", {}, label,
    h("input", {name, value: filters[name], ...attrs}));
  const filterForm = h("form", {id: "filters", class: "card filters", onsubmit: (event) => {
    event.preventDefault();
    const data = new FormData(filterForm);
    const query = new URLSearchParams();
    for (const status of data.getAll("status")) query.append("status", status);
    for (const name of ["type", "name", "schedule_id"]) if (data.get(name)) query.set(name, data.get(name).trim());
    for (const name of ["execute_after", "execute_before"]) {
      const iso = isoOf(data.get(name));
      if (iso) query.set(name, iso);
    }
    location.hash = `#/jobs${query.toString() ? `?${query}` : ""}`;
  }},
  h("div", {class: "statuses"}, statusBoxes),
  h("div", {class: "row"},
    text("type", "Type", {list: "job-types", size: 8}),
    text("name", "Name", {size: 16}),
    text("schedule_id", "Schedule id", {size: 36}),
    h("label", {}, "Due from (your time)", h("input", {type: "datetime-local", step: 1, name: "execute_after", value: localOf(filters.execute_after)})),
    h("label", {}, "to", h("input", {type: "datetime-local", step: 1, name: "execute_before", value: localOf(filters.execute_before)})),
    h("button", {type: "submit", class: "primary"}, "Filter"),
    h("a", {href: "#/jobs", class: "button"}, "Clear")),
  h("datalist", {id: "job-types"}, TYPES.map((t) => h("option", {value: t}))));

  fill(main,
    h("h1", {}, "Jobs"),
    me.canWrite ? createForm(me) : null,
    filterForm,
    error,
    h("table", {class: "list", id: "jobs"},
      h("thead", {}, h("tr", {}, h("th", {}, "Name"), h("th", {}, "Type"), h("th", {}, "Status"),
        h("th", {}, "Due (UTC)"), h("th", {}, "Attempts"), h("th", {}, ""), me.all_tenants ? h("th", {}, "Tenant") : null)),
      list.rows),
    list.pager);
  list.load();
  return subscribe({}, throttle(list.load, 1000));
}

function createForm(me) {
  const error = h("p", {class: "error", id: "create-error", role: "alert"});
  const types = TYPES.filter((t) => t !== "shell" || me.isAdmin);
  const form = h("form", {id: "create-job", class: "card", onsubmit: async (event) => {
    event.preventDefault();
    const data = new FormData(form);
    const body = {name: data.get("name"), type: data.get("type")};
    try {
      body.payload = JSON.parse(data.get("payload") || "{}");
    } catch (failure) {
      fill(error, `payload: not valid JSON (${failure.message})`);
      return;
    }
    const at = isoOf(data.get("execute_at"));
    if (at) body.execute_at = at;
    else body.delay_seconds = Number(data.get("delay_seconds") || 0);
    if (data.get("max_retries") !== "") body.max_retries = Number(data.get("max_retries"));
    try {
      const job = await api("/api/jobs", {method: "POST", body});
      location.hash = `#/jobs/${job.id}`;
    } catch (failure) {
      fill(error, failure.message);
    }
  }},
  h("h2", {}, "New job"),
  h("div", {class: "row"},
    h("label", {}, "Name", h("input", {name: "name", required: true, maxlength: 200, size: 18})),
    h("label", {}, "Type", h("select", {name: "type"}, types.map((t) => h("option", {value: t}, t)))),
    h("label", {}, "In (seconds)", h("input", {name: "delay_seconds", type: "number", min: 0, step: "any", value: 5, size: 6})),
    h("label", {}, "or at", h("input", {name: "execute_at", type: "datetime-local", step: 0.001})),
    h("label", {}, "Max retries", h("input", {name: "max_retries", type: "number", min: 0, max: 10, value: "", size: 4}))),
  h("label", {class: "wide"}, "Payload (JSON)", h("textarea", {name: "payload", rows: 3, spellcheck: false}, "{}")),
  h("div", {class: "actions"}, h("button", {type: "submit", class: "primary", id: "create-submit"}, "Create job")),
  error);
  return h("details", {class: "create", id: "create-details"}, h("summary", {}, "New job…"), form);
}
