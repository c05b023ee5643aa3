"""A benchmark report: the machine it ran on, as JSON, a Markdown table and a PNG chart.

:func:`write` puts ``<stamp>.json``, ``<stamp>.md`` and ``<stamp>.png`` in the
results directory. The chart shows speedup against N with the ideal line
(scenario ``throughput``) and start-up time against N, ours and bare
(scenario ``startup``); a panel whose scenario did not run says so.
"""

from __future__ import annotations

import json
import math
import os
import platform
import sqlite3
import subprocess
from pathlib import Path
from typing import Any, Callable, Sequence

Runner = Callable[..., subprocess.CompletedProcess]


# -- the machine ---------------------------------------------------------------

def _first_line(argv: Sequence[str], runner: Runner) -> str | None:
    try:
        proc = runner(list(argv), capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    out = (proc.stdout or "").strip().splitlines()
    return out[0].strip() if proc.returncode == 0 and out else None


def machine(runner: Runner = subprocess.run) -> dict[str, Any]:
    """CPU count, RAM, OS, Python, SQLite, Docker and Compose versions of this host."""
    try:
        import psutil

        memory = int(psutil.virtual_memory().total)
        cpus = psutil.cpu_count(logical=True)
    except ImportError:  # psutil is a dependency; degrade anyway
        memory, cpus = None, os.cpu_count()
    compose = _first_line(["docker", "compose", "version", "--short"], runner)
    compose_v1 = _first_line(["docker-compose", "version", "--short"], runner)
    return {
        "cpus": cpus,
        "memory_bytes": memory,
        "memory_gib": round(memory / 1024**3, 1) if memory else None,
        "os": f"{platform.system()} {platform.release()}",
        "arch": platform.machine(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "docker_server": _first_line(["docker", "version", "--format", "{{.Server.Version}}"], runner),
        "docker_client": _first_line(["docker", "version", "--format", "{{.Client.Version}}"], runner),
        "compose": f"docker compose {compose}" if compose else (f"docker-compose {compose_v1}" if compose_v1 else None),
    }


def machine_line(m: dict[str, Any]) -> str:
    """One line naming the machine, for the top of the table."""
    parts = [f"{m.get('cpus')} CPUs", f"{m.get('memory_gib')} GiB RAM", f"{m.get('os')} {m.get('arch')}",
             f"Python {m.get('python')}", f"SQLite {m.get('sqlite')}",
             f"Docker {m.get('docker_server') or 'unavailable'}", m.get("compose") or "no compose"]
    return ", ".join(parts)


# -- numbers -----------------------------------------------------------------

def number(value: float) -> str:
    """Three significant digits without exponents: 0.0123, 1.23, 12.3, 123, 12345."""
    if value is None or not math.isfinite(value):
        return "n/a"
    size = abs(value)
    if size >= 100:
        return f"{value:,.0f}".replace(",", "")
    if size >= 10:
        return f"{value:.1f}"
    if size >= 1:
        return f"{value:.2f}"
    if size == 0:
        return "0"
    return f"{value:.{max(2, 2 - math.floor(math.log10(size)))}f}"


def figure(summary: dict | None, unit: str = "") -> str:
    """``median [min-max]`` of a summary (just the median for one run)."""
    if not summary:
        return ""
    text = number(summary["median"])
    if summary["n"] > 1:
        text += f" [{number(summary['min'])}-{number(summary['max'])}]"
    return f"{text} {unit}".strip()


def _target(row: dict) -> str:
    if not row.get("target"):
        return ""
    verdict = {True: "met", False: "**missed**", None: "not judged"}[row.get("met")]
    return f"{row['target']}: {verdict}"


# -- Markdown ----------------------------------------------------------------

def markdown(report: dict[str, Any]) -> str:
    """The report as a Markdown page: machine, one table, notes and baselines per scenario."""
    kind = "quick" if report.get("quick") else "full"
    lines = [f"# parallel-autopilot benchmark, {report['started_at']} ({kind} run)", "",
             f"Machine: {machine_line(report['machine'])}.", "",
             f"Each figure is the median of the runs with [min-max]; a ratio is computed run by run "
             f"against the baseline measured in the same round, then summarised. "
             f"Rounds: {report.get('repeats')}. Total time: {number(report.get('seconds') or 0)} s.", "",
             "| scenario | case | metric | ours | baseline | ours / baseline | target |",
             "|---|---|---|---|---|---|---|"]
    for sc in report["scenarios"]:
        if sc["status"] != "ok":
            lines.append(f"| {sc['name']} | | | {sc['status']}: {_cell(sc['reason'])} | | | |")
            continue
        for row in sc["rows"]:
            if row["status"] != "ok":
                lines.append(f"| {sc['name']} | {row['case']} | {row['metric']} | {_cell(row['reason'])} | | | |")
                continue
            lines.append("| " + " | ".join([
                sc["name"], row["case"], row["metric"], figure(row["value"], row["unit"]),
                figure(row["baseline"], row["unit"]), figure(row["ratio"], "x") if row["ratio"] else "",
                _target(row)]) + " |")
    lines += ["", "## Baselines and notes", ""]
    for sc in report["scenarios"]:
        labels = sorted({r["baseline_label"] for r in sc["rows"] if r.get("baseline_label")})
        lines.append(f"- **{sc['name']}** ({sc['title']}; {number(sc.get('seconds') or 0)} s): "
                     + (f"baseline: {'; '.join(labels)}." if labels else "no baseline row."))
        lines += [f"  - {note}" for note in sc.get("notes", [])]
        if sc["status"] != "ok":
            lines.append(f"  - {sc['status']}: {sc['reason']}")
    missed = [(sc["name"], r) for sc in report["scenarios"] for r in sc["rows"] if r.get("met") is False]
    lines += ["", "## Targets missed", ""]
    lines += [f"- {name}, {r['case']}, {r['metric']}: {figure(r['value'], r['unit'])}"
              + (f" (ratio {figure(r['ratio'], 'x')})" if r["ratio"] else "") + f", target {r['target']}"
              for name, r in missed] or ["- none"]
    return "\n".join(lines) + "\n"


def _cell(text: str | None) -> str:
    return (text or "").replace("|", "/").replace("\n", " ")


# -- the chart -----------------------------------------------------------------

def _series(report: dict, scenario: str, metric: str) -> list[dict]:
    for sc in report["scenarios"]:
        if sc["name"] == scenario and sc["status"] == "ok":
            return sorted((r for r in sc["rows"] if r["metric"] == metric and r["status"] == "ok"
                           and r.get("x") is not None), key=lambda r: r["x"])
    return []


def _errorbars(summaries: list[dict]) -> list[list[float]]:
    return [[s["median"] - s["min"] for s in summaries], [s["max"] - s["median"] for s in summaries]]


def chart(report: dict[str, Any], path: Path) -> Path:
    """Write the PNG: speedup against N with the ideal line, start-up time against N."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    speed = _series(report, "throughput", "speedup over N=1")
    if speed:
        xs = [r["x"] for r in speed]
        left.errorbar(xs, [r["value"]["median"] for r in speed], yerr=_errorbars([r["value"] for r in speed]),
                      marker="o", capsize=4, label="measured (median, min-max)")
        left.plot(xs, [r["baseline"]["median"] for r in speed], linestyle="--", color="grey",
                  label="ideal: ceil(M/1) / ceil(M/N)")
        left.set_xticks(xs)
        left.set_ylim(bottom=0)
        left.legend(loc="upper left")
    else:
        left.text(0.5, 0.5, "throughput scenario not run", ha="center", va="center", transform=left.transAxes)
    left.set_title("Speedup over one agent")
    left.set_xlabel("agents (N)")
    left.set_ylabel("speedup (makespan N=1 / makespan N)")
    left.grid(alpha=0.3)

    start = _series(report, "startup", "time to all healthy")
    if start:
        xs = [r["x"] for r in start]
        right.errorbar(xs, [r["value"]["median"] for r in start], yerr=_errorbars([r["value"] for r in start]),
                       marker="o", capsize=4, label="agents.start until healthy")
        right.errorbar(xs, [r["baseline"]["median"] for r in start],
                       yerr=_errorbars([r["baseline"] for r in start]), marker="s", capsize=4,
                       linestyle="--", label="bare git worktree add + docker run -d")
        right.set_xticks(xs)
        right.set_ylim(bottom=0)
        right.legend(loc="best")
    else:
        right.text(0.5, 0.5, "startup scenario not run", ha="center", va="center", transform=right.transAxes)
    right.set_title("Start-up time")
    right.set_xlabel("agents (N)")
    right.set_ylabel("seconds")
    right.grid(alpha=0.3)

    fig.suptitle(f"parallel-autopilot bench {report['started_at']} - {machine_line(report['machine'])}",
                 fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# -- files -------------------------------------------------------------------

def write(report: dict[str, Any], directory: Path) -> dict[str, Path]:
    """Write ``<stamp>.json``, ``<stamp>.md`` and ``<stamp>.png``; return their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    base = directory / report["stamp"]
    paths = {"json": base.with_suffix(".json"), "markdown": base.with_suffix(".md"),
             "chart": base.with_suffix(".png")}
    report = {**report, "files": {k: str(v) for k, v in paths.items()}}
    paths["json"].write_text(json.dumps(report, indent=2, sort_keys=True, default=str) + "\n")
    paths["markdown"].write_text(markdown(report))
    chart(report, paths["chart"])
    return paths


__all__ = ["machine", "machine_line", "number", "figure", "markdown", "chart", "write"]
