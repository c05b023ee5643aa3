// The Parallel Agents pane. Live state arrives as server-sent events (one
// "snapshot" per change); the page never polls. Every value from the server
// is inserted as text, never as HTML (issue titles and log lines are data).
"use strict";

// common.js (loaded first) gives CSRF, TOKEN, $, withToken, el, api, tokenText.

const state = {
  snapshot: null,
  receivedAt: 0,         // performance.now() when the snapshot arrived (uptimes tick locally)
  actionError: null,     // the last failed request, until dismissed or superseded
  connection: "connecting",
  pending: false,        // a start/stop/restart request is in flight
  selected: null,        // agent whose logs are shown
  logSource: null,
  logLines: 0,
  staleOperation: null,  // id of an operation whose outcome no longer needs showing
  countChosen: false,    // the user picked a count: keep it
};

async function act(method, path, body) {
  state.pending = true;
  state.actionError = null;
  // the previous operation's outcome is old news once the user acts again
  const op = state.snapshot && state.snapshot.operation;
  state.staleOperation = op ? op.id : null;
  render();
  try {
    await api(method, path, body);
  } catch (err) {
    state.actionError = err.message;
  } finally {
    state.pending = false;
    render();
  }
}

// -- live state ---------------------------------------------------------------

function connect() {
  const source = new EventSource(withToken("/api/events"));
  // "live" only once the stream has delivered a snapshot: an open connection alone shows nothing yet
  source.addEventListener("open", () => { if (state.connection === "lost") state.connection = "connecting"; render(); });
  source.addEventListener("snapshot", (event) => {
    state.snapshot = JSON.parse(event.data);
    state.receivedAt = performance.now();
    state.connection = "live";
    render();
  });
  source.addEventListener("error", () => {
    state.connection = "lost";
    renderLive();
    renderBanner();
    if (source.readyState === EventSource.CLOSED) {
      // refused (e.g. token) or the server went away for good: try again later
      setTimeout(connect, 3000);
    }
  });
}

// -- rendering ------------------------------------------------------------------

function render() {
  renderLive();
  renderBanner();
  const snap = state.snapshot;
  if (!snap) return;
  $("repo").textContent = snap.repo || "";
  renderControls(snap);
  renderAgents(snap);
  renderIssues(snap);
  renderDone(snap);
  renderMergeQueue(snap);
  renderResources(snap.resources || {}, snap.max_agents);
}

function renderLive() {
  const live = $("live");
  live.dataset.state = state.connection;
  live.textContent = { live: "live", lost: "reconnecting...", connecting: "connecting..." }[state.connection];
}

function renderBanner() {
  const messages = [];
  if (state.actionError) messages.push({ text: state.actionError, kind: "error" });
  for (const text of (state.snapshot && state.snapshot.errors) || []) messages.push({ text, kind: "error" });
  if (state.connection === "lost") {
    messages.push({ text: "Lost the live connection to the GUI server; reconnecting...", kind: "warning" });
  }
  const unique = messages.filter((m, i) => messages.findIndex((o) => o.text === m.text) === i);
  const list = $("banner-messages");
  list.replaceChildren(...unique.map((m) => el("li", { class: m.kind }, m.text)));
  $("banner").hidden = messages.length === 0;
  $("banner-close").hidden = !state.actionError;
}

function renderControls(snap) {
  const select = $("count");
  const max = Math.max(1, snap.max_agents || 1);
  if (select.options.length !== max) {
    const keep = Number(select.value) || 0;
    select.replaceChildren(...Array.from({ length: max }, (_, i) => el("option", { value: String(i + 1) }, i + 1)));
    if (state.countChosen && keep >= 1 && keep <= max) select.value = String(keep);
  }
  if (!state.countChosen) {
    const running = snap.agents.length;
    select.value = String(Math.min(max, running || 3));
  }
  const op = snap.operation;
  const busy = state.pending || (op && op.state === "running");
  $("start").disabled = busy;
  $("stop-all").disabled = busy || snap.agents.length === 0;
  select.disabled = busy;
  const label = $("operation");
  if (op && !(op.id === state.staleOperation && op.state !== "running")) {
    const last = op.lines.length ? op.lines[op.lines.length - 1] : "";
    const text = {
      running: `${op.action} ${op.detail}${last ? ": " + last : "..."}`,
      done: `${op.action} ${op.detail}: done`,
      failed: `${op.action} ${op.detail} failed${op.error ? ": " + op.error : ""}`,
    }[op.state];
    label.textContent = text;
    label.dataset.state = op.state;
  } else {
    label.textContent = state.pending ? "working..." : "";
    label.dataset.state = state.pending ? "running" : "";
  }
}

