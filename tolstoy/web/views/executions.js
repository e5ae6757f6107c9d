// Executions list: status, flow, progress, started, duration; filter by status; live from `executions`.

import { withQuery } from "../api.js";
import { badge, duration, h, progressBar, replace, shortId, TERMINAL, time, toMs } from "../dom.js";

const STATUSES = ["queued", "running", "waiting", "paused", "completed", "failed", "cancelled"];
const LIST_TYPES = [
  "execution.queued", "execution.started", "execution.waiting", "execution.paused", "execution.resumed",
  "execution.completed", "execution.failed", "execution.cancelled",
  "step.completed", "step.failed", "step.skipped",
];

export function mountExecutions(root, ctx) {
  const view = new ExecutionsView(root, ctx);
  view.start();
  return () => view.stop();
}

class ExecutionsView {
  constructor(root, ctx) {
    this.root = root;
    this.ctx = ctx;
    this.rows = new Map();        // id -> {data, el}
    this.seen = new Set();        // event ids (replay is at-least-once)
    this.lastEventId = undefined;
    this.filter = new URLSearchParams(location.hash.split("?")[1] || "").get("status") || "";
    this.cursor = null;
    this.fetching = new Map();    // id -> events that arrived while its row was being fetched
    this.backlog = null;          // events that arrived while the page was being fetched
    this.loadSeq = 0;
  }

  start() {
    const select = h("select#status-filter", { onchange: (e) => this.setFilter(e.target.value) },
      h("option", { value: "" }, "All"),
      STATUSES.map((s) => h("option", { value: s, selected: s === this.filter }, s[0].toUpperCase() + s.slice(1))));
    this.body = h("tbody");
    this.more = h("button.secondary", { type: "button", hidden: true, onclick: () => this.load(false) }, "Load more");
    this.empty = h("p.empty", { hidden: true }, "No executions yet. Run a flow from ", h("a", { href: "#/flows" }, "Flows"), ".");
    replace(
      this.root,
      h("div.page-head", {},
        h("h1", {}, "Executions"),
        h("div.filters", {}, h("label", { for: "status-filter" }, "Status"), select)),
      h("table.list.executions", { "aria-label": "Executions" },
        h("thead", {}, h("tr", {},
          ["Status", "Flow", "Progress", "Started", "Duration"].map((c) => h("th", { scope: "col" }, c)))),
        this.body),
      this.empty,
      h("div.more", {}, this.more),
    );
    this.unsubscribe = this.ctx.live.subscribe("executions", {
      since: () => this.lastEventId,
      filters: { types: LIST_TYPES },
      onEvent: (event) => this.onEvent(event),
      // With no event seen yet there is no point to resume from: whatever happened between the
      // page's load and this (re)subscription is only in the store, so read the page again.
      onSubscribed: () => { if (this.lastEventId === undefined) this.load(true); },
    });
    this.ticker = setInterval(() => this.tick(), 1000);
    this.load(true);
  }

  stop() {
    clearInterval(this.ticker);
    if (this.unsubscribe) this.unsubscribe();
  }

  setFilter(status) {
    this.filter = status;
    history.replaceState(null, "", status ? `#/executions?status=${status}` : "#/executions");
    this.load(true);
  }

  async load(reset) {
    const path = withQuery("/api/v1/executions", { status: this.filter, limit: 50, cursor: reset ? null : this.cursor });
    const token = ++this.loadSeq;
    this.backlog = this.backlog || [];
    let page;
    try {
      page = await this.ctx.api.get(path);
    } catch (err) {
      this.ctx.toast(`Cannot list executions: ${err.message}`, "error");
      page = null;
    }
    if (token !== this.loadSeq) return;  // a newer load (another filter) owns the page and the backlog
    const backlog = this.backlog;
    this.backlog = null;
    if (page) this.showPage(page, reset);
    for (const event of backlog) this.applyEvent(event);
  }

  showPage(page, reset) {
    if (reset) {
      this.rows.clear();
      this.body.replaceChildren();
    }
    for (const item of page.items) this.upsert(item, false);
    this.cursor = page.nextCursor;
    this.more.hidden = !this.cursor;
    this.empty.hidden = this.rows.size > 0;
  }

  matches(status) {
    return !this.filter || this.filter === status;
  }

