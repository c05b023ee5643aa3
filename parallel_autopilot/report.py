"""The morning report: what the backlog became since a time, read from the audit trail.

Every number comes from the queue's events (the append-only trail) and the issues' rows; the
agents' time parked on a model quota from their own ``events.jsonl`` on this host (the queue
records the release, the agent its wait). ``issues.report`` prints it as Markdown, HTML or
JSON; the GUI's report page is the same HTML.

    data = build(store, since=parse_since("12h", now), now=now, logs_path=settings.logs_path)
    text = markdown(data)          # or html_page(data), or json.dumps(data)

What it says: issues merged, rejected (and why), dead, over budget, done and waiting, still
open; tokens and cost per issue and in total; the wall time; each agent's time busy, parked on
quota and idle (the rest of the window); the most common failure causes; and a plot of the
issues resolved over time, per agent (an inline SVG, drawn here: no plotting library).
"""

from __future__ import annotations

import collections
import html
import json
import re
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Iterable

from .errors import InvalidInput
from .issues import IssueStore

#: Events that end an agent's claim (the trail's kinds): its time on the issue stops there.
CLAIM_ENDS = ("done", "failed", "dead", "empty", "released", "released-agent", "expired", "abandoned")
#: Events a person or the merge queue decides (the outcomes of a review).
OPEN_STATUSES = ("ready", "claimed", "failed", "blocked")
#: How many failure causes the report lists.
TOP_CAUSES = 5
PALETTE = ("#2563eb", "#16a34a", "#d97706", "#dc2626", "#7c3aed", "#0891b2", "#db2777", "#65a30d", "#475569",
           "#ea580c")

_RELATIVE = re.compile(r"(\d+(?:\.\d+)?)\s*([smhd])")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_since(text: str | None, now: float) -> float | None:
    """``--since``: ``12h``, ``30m``, ``2d``, ``90s`` ago, or a local ISO time (``2026-12-03T08:00``)."""
    if text is None or str(text).strip() == "":
        return None
    value = str(text).strip()
    match = _RELATIVE.fullmatch(value.lower())
    if match:
        return now - float(match.group(1)) * _UNIT[match.group(2)]
    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError:
        raise InvalidInput(f"--since {value[:40]!r} is not a time: give e.g. 12h, 30m, 2d or 2026-12-03T08:00"
                           ) from None


def _cause(text: str | None) -> str:
    line = next((part.strip() for part in (text or "").splitlines() if part.strip()), "") or "(no reason given)"
    line = re.sub(r"\b[0-9a-f]{12,40}\b", "<sha>", line)  # one cause, whichever commit it names
    return line[:120]


def _quota_waits(logs_path: Path | None, start: float, end: float) -> dict[str, float]:
    """Seconds each agent of this host waited for a model quota in [start, end] (its events.jsonl)."""
    parked: dict[str, float] = collections.defaultdict(float)
    if logs_path is None:
        return parked
    for path in sorted((Path(logs_path) / "agents").glob("agent-*/events.jsonl")):
        try:
            lines = path.read_text(errors="replace").splitlines()
        except OSError:
            continue
        for line in lines:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if not isinstance(record, dict) or record.get("event") != "quota":
                continue
            try:
                at, until = float(record["ts"]), float(record["until"])
            except (KeyError, TypeError, ValueError):
                continue
            seconds = max(0.0, min(until, end) - max(at, start))
            if seconds:
                parked[path.parent.name] += seconds
    return parked