// The uptime ticks here between snapshots (none is pushed for the clock alone: uptime and
// uptime_text are volatile), so the page counts on from the API's `uptime` seconds.
function uptimeSeconds(agent) {
  if (agent.uptime === null || agent.uptime === undefined) return null;
  return agent.uptime + (performance.now() - state.receivedAt) / 1000;
}

function formatDuration(seconds) {
  if (seconds === null) return "-";
  seconds = Math.max(0, Math.floor(seconds));
  const h = Math.floor(seconds / 3600);
  const m = Math.floor((seconds % 3600) / 60);
  const s = seconds % 60;
  if (h) return `${h}h ${String(m).padStart(2, "0")}m`;
  if (m) return `${m}m ${String(s).padStart(2, "0")}s`;
  return `${s}s`;
}

// What an agent does is the API's words (AgentStatus.status and .doing: what `agents.status`
// prints too); the page only picks a colour for them and writes them in sentence case.
const STARTING = ["starting", "created", "restarting"];

function dotClass(agent) {
  if (agent.problem || agent.status === "unhealthy") return "bad";
  if (agent.status !== "ready") return STARTING.includes(agent.status) ? "starting" : "bad";
  if (agent.activity === "quota" || agent.activity === "stopping" || agent.doing === "booting") return "starting";
  return agent.issue !== null && agent.issue !== undefined ? "working" : "idle";
}

function describe(agent, readyCount) {
  // -> [dot class, what it does]
  const doing = String(agent.doing || agent.status || agent.state || "");
  const text = doing.charAt(0).toUpperCase() + doing.slice(1);
  return [dotClass(agent), agent.doing === "idle" && readyCount === 0 ? `${text} (no issues)` : text];
}

function renderAgents(snap) {
  const busy = state.pending || (snap.operation && snap.operation.state === "running");
  const ready = (snap.counts && snap.counts.ready) || 0;
  const rows = snap.agents.map((agent) => {
    const [dot, text] = describe(agent, ready);
    return el("div", { class: "agent" + (agent.id === state.selected ? " selected" : ""), role: "listitem",
                       "data-agent": agent.id, "data-activity": dot },
      el("span", { class: `dot ${dot}`, title: `${agent.state}${agent.health ? " / " + agent.health : ""}` }),
      el("span", { class: "id" }, agent.id),
      el("span", { class: "activity", title: text }, text),
      el("span", { class: "tokens", title: agent.cli ? `agent CLI: ${agent.cli}` : "no model CLI" },
        tokenText(agent.tokens) + (agent.cli ? ` · ${agent.cli}` : "")),
      el("span", { class: "uptime" }, formatDuration(uptimeSeconds(agent))),
      el("span", { class: "actions" },
        el("button", { type: "button", class: "view-logs", onclick: () => openLogs(agent.id) }, "View Logs"),
        el("button", { type: "button", class: "restart", disabled: busy, title: `restart ${agent.id}`,
                       onclick: () => act("POST", `/api/agents/${encodeURIComponent(agent.id)}/restart`) }, "Restart"),
        el("button", { type: "button", class: "stop danger", disabled: busy, title: `stop ${agent.id}`,
                       onclick: () => act("POST", "/api/agents/stop", { ids: [agent.id] }) }, "Stop")));
  });
  $("agents").replaceChildren(...rows);
  if (state.selected && state.logSource && !snap.agents.some((a) => a.id === state.selected)) {
    $("logs-state").textContent = "(agent stopped: its last lines)";
  }
  $("agent-count").textContent = snap.agents.length;
  $("no-agents").hidden = snap.agents.length > 0;
}

function issueLink(issue) {
  // the number is the server's integer; the title is agent-written: text only
  return el("a", { class: "title issue-link", href: withToken(`/issues/${Number(issue.number)}`), title: issue.title }, issue.title);
}

function renderDone(snap) {
  const items = (snap.done || []).map((issue) => el("li", { "data-issue": issue.number, "data-status": "done" },
    el("span", { class: "num" }, `#${issue.number}`),
    issueLink(issue),
    el("span", { class: "owner" }, issue.owner || ""),
    el("span", { class: "tokens" }, tokenText(issue.usage))));
  $("done").replaceChildren(...items);
  $("no-done").hidden = items.length > 0;
}

