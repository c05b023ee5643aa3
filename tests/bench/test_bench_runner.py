"""bench.runner and the ``bench`` tasks, without Docker: the queue scenario on the host.

:func:`assert_report_shape` is the one definition of a sane report; the Docker
test (test_bench_docker.py) applies it to a quick run of every scenario.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from parallel_autopilot import config
from parallel_autopilot.bench import pgcluster
from parallel_autopilot.bench import SCENARIOS, queue, runner
from parallel_autopilot.bench.progress import Display
from parallel_autopilot.errors import InvalidInput

PNG = b"\x89PNG\r\n\x1a\n"


#: units of rows that count things: zero is a result there (0 conflicts with hints), not a failure
COUNTS = ("rejections", "attempts")


def _check_summary(summary: dict, where: str, zero_ok: bool = False) -> None:
    runs = summary["runs"]
    assert runs and summary["n"] == len(runs), where
    low = (lambda v: v >= 0) if zero_ok else (lambda v: v > 0)
    for key in ("median", "min", "max"):
        assert math.isfinite(summary[key]) and low(summary[key]), f"{where}: {key} = {summary[key]}"
    assert all(math.isfinite(r) and low(r) for r in runs), f"{where}: runs {runs}"
    assert summary["min"] == min(runs) and summary["max"] == max(runs), where
    assert summary["median"] == pytest.approx(statistics.median(runs)), where


def assert_report_shape(data: dict, paths: dict, scenarios: list[str], allowed=("ok",)) -> None:
    """Every scenario present, files written, numbers finite and positive, ratios from their parts."""
    assert [s["name"] for s in data["scenarios"]] == scenarios
    machine = data["machine"]
    assert machine["cpus"] >= 1 and machine["memory_bytes"] > 0 and machine["python"] and machine["sqlite"]
    assert {"docker_server", "compose"} <= set(machine)
    for kind in ("json", "markdown", "chart"):
        assert paths[kind].is_file() and paths[kind].stat().st_size > 0, kind
    assert paths["chart"].read_bytes()[:8] == PNG
    stored = json.loads(paths["json"].read_text())
    assert [s["name"] for s in stored["scenarios"]] == scenarios and stored["machine"] == machine
    page = paths["markdown"].read_text()
    assert f"{machine['cpus']} CPUs" in page
    for scenario in data["scenarios"]:
        name = scenario["name"]
        assert scenario["status"] in allowed, f"{name}: {scenario['status']} {scenario['reason']}"
        assert f"| {name} |" in page
        if scenario["status"] != "ok":
            assert scenario["reason"]
            continue
        assert scenario["rows"], name
        for row in scenario["rows"]:
            where = f"{name} {row['case']} {row['metric']}"
            if row["status"] == "skipped":
                assert row["reason"].startswith("skipped: "), where
                continue
            zero_ok = row["unit"] in COUNTS or "wasted" in row["metric"]
            _check_summary(row["value"], where, zero_ok)
            if row["baseline"] is None:
                assert row["ratio"] is None, where
                continue
            _check_summary(row["baseline"], where + " baseline", zero_ok)
            if row["ratio"] is None:  # only where a baseline run is zero
                assert zero_ok and 0 in row["baseline"]["runs"], where
                continue
            _check_summary(row["ratio"], where + " ratio", zero_ok)
            pairs = [o / b for o, b in zip(row["value"]["runs"], row["baseline"]["runs"])]
            assert row["ratio"]["runs"] == pytest.approx(pairs), where
            assert row["baseline"]["n"] == row["value"]["n"] == row["ratio"]["n"], where
            if row["target"] is None:
                assert row["met"] is None, where  # a verdict needs a target


@pytest.fixture
def settings(git_repo):
    return config.load({}, repo=str(git_repo))


def test_parse_scenarios_keeps_run_order_and_refuses_unknown_names():
    assert runner.parse_scenarios(None) == list(SCENARIOS)
    assert runner.parse_scenarios("stop, queue") == ["queue", "stop"]
    with pytest.raises(InvalidInput, match="unknown scenario nope: choose from queue,startup"):
        runner.parse_scenarios("queue,nope")
    with pytest.raises(InvalidInput):
        runner.parse_scenarios(",")


@pytest.mark.parametrize("value", ["0", "-1", "abc", "51"])
def test_parse_repeats_refuses_what_is_not_a_count_of_rounds(value):
    with pytest.raises(InvalidInput, match="--repeat"):
        runner.parse_repeats(value)
    assert runner.parse_repeats("4") == 4 and runner.parse_repeats(None) is None


def test_quick_queue_run_writes_a_sane_report_without_docker(settings, tmp_path):
    out = tmp_path / "results"
    lines = []

    class Lines:
        def write(self, text):
            lines.append(text)

        def flush(self):
            pass

    data, paths = runner.run(settings, "queue", quick=True, out_dir=out, prepare_image=False,
                             display=Display(stream=Lines(), live=False))
    assert_report_shape(data, paths, ["queue"])
    assert {p.parent for p in paths.values()} == {out}
    rows = data["scenarios"][0]["rows"]
    cases = {(r["case"], r["metric"]) for r in rows if r["status"] == "ok"}
    assert {("1 process", "throughput"), ("4 processes", "claim latency p99")} <= cases
    # the agents' way to the queue: through the gateway, against the store opened directly
    assert {("1 agent through the gateway", "throughput"), ("4 agents through the gateway", "claim latency p99")} \
        <= cases
    # PostgreSQL beside SQLite, on a server the scenario started and stopped itself
    if pgcluster.unavailable() is None:
        assert {("1 process, PostgreSQL", "throughput"), ("4 processes, PostgreSQL", "claim latency p99"),
                ("4 processes, PostgreSQL", "throughput vs SQLite store")} <= cases
    else:
        assert [r["reason"] for r in rows if "PostgreSQL" in r["case"]] == [
            f"skipped: {pgcluster.unavailable()}"] * 2
    skipped = [r for r in rows if r["status"] == "skipped" and "PostgreSQL" not in r["case"]]
    assert [r["case"] for r in skipped] == ["4 processes in 2 containers"]
    assert "was not prepared" in skipped[0]["reason"]
    # every round really moved every issue once, in both modes
    issues = data["scenarios"][0]["params"]["issues_per_round"]
    for runs in data["scenarios"][0]["details"]["rounds"].values():
        assert [r["ops"] for r in runs] == [issues] * data["repeats"]
    text = "".join(lines)
    assert "1/1 queue: starting" in text and "1/1 queue: ok in" in text


def test_a_failing_scenario_is_recorded_and_the_others_still_run(settings, tmp_path):
    def boom(ctx):
        raise RuntimeError("disk\nfull")

    def load(name):  # the queue scenario fails; the others are the real ones
        return SimpleNamespace(TITLE=queue.TITLE, run=boom) if name == "queue" else runner.load_scenario(name)

    data, paths = runner.run(settings, "queue,footprint", quick=True, out_dir=tmp_path, prepare_image=False,
                             display=Display(stream=open("/dev/null", "w"), live=False), load=load)
    first, second = data["scenarios"]
    assert (first["status"], first["reason"]) == ("failed", "RuntimeError: disk full")
    assert "Traceback" in first["details"]["traceback"]
    assert second["status"] == "skipped" and "was not prepared" in second["reason"]
    assert runner.failures(data) == ["queue: RuntimeError: disk full"]
    assert "| queue | | | failed: RuntimeError: disk full |" in paths["markdown"].read_text()


@pytest.mark.parametrize("mode", ["ours", "bare", "pg", "pgbare"])
def test_verify_catches_a_queue_that_did_not_move_every_issue(tmp_path, request, mode):
    if mode.startswith("pg"):
        db = request.getfixturevalue("pg_cluster").create_database()
    else:
        db = tmp_path / mode / "queue.db"
        db.parent.mkdir()
    queue.prepare(mode, db, 3)
    with pytest.raises(RuntimeError, match="0 done"):
        queue.verify(mode, db, 3)


def _program(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """The console program, with Docker out of reach (so no image is built: this test needs no daemon)."""
    code = "from parallel_autopilot.program import main; main()"
    env = {**os.environ, "DOCKER_HOST": f"unix://{cwd}/no-docker.sock"}
    return subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120, env=env)


def test_bench_task_refuses_an_unknown_scenario_with_one_line(git_repo):
    proc = _program(git_repo, "bench", "--scenarios", "queue,warp")
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: unknown scenario warp: choose from " + ",".join(SCENARIOS)
    assert "Traceback" not in proc.stderr + proc.stdout


def test_bench_queue_task_prints_the_table_and_writes_the_files(git_repo, tmp_path):
    out = tmp_path / "out"
    proc = _program(git_repo, "bench.queue", "--quick", "--out", str(out), "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert [s["name"] for s in data["scenarios"]] == ["queue"]
    assert sorted(p.suffix for p in out.iterdir()) == [".json", ".md", ".png"]
    assert "1/1 queue: ok" in proc.stderr  # the progress display, kept off stdout
    skipped = [r for r in data["scenarios"][0]["rows"] if r["status"] == "skipped" and "containers" in r["case"]]
    assert len(skipped) == 1 and "Docker is not reachable" in skipped[0]["reason"]


@pytest.mark.parametrize("image, tag", [
    ("parallel-autopilot:latest", "parallel-autopilot:bench-ab12"),
    ("registry.local:5000/team/agent", "registry.local:5000/team/agent:bench-ab12"),
    ("registry.local:5000/agent:v2", "registry.local:5000/agent:bench-ab12"),
])
def test_each_run_builds_its_image_under_a_tag_of_its_own(settings, image, tag):
    assert runner.run_image(settings.replace(image=image), "ab12") == tag