  /** Insert or refresh a row from the REST shape; new live rows go on top. */
  upsert(item, onTop) {
    let row = this.rows.get(item.id);
    if (row && row.data.lastSeq > item.lastSeq) return;
    if (!row) {
      if (!this.matches(item.status)) return;
      row = { data: item, el: h("tr", { dataset: { executionId: item.id } }) };
      this.rows.set(item.id, row);
      if (onTop) this.body.prepend(row.el);
      else this.body.append(row.el);
      this.empty.hidden = true;
    }
    row.data = item;
    this.render(row);
  }

  async fetchRow(id) {
    if (this.fetching.has(id)) return;
    this.fetching.set(id, []);
    try {
      this.upsert(await this.ctx.api.get(`/api/v1/executions/${encodeURIComponent(id)}`), true);
    } catch {
      /* gone or not ours: nothing to show */
    }
    const waiting = this.fetching.get(id);
    this.fetching.delete(id);
    if (this.rows.has(id)) for (const event of waiting) this.applyEvent(event);  // seq decides what is new
  }

  onEvent(event) {
    if (!event.id || this.seen.has(event.id)) return;
    this.seen.add(event.id);
    this.lastEventId = event.id;
    if (this.backlog) this.backlog.push(event);  // the page is loading: apply once it is here
    else if (this.fetching.has(event.executionId)) this.fetching.get(event.executionId).push(event);
    else this.applyEvent(event);
  }

  applyEvent(event) {
    const row = this.rows.get(event.executionId);
    if (!row) {
      const statusChange = event.type.startsWith("execution.") && event.status;
      if (event.type === "execution.queued" || (statusChange && this.filter && this.matches(event.status))) {
        this.fetchRow(event.executionId);
      }
      return;
    }
    const d = row.data;
    // Already in the row we fetched — except that the row's status can lag its latest event
    // (a wait is an event before the runner parks): execution events at its own seq apply again.
    if (event.seq < d.lastSeq || (event.seq === d.lastSeq && !event.type.startsWith("execution."))) return;
    d.lastSeq = event.seq;
    applyToRow(d, event);
    if (!this.matches(d.status)) {
      row.el.remove();
      this.rows.delete(event.executionId);
      return;
    }
    this.render(row);
  }

  render(row) {
    const d = row.data;
    const done = d.completedSteps + d.failedSteps + d.skippedSteps;
    const bar = progressBar(`progress of ${d.id}`);
    const percent = d.totalSteps ? (100 * done) / d.totalSteps : TERMINAL.has(d.status) ? 100 : 0;
    bar.update(percent, `${done} of ${d.totalSteps} steps`);
    const link = h("a", { href: `#/executions/${d.id}` }, h("span.flow-name", {}, d.flowId), h("span.id.muted", {}, shortId(d.id)));
    this.ctx.flowName(d.flowId).then((name) => { link.querySelector(".flow-name").textContent = name; });
    replace(
      row.el,
      h("td.status-cell", {}, badge(d.status)),
      h("td", {}, link),
      h("td.progress-cell", {}, h("div.progress-wrap", {}, bar, h("span.steps", {}, `${done}/${d.totalSteps}`))),
      h("td", {}, time(d.startedAt)),
      h("td.duration", {}, this.durationText(d)),
    );
    row.el.dataset.status = d.status;
  }

  durationText(d) {
    const start = toMs(d.startedAt);
    if (start === null) return "—";
    const end = toMs(d.finishedAt);
    return duration((end ?? Date.now()) - start);
  }

  tick() {
    for (const row of this.rows.values()) {
      if (!TERMINAL.has(row.data.status) && row.data.startedAt) {
        const cell = row.el.querySelector(".duration");
        if (cell) cell.textContent = this.durationText(row.data);
      }
    }
  }
}

/** Apply one event to a list row (REST shape): status, counts, start and end times. */
function applyToRow(d, event) {
  switch (event.type) {
    case "execution.started":
      d.status = "running";
      d.startedAt = d.startedAt || event.timestamp;
      break;
    case "step.completed":
      d.completedSteps += 1;
      break;
    case "step.failed":
      if (!event.willRetry) d.failedSteps += 1;
      break;
    case "step.skipped":
      d.skippedSteps += 1;
      break;
    case "execution.completed":
    case "execution.failed":
    case "execution.cancelled":
      d.status = event.status || event.type.split(".")[1];
      d.finishedAt = event.timestamp;
      if (typeof event.completedSteps === "number") {
        d.completedSteps = event.completedSteps;
        d.failedSteps = event.failedSteps;
        d.skippedSteps = event.skippedSteps;
      }
      break;
    default:
      if (event.type.startsWith("execution.") && event.status) d.status = event.status;
  }
}