def build(store: IssueStore, *, since: float | None = None, now: float | None = None,
          logs_path: Path | None = None) -> dict[str, Any]:
    """The report of everything from ``since`` (default: the first event) to ``now``, as data."""
    now = time.time() if now is None else float(now)
    trail = store.events()
    start = float(since) if since is not None else (trail[0].at if trail else now)
    window = [e for e in trail if start <= e.at <= now]
    issues = {i.number: i for i in store.list()}

    def with_event(kind: str) -> list[int]:
        return sorted({e.issue for e in window if e.kind == kind and e.issue is not None})

    last_reason = {e.issue: e.detail for e in window if e.kind == "rejected"}
    rejected = [{"number": n, "reason": last_reason.get(n) or "", "now": issues[n].status if n in issues else None,
                 "requeued": (last_reason.get(n) or "").startswith("re-queued")} for n in with_event("rejected")]
    budget = sorted({e.issue for e in window if "budget" in e.kind and e.issue is not None})
    touched = sorted({e.issue for e in window if e.issue is not None and e.issue in issues})

    per_issue, total = [], {"input_tokens": 0, "output_tokens": 0, "cost_usd": 0.0}
    for number in touched:
        issue = issues[number]
        usage = issue.usage or {}
        row = {"number": number, "title": issue.title, "status": issue.status, "owner": issue.owner,
               "attempts": issue.attempts, "input_tokens": int(usage.get("input_tokens") or 0),
               "output_tokens": int(usage.get("output_tokens") or 0), "cost_usd": float(usage.get("cost_usd") or 0)}
        per_issue.append(row)
        for key in total:
            total[key] += row[key]
    total["cost_usd"] = round(total["cost_usd"], 6)

    # each agent's claims, from the trail: claimed .. the event that ended it (or the window's end)
    busy: dict[str, float] = collections.defaultdict(float)
    holding: dict[int, tuple[str, float]] = {}
    resolved: dict[str, list[float]] = collections.defaultdict(list)
    for e in trail:
        if e.issue is None or e.at > now:
            continue
        if e.kind == "claimed" and e.worker:
            if e.issue in holding:  # taken over: the previous holder's time ends here
                who, at = holding.pop(e.issue)
                busy[who] += max(0.0, e.at - max(at, start)) if e.at >= start else 0.0
            holding[e.issue] = (e.worker, e.at)
        elif e.kind in CLAIM_ENDS and e.issue in holding:
            who, at = holding.pop(e.issue)
            if e.at >= start:
                busy[who] += max(0.0, e.at - max(at, start))
        if e.kind == "done" and e.worker and e.at >= start:
            resolved[e.worker].append(e.at)
    for who, at in holding.values():
        busy[who] += max(0.0, now - max(at, start))
    parked = _quota_waits(logs_path, start, now)
    wall = max(0.0, now - start)
    agents = []
    for who in sorted(set(busy) | set(parked) | set(resolved)):
        b, p = round(busy.get(who, 0.0), 3), round(parked.get(who, 0.0), 3)
        agents.append({"agent": who, "busy_seconds": b, "quota_seconds": p,
                       "idle_seconds": round(max(0.0, wall - b - p), 3), "resolved": len(resolved.get(who, []))})

    causes = collections.Counter(_cause(e.detail) for e in window if e.kind in ("failed", "dead"))
    causes.update(_cause(r["reason"].removeprefix("re-queued: ")) for r in rejected)
    counts = store.counts()
    return {
        "since": start, "until": now, "wall_seconds": round(wall, 3), "events": len(window),
        "merged": with_event("merged"), "rejected": rejected, "dead": with_event("dead"),
        "over_budget": budget, "resolved": with_event("done"),
        "waiting_for_merge": sorted(n for n, i in issues.items() if i.status == "done"),
        "still_open": sorted(n for n, i in issues.items() if i.status in OPEN_STATUSES),
        "counts": counts, "issues": per_issue, "tokens": total, "agents": agents,
        "failure_causes": [{"cause": c, "count": n} for c, n in causes.most_common(TOP_CAUSES)],
        "timeline": {who: sorted(times) for who, times in sorted(resolved.items())},
    }


# -- rendering ---------------------------------------------------------------------------

