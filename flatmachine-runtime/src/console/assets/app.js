// The flatmachine console. Every value from the server is put on the page as text
// (textContent, createTextNode): model replies, prompts and errors are never parsed as HTML.
"use strict";

const TOKEN = document.querySelector('meta[name="flatmachine-token"]').getAttribute("content");
const main = document.getElementById("main");
const state = { source: null, run: null, timelineStart: null, info: null };

function el(tag, props, ...children) {
  const node = document.createElement(tag);
  if (props) {
    for (const [key, value] of Object.entries(props)) {
      if (value === undefined || value === null || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = String(value);
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, String(value));
    }
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.appendChild(typeof child === "object" ? child : document.createTextNode(String(child)));
  }
  return node;
}

function runHref(id) { return "/runs/" + encodeURIComponent(id); }
function runLink(id, label) { return el("a", { href: runHref(id), class: "mono" }, label || id); }
function badge(status) { return el("span", { class: "badge s-" + status }, status); }
function money(v) { return v === null || v === undefined ? "–" : "$" + Number(v).toFixed(4); }
function num(v) { return v === null || v === undefined ? "–" : String(v); }
function when(iso) {
  if (!iso) return "–";
  const d = new Date(iso);
  return isNaN(d) ? iso : d.toLocaleString();
}
function json(v) { return JSON.stringify(v, null, 2); }
function shortJson(v) {
  const t = JSON.stringify(v);
  return t.length > 120 ? t.slice(0, 119) + "…" : t;
}

async function getJson(url) {
  const response = await fetch(url, { headers: { accept: "application/json" } });
  const body = await response.json().catch(() => ({ error: response.statusText }));
  if (!response.ok) throw new Error(body.error || response.statusText);
  return body;
}

function setPage(...nodes) {
  main.replaceChildren(...nodes);
}

function showError(message) {
  setPage(el("p", { class: "error" }, "Error: " + message), el("p", null, el("a", { href: "/" }, "Back to the runs")));
}

// ---- Runs list -------------------------------------------------------------------------

async function renderList() {
  const params = new URLSearchParams(location.search);
  const status = params.get("status") || "";
  const q = params.get("q") || "";
  const cursor = params.get("cursor") || "";
  const api = new URLSearchParams({ limit: "50" });
  if (status) api.set("status", status);
  if (q) api.set("q", q);
  if (cursor) api.set("cursor", cursor);
  const page = await getJson("/api/runs?" + api);

  const select = el("select", { id: "status-filter", "aria-label": "status" },
    ["", "running", "waiting", "finished", "failed", "unreadable"].map((s) =>
      el("option", { value: s, selected: s === status }, s || "any status")));
  const search = el("input", { type: "search", id: "search", placeholder: "id, machine or state", value: q });
  const go = () => {
    const next = new URLSearchParams();
    if (select.value) next.set("status", select.value);
    if (search.value.trim()) next.set("q", search.value.trim());
    navigate("/?" + next);
  };
  select.addEventListener("change", go);
  search.addEventListener("keydown", (e) => { if (e.key === "Enter") go(); });

  const rows = page.runs.map((r) => el("tr", { "data-id": r.id },
    el("td", null, runLink(r.id)),
    el("td", null, r.machine || "?"),
    el("td", null, badge(r.status)),
    el("td", { class: "mono" }, r.state || ""),
    el("td", null, when(r.started_at)),
    el("td", { class: "num" }, num(r.step)),
    el("td", { class: "num" }, num(r.api_calls)),
    el("td", { class: "num" }, money(r.cost)),
    el("td", null, r.parent ? runLink(r.parent, r.parent.slice(0, 8) + "…") : "")));

  const nav = el("div", { class: "toolbar" });
  if (cursor) {
    const first = new URLSearchParams(params); first.delete("cursor");
    nav.append(el("button", { id: "first-page", onclick: () => navigate("/?" + first) }, "« First page"));
  }
  if (page.next_cursor) {
    const next = new URLSearchParams(params); next.set("cursor", page.next_cursor);
    nav.append(el("button", { id: "next-page", onclick: () => navigate("/?" + next) }, "Next page »"));
  }
  nav.append(el("span", { class: "muted" }, `${page.runs.length} shown, ${page.scanned} read`));

  setPage(
    el("h1", null, "Runs"),
    el("div", { class: "toolbar" }, select, search, el("button", { onclick: go }, "Search")),
    page.runs.length === 0
      ? el("p", { class: "muted", id: "no-runs" }, "No runs match.")
      : el("table", { id: "runs" },
          el("thead", null, el("tr", null, ["Execution", "Machine", "Status", "State", "Started", "Steps", "Agent calls", "Cost", "Parent"]
            .map((h, i) => el("th", { class: i >= 5 && i <= 7 ? "num" : null }, h)))),
          el("tbody", null, rows)),
    nav);
  markRendered();
}

