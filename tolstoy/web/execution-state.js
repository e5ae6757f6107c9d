// One execution's state as the dashboard shows it: built from REST, a `subscribed` snapshot,
// then every event (PROTOCOL.md §1) applied in `seq` order. Pure data; no DOM.

const TERMINAL_TYPES = new Set(["execution.completed", "execution.failed", "execution.cancelled"]);
const OPEN_STEP = new Set(["pending", "running", "retrying", "waiting"]);

export class ExecutionModel {
  /** @param detail  GET /executions/{id};  @param stepItems  GET /executions/{id}/steps items */
  constructor(detail, stepItems) {
    this.exec = { ...detail };
    this.steps = new Map();
    this.order = [];
    this.progress = detail.progress || null;
    this.stateSeq = detail.lastSeq || 0;   // the seq the state reflects
    this.setSteps(stepItems || []);
  }

  setSteps(items) {
    for (const item of items) {
      const step = this.step(item.stepId);
      Object.assign(step, {
        name: item.name || step.name,
        type: item.type || step.type,
        status: item.status || "pending",
        attempt: item.attempt || 0,
        output: item.output,
        error: item.error,
        reason: item.reason,
        startedAt: item.startedAt,
        finishedAt: item.finishedAt,
        duration: item.duration,
        nextRetryAt: item.nextAttemptAt || null,
        nextAttempt: item.status === "retrying" ? (item.attempt || 0) + 1 : null,
      });
    }
    this.settle();
  }

  /** A cancelled execution's unfinished steps show as cancelled (the store may leave them waiting). */
  settle() {
    const changed = [];
    if (this.exec.status !== "cancelled") return changed;
    for (const step of this.steps.values()) {
      if (OPEN_STEP.has(step.status)) {
        step.status = "cancelled";
        changed.push(step.stepId);
      }
    }
    return changed;
  }

  step(stepId, name) {
    let step = this.steps.get(stepId);
    if (!step) {
      step = { stepId, name: name || stepId, type: null, status: "pending", attempt: 0 };
      this.steps.set(stepId, step);
      this.order.push(stepId);
    }
    return step;
  }

  get terminal() {
    return ["completed", "failed", "cancelled"].includes(this.exec.status);
  }

  /**
   * Take the server's snapshot as of ``lastSeq`` (the `subscribed` reply). Tolerant of shape:
   * steps as a list or an object keyed by step id; progress as an object.
   */
  applySnapshot(snapshot, lastSeq) {
    if (!snapshot || typeof snapshot !== "object" || !(lastSeq >= this.stateSeq)) return false;
    const s = snapshot.execution && typeof snapshot.execution === "object" ? { ...snapshot.execution, ...snapshot } : snapshot;
    for (const key of ["status", "totalSteps", "completedSteps", "failedSteps", "skippedSteps", "startedAt",
      "finishedAt", "error", "output", "currentStep", "cancelRequested", "pauseRequested"]) {
      if (s[key] !== undefined) this.exec[key] = s[key];
    }
    if (s.progress !== undefined) this.progress = s.progress;
    const steps = Array.isArray(s.steps)
      ? s.steps
      : s.steps && typeof s.steps === "object"
        ? Object.entries(s.steps).map(([stepId, v]) => ({ stepId, ...v }))
        : [];
    for (const item of steps) {
      const stepId = item.stepId || item.id;
      if (!stepId) continue;
      const step = this.step(stepId, item.stepName || item.name);
      for (const key of ["status", "attempt", "output", "error", "reason", "startedAt", "finishedAt", "duration"]) {
        if (item[key] !== undefined) step[key] = item[key];
      }
      if (item.type || item.stepType) step.type = item.type || item.stepType;
      const next = item.nextRetryAt || item.nextAttemptAt;
      if (next !== undefined) step.nextRetryAt = next;
      if (step.status === "retrying") step.nextAttempt = item.nextAttempt || (step.attempt || 0) + 1;
    }
    this.stateSeq = lastSeq;
    this.settle();
    return true;
  }