def _hours(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def _when(epoch: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(epoch))


def _numbers(numbers: Iterable[int]) -> str:
    return ", ".join(f"#{n}" for n in numbers) or "none"


def markdown(data: dict[str, Any]) -> str:
    """The report as Markdown (agent-written titles and reasons with Markdown's specials escaped)."""
    def md(text: Any) -> str:
        return re.sub(r"([\\`*_{}\[\]<>()#+!|])", r"\\\1", " ".join(str(text or "").split()))

    t = data["tokens"]
    lines = [f"# Autopilot report: {_when(data['since'])} to {_when(data['until'])} ({_hours(data['wall_seconds'])})",
             "",
             f"- merged: {len(data['merged'])} ({_numbers(data['merged'])})",
             f"- rejected: {len(data['rejected'])}",
             *[f"  - #{r['number']}{' (re-queued)' if r['requeued'] else ''}: {md(r['reason'])}" for r in data["rejected"]],
             f"- dead: {len(data['dead'])} ({_numbers(data['dead'])})",
             f"- over budget: {len(data['over_budget'])} ({_numbers(data['over_budget'])})",
             f"- done, waiting for the merge queue: {len(data['waiting_for_merge'])}",
             f"- still open: {len(data['still_open'])}",
             f"- tokens: {t['input_tokens']} in, {t['output_tokens']} out, ${t['cost_usd']:.4f}",
             "", "## Issues", "", "| issue | status | agent | attempts | tokens in/out | cost |", "|---|---|---|---|---|---|"]
    lines += [f"| #{i['number']} {md(i['title'])} | {i['status']} | {md(i['owner'] or '')} | {i['attempts']} | "
              f"{i['input_tokens']}/{i['output_tokens']} | ${i['cost_usd']:.4f} |" for i in data["issues"]]
    lines += ["", "## Agents", "", "| agent | busy | parked on quota | idle | resolved |", "|---|---|---|---|---|"]
    lines += [f"| {md(a['agent'])} | {_hours(a['busy_seconds'])} | {_hours(a['quota_seconds'])} | "
              f"{_hours(a['idle_seconds'])} | {a['resolved']} |" for a in data["agents"]]
    lines += ["", "## Most common failure causes", ""]
    lines += [f"{n}. {md(c['cause'])} ({c['count']})" for n, c in enumerate(data["failure_causes"], 1)] or ["none"]
    return "\n".join(lines) + "\n"


def plot_svg(data: dict[str, Any], width: int = 640, height: int = 240) -> str:
    """Issues resolved over time, one line per agent: an inline SVG (no script, text escaped)."""
    left, right, top, bottom = 40, 130, 10, 30
    x0, x1 = data["since"], max(data["until"], data["since"] + 1)
    series = data["timeline"]
    peak = max([len(times) for times in series.values()] + [1])
    sx = lambda t: left + (t - x0) / (x1 - x0) * (width - left - right)  # noqa: E731
    sy = lambda n: height - bottom - n / peak * (height - top - bottom)  # noqa: E731
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" id="resolved-plot" role="img" width="{width}" '
             f'height="{height}" viewBox="0 0 {width} {height}" aria-label="issues resolved over time, per agent">',
             f'<line x1="{left}" y1="{sy(0):.1f}" x2="{width - right}" y2="{sy(0):.1f}" stroke="#9ca3af"/>',
             f'<line x1="{left}" y1="{top}" x2="{left}" y2="{sy(0):.1f}" stroke="#9ca3af"/>',
             f'<text x="{left - 6}" y="{top + 10}" text-anchor="end" font-size="11">{peak}</text>',
             f'<text x="{left - 6}" y="{sy(0):.1f}" text-anchor="end" font-size="11">0</text>',
             f'<text x="{left}" y="{height - 8}" font-size="11">{html.escape(_when(x0))}</text>',
             f'<text x="{width - right}" y="{height - 8}" text-anchor="end" font-size="11">'
             f'{html.escape(_when(x1))}</text>']
    for index, (who, times) in enumerate(series.items()):
        colour = PALETTE[index % len(PALETTE)]
        points, count = [f"{sx(x0):.1f},{sy(0):.1f}"], 0
        for at in times:
            points.append(f"{sx(at):.1f},{sy(count):.1f}")
            count += 1
            points.append(f"{sx(at):.1f},{sy(count):.1f}")
        points.append(f"{sx(x1):.1f},{sy(count):.1f}")
        parts.append(f'<polyline class="series" data-agent="{html.escape(who)}" fill="none" stroke="{colour}" '
                     f'stroke-width="2" points="{" ".join(points)}"/>')
        parts.append(f'<text x="{width - right + 8}" y="{top + 14 + 16 * index}" font-size="12" fill="{colour}">'
                     f'{html.escape(who)} ({count})</text>')
    parts.append("</svg>")
    return "".join(parts)


