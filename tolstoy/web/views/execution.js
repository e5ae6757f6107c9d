// Execution detail: header and controls, progress, approvals, the step timeline and the live log.
//
// Loading, with no gap: read the execution (its `lastSeq` L), then its steps, log and pending
// approvals (all as of L or later), then subscribe to `executions:{id}` with `since: L - 1`. The
// `subscribed` snapshot sets the state as of its `lastSeq`; events at or below the state's seq
// only feed the log, later ones change the state. Every reconnect resubscribes with `since` = the
// last `seq` received, so the server replays exactly the gap. Events are deduplicated by id.

import { ExecutionModel } from "../execution-state.js";
import { badge, duration, h, json, progressBar, relative, replace, TERMINAL, time, toMs } from "../dom.js";

const LOG_LIMIT = 1000;

export function mountExecution(root, { id }, ctx) {
  const view = new ExecutionView(root, id, ctx);
  view.start();
  return () => view.stop();
}

class ExecutionView {
  constructor(root, id, ctx) {
    this.root = root;
    this.id = id;
    this.ctx = ctx;
    this.path = `/api/v1/executions/${encodeURIComponent(id)}`;
    this.seen = new Set();
    this.receivedSeq = 0;
    this.approvals = new Map();
    this.stepEls = new Map();
    this.stopped = false;
  }

  async start() {
    replace(this.root, h("p.loading", { role: "status" }, "Loading execution…"));
    let detail, steps, logs;
    try {
      detail = await this.ctx.api.get(this.path);
      [steps, logs] = await Promise.all([
        this.ctx.api.get(`${this.path}/steps`),
        this.ctx.api.get(`${this.path}/logs?limit=${LOG_LIMIT}`),
      ]);
    } catch (err) {
      replace(this.root, h("section.notice", {}, h("h1", {}, "Execution not found"), h("p", {}, err.message),
        h("p", {}, h("a", { href: "#/executions" }, "All executions"))));
      return;
    }
    if (this.stopped) return;
    this.model = new ExecutionModel(detail, steps.items);
    // Resume one event early: the stored status can lag the latest event (see ExecutionModel.apply).
    this.receivedSeq = Math.max(0, (detail.lastSeq || 0) - 1);
    this.build();
    for (const event of logs.items) {
      // Only the log panel: these may be newer than L, and the stream resumes from L.
      this.seen.add(event.id);
      this.addLog(event);
    }
    await this.loadApprovals();
    if (this.stopped) return;
    this.unsubscribe = this.ctx.live.subscribe(`executions:${this.id}`, {
      since: () => this.receivedSeq,
      onSubscribed: (data) => this.onSubscribed(data),
      onEvent: (event) => this.onEvent(event),
      onError: (err) => this.ctx.toast(`Live updates refused: ${err.message || err.code}`, "error"),
    });
    this.ticker = setInterval(() => this.tick(), 1000);
  }

  stop() {
    this.stopped = true;
    clearInterval(this.ticker);
    if (this.unsubscribe) this.unsubscribe();
  }

  // ---- building the page -------------------------------------------------------------------

  build() {
    this.title = h("h1", {}, this.model.exec.flowId);
    this.ctx.flowName(this.model.exec.flowId).then((name) => { this.title.textContent = name; });
    this.statusEl = h("div.exec-status");
    this.meta = h("dl.meta");
    this.actions = h("div.actions", { role: "toolbar", "aria-label": "Execution controls" });
    this.bar = progressBar("Execution progress");
    this.progressText = h("p.progress-text#progress-text", { "aria-live": "polite" });
    this.approvalList = h("div.approvals");
    this.approvalSection = h("section.card.approval-requests", { "aria-labelledby": "approvals-h", hidden: true },
      h("h2#approvals-h", {}, "Approval requests"), this.approvalList);
    this.errorBox = h("div.error-box", { role: "alert", hidden: true });
    this.timeline = h("ol.timeline", { "aria-label": "Steps" });
    this.logList = h("ol.log-lines");
    this.logBox = h("div.log", { role: "log", "aria-live": "polite", "aria-labelledby": "logs-h", tabindex: "0" }, this.logList);
    replace(
      this.root,
      h("nav.crumbs", { "aria-label": "Breadcrumb" }, h("a", { href: "#/executions" }, "Executions"), " / ", h("code", {}, this.id)),
      h("div.page-head", {}, h("div", {}, this.title, h("p.muted.exec-id", {}, h("code", {}, this.id))), this.statusEl),
      this.actions,
      h("section.card.progress", { "aria-label": "Progress" }, this.bar, this.progressText),
      this.errorBox,
      this.approvalSection,
      h("div.columns", {},
        h("section.card", { "aria-labelledby": "steps-h" }, h("h2#steps-h", {}, "Steps"), this.timeline),
        h("section.card", { "aria-labelledby": "logs-h" }, h("h2#logs-h", {}, "Log"), this.logBox)),
      h("section.card", { "aria-labelledby": "meta-h" }, h("h2#meta-h", {}, "Details"), this.meta),
    );
    for (const stepId of this.model.order) this.renderStep(stepId);
    this.renderExec();
    this.renderProgress();
  }