function renderIssues(snap) {
  const items = snap.issues.map((issue) => el("li", { "data-issue": issue.number, "data-status": issue.status },
    el("span", { class: "num" }, `#${issue.number}`),
    el("span", { class: `prio ${issue.priority}` }, issue.priority),
    issueLink(issue),
    // issue 21: what it waits for, in the store's words (text, never markup)
    el("span", { class: "waiting", title: issue.waiting || "" }, issue.waiting || ""),
    el("span", { class: "owner" }, issue.status === "claimed" ? `${issue.owner || ""}` : "")));
  $("issues").replaceChildren(...items);
  $("open-total").textContent = snap.open_total;
  $("no-issues").hidden = snap.open_total > 0;
  const more = snap.open_total - snap.issues.length;
  $("more-issues").hidden = more <= 0;
  $("more-issues").textContent = more > 0 ? `and ${more} more (GET /api/issues lists them all)` : "";
  const counts = snap.counts || {};
  const parts = ["ready", "claimed", "done", "failed", "dead", "blocked", "empty", "merged", "rejected"]
    .filter((k) => !["blocked", "empty", "merged", "rejected"].includes(k) || counts[k])
    .map((k) => el("span", { "data-count": k }, `${k} `, el("b", {}, counts[k] || 0)));
  const line = [];
  parts.forEach((part, i) => { if (i) line.push(" \u00b7 "); line.push(part); });
  $("counts").replaceChildren(...line);
}

// the merge queue (issue 10): testing first, then queued, then the latest rejected and merged
function renderMergeQueue(snap) {
  const mq = snap.merge_queue || { queued: [], testing: [], merged: [], rejected: [] };
  const phases = ["testing", "queued", "rejected", "merged"];
  const items = [];
  for (const phase of phases) {
    for (const issue of mq[phase] || []) {
      const check = issue.check_status
        ? `check ${issue.check_status}${issue.check_duration != null ? ` ${issue.check_duration.toFixed(1)}s` : ""}`
        : "";
      const detail = phase === "merged" ? (issue.merge_commit || "").slice(0, 10)
        : phase === "rejected" ? (issue.error || "") : check;
      items.push(el("li", { "data-issue": issue.number, "data-phase": phase },
        el("span", { class: "num" }, `#${issue.number}`),
        el("span", { class: `phase ${phase}` }, phase),
        issueLink(issue),
        el("span", { class: "detail", title: detail }, detail)));
    }
  }
  $("merge-queue").replaceChildren(...items);
  const loop = snap.merge_loop || { running: false, lines: [] };
  $("mq-state").textContent = loop.running
    ? `running continuously (started by ${loop.by || "?"})${loop.lines.length ? ": " + loop.lines[loop.lines.length - 1] : ""}`
    : (loop.lines.length ? `stopped: ${loop.lines[loop.lines.length - 1]}` : "");
  $("mq-loop").disabled = loop.running;
  $("mq-stop").disabled = !loop.running;
  $("no-merge").hidden = items.length > 0;
  const line = [];
  phases.forEach((k, i) => {
    if (i) line.push(" \u00b7 ");
    line.push(el("span", { "data-count": k }, `${k} `, el("b", {}, (mq[k] || []).length)));
  });
  $("merge-counts").replaceChildren(...line);
}

function gigabytes(bytes) {
  if (bytes === null || bytes === undefined) return "?";
  return `${(bytes / 1024 ** 3).toFixed(bytes >= 10 * 1024 ** 3 ? 0 : 1)} GB`;
}

function renderResources(r, max) {
  const parts = [
    el("span", {}, "Platform: ", el("b", {}, r.platform || "?")),
    el("span", {}, "Memory: ", el("b", {}, `${gigabytes(r.memory_used)} / ${gigabytes(r.memory_total)}`)),
    el("span", {}, "CPUs: ", el("b", {}, r.cpus ?? "?")),
    el("span", {}, "Max: ", el("b", {}, max ?? r.max_agents ?? "?")),
  ];
  if (r.memory_per_agent || r.cpus_per_agent) {
    parts.push(el("span", {}, "Per agent: ", el("b", {}, `${r.memory_per_agent ?? "?"}, ${r.cpus_per_agent ?? "?"} CPU`)));
  }
  if (r.docker !== undefined) {
    parts.push(el("span", { class: r.docker ? "" : "bad" }, "Docker: ", el("b", {}, r.docker ? "running" : "unreachable")));
  }
  $("resources").replaceChildren(...parts);
}

// -- logs ---------------------------------------------------------------------------

const MAX_LOG_LINES = 5000;

