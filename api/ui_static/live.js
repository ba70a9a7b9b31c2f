// Live updates from GET /api/events (text/event-stream). EventSource cannot send an
// Authorization header, so the stream is read with fetch() and parsed here; when it ends (the
// server closes streams after a while) or breaks, it is opened again with Last-Event-ID, so no
// event is missed. Without an events endpoint (404) the page polls instead.

import {authHeaders} from "./api.js";

// One stream per tab, whatever the page: an API process serves only a few streams at a time
// (CHRONOQ_EVENTS_MAX_STREAMS), and a closed stream frees its slot only when the server next
// writes to it. Pages subscribe with a filter, matched here.

const listeners = new Set();
/** The events seen per job since the tab opened (the job page's dispatch times), bounded. */
const byJob = new Map();
const MAX_JOBS = 2000;
let connection = null;  // {controller, open: bool, mode: "live" | "polling" | "connecting"}

function show() {
  const el = document.getElementById("live");
  if (!el) return;
  const mode = connection ? connection.mode : "off";
  el.dataset.state = mode;
  el.title = {live: "live: server-sent events", polling: "updating by polling", connecting: "connecting…",
    off: "not live"}[mode];
}

/** Parses an event stream, chunk by chunk (the WHATWG rules: fields, comments, blank line ends). */
export class StreamParser {
  constructor(onEvent) {
    this.onEvent = onEvent;
    this.buffer = "";
    this.reset();
    this.lastId = null;
    this.retry = null;
  }

  reset() {
    this.type = "";
    this.data = [];
    this.id = null;
  }

  push(text) {
    this.buffer += text;
    const lines = this.buffer.split(/\r\n|\r|\n/);
    this.buffer = lines.pop();  // an unfinished line waits for the next chunk
    for (const line of lines) this.line(line);
  }

  line(line) {
    if (line === "") {
      if (this.id !== null) this.lastId = this.id;
      if (this.data.length) this.onEvent({type: this.type || "message", data: this.data.join("\n"), id: this.lastId});
      this.reset();
      return;
    }
    if (line.startsWith(":")) return;  // a comment (keep-alive)
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "event") this.type = value;
    else if (field === "data") this.data.push(value);
    else if (field === "id" && !value.includes("\0")) this.id = value;
    else if (field === "retry" && /^\d+$/.test(value)) this.retry = Number(value);
  }
}

function matches(filter, event) {
  if (filter.job_id && filter.job_id !== event.job_id) return false;
  if (filter.schedule_id && filter.schedule_id !== event.schedule_id) return false;
  if (filter.status && filter.status.length && !filter.status.includes(event.status)) return false;
  return true;
}

function remember(event) {
  let list = byJob.get(event.job_id);
  if (!list) {
    if (byJob.size >= MAX_JOBS) byJob.delete(byJob.keys().next().value);
    byJob.set(event.job_id, list = []);
  }
  // At least once, maybe out of order: deduplicated by the event's own id.
  if (!list.some((e) => e.id === event.id)) list.push(event);
}

/** The events of ``jobId`` this tab has seen, oldest first. */
export function seen(jobId) {
  return [...(byJob.get(jobId) || [])].sort((a, b) => a.id - b.id);
}

function notify(event) {
  for (const {filter, onChange} of [...listeners]) {
    if (event === null || matches(filter, event)) onChange(event);
  }
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function connect(conn) {
  let lastId = null;
  let failures = 0;
  while (connection === conn) {
    const parser = new StreamParser((event) => {
      if (event.type !== "job") return;
      let data;
      try {
        data = JSON.parse(event.data);
      } catch (error) {
        console.warn("unreadable event", error);
        return;
      }
      remember(data);
      notify(data);
    });
    try {
      const headers = {Accept: "text/event-stream", ...authHeaders()};
      if (lastId !== null) headers["Last-Event-ID"] = lastId;
      const response = await fetch("/api/events", {headers, signal: conn.controller.signal, cache: "no-store",
        credentials: "omit"});
      if (response.status === 401 || response.status === 403) {
        // The credential is no longer accepted: retrying would only count as failed
        // authentications; the pages' own calls take the user back to the sign-in.
        conn.mode = "off";
        show();
        return;
      }
      if (response.status === 404) {
        conn.mode = "polling";  // an API without the events endpoint: pages read again on a timer
        show();
        return;
      }
      if (!response.ok || !response.body) throw new Error(`HTTP ${response.status}`);
      conn.mode = "live";
      show();
      failures = 0;
      notify(null);  // whatever happened while no stream was open
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      for (;;) {
        const {value, done} = await reader.read();
        if (done) break;
        parser.push(value);
        if (parser.lastId !== null) lastId = parser.lastId;
      }
    } catch (error) {
      if (connection !== conn) return;
      failures += 1;
    }
    if (parser.lastId !== null) lastId = parser.lastId;
    if (connection !== conn) return;
    conn.mode = "connecting";
    show();
    // The stream ended (by design, after a while) or failed: open it again, resuming after
    // the last id; after a failure (503: the process's streams are all taken) wait longer.
    await sleep(failures ? Math.min(10000, 500 * 2 ** failures) : Math.min(parser.retry ?? 200, 1000));
  }
}

/**
 * Calls ``onChange(event)`` for each job event matching ``filter`` ({job_id, schedule_id,
 * status: [...]}), and ``onChange(null)`` when the stream (re)opens and, while no stream is
 * open, every ``pollMs`` (something may have changed: read again). Returns the unsubscribe.
 */
export function subscribe(filter, onChange, {pollMs = 2000} = {}) {
  const entry = {filter: filter || {}, onChange};
  listeners.add(entry);
  if (connection === null) {
    connection = {controller: new AbortController(), mode: "connecting"};
    show();
    connect(connection);
  }
  const timer = setInterval(() => {
    if (!connection || connection.mode !== "live") onChange(null);
  }, pollMs);
  return () => {
    listeners.delete(entry);
    clearInterval(timer);
  };
}

/** Close the stream (signed out: the next subscription opens one with the new credential). */
export function disconnect() {
  if (connection) connection.controller.abort();
  connection = null;
  byJob.clear();
  show();
}

/** ``fn`` at most once per ``ms``, the last call always honoured. */
export function throttle(fn, ms) {
  let timer = null;
  let last = 0;
  return (...args) => {
    if (timer !== null) return;
    const wait = Math.max(0, last + ms - Date.now());
    timer = setTimeout(() => {
      timer = null;
      last = Date.now();
      fn(...args);
    }, wait);
  };
}