  renderExec() {
    const e = this.model.exec;
    const note = e.cancelRequested ? "cancelling…" : e.pauseRequested ? "pausing…" : e.waitReason && e.status === "waiting" ? `for ${e.waitReason}` : "";
    replace(this.statusEl, badge(e.status), note ? h("span.muted", {}, ` ${note}`) : null);
    this.root.dataset.status = e.status;
    const done = (e.completedSteps || 0) + (e.failedSteps || 0) + (e.skippedSteps || 0);
    replace(
      this.meta,
      h("dt", {}, "Created"), h("dd", {}, time(e.createdAt)),
      h("dt", {}, "Started"), h("dd", {}, time(e.startedAt)),
      h("dt", {}, "Finished"), h("dd", {}, time(e.finishedAt)),
      h("dt", {}, "Duration"), h("dd.exec-duration", {}, this.durationText()),
      h("dt", {}, "Steps"), h("dd", {}, `${done} of ${e.totalSteps} done (${e.completedSteps || 0} completed, ${e.failedSteps || 0} failed, ${e.skippedSteps || 0} skipped)`),
      h("dt", {}, "Flow version"), h("dd", {}, String(e.flowVersion ?? "—")),
      e.retryOf ? [h("dt", {}, "Retry of"), h("dd", {}, h("a", { href: `#/executions/${e.retryOf}` }, e.retryOf))] : null,
      h("dt", {}, "Variables"), h("dd", {}, h("pre", {}, json(e.variables ?? {}))),
      e.output !== undefined && e.output !== null ? [h("dt", {}, "Output"), h("dd", {}, h("pre", {}, json(e.output)))] : null,
    );
    if (e.error) {
      this.errorBox.hidden = false;
      replace(this.errorBox, h("strong", {}, "Failed: "), e.error.message || json(e.error),
        e.error.category ? h("span.muted", {}, ` (${e.error.category}${e.error.code ? `, ${e.error.code}` : ""})`) : null);
    } else {
      this.errorBox.hidden = true;
    }
    this.renderActions();
  }

  durationText() {
    const e = this.model.exec;
    const start = toMs(e.startedAt);
    if (start === null) return "—";
    return duration((toMs(e.finishedAt) ?? Date.now()) - start);
  }

  renderActions() {
    const s = this.model.exec.status;
    const open = !TERMINAL.has(s);
    const button = (label, enabled, onclick, cls = "") =>
      h(`button${cls}`, { type: "button", disabled: !enabled, onclick }, label);
    replace(
      this.actions,
      button("Cancel", open && !this.model.exec.cancelRequested, () => this.act("cancel", "Cancel this execution?"), ".danger"),
      button("Pause", ["queued", "running", "waiting"].includes(s) && !this.model.exec.pauseRequested, () => this.act("pause")),
      button("Resume", s === "paused" || !!this.model.exec.pauseRequested, () => this.act("resume")),
      button("Retry", !open, () => this.retry(false)),
      button("Retry from failed step", s === "failed", () => this.retry(true)),
    );
  }

  renderProgress() {
    const m = this.model;
    const p = m.progress;
    const percent = m.percent();
    const total = m.exec.totalSteps || m.steps.size;
    const done = (m.exec.completedSteps || 0) + (m.exec.failedSteps || 0) + (m.exec.skippedSteps || 0);
    const message = p ? p.message || `${p.current} of ${p.total}` : "";
    this.bar.update(percent, message || `${done} of ${total} steps`);
    replace(this.progressText,
      message ? h("span.progress-message", {}, message) : null,
      h("span.muted", {}, `${message ? " · " : ""}${done} of ${total} steps · ${Math.round(percent)}%`));
  }

