"""``inv bench --quick`` against the real Docker daemon: every scenario, every file, sane numbers.

Asserts the report's shape (see test_bench_runner.assert_report_shape), never
timing thresholds: this machine's timings are noise, the shape is not.
"""

from __future__ import annotations

import io
import subprocess

import pytest

from parallel_autopilot import config
from parallel_autopilot.bench import SCENARIOS, runner
from parallel_autopilot.bench.progress import Display
from parallel_autopilot.containers import compose
from test_bench_runner import assert_report_shape

# every scenario, real containers and the real codex CLI: minutes on a shared 2-core machine
pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.timeout(2400)]


def _containers(prefix: str) -> list[str]:
    out = subprocess.run(["docker", "ps", "-a", "--format", "{{.Names}}"], capture_output=True, text=True,
                         check=True).stdout.split()
    return [name for name in out if name.startswith(prefix)]


def test_quick_bench_runs_every_scenario_against_real_docker(git_repo, tmp_path):
    settings = config.load({}, repo=str(git_repo))
    progress = io.StringIO()
    data, paths = runner.run(settings, None, quick=True, out_dir=tmp_path / "results",
                             display=Display(stream=progress, live=False))
    assert_report_shape(data, paths, list(SCENARIOS))
    assert data["setup"]["image"] == runner.run_image(settings, data["run_id"]) and data["machine"]["docker_server"]
    by_name = {s["name"]: s for s in data["scenarios"]}
    # no sub-part skipped: the queue ran inside containers too
    assert all(r["status"] == "ok" for s in data["scenarios"] for r in s["rows"])
    assert any("containers" in r["case"] for r in by_name["queue"]["rows"])
    # the merge check in a container (the default runner) was measured against the host
    assert [r["status"] for r in by_name["merge"]["rows"] if r["metric"] == "seconds per check, in a container"] \
        == ["ok"]
    # both chart panels have their series
    assert [r["x"] for r in by_name["throughput"]["rows"] if r["metric"] == "speedup over N=1"] == [1, 2]
    assert [r["x"] for r in by_name["startup"]["rows"] if r["metric"] == "time to all healthy"] == [1, 2]
    # start-up on every Compose this machine has: v2 (what auto picks), and v1 beside it
    assert by_name["startup"]["params"]["composes"] == compose.installed()
    assert [r["case"] for r in by_name["startup"]["rows"]] == [
        f"N={n}" if program == compose.installed()[0] else f"N={n} compose {program}"
        for program in compose.installed() for n in (1, 2)]
    # stop released every claim; recovery really finished the killed agent's issue on another claim
    assert all(r["claims_left"] == 0 for r in by_name["stop"]["details"]["rounds"])
    assert all(r["released_by"] for r in by_name["recovery"]["details"]["rounds"])
    # on the busy queue the killed agent's issue was taken over by a claim, not by its lease expiring
    assert all(r["freed_by"] == ["abandoned"] for r in by_name["recovery"]["details"]["busy_rounds"])
    # every scenario was announced and closed by the progress display
    for index, name in enumerate(SCENARIOS, start=1):
        assert f"{index}/{len(SCENARIOS)} {name}: ok in" in progress.getvalue()
    # nothing left behind: agents, bare baselines and queue containers are named after the run
    assert _containers(f"pa-bench-{data['run_id']}") == []
    tags = subprocess.run(["docker", "images", "--format", "{{.Repository}}:{{.Tag}}"], capture_output=True,
                          text=True, check=True).stdout.split()
    assert data["setup"]["image"] not in tags
