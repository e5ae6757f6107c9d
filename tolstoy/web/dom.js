// Small DOM and formatting helpers. Text always goes in as text (never as HTML).

/**
 * h("a.link", {href: "#/x", onclick: fn, dataset: {id: 1}}, "text", child, [more])
 * The tag may carry ".class" and "#id" suffixes. Attributes named on* become listeners;
 * null/undefined/false attributes and children are skipped.
 */
export function h(spec, attrs = {}, ...children) {
  const [tagAndId, ...classes] = spec.split(".");
  const [tag, id] = tagAndId.split("#");
  const el = document.createElement(tag || "div");
  if (id) el.id = id;
  if (classes.length) el.className = classes.join(" ");
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") {
      el.addEventListener(key.slice(2), value);
    } else if (key === "dataset") {
      Object.assign(el.dataset, value);
    } else if (key === "class") {
      el.className = [el.className, value].filter(Boolean).join(" ");
    } else if (key in el && typeof value !== "string") {
      el[key] = value;
    } else {
      el.setAttribute(key, value === true ? "" : String(value));
    }
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else el.append(child instanceof Node ? child : String(child));
  }
}

/** Replace every child of ``el``. */
export function replace(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

const STATUS_LABELS = {
  queued: "Queued",
  running: "Running",
  waiting: "Waiting",
  paused: "Paused",
  completed: "Completed",
  failed: "Failed",
  cancelled: "Cancelled",
  pending: "Pending",
  retrying: "Retrying",
  skipped: "Skipped",
  granted: "Granted",
  denied: "Denied",
  expired: "Expired",
};

/** A status badge: colour and icon for the eye, the word for everyone. */
export function badge(status) {
  return h(`span.badge.status-${status}`, { dataset: { status } }, STATUS_LABELS[status] || status);
}

export const TERMINAL = new Set(["completed", "failed", "cancelled"]);

/** "850 ms", "3.4 s", "4 min 05 s", "2 h 03 min". */
export function duration(ms) {
  if (ms === null || ms === undefined || Number.isNaN(ms)) return "—";
  if (ms < 0) ms = 0;
  if (ms < 1000) return `${Math.round(ms)} ms`;
  if (ms < 60_000) return `${(ms / 1000).toFixed(1)} s`;
  const s = Math.floor(ms / 1000);
  if (s < 3600) return `${Math.floor(s / 60)} min ${String(s % 60).padStart(2, "0")} s`;
  return `${Math.floor(s / 3600)} h ${String(Math.floor((s % 3600) / 60)).padStart(2, "0")} min`;
}

export function toMs(iso) {
  if (!iso) return null;
  const ms = Date.parse(iso);
  return Number.isNaN(ms) ? null : ms;
}

/** A <time> with a short local form and the full timestamp on hover. */
export function time(iso) {
  const ms = toMs(iso);
  if (ms === null) return h("span.muted", {}, "—");
  const d = new Date(ms);
  const today = new Date().toDateString() === d.toDateString();
  const text = today ? d.toLocaleTimeString() : d.toLocaleString();
  return h("time", { datetime: iso, title: d.toISOString() }, text);
}

/** "in 4 s" / "4 s ago". */
export function relative(ms, now = Date.now()) {
  const delta = ms - now;
  return delta >= 0 ? `in ${duration(delta)}` : `${duration(-delta)} ago`;
}

export function json(value) {
  return JSON.stringify(value, null, 2);
}

/** Shorten an id for display, keeping its type prefix and last characters. */
export function shortId(id) {
  return id && id.length > 22 ? `${id.slice(0, 10)}…${id.slice(-8)}` : id;
}

/** A progress bar (role=progressbar) whose value and label can be updated later. */
export function progressBar(label) {
  const fill = h("div.bar-fill");
  const bar = h(
    "div.bar",
    { role: "progressbar", "aria-label": label, "aria-valuemin": "0", "aria-valuemax": "100" },
    fill,
  );
  bar.update = (percent, text) => {
    const p = Math.max(0, Math.min(100, Number(percent) || 0));
    fill.style.width = `${p}%`;
    bar.setAttribute("aria-valuenow", String(Math.round(p)));
    bar.setAttribute("aria-valuetext", text || `${Math.round(p)}%`);
  };
  bar.update(0);
  return bar;
}
