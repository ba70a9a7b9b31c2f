// Building the page: every value goes in as text (textContent), never as HTML, so job names,
// payloads and errors (user input) cannot inject markup or script.

/** An element: h("a", {href: "#/x", class: "c", onclick: fn}, "text", child, [more]). */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") {
      el.addEventListener(name.slice(2), value);
    } else if (name === "class") {
      el.className = value;
    } else if (value === true) {
      el.setAttribute(name, "");
    } else {
      el.setAttribute(name, String(value));
    }
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === undefined || child === null || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** Replace everything in ``el`` by ``children``. */
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

/** An ISO time shown in UTC with milliseconds ("2026-11-24 13:05:07.250"), or "—". */
export function when(iso) {
  if (!iso) return "—";
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return String(iso);
  return d.toISOString().replace("T", " ").replace("Z", "");
}

/** A duration in ms, readable: "12 ms", "3.20 s", "4 min 2 s". */
export function duration(ms) {
  if (ms === null || ms === undefined || Number.isNaN(ms)) return "—";
  const abs = Math.abs(ms);
  let text;
  if (abs < 1000) text = `${abs.toFixed(abs < 10 ? 1 : 0)} ms`;
  else if (abs < 60000) text = `${(abs / 1000).toFixed(2)} s`;
  else text = `${Math.floor(abs / 60000)} min ${Math.round((abs % 60000) / 1000)} s`;
  return ms < 0 ? `-${text}` : text;
}

/** Milliseconds from ``a`` to ``b`` (ISO strings), or null. */
export function between(a, b) {
  if (!a || !b) return null;
  return new Date(b).getTime() - new Date(a).getTime();
}

/** A status badge. */
export function badge(status) {
  return h("span", {class: `badge s-${String(status || "").toLowerCase()}`, "data-status": status}, status || "—");
}

/** JSON, pretty, as text. */
export function pretty(value) {
  return h("pre", {class: "json"}, value === undefined ? "" : JSON.stringify(value, null, 2));
}

/** A two-column table of label → value (value: text or a node). */
export function fieldTable(rows) {
  return h("table", {class: "fields"}, h("tbody", {}, rows.map(([label, value]) =>
    h("tr", {}, h("th", {}, label), h("td", {}, value ?? "—")))));
}