function openLogs(agent) {
  closeLogs();
  state.selected = agent;
  $("logs-card").hidden = false;
  $("logs-agent").textContent = agent;
  $("logs-state").textContent = "connecting...";
  const pre = $("logs");
  pre.replaceChildren();
  const source = new EventSource(withToken(`/api/agents/${encodeURIComponent(agent)}/logs/stream?tail=200`));
  state.logSource = source;
  source.addEventListener("open", () => {
    pre.replaceChildren();  // every (re)connection starts with the tail again
    state.logLines = 0;
    $("logs-state").textContent = "following";
  });
  source.addEventListener("lines", (event) => {
    const atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 20;
    const lines = JSON.parse(event.data);
    pre.append(document.createTextNode(lines.join("\n") + "\n"));
    state.logLines += lines.length;
    if (state.logLines > MAX_LOG_LINES * 1.2) {  // trim now and then, not on every event
      pre.textContent = pre.textContent.split("\n").slice(-MAX_LOG_LINES - 1).join("\n");
      state.logLines = MAX_LOG_LINES;
    }
    if (atBottom) pre.scrollTop = pre.scrollHeight;
  });
  source.addEventListener("failure", (event) => {
    $("logs-state").textContent = JSON.parse(event.data).error;
  });
  source.addEventListener("end", () => {
    $("logs-state").textContent = "(log stream ended)";
    source.close();
  });
  source.addEventListener("error", () => {
    if (source.readyState === EventSource.CLOSED) {
      $("logs-state").textContent = "no logs for this agent (it is gone?)";
    } else {
      $("logs-state").textContent = "reconnecting...";
    }
  });
  if (state.snapshot) renderAgents(state.snapshot);
}

function closeLogs() {
  if (state.logSource) state.logSource.close();
  state.logSource = null;
  state.selected = null;
  $("logs-card").hidden = true;
  if (state.snapshot) renderAgents(state.snapshot);
}

// -- wiring ---------------------------------------------------------------------------

function main() {
  $("count").addEventListener("change", () => { state.countChosen = true; });
  $("start").addEventListener("click", () => {
    state.countChosen = true;
    act("POST", "/api/agents/start", { n: Number($("count").value) });
  });
  $("stop-all").addEventListener("click", () => act("POST", "/api/agents/stop", { all: true }));
  $("banner-close").addEventListener("click", () => { state.actionError = null; renderBanner(); });
  $("logs-close").addEventListener("click", closeLogs);
  $("nav-report").href = withToken("/report");
  $("add-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const body = { title: $("add-title").value, body: $("add-body").value, priority: $("add-priority").value };
    if ($("add-check").value.trim()) body.check = $("add-check").value;
    if ($("add-script").value.trim()) body.script = $("add-script").value;
    // the backlog's order (issue 21): numbers it waits for, globs it touches; the store checks them
    const after = $("add-after").value.split(",").map((n) => n.trim().replace(/^#/, "")).filter(Boolean);
    if (after.length) body.depends_on = after.map((n) => (/^\d+$/.test(n) ? Number(n) : n));
    const paths = $("add-paths").value.split(",").map((p) => p.trim()).filter(Boolean);
    if (paths.length) body.paths = paths;
    act("POST", "/api/issues", body).then(() => { if (!state.actionError) $("add-title").value = ""; });
  });
  $("import-file").addEventListener("change", async () => {
    const file = $("import-file").files[0];
    if (!file) return;
    await act("POST", "/api/issues/import", { text: await file.text(), name: file.name });
    $("import-file").value = "";
  });
  $("mq-run").addEventListener("click", () => act("POST", "/api/merge-queue/run", { dry_run: false }));
  $("mq-dry").addEventListener("click", () => act("POST", "/api/merge-queue/run", { dry_run: true }));
  $("mq-loop").addEventListener("click", () => act("POST", "/api/merge-queue/continuous"));
  $("mq-stop").addEventListener("click", () => act("POST", "/api/merge-queue/stop"));
  // uptimes tick between snapshots from the last one received (no request)
  setInterval(() => {
    if (!state.snapshot) return;
    for (const row of document.querySelectorAll(".agent")) {
      const agent = state.snapshot.agents.find((a) => a.id === row.dataset.agent);
      if (agent) row.querySelector(".uptime").textContent = formatDuration(uptimeSeconds(agent));
    }
  }, 1000);
  // the server put the state of the moment it made the page in it: paint that now (still
  // "connecting"), so the first paint is never a blank "No agents" before the first event
  const first = document.getElementById("first-snapshot");
  try {
    const snap = first && JSON.parse(first.textContent);
    if (snap) { state.snapshot = snap; state.receivedAt = performance.now(); }
  } catch (_) { /* no usable first snapshot: wait for the stream */ }
  render();
  connect();
}

document.addEventListener("DOMContentLoaded", main);