// ---- One run ---------------------------------------------------------------------------

function fact(label, value) { return el("div", null, el("span", null, label), value); }

function describeChanges(changes) {
  const parts = [];
  for (const [k, v] of Object.entries(changes.added || {})) parts.push(el("div", { class: "change-add" }, "+ " + k + " = " + shortJson(v)));
  for (const [k, v] of Object.entries(changes.changed || {})) parts.push(el("div", { class: "change-mod" }, "~ " + k + " = " + shortJson(v[1])));
  for (const k of changes.removed || []) parts.push(el("div", { class: "change-rm" }, "− " + k));
  if (parts.length === 0) return el("span", { class: "muted" }, "");
  const full = el("details", null, el("summary", null, parts.length + " change(s)"), el("pre", null, json(changes)));
  return el("div", { class: "mono" }, parts.slice(0, 6), parts.length > 6 ? el("div", { class: "muted" }, "…") : null, full);
}

function timelineRow(e) {
  const extra = [];
  if (e.error) extra.push(el("div", { class: "error" }, (e.error.error_type || "error") + ": " + e.error.message));
  if (e.waiting_channel) extra.push(el("div", null, "waiting on ", el("code", null, e.waiting_channel)));
  if (e.unreadable) extra.push(el("div", { class: "error" }, "unreadable: " + e.unreadable));
  for (const l of e.pending_launches || []) extra.push(el("div", null, "launch ", el("code", null, l.machine), " → ", runLink(l.execution_id), l.launched ? " (started)" : " (not started)"));
  if (e.output) extra.push(el("details", null, el("summary", null, "output"), el("pre", null, json(e.output))));
  return el("tr", { "data-index": e.index },
    el("td", { class: "num" }, String(e.step)),
    el("td", null, e.event),
    el("td", { class: "mono" }, e.state || "?"),
    el("td", null, when(e.created_at)),
    el("td", null, describeChanges(e.changes), extra));
}

function messageBlock(m) {
  return el("div", null,
    el("div", { class: "role" }, m.role + (m.tool_call_id ? " (" + m.tool_call_id + ")" : "")),
    el("pre", { class: "msg" }, m.content),
    (m.tool_calls || []).map((c) => el("pre", null, "→ " + c.name + "(" + c.arguments + ")")));
}

