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
from typing import Any, Callable

Runner = Callable[..., subprocess.CompletedProcess]


# -- the machine ---------------------------------------------------------------

def _docker_versions(docker: Callable[[], Any]) -> tuple[str | None, str | None]:
    """(the daemon's version, the Docker SDK's) through the product's client; None where unknown."""
    try:
        server = docker().version().get("Version")
    except Exception:  # noqa: BLE001 - a report of a machine without Docker says "unavailable"
        server = None
    from ..containers import daemon

    return server, daemon.sdk_version()


def machine(runner: Runner = subprocess.run, docker: Callable[[], Any] | None = None) -> dict[str, Any]:
    """CPU count, RAM, OS, Python, SQLite, Docker and Compose versions of this host.

    Docker is asked through ``docker`` (default: docker_client.client, the product's
    client) and compose through containers/compose.py with ``runner``, the modules the product uses.
    """
    from ..containers import compose, daemon

    try:
        import psutil

        memory = int(psutil.virtual_memory().total)
        cpus = psutil.cpu_count(logical=True)
    except ImportError:  # psutil is a dependency; degrade anyway
        memory, cpus = None, os.cpu_count()
    server, sdk = _docker_versions(docker or daemon.client)
    return {
        "cpus": cpus,
        "memory_bytes": memory,
        "memory_gib": round(memory / 1024**3, 1) if memory else None,
        "os": f"{platform.system()} {platform.release()}",
        "arch": platform.machine(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "docker_server": server,
        "docker_sdk": sdk,
        "compose": compose.version(runner),
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


def _panel(axes: Any, rows: list[dict], scenario: str, title: str, ylabel: str, *, measured: str,
           baseline: str, baseline_spread: bool, legend: str) -> None:
    """One chart panel over N: ours with min-max bars, the baseline (with its spread, or as a line)."""
    if rows:
        xs = [r["x"] for r in rows]
        axes.errorbar(xs, [r["value"]["median"] for r in rows], yerr=_errorbars([r["value"] for r in rows]),
                      marker="o", capsize=4, label=measured)
        medians = [r["baseline"]["median"] for r in rows]
        if baseline_spread:  # a measured baseline has a spread; an ideal one is exact
            axes.errorbar(xs, medians, yerr=_errorbars([r["baseline"] for r in rows]), marker="s", capsize=4,
                          linestyle="--", label=baseline)
        else:
            axes.plot(xs, medians, linestyle="--", color="grey", label=baseline)
        axes.set_xticks(xs)
        axes.set_ylim(bottom=0)
        axes.legend(loc=legend)
    else:
        axes.text(0.5, 0.5, f"{scenario} scenario not run", ha="center", va="center", transform=axes.transAxes)
    axes.set_title(title)
    axes.set_xlabel("agents (N)")
    axes.set_ylabel(ylabel)
    axes.grid(alpha=0.3)


def chart(report: dict[str, Any], path: Path) -> Path:
    """Write the PNG: speedup against N with the ideal line, start-up time against N."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    _panel(left, _series(report, "throughput", "speedup over N=1"), "throughput", "Speedup over one agent",
           "speedup (makespan N=1 / makespan N)", measured="measured (median, min-max)",
           baseline="ideal: ceil(M/1) / ceil(M/N)", baseline_spread=False, legend="upper left")
    _panel(right, _series(report, "startup", "time to all healthy"), "startup", "Start-up time", "seconds",
           measured="agents.start until healthy", baseline="bare git worktree add + docker run -d",
           baseline_spread=True, legend="best")

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
