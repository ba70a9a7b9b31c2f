// Overview: counts by status, jobs due in the next minutes, lateness, dead letters; live.

import {api} from "../api.js";
import {badge, duration, fill, h, when} from "../dom.js";
import {subscribe, throttle} from "../live.js";

export function overviewView({main}) {
  const body = h("div", {id: "overview"});
  const error = h("p", {class: "error", role: "alert"});
  const stamp = h("p", {class: "muted", id: "overview-at"});

  async function load() {
    try {
      render(await api("/api/overview", {query: {due_minutes: 10, lateness_minutes: 5}}));
      fill(error);
    } catch (failure) {
      fill(error, failure.message);
    }
  }

  function render(o) {
    const most = Math.max(1, ...o.due.map((m) => m.count));
    const dead = o.dead_letters || {};
    fill(stamp, `as of ${when(o.at)} UTC`);
    fill(body,
      h("section", {class: "cards"},
        card("Jobs", o.total, "total", "total"),
        card("Overdue", o.overdue, "SCHEDULED past their time", "overdue"),
        card("Lateness p50", duration(o.lateness_ms.p50), `runs due in the last ${o.lateness_minutes} min`, "p50"),
        card("Lateness p99", duration(o.lateness_ms.p99), `${o.lateness_ms.measured} measured · max ${duration(o.lateness_ms.max)}`, "p99"),
        card("Dead letters", dead.count ?? "—", dead.note || `messages in ${dead.topic}`, "dead-letters")),
      h("h2", {}, "By status"),
      h("section", {class: "cards statuses", id: "by-status"}, Object.entries(o.by_status).map(([status, n]) =>
        h("a", {class: "card small", href: `#/jobs?status=${status}`, "data-status": status},
          badge(status), h("span", {class: "figure"}, n)))),
      h("h2", {}, "Due in the next minutes"),
      h("table", {class: "bars", id: "due"}, h("tbody", {}, o.due.map((minute) => {
        const bar = h("div", {class: "bar"});
        bar.style.width = `${(100 * minute.count) / most}%`;  // CSSOM: allowed by the CSP, unlike style=""
        return h("tr", {}, h("td", {class: "time"}, when(minute.start).slice(11, 16)),
          h("td", {class: "bar-cell"}, bar), h("td", {class: "num"}, minute.count));
      }))));
  }

  fill(main, h("h1", {}, "Overview"), stamp, error, body);
  load();
  const stopLive = subscribe({}, throttle(load, 1000), {pollMs: 3000});
  const ticker = setInterval(load, 5000);  // due counts and windows move with the clock
  return () => {
    stopLive();
    clearInterval(ticker);
  };
}

function card(title, figure, note, id) {
  return h("div", {class: "card small", id: `card-${id}`},
    h("div", {class: "card-title"}, title), h("div", {class: "figure"}, figure), h("div", {class: "muted"}, note));
}