def html_page(data: dict[str, Any], *, issue_links: str | None = "/issues/", stylesheet: str | None = None,
              inline_style: bool = True, home: str | None = None, link_query: str = "") -> str:
    """The report as one HTML page with its plot; every agent-written text escaped.

    ``issue_links``: the issue pages' URL prefix (the GUI's), None for no links (a file by mail).
    ``stylesheet``: a stylesheet to link (the GUI's, which forbids inline styles); else ``inline_style``.
    ``home``: the pane's URL, for a link back (the GUI's page); ``link_query``: appended to every
    link (the GUI's ``?token=...`` when it is served publicly).
    """
    e = lambda v: html.escape(str(v if v is not None else ""))  # noqa: E731
    t = data["tokens"]

    def issue_cell(number: int, title: str = "") -> str:
        label = f"#{number}" + (f" {e(title)}" if title else "")
        return f'<a href="{e(issue_links)}{int(number)}{e(link_query)}">{label}</a>' if issue_links else label

    def numbers(values: list[int]) -> str:
        return ", ".join(issue_cell(n) for n in values) or "none"

    head = (f'<link rel="stylesheet" href="{e(stylesheet)}">' if stylesheet else
            "<style>body{font:14px system-ui,sans-serif;margin:24px;color:#1d2430}table{border-collapse:collapse}"
            "td,th{text-align:left;padding:2px 8px;border-bottom:1px solid #dfe2e7}</style>" if inline_style else "")
    rows = "".join(f"<tr data-issue=\"{int(i['number'])}\"><td>{issue_cell(i['number'], i['title'])}</td>"
                   f"<td>{e(i['status'])}</td><td>{e(i['owner'])}</td><td>{i['attempts']}</td>"
                   f"<td>{i['input_tokens']}/{i['output_tokens']}</td><td>${i['cost_usd']:.4f}</td></tr>"
                   for i in data["issues"])
    agents = "".join(f"<tr data-agent=\"{e(a['agent'])}\"><td>{e(a['agent'])}</td><td>{_hours(a['busy_seconds'])}</td>"
                     f"<td>{_hours(a['quota_seconds'])}</td><td>{_hours(a['idle_seconds'])}</td><td>{a['resolved']}</td></tr>"
                     for a in data["agents"])
    rejected = "".join(f"<li data-issue=\"{int(r['number'])}\">{issue_cell(r['number'])}"
                       f"{' (re-queued)' if r['requeued'] else ''}: {e(r['reason'])}</li>" for r in data["rejected"])
    causes = "".join(f"<li>{e(c['cause'])} ({c['count']})</li>" for c in data["failure_causes"]) or "<li>none</li>"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Autopilot report</title>{head}</head>
<body>{f'<header class="topbar"><span class="brand">Autopilot GUI</span><nav aria-label="views"><a class="tab" href="{e(home)}{e(link_query)}">Parallel Agents</a><span class="tab active" aria-current="page">Report</span></nav></header>' if home else ""}
<main class="report">
<h1>Report: {e(_when(data['since']))} to {e(_when(data['until']))} ({_hours(data['wall_seconds'])})</h1>
<ul id="summary">
<li data-count="merged">merged: <b>{len(data['merged'])}</b> ({numbers(data['merged'])})</li>
<li data-count="rejected">rejected: <b>{len(data['rejected'])}</b><ul>{rejected}</ul></li>
<li data-count="dead">dead: <b>{len(data['dead'])}</b> ({numbers(data['dead'])})</li>
<li data-count="over_budget">over budget: <b>{len(data['over_budget'])}</b> ({numbers(data['over_budget'])})</li>
<li data-count="waiting">done, waiting for the merge queue: <b>{len(data['waiting_for_merge'])}</b></li>
<li data-count="open">still open: <b>{len(data['still_open'])}</b></li>
<li data-count="tokens">tokens: <b>{t['input_tokens']}</b> in, <b>{t['output_tokens']}</b> out, <b>${t['cost_usd']:.4f}</b></li>
</ul>
<h2>Issues resolved over time, per agent</h2>
{plot_svg(data)}
<h2>Issues</h2>
<table class="report-table" id="issues"><tr><th>issue</th><th>status</th><th>agent</th><th>attempts</th>
<th>tokens in/out</th><th>cost</th></tr>{rows}</table>
<h2>Agents</h2>
<table class="report-table" id="agents"><tr><th>agent</th><th>busy</th><th>parked on quota</th><th>idle</th>
<th>resolved</th></tr>{agents}</table>
<h2>Most common failure causes</h2>
<ol id="causes">{causes}</ol>
</main></body></html>
"""


def render(data: dict[str, Any], fmt: str) -> str:
    """``md``, ``html`` or ``json``; InvalidInput for another format."""
    if fmt == "md":
        return markdown(data)
    if fmt == "html":
        return html_page(data, issue_links=None)
    if fmt == "json":
        return json.dumps(data, indent=2, sort_keys=True)
    raise InvalidInput(f"--format {fmt!r} is not one of md, html, json")


__all__ = ["build", "parse_since", "markdown", "html_page", "plot_svg", "render"]
