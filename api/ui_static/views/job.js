// One job: its fields, its attempts as a timeline, output and error, and the actions its
// status and the caller's role allow (the API checks them again).

import {api} from "../api.js";
import {badge, between, duration, fieldTable, fill, h, pretty, when} from "../dom.js";
import {seen, subscribe, throttle} from "../live.js";

const CANCELLABLE = ["SCHEDULED", "QUEUED", "RETRYING"];
const TRIGGERABLE = ["SCHEDULED", "QUEUED"];
const FINISHED = ["SUCCESS", "FAILED", "CANCELLED", "SKIPPED"];

export function jobView({me, main}, jobId) {
  const head = h("div", {class: "job-head"});
  const actions = h("div", {class: "actions", id: "job-actions"});
  const message = h("p", {class: "notice", id: "action-message", role: "status"});
  const fields = h("section", {id: "job-fields"});
  const timeline = h("section", {id: "timeline"});
  const results = h("section", {id: "job-results"});

  fill(main, h("p", {}, h("a", {href: "#/jobs"}, "← Jobs")), head, actions, message, fields,
    h("h2", {}, "Attempts"), timeline, results);

  async function load() {
    try {
      const [job, attempts] = await Promise.all([
        api(`/api/jobs/${encodeURIComponent(jobId)}`),
        api(`/api/jobs/${encodeURIComponent(jobId)}/attempts`),
      ]);
      render(job, attempts.items);
    } catch (failure) {
      fill(head, h("h1", {}, "Job"));
      fill(message, failure.status === 404 ? `No job ${jobId} (or not yours to see).` : failure.message);
    }
  }

  function render(job, attempts) {
    fill(head, h("h1", {}, h("span", {class: "job-title"}, job.name), " ", badge(job.status)),
      job.workflow_id ? h("p", {id: "job-workflow"}, h("a", {href: `#/workflows/${encodeURIComponent(job.workflow_id)}`},
        `task ${job.task_key} of its workflow`)) : null);
    main.dataset.jobStatus = job.status;
    fill(actions, buttons(job));
    fill(fields, fieldTable([
      ["id", h("code", {}, job.id)],
      ["tenant", job.tenant],
      ["type", job.type],
      ["status", badge(job.status)],
      ["due (execute_at)", when(job.execute_at)],
      ["originally due", job.original_execute_at ? when(job.original_execute_at) : null],
      ["schedule", job.schedule_id ? h("a", {href: `#/schedules/${job.schedule_id}`}, job.schedule_id) : null],
      ["scheduled for", job.scheduled_for ? when(job.scheduled_for) : null],
      ["attempts", `${job.attempts} (max retries ${job.max_retries}; runs ${job.runs})`],
      ["timeout", `${job.timeout_seconds} s`],
      ["priority", job.priority],
      ["misfire grace", job.misfire_grace_seconds === null ? null : `${job.misfire_grace_seconds} s`],
      ["created", when(job.created_at)],
      ["started", when(job.started_at)],
      ["finished", when(job.finished_at)],
      ["next attempt", job.next_attempt_at ? when(job.next_attempt_at) : null],
      ["executor", job.executor],
      ["payload", pretty(job.payload)],
      ["metadata", pretty(job.metadata)],
    ]));
    fill(timeline, attempts.length ? h("ol", {class: "attempts"}, attempts.map((a, i) => attemptItem(job, a, attempts[i - 1])))
      : h("p", {class: "muted", id: "no-attempts"}, "No attempt yet."));
    fill(results,
      h("h2", {}, "Output"), job.output === null || job.output === undefined ? h("p", {class: "muted"}, "—") : pretty(job.output),
      h("h2", {}, "Error"), job.error ? h("pre", {class: "error-text", id: "job-error"}, job.error) : h("p", {class: "muted"}, "—"));
  }

  /** What the events this tab saw say about attempt ``n``: when it was dispatched (the last
   * QUEUED before it started; the API keeps no dispatch time) and, for a rerun's first
   * attempt, when it was due (the rerun made it SCHEDULED for now). */
  function fromEvents(n, startedAt) {
    const found = {sent: null, due: null};
    for (const event of seen(jobId)) {
      if (event.attempt + 1 !== n) continue;
      if (event.status === "QUEUED" && (!startedAt || Date.parse(event.at) <= Date.parse(startedAt))) found.sent = event.at;
      if (event.status === "SCHEDULED" && FINISHED.includes(event.previous_status)) found.due = event.at;
    }
    return found;
  }

  function attemptItem(job, attempt, before) {
    // The due time is known for a job's very first attempt (its execute_at) and a rerun's
    // first one seen live; a retry is due after its backoff, shown as the wait after the
    // attempt before.
    const known = fromEvents(attempt.attempt, attempt.started_at);
    const due = attempt.attempt === 1 && job.runs === 1 ? job.execute_at : known.due;
    const sent = known.sent;
    const steps = [
      step("scheduled", due, due ? "due" : attempt.attempt === 1 ? "due time of an earlier run (not kept)"
        : "due after a backoff, or a rerun not seen by this page (not kept)"),
      step("dispatched", sent, sent ? lateness(due, sent, "before due", "after due") : "not seen by this page"),
      step("started", attempt.started_at, due ? lateness(due, attempt.started_at, "early", "late")
        : before && before.finished_at ? `${duration(between(before.finished_at, attempt.started_at))} after attempt ${before.attempt} ended` : ""),
      step("finished", attempt.finished_at, attempt.finished_at ? `took ${duration(between(attempt.started_at, attempt.finished_at))}` : "running"),
    ];
    return h("li", {class: "attempt", "data-attempt": attempt.attempt, "data-status": attempt.status},
      h("div", {class: "attempt-head"}, h("strong", {}, `Attempt ${attempt.attempt}`), " ", badge(attempt.status),
        attempt.executor ? h("span", {class: "muted"}, ` on ${attempt.executor}`) : null),
      h("ol", {class: "steps"}, steps),
      attempt.error ? h("pre", {class: "error-text"}, attempt.error) : null,
      attempt.output !== null && attempt.output !== undefined ? pretty(attempt.output) : null);
  }

  function buttons(job) {
    if (!me.canWrite || (job.type === "shell" && !me.isAdmin)) return [];
    const act = (label, id, method, path, done) => h("button", {type: "button", id, onclick: async (event) => {
      event.target.disabled = true;
      try {
        const result = await api(path, {method});
        fill(message, done(result));
      } catch (failure) {
        fill(message, failure.message);
      }
      load();
    }}, label);
    const base = `/api/jobs/${encodeURIComponent(job.id)}`;
    return [
      CANCELLABLE.includes(job.status) ? act("Cancel", "cancel", "DELETE", base, () => "Cancelled.") : null,
      TRIGGERABLE.includes(job.status) ? act("Run now", "trigger", "POST", `${base}/trigger`, () => "Triggered: it runs now.") : null,
      FINISHED.includes(job.status) ? act("Rerun", "rerun", "POST", `${base}/rerun`, (j) => `Rerun: run ${j.runs} starts now.`) : null,
    ];
  }

  const refresh = throttle(load, 300);
  load();
  return subscribe({job_id: jobId}, () => refresh());
}

function step(name, at, note) {
  return h("li", {class: `step ${at ? "done" : "todo"}`, "data-step": name},
    h("span", {class: "step-name"}, name), h("span", {class: "time"}, when(at)), h("span", {class: "muted"}, note));
}

/** "12 ms late" / "3.00 s before due" from ``due`` to ``at``. */
function lateness(due, at, ahead, behind) {
  const ms = between(due, at);
  if (ms === null) return "";
  return ms < 0 ? `${duration(-ms)} ${ahead}` : `${duration(ms)} ${behind}`;
}
