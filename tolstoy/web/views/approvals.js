// Approvals inbox: pending requests (or all), each with a comment and grant / deny; live from `approvals`.

import { withQuery } from "../api.js";
import { h, replace } from "../dom.js";
import { renderApproval } from "./execution.js";

export function mountApprovals(root, ctx) {
  let showAll = false;
  let stopped = false;
  const cards = new Map();
  const list = h("div.approvals.inbox", { "aria-live": "polite" });
  const empty = h("p.empty", { hidden: true }, "Nothing is waiting for a decision.");
  const toggle = h("div.segmented", { role: "group", "aria-label": "Show" },
    h("button", { type: "button", "aria-pressed": "true", onclick: () => setAll(false) }, "Pending"),
    h("button", { type: "button", "aria-pressed": "false", onclick: () => setAll(true) }, "All"));
  replace(root, h("div.page-head", {}, h("h1", {}, "Approvals"), toggle), list, empty);

  function setAll(all) {
    showAll = all;
    const [pending, every] = toggle.querySelectorAll("button");
    pending.setAttribute("aria-pressed", String(!all));
    every.setAttribute("aria-pressed", String(all));
    load();
  }

  function upsert(a) {
    const prev = cards.get(a.id);
    const merged = { ...(prev || {}), ...a };
    if (!showAll && merged.status !== "pending" && !prev) return;
    const el = prev?.el || h("article.approval", { dataset: { approvalId: a.id } });
    merged.el = el;
    cards.set(a.id, merged);
    if (!el.isConnected) list.prepend(el);
    el.dataset.status = merged.status;
    renderApproval(el, merged, ctx, (updated) => upsert({ id: a.id, ...updated }));
    empty.hidden = cards.size > 0;
  }

  async function load() {
    let page;
    try {
      page = await ctx.api.get(withQuery("/api/v1/approvals", { status: showAll ? null : "pending", limit: 200 }));
    } catch (err) {
      ctx.toast(`Cannot list approvals: ${err.message}`, "error");
      return;
    }
    if (stopped) return;
    cards.clear();
    list.replaceChildren();
    for (const a of page.items.slice().reverse()) upsert(a);
    empty.hidden = cards.size > 0;
  }

  const onEvent = (e) => {
    const event = e.detail;
    if (event.type === "approval.required") {
      upsert({ id: event.approvalId, executionId: event.executionId, stepId: event.stepId, prompt: event.prompt,
        status: "pending", expiresAt: event.expiresAt, createdAt: event.timestamp });
    } else if (cards.has(event.approvalId)) {
      upsert({ id: event.approvalId, status: event.type.split(".")[1], decidedBy: event.by, comment: event.comment });
    }
  };
  ctx.approvals.addEventListener("event", onEvent);
  load();
  return () => {
    stopped = true;
    ctx.approvals.removeEventListener("event", onEvent);
  };
}
