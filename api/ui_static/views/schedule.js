// One schedule: its definition, next fire times (preview), on-time figures, pause/resume.

import {api} from "../api.js";
import {badge, duration, fieldTable, fill, h, pretty, when} from "../dom.js";
import {subscribe, throttle} from "../live.js";
import {onTime, pauseButton, timingOf} from "./schedules.js";

export function scheduleView({me, main}, scheduleId) {
  const head = h("div");
  const error = h("p", {class: "error", role: "alert"});
  const body = h("div");
  const path = `/api/schedules/${encodeURIComponent(scheduleId)}`;

  async function load() {
    try {
      const [schedule, preview] = await Promise.all([api(path), api(`${path}/preview`, {query: {count: 10}})]);
      fill(error);
      render(schedule, preview.items);
    } catch (failure) {
      fill(error, failure.status === 404 ? `No schedule ${scheduleId} (or not yours to see).` : failure.message);
    }
  }

  function render(schedule, fires) {
    fill(head, h("h1", {}, h("span", {}, schedule.name || schedule.id), " ",
      schedule.paused ? h("span", {class: "badge s-paused"}, "PAUSED") : h("span", {class: "badge s-active"}, "ACTIVE")),
    h("div", {class: "actions"}, pauseButton(me, schedule, load, (failure) => fill(error, failure.message))));
    const late = schedule.on_time?.lateness_ms || {};
    const byStatus = Object.entries(schedule.on_time?.by_status || {});
    fill(body,
      fieldTable([
        ["id", h("code", {}, schedule.id)],
        ["when", timingOf(schedule)],
        ["next fire", schedule.paused ? "paused" : when(schedule.next_fire_at)],
        ["starts / ends", `${when(schedule.start_at)} / ${when(schedule.end_at)}`],
        ["policies", `catch-up ${schedule.catchup_policy} · overlap ${schedule.overlap_policy} · DST gap ${schedule.dst_policy?.gap}, fold ${schedule.dst_policy?.fold} · jitter ${schedule.jitter_seconds} s`],
        ["last occurrence", schedule.last_occurrence ? [badge(schedule.last_occurrence.status), " ",
          h("a", {href: schedule.last_occurrence.kind === "workflow" ? `#/workflows/${schedule.last_occurrence.id}`
            : `#/jobs/${schedule.last_occurrence.id}`}, when(schedule.last_occurrence.scheduled_for))] : null],
        ["occurrences", schedule.workflow
          ? h("a", {href: `#/workflows?schedule_id=${encodeURIComponent(schedule.id)}`, id: "occurrences"}, "list its workflows")
          : h("a", {href: `#/jobs?schedule_id=${encodeURIComponent(schedule.id)}`, id: "occurrences"}, "list its jobs")],
        schedule.workflow ? ["workflow", pretty(schedule.workflow)] : ["job", pretty(schedule.job)],
      ]),
      h("h2", {}, "On time"),
      h("p", {id: "on-time"}, onTime(schedule.on_time)),
      fieldTable([
        ["by outcome", byStatus.length ? byStatus.map(([status, n]) => h("span", {class: "pair"}, badge(status), ` ${n} `)) : "—"],
        ["lateness p50", duration(late.p50)], ["lateness p99", duration(late.p99)], ["lateness max", duration(late.max)],
        ["measured", late.measured ?? 0],
      ]),
      h("h2", {}, "Next fire times"),
      h("table", {class: "list", id: "preview"},
        h("thead", {}, h("tr", {}, h("th", {}, "UTC"), h("th", {}, `Local (${schedule.timezone})`), h("th", {}, "Note"))),
        h("tbody", {}, fires.map((fire) => h("tr", {}, h("td", {class: "time"}, when(fire.at)),
          h("td", {class: "time"}, fire.local), h("td", {}, fire.note || ""))))));
  }

  fill(main, h("p", {}, h("a", {href: "#/schedules"}, "← Schedules")), head, error, body);
  load();
  const stopLive = subscribe({schedule_id: scheduleId}, throttle(load, 1000), {pollMs: 5000});
  const ticker = setInterval(load, 15000);
  return () => {
    stopLive();
    clearInterval(ticker);
  };
}
