// Every data call: fetch with the signed-in credential in the Authorization header, so each
// datum passes the API's own authentication, roles and tenant scoping.

const KEY = "chronoq.credential";

export function credential() {
  return sessionStorage.getItem(KEY);
}

export function setCredential(value) {
  if (value) sessionStorage.setItem(KEY, value);
  else sessionStorage.removeItem(KEY);
}

export function authHeaders() {
  const value = credential();
  return value ? {Authorization: `Bearer ${value}`} : {};
}

/** An API refusal: ``status`` and the API's error body ({code, status, message, errors}). */
export class ApiError extends Error {
  constructor(status, body) {
    super(describe(status, body));
    this.status = status;
    this.body = body;
  }
}

/** "message — field: reason; other: reason" from the API's error shape. */
function describe(status, body) {
  if (!body || typeof body !== "object") return `HTTP ${status}`;
  const parts = [];
  const walk = (value, path) => {
    if (Array.isArray(value)) {
      if (value.every((v) => typeof v === "string")) parts.push(`${path}: ${value.join(" ")}`);
      else value.forEach((v, i) => walk(v, `${path}[${i}]`));
    } else if (value && typeof value === "object") {
      for (const [k, v] of Object.entries(value)) walk(v, path ? `${path}.${k}` : k);
    } else if (value !== undefined) {
      parts.push(`${path}: ${value}`);
    }
  };
  // Errors are keyed by location (json, query, headers) first; the field is what matters.
  for (const fields of Object.values(body.errors || {})) walk(fields, "");
  const message = body.message || body.status || `HTTP ${status}`;
  return parts.length ? `${message} — ${parts.join("; ")}` : message;
}

/** Listeners told when the API answers 401 (the credential is gone or revoked). */
const unauthorized = new Set();
export function onUnauthorized(listener) {
  unauthorized.add(listener);
}

/** Call the API: api("/api/jobs", {query: {status: ["FAILED"]}, method, body}). */
export async function api(path, {method = "GET", body, query} = {}) {
  const url = new URL(path, location.origin);
  for (const [name, value] of Object.entries(query || {})) {
    for (const one of Array.isArray(value) ? value : [value]) {
      if (one !== undefined && one !== null && one !== "") url.searchParams.append(name, one);
    }
  }
  const headers = {Accept: "application/json", ...authHeaders()};
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(url, {
    method, headers, cache: "no-store", credentials: "omit",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (response.status === 204) return null;
  let data = null;
  try {
    data = await response.json();
  } catch {
    data = null;
  }
  if (!response.ok) {
    if (response.status === 401) unauthorized.forEach((listener) => listener());
    throw new ApiError(response.status, data);
  }
  return data;
}
