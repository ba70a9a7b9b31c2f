// Schedules: the list with next fire times, on-time figures and pause/resume.

import {api} from "../api.js";
import {badge, duration, fill, h, when} from "../dom.js";
import {pagedList} from "../paging.js";
import {subscribe, throttle} from "../live.js";

/** "cron 30 2 * * * (Europe/Berlin)" or "every 90 s". */
export function timingOf(schedule) {
  if (schedule.cron) return `cron ${schedule.cron} (${schedule.timezone})`;
  return `every ${schedule.interval_seconds} s`;
}

/** Pause or resume ``schedule``; returns the schedule as the API answered. */
export function pauseButton(me, schedule, onDone, onError) {
  if (!me.canWrite || (schedule.job && schedule.job.type === "shell" && !me.isAdmin)) return null;
  const verb = schedule.paused ? "resume" : "pause";
  return h("button", {type: "button", class: verb, "data-action": verb, onclick: async (event) => {
    event.target.disabled = true;
    try {
      onDone(await api(`/api/schedules/${encodeURIComponent(schedule.id)}/${verb}`, {method: "POST"}));
    } catch (failure) {
      onError(failure);
    }
  }}, schedule.paused ? "Resume" : "Pause");
}

export function onTime(figures) {
  if (!figures) return "…";
  const late = figures.lateness_ms || {};
  if (!figures.occurrences) return "no finished occurrence yet";
  return `${figures.occurrences} finished · p50 ${duration(late.p50)} · p99 ${duration(late.p99)}`;
}

const FIGURES_MS = 15000;

export function schedulesView({me, main}) {
  const figures = new Map();  // schedule id → {at, onTime}
  const error = h("p", {class: "error", role: "alert"});
  // The on-time figures are in each schedule's own answer (not in the list's): read again at
  // most every FIGURES_MS per schedule, however often the list is.
  function readFigures(items) {
    for (const schedule of items) {
      const known = figures.get(schedule.id);
      if (known && Date.now() - known.at < FIGURES_MS) {
        showFigures(schedule.id, known.onTime);
        continue;
      }
      api(`/api/schedules/${encodeURIComponent(schedule.id)}`).then((full) => {
        figures.set(full.id, {at: Date.now(), onTime: full.on_time});
        showFigures(full.id, full.on_time);
      }).catch(() => {});
    }
  }
  const list = pagedList({path: "/api/schedules", row: (schedule) => row(schedule), columns: 7,
    empty: "No schedules yet.", noun: "schedules", error, onPage: readFigures});
  const {rows, load} = list;

  function showFigures(id, figuresOf) {
    const cell = rows.querySelector(`tr[data-schedule-id="${CSS.escape(id)}"] .on-time`);
    if (cell) fill(cell, onTime(figuresOf));
  }

  const row = (schedule) => h("tr", {"data-schedule-id": schedule.id},
    h("td", {}, h("a", {href: `#/schedules/${encodeURIComponent(schedule.id)}`, class: "schedule-name"},
      schedule.name || schedule.job?.name || schedule.id)),
    h("td", {}, timingOf(schedule)),
    h("td", {class: "time next-fire"}, schedule.paused ? "paused" : when(schedule.next_fire_at)),
    h("td", {}, schedule.last_occurrence ? [badge(schedule.last_occurrence.status), " ",
      h("a", {href: `#/jobs/${schedule.last_occurrence.id}`}, when(schedule.last_occurrence.scheduled_for))] : "—"),
    h("td", {class: "on-time"}, "…"),
    h("td", {}, pauseButton(me, schedule, load, (failure) => fill(error, failure.message))),
    me.all_tenants ? h("td", {}, schedule.tenant) : null);

  fill(main, h("h1", {}, "Schedules"),
    h("p", {class: "muted"}, "Create and change schedules through the API (POST /api/schedules); here you follow them, pause and resume them."),
    error,
    h("table", {class: "list", id: "schedules"},
      h("thead", {}, h("tr", {}, h("th", {}, "Name"), h("th", {}, "When"), h("th", {}, "Next fire (UTC)"),
        h("th", {}, "Last occurrence"), h("th", {}, "On time"), h("th", {}, ""), me.all_tenants ? h("th", {}, "Tenant") : null)),
      rows),
    list.pager);
  load();
  const stopLive = subscribe({}, throttle(load, 2000), {pollMs: 5000});
  const ticker = setInterval(load, 15000);  // next fire times move on by themselves
  return () => {
    stopLive();
    clearInterval(ticker);
  };
}
