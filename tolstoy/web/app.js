// The dashboard's entry point: who is signed in, the navigation, the live connection, the router.

import { api, onUnauthorized } from "./api.js";
import { h, replace } from "./dom.js";
import { Live, LiveState, subscribeTokens } from "./live.js";
import { mountApprovals } from "./views/approvals.js";
import { mountExecution } from "./views/execution.js";
import { mountExecutions } from "./views/executions.js";
import { mountFlows } from "./views/flows.js";

const CHANNELS = ["executions", "executions:*", "approvals"];
const ROUTES = [
  { pattern: /^#\/executions\/([\w-]+)$/, nav: "executions", mount: (el, m, ctx) => mountExecution(el, { id: m[1] }, ctx) },
  { pattern: /^#\/(executions)?(\?.*)?$/, nav: "executions", mount: (el, _m, ctx) => mountExecutions(el, ctx) },
  { pattern: /^#\/flows$/, nav: "flows", mount: (el, _m, ctx) => mountFlows(el, ctx) },
  { pattern: /^#\/approvals$/, nav: "approvals", mount: (el, _m, ctx) => mountApprovals(el, ctx) },
];

const main = document.getElementById("main");
const header = document.getElementById("header");
const toasts = document.getElementById("toasts");
let unmount = null;
let live = null;

/** A message in the toast region (role=alert for errors, status otherwise). */
export function toast(message, kind = "info") {
  const el = h(`div.toast.toast-${kind}`, { role: kind === "error" ? "alert" : "status" }, message);
  toasts.append(el);
  setTimeout(() => el.remove(), kind === "error" ? 8000 : 4000);
}

/** Flow names by id, fetched once and on demand. */
function flowNames() {
  const names = new Map();
  let loaded = null;
  const load = async () => {
    const page = await api.get("/api/v1/flows?limit=500");
    for (const f of page.items) names.set(f.id, f.name);
  };
  return async (id) => {
    if (!names.has(id)) {
      loaded = loaded || load().catch(() => {});
      await loaded;
    }
    if (!names.has(id)) {
      try {
        names.set(id, (await api.get(`/api/v1/flows/${encodeURIComponent(id)}`)).name);
      } catch {
        names.set(id, id);
      }
    }
    return names.get(id);
  };
}

/** The approvals channel, shared by the nav badge and the inbox: re-dispatched as DOM events. */
function approvalsFeed(liveConn) {
  const feed = new EventTarget();
  const pending = new Set();
  let lastId;
  const seen = new Set();
  feed.pending = pending;
  const publish = () => feed.dispatchEvent(new CustomEvent("change", { detail: { pending: pending.size } }));
  const refresh = async () => {
    try {
      const page = await api.get("/api/v1/approvals?status=pending&limit=500");
      pending.clear();
      for (const a of page.items) pending.add(a.id);
      publish();
    } catch {
      /* the badge waits for the next event */
    }
  };
  liveConn.subscribe("approvals", {
    since: () => lastId,
    onSubscribed: () => refresh(),
    onEvent: (event) => {
      if (seen.has(event.id)) return;
      seen.add(event.id);
      lastId = event.id;
      if (event.type === "approval.required") pending.add(event.approvalId);
      else if (event.type && event.type.startsWith("approval.")) pending.delete(event.approvalId);
      feed.dispatchEvent(new CustomEvent("event", { detail: event }));
      publish();
    },
  });
  refresh();
  return feed;
}

function renderHeader(me, ctx) {
  const links = [
    ["executions", "#/executions", "Executions"],
    ["flows", "#/flows", "Flows"],
    ["approvals", "#/approvals", "Approvals"],
  ];
  const count = h("span.count", { "aria-label": "pending approvals", hidden: true });
  ctx.approvals.addEventListener("change", (e) => {
    count.textContent = String(e.detail.pending);
    count.hidden = e.detail.pending === 0;
  });
  const nav = h(
    "nav",
    { "aria-label": "Main" },
    h("ul", {}, links.map(([key, href, text]) =>
      h("li", {}, h("a", { href, dataset: { nav: key } }, text, key === "approvals" ? count : null)),
    )),
  );
  const conn = h("span.conn", { role: "status", dataset: { state: live.state } }, "Connecting…");
  const labels = {
    [LiveState.IDLE]: "Connecting…",
    [LiveState.CONNECTING]: "Connecting…",
    [LiveState.OPEN]: "Live",
    [LiveState.RECONNECTING]: "Reconnecting…",
    [LiveState.CLOSED]: "Offline",
  };
  live.addEventListener("state", (e) => {
    conn.dataset.state = e.detail;
    conn.textContent = labels[e.detail];
  });
  const logout = h("button.link", { type: "button", onclick: signOut }, "Sign out");
  replace(
    header,
    h("a.brand", { href: "#/executions" }, "Tolstoy"),
    nav,
    h("div.who", {}, conn, h("span.user", { title: me.organization.id }, `${me.user.email} · ${me.organization.name}`), logout),
  );
}

async function signOut() {
  try {
    await api.post("/logout");
  } finally {
    signedOut("You have signed out.");
  }
}

function signedOut(message) {
  if (unmount) unmount();
  unmount = null;
  if (live) live.close();
  live = null;
  replace(header, h("span.brand", {}, "Tolstoy"));
  replace(
    main,
    h("section.notice", {},
      h("h1", {}, message || "You are not signed in"),
      h("p", {}, "Open the login link that ", h("code", {}, "tolstoy serve"), " printed (",
        h("code", {}, "Dashboard: http://…/login?token=…"), "). Each link works once."),
    ),
  );
}

function route(ctx) {
  const hash = location.hash || "#/executions";
  const found = ROUTES.map((r) => [r, hash.match(r.pattern)]).find(([, m]) => m);
  if (unmount) unmount();
  unmount = null;
  main.replaceChildren();
  for (const a of header.querySelectorAll("[data-nav]")) {
    if (found && a.dataset.nav === found[0].nav) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  if (!found) {
    replace(main, h("section.notice", {}, h("h1", {}, "Not found"), h("p", {}, h("a", { href: "#/executions" }, "Executions"))));
    return;
  }
  const [r, match] = found;
  unmount = r.mount(main, match, ctx) || null;
  const heading = main.querySelector("h1");
  if (heading) {
    heading.tabIndex = -1;
    heading.focus({ preventScroll: true });
  }
}

async function start() {
  let me;
  try {
    me = await api.get("/api/v1/me");
  } catch (err) {
    signedOut(err.status === 401 ? null : `Cannot reach Tolstoy: ${err.message}`);
    return;
  }
  onUnauthorized(() => signedOut("Your session has ended"));
  live = new Live({ token: subscribeTokens(api, CHANNELS) });
  window.tolstoyLive = live;  // for the console (and the end-to-end tests' reconnect check)
  const ctx = { api, live, me, toast, flowName: flowNames(), navigate: (hash) => { location.hash = hash; } };
  ctx.approvals = approvalsFeed(live);
  renderHeader(me, ctx);
  window.addEventListener("hashchange", () => route(ctx));
  route(ctx);
}

document.querySelector(".skip")?.addEventListener("click", (e) => {
  e.preventDefault();  // the hash belongs to the router
  main.focus();
});
start();
