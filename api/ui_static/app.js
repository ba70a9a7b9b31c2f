// The dashboard's entry: sign-in, the caller's role (GET /api/me), and the hash router.

import {api, ApiError, credential, onUnauthorized, setCredential} from "./api.js";
import {fill, h} from "./dom.js";
import {disconnect} from "./live.js";
import {jobsView} from "./views/jobs.js";
import {jobView} from "./views/job.js";
import {overviewView} from "./views/overview.js";
import {schedulesView} from "./views/schedules.js";
import {scheduleView} from "./views/schedule.js";
import {workflowsView} from "./views/workflows.js";
import {workflowView} from "./views/workflow.js";

const main = document.getElementById("main");
const ROLES = {viewer: 1, writer: 2, admin: 3};

/** The signed-in caller, with what its role may do. */
let me = null;
/** Stops the current page's live updates. */
let leave = () => {};

function withPowers(who) {
  const rank = ROLES[who.role] || 0;
  return {...who, canWrite: rank >= ROLES.writer, isAdmin: rank >= ROLES.admin};
}

function route() {
  const raw = location.hash.replace(/^#/, "") || "/overview";
  const [path, search = ""] = raw.split("?");
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  return {parts, params: new URLSearchParams(search)};
}

function render() {
  leave();
  leave = () => {};
  if (!me) return;
  const {parts, params} = route();
  const section = parts[0] || "overview";
  for (const link of document.querySelectorAll("#nav a")) {
    link.classList.toggle("current", link.dataset.section === section);
  }
  const context = {me, main, params};
  let view;
  if (section === "jobs" && parts[1]) view = jobView(context, parts[1]);
  else if (section === "jobs") view = jobsView(context);
  else if (section === "schedules" && parts[1]) view = scheduleView(context, parts[1]);
  else if (section === "schedules") view = schedulesView(context);
  else if (section === "workflows" && parts[1]) view = workflowView(context, parts[1]);
  else if (section === "workflows") view = workflowsView(context);
  else view = overviewView(context);
  leave = typeof view === "function" ? view : () => {};
}

function showWho() {
  const who = document.getElementById("who");
  document.getElementById("nav").hidden = !me;
  document.getElementById("signout").hidden = !me || !me.auth_enabled;
  if (!me) {
    fill(who);
    return;
  }
  fill(who,
    h("span", {class: "tenant", title: "tenant"}, me.all_tenants ? `${me.tenant} (all tenants)` : me.tenant), " · ",
    h("span", {class: "role", "data-role": me.role}, me.role), " · ",
    h("span", {class: "subject muted"}, me.subject),
    me.auth_enabled ? null : h("span", {class: "warn"}, " · authentication is OFF"));
}

function signIn(message) {
  leave();
  leave = () => {};
  disconnect();
  me = null;
  showWho();
  const input = h("input", {type: "password", id: "credential", name: "credential", autocomplete: "off",
    placeholder: "cq_… API key or a JWT", required: true, size: 48});
  const error = h("p", {class: "error", id: "signin-error", role: "alert"}, message || "");
  const form = h("form", {id: "signin", class: "card narrow", onsubmit: async (event) => {
    event.preventDefault();
    setCredential(input.value.trim());
    try {
      await start();
    } catch (failure) {
      setCredential(null);
      fill(error, failure instanceof ApiError && failure.status === 401
        ? "That credential was refused: unknown, revoked or expired."
        : `Could not sign in: ${failure.message}`);
    }
  }},
  h("h1", {}, "Sign in"),
  h("p", {class: "muted"}, "Paste an API key (", h("code", {}, "chronoq keys create"), ") or a token. It is kept in this tab only (sessionStorage) and sent as an Authorization header with each call."),
  h("label", {for: "credential"}, "Credential"), input,
  h("div", {class: "actions"}, h("button", {type: "submit", class: "primary"}, "Sign in")),
  error);
  fill(main, form);
  input.focus();
}

async function start() {
  me = withPowers(await api("/api/me"));
  showWho();
  render();
}

document.getElementById("signout").addEventListener("click", () => {
  setCredential(null);
  signIn("Signed out.");
});
onUnauthorized(() => {
  if (me) {
    setCredential(null);
    signIn("The credential is no longer accepted; sign in again.");
  }
});
window.addEventListener("hashchange", render);

(async () => {
  try {
    await start();  // with a credential kept in this tab, or an API without authentication
  } catch (failure) {
    if (failure instanceof ApiError && failure.status === 401) {
      if (credential()) setCredential(null);
      signIn();
    } else {
      fill(main, h("p", {class: "error"}, `The API did not answer: ${failure.message}`));
    }
  }
})();
