// Flows: the organization's flows, each with a "Run" dialog taking the variables as JSON.

import { h, json, replace, time } from "../dom.js";

export function mountFlows(root, ctx) {
  let cursor = null;
  let stopped = false;
  const body = h("tbody");
  const more = h("button.secondary", { type: "button", hidden: true, onclick: () => load() }, "Load more");
  const empty = h("p.empty", { hidden: true }, "No flows yet. Create one with ",
    h("code", {}, "tolstoy flows apply FLOW.yaml"), " or ", h("code", {}, "POST /api/v1/flows"), ".");
  const dialog = runDialog(ctx);
  replace(
    root,
    h("div.page-head", {}, h("h1", {}, "Flows")),
    h("table.list.flows", { "aria-label": "Flows" },
      h("thead", {}, h("tr", {}, ["Name", "Version", "Description", "Updated", h("span.visually-hidden", {}, "Actions")]
        .map((c) => h("th", { scope: "col" }, c)))),
      body),
    empty,
    h("div.more", {}, more),
    dialog.el,
  );

  async function load() {
    let page;
    try {
      page = await ctx.api.get(`/api/v1/flows?limit=50${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ""}`);
    } catch (err) {
      ctx.toast(`Cannot list flows: ${err.message}`, "error");
      return;
    }
    if (stopped) return;
    for (const flow of page.items) {
      body.append(h("tr", { dataset: { flowId: flow.id } },
        h("td", {}, h("strong", {}, flow.name), h("div.muted", {}, h("code", {}, flow.id))),
        h("td", {}, `v${flow.version}`),
        h("td", {}, flow.description || h("span.muted", {}, "—")),
        h("td", {}, time(flow.updatedAt)),
        h("td.row-actions", {}, h("button.primary", { type: "button", "aria-label": `Run ${flow.name}`, onclick: () => dialog.open(flow) }, "Run"))));
    }
    cursor = page.nextCursor;
    more.hidden = !cursor;
    empty.hidden = body.children.length > 0;
  }

  load();
  return () => {
    stopped = true;
    if (dialog.el.open) dialog.el.close();
  };
}

/** The "Run flow" dialog: variables JSON (prefilled with the flow's defaults), errors inline. */
function runDialog(ctx) {
  const title = h("h2#run-title", {}, "Run flow");
  const vars = h("textarea#run-variables", { rows: 10, spellcheck: "false", "aria-describedby": "run-help run-error" });
  const error = h("p.form-error#run-error", { role: "alert" });
  const submit = h("button.primary", { type: "submit" }, "Run");
  let flow = null;
  const form = h("form", { method: "dialog", onsubmit: (e) => { e.preventDefault(); run(); } },
    title,
    h("label", { for: "run-variables" }, "Variables (JSON object)"),
    vars,
    h("p.muted#run-help", {}, "Overrides the flow's default variables for this execution."),
    error,
    h("div.buttons", {}, submit, h("button.secondary", { type: "button", onclick: () => el.close() }, "Cancel")));
  const el = h("dialog.run-dialog", { "aria-labelledby": "run-title" }, form);

  async function run() {
    error.textContent = "";
    let variables;
    try {
      variables = vars.value.trim() ? JSON.parse(vars.value) : {};
    } catch (err) {
      error.textContent = `Variables are not valid JSON: ${err.message}`;
      vars.focus();
      return;
    }
    if (variables === null || typeof variables !== "object" || Array.isArray(variables)) {
      error.textContent = "Variables must be a JSON object, like {\"name\": \"value\"}.";
      vars.focus();
      return;
    }
    submit.disabled = true;
    try {
      const out = await ctx.api.post(`/api/v1/flows/${encodeURIComponent(flow.id)}/execute`, { variables });
      el.close();
      ctx.navigate(`#/executions/${out.executionId}`);
    } catch (err) {
      error.textContent = `Cannot run: ${err.describe ? err.describe() : err.message}`;
    } finally {
      submit.disabled = false;
    }
  }

  return {
    el,
    async open(f) {
      flow = f;
      title.replaceChildren("Run ", h("span", {}, f.name));
      error.textContent = "";
      vars.value = "{}";
      el.showModal();
      vars.focus();
      try {
        const full = await ctx.api.get(`/api/v1/flows/${encodeURIComponent(f.id)}`);
        if (flow === f && vars.value === "{}") vars.value = json(full.definition?.variables ?? {});
      } catch {
        /* keep {} */
      }
    },
  };
}