  /** Apply one event with ``seq > stateSeq``; returns what changed: {exec, progress, steps: Set}. */
  apply(e) {
    const changed = { exec: false, progress: false, steps: new Set() };
    if (typeof e.seq === "number") {
      // The event at the state's own seq is applied again when it sets the execution's status:
      // the stored status can lag its latest event (a wait is an event before the runner parks).
      const again = e.seq === this.stateSeq && e.type.startsWith("execution.");
      if (e.seq < this.stateSeq || (e.seq === this.stateSeq && !again)) return this.enrich(e, changed);
      this.stateSeq = e.seq;
      this.exec.lastSeq = e.seq;
    }
    const stepTouch = () => {
      const step = this.step(e.stepId, e.stepName);
      changed.steps.add(e.stepId);
      return step;
    };
    switch (e.type) {
      case "execution.queued":
        this.exec.status = "queued";
        if (e.totalSteps !== undefined) this.exec.totalSteps = e.totalSteps;
        changed.exec = true;
        break;
      case "execution.started":
        this.exec.status = "running";
        this.exec.startedAt = this.exec.startedAt || e.timestamp;
        this.exec.waitReason = null;
        changed.exec = true;
        break;
      case "execution.progress":
        this.progress = { stepId: e.stepId, current: e.current, total: e.total, percent: e.percent, message: e.message };
        changed.progress = true;
        break;
      case "execution.waiting":
        this.exec.status = e.status || "waiting";
        this.exec.waitReason = e.reason;
        this.exec.waitUntil = e.until || null;
        if (e.stepId) Object.assign(stepTouch(), { status: "waiting", waitReason: e.reason, waitUntil: e.until || null });
        changed.exec = true;
        break;
      case "execution.paused":
        this.exec.status = "paused";
        this.exec.pauseRequested = false;
        changed.exec = true;
        break;
      case "execution.resumed":
        this.exec.status = e.status || "queued";
        changed.exec = true;
        break;
      case "step.started":
        Object.assign(stepTouch(), {
          status: "running", attempt: e.attempt, type: e.stepType, startedAt: e.timestamp,
          finishedAt: null, nextRetryAt: null, nextAttempt: null, waitReason: null,
        });
        this.exec.currentStep = e.stepId;
        if (this.exec.status !== "running" && !this.terminal) { this.exec.status = "running"; changed.exec = true; }
        break;
      case "step.completed":
        Object.assign(stepTouch(), { status: "completed", attempt: e.attempt, duration: e.duration, output: e.output, finishedAt: e.timestamp, error: null });
        this.exec.completedSteps = (this.exec.completedSteps || 0) + 1;
        changed.exec = true;
        break;
      case "step.failed": {
        const step = stepTouch();
        Object.assign(step, { attempt: e.attempt, error: e.error, duration: e.duration, finishedAt: e.timestamp });
        if (e.willRetry) Object.assign(step, { status: "retrying", nextAttempt: e.attempt + 1, nextRetryAt: e.nextRetryAt || null });
        else {
          step.status = "failed";
          this.exec.failedSteps = (this.exec.failedSteps || 0) + 1;
          changed.exec = true;
        }
        break;
      }
      case "step.retrying":
        Object.assign(stepTouch(), { status: "retrying", nextAttempt: e.attempt, nextRetryAt: e.nextRetryAt || null, delayMs: e.delayMs, error: e.error || null });
        break;
      case "step.skipped":
        Object.assign(stepTouch(), { status: "skipped", reason: e.reason });
        this.exec.skippedSteps = (this.exec.skippedSteps || 0) + 1;
        changed.exec = true;
        break;
      case "approval.granted":
      case "approval.denied":
      case "approval.expired":
        break;
      default:
        if (TERMINAL_TYPES.has(e.type)) {
          Object.assign(this.exec, {
            status: e.status || e.type.split(".")[1],
            finishedAt: e.timestamp,
            error: e.error || null,
            output: e.output,
            cancelRequested: false,
            pauseRequested: false,
          });
          for (const key of ["totalSteps", "completedSteps", "failedSteps", "skippedSteps"]) {
            if (typeof e[key] === "number") this.exec[key] = e[key];
          }
          for (const stepId of this.settle()) changed.steps.add(stepId);
          changed.exec = true;
        }
    }
    return changed;
  }

  /**
   * An event the state already reflects (at or below a snapshot's seq) still carries what a
   * snapshot leaves out — outputs, errors, reasons, wait details: take those, keep the status.
   */
  enrich(e, changed) {
    const step = e.stepId ? this.steps.get(e.stepId) : null;
    const take = (target, fields) => {
      for (const [key, value] of Object.entries(fields)) if (value !== undefined) target[key] = value;
    };
    if (step && e.type === "step.completed" && step.status === "completed") take(step, { output: e.output, duration: e.duration });
    else if (step && (e.type === "step.failed" || e.type === "step.retrying") && ["failed", "retrying"].includes(step.status)) {
      take(step, { error: e.error });
      if (step.status === "retrying" && !step.nextRetryAt) take(step, { nextRetryAt: e.nextRetryAt });
    } else if (step && e.type === "step.skipped" && step.status === "skipped") take(step, { reason: e.reason });
    else if (step && e.type === "execution.waiting" && step.status === "waiting") take(step, { waitReason: e.reason, waitUntil: e.until });
    else if (TERMINAL_TYPES.has(e.type) && this.terminal) {
      take(this.exec, { error: e.error, output: e.output });
      changed.exec = true;
    } else if (e.type === "execution.waiting" && this.exec.status === "waiting") {
      take(this.exec, { waitReason: e.reason, waitUntil: e.until });
      changed.exec = true;
    }
    if (step) changed.steps.add(e.stepId);
    return changed;
  }

  /** Percent to show: the latest progress report while its step runs, else the share of steps done. */
  percent() {
    if (this.exec.status === "completed") return 100;
    const p = this.progress;
    if (p && typeof p.percent === "number") {
      const step = this.steps.get(p.stepId);
      if (!step || step.status !== "completed") return p.percent;
    }
    const total = this.exec.totalSteps || this.steps.size;
    const done = (this.exec.completedSteps || 0) + (this.exec.failedSteps || 0) + (this.exec.skippedSteps || 0);
    return total ? (100 * done) / total : 0;
  }
}