  renderStep(stepId) {
    const step = this.model.steps.get(stepId);
    let el = this.stepEls.get(stepId);
    if (!el) {
      el = h("li.step", { dataset: { stepId } });
      this.stepEls.set(stepId, el);
      this.timeline.append(el);
    }
    el.dataset.status = step.status;
    replace(
      el,
      h("div.step-head", {},
        h(`span.step-status.status-${step.status}`, {}, step.status),
        h("span.step-name", {}, step.name),
        step.name !== step.stepId ? h("code.muted", {}, step.stepId) : null,
        step.type ? h("span.step-type.muted", {}, step.type) : null),
      h("div.step-detail", {}, this.stepDetail(step)),
      step.status === "completed" && step.output !== undefined && step.output !== null
        ? h("details.output", {}, h("summary", {}, "Output"), h("pre", {}, json(step.output)))
        : null,
    );
  }

  stepDetail(step) {
    const attempt = step.attempt > 1 ? ` · attempt ${step.attempt}` : "";
    switch (step.status) {
      case "running": {
        const start = toMs(step.startedAt);
        return `running${step.attempt ? ` · attempt ${step.attempt}` : ""}${start ? ` · ${duration(Date.now() - start)}` : ""}`;
      }
      case "retrying": {
        const at = toMs(step.nextRetryAt);
        const when = at ? ` at ${new Date(at).toLocaleTimeString()} (${relative(at)})` : "";
        const err = step.error && step.error.message ? ` · last error: ${step.error.message}` : "";
        return `retrying · attempt ${step.nextAttempt || step.attempt + 1}${when}${err}`;
      }
      case "waiting":
        return step.waitReason === "approval" || (!step.waitReason && step.type === "approval") ? "waiting for approval"
          : step.waitUntil ? `waiting until ${new Date(toMs(step.waitUntil)).toLocaleTimeString()} (${relative(toMs(step.waitUntil))})`
            : `waiting${step.waitReason ? ` for ${step.waitReason}` : ""}`;
      case "completed":
        return `completed in ${duration(step.duration)}${attempt}`;
      case "failed": {
        const e = step.error || {};
        return `failed: ${e.message || "error"}${e.category ? ` (${e.category})` : ""}${attempt}`;
      }
      case "skipped":
        return `skipped: ${step.reason || "no reason given"}`;
      case "cancelled":
        return "cancelled";
      default:
        return "pending";
    }
  }

  tick() {
    if (!this.model) return;
    for (const [stepId, step] of this.model.steps) {
      if (step.status === "running" || step.status === "retrying" || step.status === "waiting") {
        const detail = this.stepEls.get(stepId)?.querySelector(".step-detail");
        if (detail) detail.textContent = this.stepDetail(step);
      }
    }
    const d = this.meta.querySelector(".exec-duration");
    if (d) d.textContent = this.durationText();
  }

  // ---- live --------------------------------------------------------------------------------

  onSubscribed(data) {
    if (data.snapshot && this.model.applySnapshot(data.snapshot, data.lastSeq)) {
      for (const stepId of this.model.order) this.renderStep(stepId);
      this.renderExec();
      this.renderProgress();
    }
  }

  onEvent(event) {
    if (!event || !event.id || this.seen.has(event.id)) return;
    this.seen.add(event.id);
    if (typeof event.seq === "number" && event.seq > this.receivedSeq) this.receivedSeq = event.seq;
    if (event.type === "log") this.addLog(event);
    if (event.type && event.type.startsWith("approval.")) this.onApproval(event);
    const changed = this.model.apply(event);
    for (const stepId of changed.steps) this.renderStep(stepId);
    if (changed.exec) this.renderExec();
    if (changed.exec || changed.progress || changed.steps.size) this.renderProgress();
    if (this.model.terminal && changed.exec) this.reconcile();
  }

  /** After the end, take the store's final word on every step (e.g. what a cancel stopped). */
  async reconcile() {
    try {
      const steps = await this.ctx.api.get(`${this.path}/steps`);
      this.model.setSteps(steps.items);
      for (const stepId of this.model.order) this.renderStep(stepId);
    } catch {
      /* the live state stands */
    }
  }

  addLog(event) {
    const atBottom = this.logBox.scrollHeight - this.logBox.scrollTop - this.logBox.clientHeight < 24;
    const line = h(`li.log-line.level-${event.level || "info"}`, { dataset: { seq: event.seq } },
      h("span.log-time", {}, time(event.timestamp)),
      h("span.log-level", {}, event.level || "info"),
      event.stepId ? h("span.log-step", {}, event.stepId) : null,
      h("span.log-message", {}, event.message ?? ""));
    // Replayed and live events arrive in seq order; keep the panel ordered even if not.
    const after = [...this.logList.children].reverse().find((li) => Number(li.dataset.seq) < event.seq);
    if (after) after.after(line);
    else this.logList.prepend(line);
    while (this.logList.children.length > LOG_LIMIT) this.logList.firstElementChild.remove();
    if (atBottom) this.logBox.scrollTop = this.logBox.scrollHeight;
  }