function callCard(c, i) {
  const usage = c.usage || {};
  const head = el("div", { class: "head" },
    el("strong", null, "#" + (i + 1) + " " + c.state),
    el("span", null, "agent ", el("code", null, c.agent), c.tool_loop ? " (tool loop)" : ""),
    el("span", null, "step " + c.step),
    el("span", null, Math.round(c.latency_ms) + " ms"),
    el("span", null, (usage.input_tokens || 0) + " in / " + (usage.output_tokens || 0) + " out tokens"),
    el("span", null, money(c.cost)),
    el("span", null, c.api_calls + " call(s)"),
    c.error ? el("span", { class: "error" }, c.error.error_type) : null);
  const body = el("div", { class: "body" });
  if (c.error) body.append(el("pre", { class: "error" }, c.error.error_type + ": " + c.error.message));
  (c.exchanges || []).forEach((x, n) => {
    const parts = [];
    if (x.omitted_messages) parts.push(el("div", { class: "muted" }, x.omitted_messages + " message(s) not recorded"));
    parts.push(...x.messages.map(messageBlock));
    if (x.reply) {
      parts.push(el("div", { class: "role" }, "reply" + (x.reply.finish_reason ? " (" + x.reply.finish_reason + ")" : "")));
      parts.push(el("pre", { class: "reply" }, x.reply.content));
      for (const t of x.reply.tool_calls || []) parts.push(el("pre", null, "→ " + t.name + "(" + t.arguments + ")"));
    }
    if (x.error) parts.push(el("pre", { class: "error" }, x.error.error_type + ": " + x.error.message));
    body.append(el("details", { open: (c.exchanges.length === 1 || n === c.exchanges.length - 1) ? "" : null },
      el("summary", null, "model call " + (n + 1) + ": " + x.model + " · " + Math.round(x.latency_ms) + " ms"), parts));
  });
  if ((c.exchanges || []).length === 0) {
    body.append(el("div", { class: "role" }, "input"), el("pre", null, json(c.input)));
  }
  if (c.output !== null && c.output !== undefined) body.append(el("div", { class: "role" }, "output"), el("pre", { class: "output" }, json(c.output)));
  return el("div", { class: "card call" }, head, body);
}

function signalPanel(run, canSignal) {
  const area = el("textarea", { id: "signal-data", "aria-label": "signal data (JSON)" }, "{}");
  const result = el("div", { id: "signal-result" });
  const send = async (decision) => {
    let data;
    try { data = JSON.parse(area.value || "null"); } catch (e) { result.textContent = "The data is not JSON: " + e.message; result.className = "error"; return; }
    if (decision) {
      if (data === null || typeof data !== "object" || Array.isArray(data)) data = {};
      data.decision = decision;
    }
    result.textContent = "Sending…"; result.className = "";
    try {
      const response = await fetch("/api/runs/" + encodeURIComponent(run.id) + "/signal", {
        method: "POST",
        headers: { "content-type": "application/json", "x-flatmachine-token": TOKEN },
        body: JSON.stringify({ channel: run.waiting_channel, data }),
      });
      const body = await response.json().catch(() => ({}));
      if (!response.ok) throw new Error(body.error || response.statusText);
      result.textContent = "Signal sent on " + body.channel + " (" + body.id + "). The run resumes when a dispatcher delivers it.";
    } catch (e) {
      result.textContent = "Not sent: " + e.message; result.className = "error";
    }
  };
  return el("div", { class: "panel", id: "waiting" },
    el("div", null, el("strong", null, "Waiting for a signal on "), el("code", { id: "channel" }, run.waiting_channel),
      run.wait_deadline ? " until " + when(run.wait_deadline) : ""),
    canSignal
      ? el("div", null,
          el("p", { class: "muted" }, "Signal data (JSON). Approve and Reject add \"decision\": \"approve\" / \"reject\" to it."),
          area,
          el("div", { class: "toolbar" },
            el("button", { class: "primary", id: "approve", onclick: () => send("approve") }, "Approve"),
            el("button", { class: "danger", id: "reject", onclick: () => send("reject") }, "Reject"),
            el("button", { id: "send-signal", onclick: () => send(null) }, "Send data as is")),
          result)
      : el("p", { class: "muted" }, "This console has no signal store: start it with --signals to send signals from here."));
}

