"""Scenario ``merge``: what batches buy the merge queue.

20 done issues (each adds a module with its test; one breaks an existing test)
on a real repository whose check is its unittest suite plus a fixed ``sleep``
(:data:`CHECK_SECONDS`: a suite that takes a while). The real merge queue
merges them one at a time (K = 1, the baseline) and in batches of K = 4 and 8
(bisecting the red batch), each on a fresh copy of the same repository, in the
same round. Measured: seconds until every good issue is merged, check runs,
and red commits on the base afterwards (every first-parent commit the queue
added is checked again, without the sleep). The checks run in containers, as by default
(``merge_check_runner: container``, with the run's image), or on the host in a run without an
image. Then the cost of one check in a container against the same check on the host.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any, Mapping

from ..git import Git
from . import stats

TITLE = "merge queue: batches of K against one at a time"
ISSUES = 20
BAD = 10  # index of the issue that breaks a test
CHECK_SECONDS = 3
SIZES = (4, 8)
#: A quick run (CI's smoke test of every scenario): fewer issues, a shorter check, one round,
#: the target not judged.
QUICK = {"issues": 8, "bad": 3, "check_seconds": 0.5}
TEST = "python3 -m unittest -q"


_IDENTITY = {"GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "bench@example.invalid",
             "GIT_COMMITTER_NAME": "bench", "GIT_COMMITTER_EMAIL": "bench@example.invalid"}


def _git(cwd: Path, *args: str) -> str:
    return Git(cwd, config={"commit.gpgsign": "false"}).run(*args, env=_IDENTITY).strip()


def make_site(root: Path, issues: int = ISSUES, bad: int = BAD, check_seconds: float = CHECK_SECONDS):
    """A repository with ``issues`` done issues on branches (one bad), and its store; (settings, store)."""
    from .. import config
    from ..git import clones
    from ..issues import IssueStore

    repo = root / "repo"
    repo.mkdir(parents=True)
    _git(repo, "init", "-q", "-b", "main")
    (repo / "calc.py").write_text("def add(a, b):\n    return a + b\n")
    (repo / "test_calc.py").write_text("import unittest\nimport calc\n\n\nclass T(unittest.TestCase):\n"
                                       "    def test_add(self):\n        self.assertEqual(calc.add(2, 3), 5)\n")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "calc and its test")
    # the queue is handed its runner (bench.merge._runner): in containers when the run has an image
    settings = config.load({}, repo=str(repo), base_branch="main", check=f"sleep {check_seconds:g}; {TEST}",
                           merge_check_runner="host")
    clones.exclude_tool_dirs(settings)  # the store below is never committed with `add -A`
    store = IssueStore(settings.db_path)
    for i in range(issues):
        number = store.add(f"module {i}").number
        claim = store.claim("bench")
        branch = f"autopilot/issue-{number}"
        _git(repo, "checkout", "-q", "-b", branch, "main")
        if i == bad:
            (repo / "calc.py").write_text("def add(a, b):\n    return a - b\n")
        else:
            (repo / f"mod_{i}.py").write_text(f"def value():\n    return {i}\n")
            (repo / f"test_mod_{i}.py").write_text(
                f"import unittest\nimport mod_{i}\n\n\nclass M(unittest.TestCase):\n"
                f"    def test_value(self):\n        self.assertEqual(mod_{i}.value(), {i})\n")
        _git(repo, "add", "-A")
        _git(repo, "commit", "-q", "-m", f"#{number}")
        store.complete(claim, {"branch": branch, "commit": _git(repo, "rev-parse", "HEAD")})
        _git(repo, "checkout", "-q", "main")
    return settings, store


def red_commits(repo: Path, since: str) -> int:
    """First-parent commits added since ``since`` whose suite fails."""
    red = 0
    for sha in _git(repo, "rev-list", "--first-parent", f"{since}..main").split():
        wt = repo.parent / f"verify-{sha[:10]}"
        _git(repo, "worktree", "add", "-q", "--detach", str(wt), sha)
        try:
            red += subprocess.run(["bash", "-c", TEST], cwd=wt, capture_output=True).returncode != 0
        finally:
            _git(repo, "worktree", "remove", "--force", str(wt))
    return red


def plan(ctx, quick: Mapping[str, Any] = QUICK) -> dict[str, Any]:
    """Issues, the bad one's index, the check's sleep, rounds (``quick``'s in a quick run)."""
    if ctx.quick:
        return {**quick, "rounds": 1}
    return {"issues": ISSUES, "bad": BAD, "check_seconds": CHECK_SECONDS, "rounds": ctx.repeats}


def one(ctx, size: int, label: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """Merge the issues of ``params`` (:func:`plan`) with batches of ``size`` on a fresh repository."""
    from ..merge.queue import MergeQueue

    root = ctx.workdir / "merge" / f"{label}-k{size}-{time.time_ns()}"
    settings, store = make_site(root, params["issues"], params["bad"], params["check_seconds"])
    start = _git(settings.repo, "rev-parse", "main")
    t0 = ctx.clock()
    report = MergeQueue(settings, store, batch=size, runner=_runner(ctx, settings)).run()
    seconds = ctx.clock() - t0
    good = params["issues"] - 1
    if len(report.merged) != good or len(report.rejected) != 1:
        raise RuntimeError(f"K={size}: merged {len(report.merged)}, rejected {sorted(report.rejected)}; "
                           f"expected {good} and the bad one")
    red = red_commits(settings.repo, start)
    store.close()
    ctx.progress(f"{label}: K={size}: {seconds:.1f}s, {report.check_runs} check runs, {red} red commits")
    return {"seconds": seconds, "check_runs": report.check_runs, "red": red}


def _runner(ctx, settings):
    """Where the batches' checks run: in containers (the default runner, with the run's image) when
    the run has an image, else on the host (a run without Docker still measures batching)."""
    from ..merge import checks

    return checks.ContainerCheck(settings, tag=ctx.image) if ctx.image else checks.run_on_host


def check_cost(ctx, runs: int) -> dict[str, list[float]]:
    """Seconds per check of the repository's suite (no sleep) in a linked worktree: on the host
    and in a container (``merge_check_runner: container``, the default), alternated, ``runs`` each."""
    from ..merge import checks

    root = ctx.workdir / "merge" / f"cost-{time.time_ns()}"
    settings, store = make_site(root, 1, 99, 0)
    store.close()
    worktree = root / "check-worktree"
    _git(settings.repo, "worktree", "add", "-q", "--detach", str(worktree), "main")
    container = checks.ContainerCheck(settings, tag=ctx.image)
    seconds: dict[str, list[float]] = {"host": [], "container": []}
    for i in range(runs):
        for where, runner in (("host", checks.run_on_host), ("container", container)):
            t0 = ctx.clock()
            result = runner(TEST, worktree, 120, root / f"{where}-{i}.log")
            if not result.passed:
                raise RuntimeError(f"the check failed {where}: {result.output}")
            seconds[where].append(ctx.clock() - t0)
    return seconds


def run(ctx, quick: Mapping[str, Any] = QUICK) -> dict[str, Any]:
    """Each round: K = 1, then every K in SIZES, on fresh copies; a quick run is ``quick``'s size."""
    params = plan(ctx, quick)
    rounds = params["rounds"]
    results: dict[int, list[dict]] = {1: [], **{k: [] for k in SIZES}}
    for r in range(rounds):
        for size in (1, *SIZES):
            results[size].append(one(ctx, size, f"round {r + 1}/{rounds}", params))
    base = [x["seconds"] for x in results[1]]
    rows = []
    for size in SIZES:
        runs = [x["seconds"] for x in results[size]]
        speedup = stats.summary([b / o for b, o in zip(base, runs)])["median"]
        case = f"{params['issues']} done, 1 bad, check {params['check_seconds']:g} s"
        green = all(x["red"] == 0 for x in results[size])
        rows.append(stats.row(case, f"time to merge, K = {size}", "s",
                              runs, baseline=base, baseline_label="one at a time (K = 1)",
                              target=f">= 2x faster than one at a time with {ISSUES} issues and a "
                                     f"{CHECK_SECONDS} s check, 0 red commits",
                              met=None if ctx.quick else (speedup >= 2 and green), x=size))
        if not green:
            raise RuntimeError(f"K={size} left red commits on the base")
        rows.append(stats.row(case, f"check runs, K = {size}", "runs",
                              [x["check_runs"] for x in results[size]],
                              baseline=[x["check_runs"] for x in results[1]],
                              baseline_label="one at a time (K = 1)", x=size))
    case = f"the repository's suite ({TEST}), one check"
    if ctx.image is None:
        rows.append(stats.row(case, "seconds per check, in a container", "s", None,
                              baseline_label="on the host", skipped=f"skipped: {ctx.image_problem}"))
    else:
        cost = {"host": [], "container": []}
        for _ in range(rounds):
            per_round = check_cost(ctx, 1 if ctx.quick else 5)
            for where, values in per_round.items():
                cost[where].append(stats.summary(values)["median"])
        ctx.progress(f"check cost: host {cost['host']}, container {cost['container']}")
        rows.append(stats.row(case, "seconds per check, in a container", "s", cost["container"],
                              baseline=cost["host"], baseline_label="on the host (merge_check_runner: host)"))
    red = {size: sum(x["red"] for x in res) for size, res in results.items()}
    notes = [f"check: sleep {params['check_seconds']:g}; {TEST} (the suite of the repository); bad issue at "
             f"position {params['bad'] + 1}{' (quick run)' if ctx.quick else ''}",
             "red commits on the base afterwards: " + ", ".join(f"K={k}: {n}" for k, n in red.items()),
             "checks run " + (f"in containers of {ctx.image} (merge_check_runner: container, the default)"
                              if ctx.image else "on the host (no image in this run)")]
    return stats.scenario("merge", TITLE, rows, params={**params, "sizes": [1, *SIZES]},
                          notes=notes, details={"results": {str(k): v for k, v in results.items()}})