  // ---- approvals ---------------------------------------------------------------------------

  async loadApprovals() {
    try {
      const page = await this.ctx.api.get("/api/v1/approvals?status=pending&limit=500");
      for (const a of page.items) {
        if (a.executionId === this.id) this.upsertApproval({ ...a });
      }
    } catch {
      /* events will bring them */
    }
  }

  onApproval(event) {
    const status = event.type === "approval.required" ? "pending" : event.type.split(".")[1];
    const current = this.approvals.get(event.approvalId);
    this.upsertApproval({
      ...(current || {}),
      id: event.approvalId,
      stepId: event.stepId,
      prompt: event.prompt ?? current?.prompt,
      status,
      decidedBy: event.by ?? current?.decidedBy,
      comment: event.comment ?? current?.comment,
      expiresAt: event.expiresAt ?? current?.expiresAt,
    });
  }

  upsertApproval(a) {
    const prev = this.approvals.get(a.id);
    if (prev && prev.status !== "pending" && a.status === "pending") return;  // a late replay
    const el = prev?.el || h("article.approval", { dataset: { approvalId: a.id } });
    a.el = el;
    this.approvals.set(a.id, a);
    if (!el.isConnected) this.approvalList.append(el);
    el.dataset.status = a.status;
    this.approvalSection.hidden = false;
    renderApproval(el, a, this.ctx, (updated) => this.upsertApproval({ ...a, ...updated }));
  }

  // ---- controls ----------------------------------------------------------------------------

  async act(verb, confirmText) {
    if (confirmText && !window.confirm(confirmText)) return;
    try {
      const row = await this.ctx.api.post(`${this.path}/${verb}`);
      if (row && row.lastSeq >= this.model.stateSeq) {
        Object.assign(this.model.exec, { status: row.status, cancelRequested: row.cancelRequested, pauseRequested: row.pauseRequested });
        this.renderExec();
      }
      this.ctx.toast(`${verb[0].toUpperCase()}${verb.slice(1)} requested`);
    } catch (err) {
      this.ctx.toast(`Cannot ${verb}: ${err.describe ? err.describe() : err.message}`, "error");
    }
  }

  async retry(fromFailedStep) {
    try {
      const out = await this.ctx.api.post(`${this.path}/retry`, { fromFailedStep });
      this.ctx.navigate(`#/executions/${out.executionId}`);
    } catch (err) {
      this.ctx.toast(`Cannot retry: ${err.describe ? err.describe() : err.message}`, "error");
    }
  }
}

/** One approval request: prompt, status, and (while pending) a comment with grant and deny. */
export function renderApproval(el, a, ctx, onDecided) {
  const comment = h("textarea", { id: `comment-${a.id}`, rows: 2, maxlength: 4000 });
  const decide = async (verb) => {
    for (const b of el.querySelectorAll("button")) b.disabled = true;
    try {
      const row = await ctx.api.post(`/api/v1/approvals/${encodeURIComponent(a.id)}/${verb}`, { comment: comment.value || null });
      onDecided({ status: row.status, decidedBy: row.decidedBy, comment: row.comment });
      ctx.toast(verb === "grant" ? "Approval granted" : "Approval denied");
    } catch (err) {
      ctx.toast(`Cannot ${verb}: ${err.describe ? err.describe() : err.message}`, "error");
      for (const b of el.querySelectorAll("button")) b.disabled = false;
    }
  };
  replace(
    el,
    h("div.approval-head", {}, badge(a.status), h("strong.prompt", {}, a.prompt || "Approval needed"),
      a.stepId ? h("span.muted", {}, ` · step ${a.stepId}`) : null,
      a.executionId ? h("span.muted", {}, " · ", h("a", { href: `#/executions/${a.executionId}` }, a.executionId)) : null),
    a.status === "pending"
      ? h("div.approval-form", {},
        h("label", { for: comment.id }, "Comment (optional)"), comment,
        h("div.buttons", {},
          h("button.primary", { type: "button", onclick: () => decide("grant") }, "Grant"),
          h("button.danger", { type: "button", onclick: () => decide("deny") }, "Deny")),
        a.expiresAt ? h("p.muted", {}, "Expires ", time(a.expiresAt)) : null)
      : h("p.muted", {}, `${a.status}${a.decidedBy ? ` by ${a.decidedBy}` : ""}${a.comment ? `: “${a.comment}”` : ""}`),
  );
}