function linkRow(l) {
  const r = l.run;
  return el("tr", { "data-id": r.id },
    el("td", null, l.relation),
    el("td", null, runLink(r.id)),
    el("td", null, r.machine || "?"),
    el("td", null, badge(r.status)),
    el("td", { class: "mono" }, r.state || ""),
    el("td", null, l.step === null || l.step === undefined ? "" : "step " + l.step + (l.state ? " (" + l.state + ")" : "")));
}

async function loadEarlier(id, tbody, button) {
  const start = state.timelineStart;
  const offset = Math.max(0, start - 200);
  const t = await getJson("/api/runs/" + encodeURIComponent(id) + "/timeline?offset=" + offset + "&limit=" + (start - offset));
  const rows = t.entries.map(timelineRow);
  tbody.prepend(...rows);
  state.timelineStart = offset;
  if (offset === 0) button.remove();
}

async function renderRun(id) {
  const d = await getJson("/api/runs/" + encodeURIComponent(id) + "?timeline=200");
  const r = d.run;
  state.run = d;
  const title = el("h1", null, r.machine || "?", " ", el("span", { class: "muted mono" }, r.id));
  const facts = el("div", { class: "facts" },
    fact("status", badge(r.status)),
    fact("state", el("code", { id: "current-state" }, r.state || "?")),
    fact("steps", num(r.step)),
    fact("agent calls", num(r.api_calls)),
    fact("cost", money(r.cost)),
    fact("started", when(r.started_at)),
    fact("updated", when(r.updated_at)),
    fact("parent", d.parent ? runLink(d.parent.run.id) : "–"));
  const parts = [el("p", null, el("a", { href: "/" }, "← runs")), title, facts];
  if (r.failure) parts.push(el("pre", { class: "error", id: "failure" }, r.failure.error_type + ": " + r.failure.message));
  if (r.status === "waiting" && r.waiting_channel) parts.push(signalPanel(r, d.signals));
  if (r.unreadable) parts.push(el("p", { class: "error" }, "Newest checkpoint unreadable: " + r.unreadable));

  parts.push(el("h2", null, "Graph"));
  if (d.graph) {
    const version = encodeURIComponent((r.step || 0) + "-" + r.event + "-" + r.updated_at);
    parts.push(el("div", { class: "graph" }, el("img", { id: "graph", alt: "graph of " + d.graph.machine, src: "/api/runs/" + encodeURIComponent(id) + "/graph.svg?v=" + version })));
  } else {
    parts.push(el("p", { class: "muted" }, "This run wrote no graph (it ran without trace records)."));
  }
  if (d.path.steps.length) {
    const taken = d.path.steps.slice(-40).map(([, s]) => s).join(" → ");
    parts.push(el("p", { class: "muted mono", id: "path" }, (d.path.steps.length > 40 ? "… → " : "") + taken));
  }

  parts.push(el("h2", null, "Agent calls (" + d.calls.length + ")"));
  if (d.trace_omitted) parts.push(el("p", { class: "muted" }, d.trace_omitted + " older trace record(s) not shown."));
  if (d.calls.length === 0) parts.push(el("p", { class: "muted" }, "No agent calls recorded."));
  parts.push(el("div", { id: "calls" }, d.calls.map(callCard)));

  parts.push(el("h2", null, "Errors (" + d.errors.length + ")"));
  if (d.errors.length) {
    parts.push(el("table", { id: "errors" },
      el("thead", null, el("tr", null, ["Step", "State", "Error", "Route", "When"].map((h) => el("th", null, h)))),
      el("tbody", null, d.errors.map((e) => el("tr", null,
        el("td", { class: "num" }, String(e.step)),
        el("td", { class: "mono" }, e.state || "(run)"),
        el("td", { class: "error" }, e.error.error_type + ": " + e.error.message),
        el("td", null, e.kind === "failure" ? "run failed" : e.route ? el("span", null, "on_error → ", el("code", null, e.route)) : "unhandled: run failed"),
        el("td", null, when(e.at)))))));
  } else parts.push(el("p", { class: "muted" }, "No errors recorded."));

  parts.push(el("h2", null, "Children (" + d.children.length + ")"));
  if (d.children.length) {
    parts.push(el("table", { id: "children" },
      el("thead", null, el("tr", null, ["Relation", "Execution", "Machine", "Status", "State", "Started by"].map((h) => el("th", null, h)))),
      el("tbody", null, d.children.map(linkRow))));
  } else parts.push(el("p", { class: "muted" }, "No child runs found."));

  parts.push(el("h2", null, "Timeline (" + d.timeline.total + " checkpoints)"));
  const tbody = el("tbody", null, d.timeline.entries.map(timelineRow));
  state.timelineStart = d.timeline.offset;
  if (d.timeline.offset > 0) {
    const button = el("button", { id: "load-earlier" }, "Load earlier checkpoints (" + d.timeline.offset + " more)");
    button.addEventListener("click", () => loadEarlier(id, tbody, button).catch((e) => alert(e.message)));
    parts.push(button);
  }
  parts.push(el("table", { id: "timeline" },
    el("thead", null, el("tr", null, ["Step", "Event", "State", "When", "Context changes"].map((h) => el("th", null, h)))),
    tbody));
  if (d.trace_unreadable.length) parts.push(el("details", null, el("summary", { class: "error" }, d.trace_unreadable.length + " unreadable trace record(s)"), el("pre", null, d.trace_unreadable.join("\n"))));

  const keepScroll = window.scrollY;
  const focused = document.activeElement && document.activeElement.id;
  const draft = document.getElementById("signal-data");
  const draftText = draft ? draft.value : null;
  setPage(...parts);
  const area = document.getElementById("signal-data");
  if (area && draftText !== null) area.value = draftText;
  if (focused && document.getElementById(focused)) document.getElementById(focused).focus();
  window.scrollTo(0, keepScroll);
  document.title = (r.machine || "run") + " · " + r.status + " · flatmachine";
  main.setAttribute("data-status", r.status);
  main.setAttribute("data-step", String(r.step));
  markRendered();
}

