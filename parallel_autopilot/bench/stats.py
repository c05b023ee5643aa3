"""Figures of a benchmark: summaries of repeated runs, ratios computed pair by pair.

Every figure in a report is a :func:`summary` of its runs (median, min, max and
the runs themselves, so a reader can check them). A ratio against a baseline
is never the ratio of two medians: run ``i`` of ours is divided by run ``i`` of
the baseline measured right next to it, and those ratios are summarised. On a
noisy machine, neighbours share the noise; medians of different moments do not.

A scenario returns :func:`scenario` holding :func:`row` entries. Standard
library only.
"""

from __future__ import annotations

import math
import statistics
from typing import Any, Iterable, Sequence


def summary(values: Iterable[float]) -> dict[str, Any]:
    """``{"median", "min", "max", "n", "runs"}`` of repeated measurements."""
    runs = [float(v) for v in values]
    if not runs:
        raise ValueError("a summary needs at least one run")
    if not all(math.isfinite(v) for v in runs):
        raise ValueError(f"non-finite measurement in {runs}")
    return {"median": statistics.median(runs), "min": min(runs), "max": max(runs),
            "n": len(runs), "runs": runs}


def ratios(ours: Sequence[float], baseline: Sequence[float]) -> list[float]:
    """``ours[i] / baseline[i]`` for every pair (both measured in the same round)."""
    if len(ours) != len(baseline):
        raise ValueError(f"{len(ours)} runs against {len(baseline)} baseline runs: pair them one to one")
    if any(b == 0 for b in baseline):
        raise ValueError("a baseline run measured zero: cannot divide by it")
    return [o / b for o, b in zip(ours, baseline)]


def percentile(values: Sequence[float], p: float) -> float:
    """The ``p``-th percentile (0..100) by linear interpolation between closest ranks."""
    data = sorted(values)
    if not data:
        raise ValueError("a percentile of nothing")
    if len(data) == 1:
        return float(data[0])
    rank = (len(data) - 1) * p / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(data) - 1)
    return float(data[low] + (data[high] - data[low]) * (rank - low))


def row(case: str, metric: str, unit: str, runs: Sequence[float] | None, *,
        baseline: Sequence[float] | None = None, baseline_label: str | None = None,
        target: str | None = None, met: bool | None = None, note: str | None = None,
        skipped: str | None = None, x: float | None = None) -> dict[str, Any]:
    """One line of a report: our runs, the baseline's runs, their pair-by-pair ratio.

    ``skipped`` (a reason) makes a row with no numbers, reported as skipped.
    ``x`` places the row on a chart's horizontal axis (the number of agents).
    ``met`` says whether ``target`` was reached (None: no target or not judged).
    """
    if skipped:
        return {"case": case, "metric": metric, "unit": unit, "status": "skipped", "reason": skipped, "x": x,
                "value": None, "baseline": None, "baseline_label": baseline_label, "ratio": None,
                "target": target, "met": None, "note": note}
    if not runs:
        raise ValueError(f"{case} {metric}: no runs")
    return {
        "case": case, "metric": metric, "unit": unit, "status": "ok", "reason": None, "x": x,
        "value": summary(runs),
        "baseline": summary(baseline) if baseline is not None else None,
        "baseline_label": baseline_label,
        # a count's baseline may be zero (no conflict without hints either): no ratio then
        "ratio": summary(ratios(runs, baseline)) if baseline is not None and all(baseline) else None,
        "target": target, "met": met, "note": note,
    }


def scenario(name: str, title: str, rows: list[dict[str, Any]], *, params: dict[str, Any] | None = None,
             details: dict[str, Any] | None = None, notes: Sequence[str] = (),
             seconds: float | None = None) -> dict[str, Any]:
    """The result of one scenario that ran (see :func:`failed` for one that did not)."""
    return {"name": name, "title": title, "status": "ok", "reason": None, "seconds": seconds,
            "params": dict(params or {}), "rows": rows, "notes": list(notes),
            "details": dict(details or {})}


def failed(name: str, title: str, reason: str, *, status: str = "failed",
           seconds: float | None = None, details: dict[str, Any] | None = None) -> dict[str, Any]:
    """The result of a scenario that failed (or was skipped, ``status="skipped"``)."""
    return {"name": name, "title": title, "status": status, "reason": reason, "seconds": seconds,
            "params": {}, "rows": [], "notes": [], "details": dict(details or {})}


__all__ = ["summary", "ratios", "percentile", "row", "scenario", "failed"]
