// One issue's page: its facts, diff, check, timeline and attempts, and the review actions.
// The data comes from /api/issues/N/page (git through the library, never the browser);
// it is fetched again whenever the live stream says something changed.
"use strict";

const NUMBER = Number(location.pathname.split("/").filter(Boolean).pop());
const page = { data: null, busy: false, again: false, operation: "" };

async function load() {
  if (page.busy) { page.again = true; return; }
  page.busy = true;
  try {
    page.data = await api("GET", `/api/issues/${NUMBER}/page`);
    render(page.data);
  } catch (err) {
    showError(err.message);
  } finally {
    page.busy = false;
    if (page.again) { page.again = false; setTimeout(load, 300); }
  }
}

// the page's data again at most every LOAD_EVERY ms however often the fleet changes (a diff costs git work)
const LOAD_EVERY = 1000;
let lastLoad = 0;
let pendingLoad = null;

function scheduleLoad() {
  if (pendingLoad) return;
  const wait = Math.max(0, lastLoad + LOAD_EVERY - performance.now());
  pendingLoad = setTimeout(() => { pendingLoad = null; lastLoad = performance.now(); load(); }, wait);
}

function render(data) {
  const issue = data.issue;
  document.title = `#${issue.number} ${issue.title} - Autopilot`;
  $("issue-title").textContent = `#${issue.number} ${issue.title}`;
  $("issue-status").textContent = issue.status;
  $("issue-status").dataset.status = issue.status;
  document.body.dataset.status = issue.status;
  const facts = [
    ["status", issue.status], ["priority", issue.priority], ["agent", issue.owner || ""],
    ["attempts", `${issue.attempts}/${issue.max_attempts}`], ["branch", issue.branch || ""],
    ["commit", (issue.commit || "").slice(0, 12)], ["merged as", (issue.merge_commit || "").slice(0, 12)],
    ["tokens", tokenText(data.usage)], ["duration", issue.duration != null ? `${issue.duration.toFixed(1)}s` : ""],
    ["error", issue.error || ""], ["feedback for the next attempt", issue.feedback || ""],
  ];
  for (const [key, value] of Object.entries(data.extra || {})) {
    facts.push([key.replace(/_/g, " "), Array.isArray(value) ? value.join(", ") : (typeof value === "object" ? JSON.stringify(value) : value)]);
  }
  $("facts").replaceChildren(...facts.filter(([, v]) => v !== "" && v !== null && v !== undefined)
    .flatMap(([k, v]) => [el("dt", {}, k), el("dd", { "data-fact": k }, v)]));
  $("issue-body").textContent = issue.body || "(no description)";
  $("priority").value = issue.priority;
  renderDiff(data.diff);
  const check = data.check || {};
  $("check-status").textContent = check.status
    ? `${check.status}${check.duration != null ? ` in ${check.duration.toFixed(1)}s` : ""}` : "not run yet";
  $("check-output").textContent = check.output || "";
  $("timeline").tBodies[0].replaceChildren(...data.timeline.map((e) => el("tr", { "data-kind": e.kind },
    el("td", { class: "mono" }, localTime(e.at)), el("td", {}, e.kind), el("td", {}, e.who || ""),
    el("td", { class: "detail" }, e.detail || ""))));
  $("attempts").replaceChildren(...data.attempts.map((a) => el("details", { "data-attempt": a.attempt },
    el("summary", {}, `attempt ${a.attempt} by ${a.agent} (${a.size} bytes${a.truncated ? ", its end shown" : ""})`),
    el("pre", { class: "logs" }, a.log))));
  $("no-attempts").hidden = data.attempts.length > 0;
  const done = issue.status === "done";
  $("merge").disabled = !done;
  $("merge-dry").disabled = !done;
}

function renderDiff(diff) {
  const files = (diff && diff.files) || [];
  $("diff-error").hidden = !(diff && diff.error);
  $("diff-error").textContent = (diff && diff.error) || "";
  $("diff-stat").textContent = diff && diff.from
    ? `${files.length} file${files.length === 1 ? "" : "s"}, +${diff.added} -${diff.deleted} against ${diff.base} at ${diff.from.slice(0, 10)}` : "";
  $("diff-files").replaceChildren(...files.map((f) => el("li", { "data-file": f.path },
    el("span", { class: "mono" }, f.path), " ",
    f.binary ? el("span", { class: "muted" }, "binary file") : el("span", { class: "counts" }, `+${f.added} -${f.deleted}`))));
  $("diff").replaceChildren(...files.map((f) => {
    const box = el("details", { class: "file", "data-file": f.path, "data-folded": f.folded ? "yes" : "no" },
      el("summary", { class: "mono" }, f.path + (f.binary ? " (binary)" : f.folded ? ` (large: ${f.added + f.deleted} lines changed, click to open)` : "")));
    box.open = !f.folded && !f.binary && !f.omitted;
    if (f.binary) box.append(el("p", { class: "muted" }, "binary file: not shown"));
    else if (f.omitted) box.append(el("p", { class: "muted" }, "not shown: the diff is too large (see git)"));
    else box.append(patchView(f.patch || ""));
    return box;
  }));
}

function patchView(patch) {
  const pre = el("pre", { class: "patch" });
  const lines = patch.split("\n");
  for (const line of lines) {
    if (line.startsWith("diff --git") || line.startsWith("index ") || line.startsWith("--- ") || line.startsWith("+++ ")) continue;
    const kind = line.startsWith("@@") ? "hunk" : line.startsWith("+") ? "add" : line.startsWith("-") ? "del" : "ctx";
    pre.append(el("span", { class: kind }, line + "\n"));
  }
  return pre;
}

async function act(path, body) {
  showError(null);
  $("operation").textContent = "working...";
  try {
    await api("POST", path, body);
    $("operation").textContent = "done";
  } catch (err) {
    $("operation").textContent = "";
    showError(err.message);
  }
  await load();
}

function connect() {
  const source = new EventSource(withToken("/api/events"));
  source.addEventListener("snapshot", (event) => {
    $("live").dataset.state = "live";
    $("live").textContent = "live";
    const snap = JSON.parse(event.data);
    if (snap.operation && snap.operation.state === "running") {
      $("operation").textContent = `${snap.operation.action} ${snap.operation.detail}: ${snap.operation.lines.slice(-1)[0] || "running"}`;
    }
    scheduleLoad();
  });
  source.addEventListener("error", () => {
    $("live").dataset.state = "lost";
    $("live").textContent = "reconnecting";
  });
}

function main() {
  $("nav-home").href = withToken("/");
  $("nav-report").href = withToken("/report");
  $("banner-close").addEventListener("click", () => showError(null));
  $("merge").addEventListener("click", () => act(`/api/issues/${NUMBER}/merge`, { dry_run: false }));
  $("merge-dry").addEventListener("click", () => act(`/api/issues/${NUMBER}/merge`, { dry_run: true }));
  $("send-back").addEventListener("click", () => act(`/api/issues/${NUMBER}/send-back`, { note: $("note").value }));
  $("reject").addEventListener("click", () => act(`/api/issues/${NUMBER}/reject`, { note: $("note").value }));
  $("retry").addEventListener("click", () => act(`/api/issues/${NUMBER}/retry`));
  $("block").addEventListener("click", () => act(`/api/issues/${NUMBER}/block`));
  $("priority").addEventListener("change", () => act(`/api/issues/${NUMBER}/priority`, { priority: $("priority").value }));
  load();
  connect();
}

document.addEventListener("DOMContentLoaded", main);