function watch(id) {
  if (state.source) state.source.close();
  const liveBadge = document.getElementById("live");
  const source = new EventSource("/api/runs/" + encodeURIComponent(id) + "/events");
  state.source = source;
  let busy = false, again = false;
  const refresh = async () => {
    if (busy) { again = true; return; }
    busy = true;
    try { await renderRun(id); } catch (e) { /* keep the last page */ }
    busy = false;
    if (again) { again = false; refresh(); }
  };
  source.addEventListener("open", () => { liveBadge.hidden = false; });
  source.addEventListener("error", () => { liveBadge.hidden = true; });
  source.addEventListener("update", (event) => {
    const update = JSON.parse(event.data);
    if (!update.first) refresh();
  });
}

function markRendered() {
  window.__fmRendered = performance.now();
  main.setAttribute("data-rendered", String(window.__fmRendered));
}

// ---- Routing ---------------------------------------------------------------------------

function navigate(url) {
  history.pushState(null, "", url);
  route();
}

async function route() {
  if (state.source) { state.source.close(); state.source = null; document.getElementById("live").hidden = true; }
  const match = location.pathname.match(/^\/runs\/([^/]+)$/);
  try {
    if (match) {
      const id = decodeURIComponent(match[1]);
      await renderRun(id);
      watch(id);
    } else {
      await renderList();
    }
  } catch (e) {
    showError(e.message);
  }
}

document.addEventListener("click", (event) => {
  const a = event.target.closest("a");
  if (!a || a.origin !== location.origin || event.ctrlKey || event.metaKey || event.shiftKey || event.button !== 0) return;
  event.preventDefault();
  navigate(a.pathname + a.search);
});
window.addEventListener("popstate", route);

getJson("/api/info").then((info) => {
  state.info = info;
  document.getElementById("store").textContent = info.store ? "store: " + info.store : "";
}).catch(() => {});
route();
