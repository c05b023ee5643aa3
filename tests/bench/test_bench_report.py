"""bench.report (Markdown, chart, files, machine) and bench.progress (the display)."""

from __future__ import annotations

import io
import json
import subprocess

from parallel_autopilot.bench import report, stats
from parallel_autopilot.bench.progress import Display

MACHINE = {"cpus": 2, "memory_bytes": 24 * 1024**3, "memory_gib": 24.0, "os": "Linux 6.1", "arch": "x86_64",
           "python": "3.11.7", "sqlite": "3.40.1", "docker_server": "20.10.24", "docker_sdk": "7.1.0",
           "compose": "docker-compose 1.29.2"}


def sample_report() -> dict:
    throughput = stats.scenario("throughput", "throughput", [
        stats.row("N=1", "speedup over N=1", "x", [1.0, 1.0], baseline=[1.0, 1.0], x=1),
        stats.row("N=2", "speedup over N=1", "x", [1.8, 1.9], baseline=[2.0, 2.0], x=2,
                  target=">= 0.9 x N", met=True),
        stats.row("N=5", "parallel efficiency", "%", [70.0, 80.0], target=">= 90%", met=False, x=5),
    ], notes=["M = 30"])
    startup = stats.scenario("startup", "start-up", [
        stats.row("N=1", "time to all healthy", "s", [3.0, 4.0], baseline=[1.0, 2.0], baseline_label="bare", x=1),
        stats.row("N=3", "time to all healthy", "s", [6.0, 7.0], baseline=[2.0, 3.0], baseline_label="bare", x=3),
    ])
    return {"stamp": "20240101T000000Z-quick", "started_at": "2024-01-01 00:00:00 UTC", "quick": True,
            "repeats": 2, "seconds": 12.5, "machine": MACHINE,
            "scenarios": [throughput, startup,
                          stats.failed("stop", "stop", "Docker is not reachable", status="skipped")]}


def test_markdown_has_the_machine_every_scenario_figures_and_missed_targets():
    page = report.markdown(sample_report())
    assert "Machine: 2 CPUs, 24.0 GiB RAM, Linux 6.1 x86_64, Python 3.11.7, SQLite 3.40.1, Docker 20.10.24, " \
           "docker-compose 1.29.2." in page
    assert "| startup | N=3 | time to all healthy | 6.50 [6.00-7.00] s | 2.50 [2.00-3.00] s | " \
           "2.67 [2.33-3.00] x |  |" in page
    assert "| throughput | N=2 | speedup over N=1 | 1.85 [1.80-1.90] x | 2.00 [2.00-2.00] x | " \
           "0.925 [0.900-0.950] x | >= 0.9 x N: met |" in page
    assert "| stop | | | skipped: Docker is not reachable | | | |" in page
    missed = page.split("## Targets missed")[1]
    assert "throughput, N=5, parallel efficiency: 75.0 [70.0-80.0] %, target >= 90%" in missed
    assert "speedup" not in missed


def test_number_keeps_three_significant_digits_without_exponents():
    assert [report.number(v) for v in (12345.6, 123.4, 12.34, 1.234, 0.01234, 0.000123, 0)] == \
        ["12346", "123", "12.3", "1.23", "0.0123", "0.000123", "0"]


def test_write_puts_json_markdown_and_png_side_by_side(tmp_path):
    data = sample_report()
    paths = report.write(data, tmp_path / "results")
    assert sorted(p.name for p in (tmp_path / "results").iterdir()) == [
        "20240101T000000Z-quick.json", "20240101T000000Z-quick.md", "20240101T000000Z-quick.png"]
    stored = json.loads(paths["json"].read_text())
    assert stored["scenarios"] == json.loads(json.dumps(data["scenarios"]))
    assert stored["files"]["chart"] == str(paths["chart"])
    assert paths["chart"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_chart_is_written_even_when_its_scenarios_did_not_run(tmp_path):
    data = {**sample_report(), "scenarios": []}
    path = report.chart(data, tmp_path / "empty.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


class _Docker:
    """A stand-in for docker_client.client() beside the real one in test_bench_docker."""

    def version(self):
        return {"Version": "20.10.24", "ApiVersion": "1.41"}


def test_machine_reads_docker_through_the_client_and_compose_through_compose_py():
    calls = []

    def runner(argv, **_):
        calls.append(argv)
        if argv[:2] == ["docker", "compose"]:
            return subprocess.CompletedProcess(argv, 1, "", "unknown command")
        return subprocess.CompletedProcess(argv, 0, "1.29.2\n", "")

    m = report.machine(runner=runner, docker=_Docker)
    assert m["docker_server"] == "20.10.24" and m["compose"] == "docker-compose 1.29.2"
    assert m["docker_sdk"] and m["cpus"] >= 1 and m["memory_bytes"] > 0
    assert ["docker", "compose", "version"] in calls and ["docker-compose", "version", "--short"] in calls
    assert not any(argv[:2] == ["docker", "version"] for argv in calls)  # the daemon is asked by the SDK


def test_machine_survives_missing_docker_tools():
    def runner(argv, **_):
        raise FileNotFoundError(argv[0])

    def no_docker():
        from parallel_autopilot.containers import daemon as docker_client

        raise docker_client.unavailable("connection refused")

    m = report.machine(runner=runner, docker=no_docker)
    assert (m["docker_server"], m["compose"]) == (None, None)
    assert "Docker unavailable, no compose" in report.machine_line(m)


def test_display_prints_one_line_per_step_off_a_terminal():
    now = [100.0]
    out = io.StringIO()
    display = Display(stream=out, clock=lambda: now[0], live=False)
    display.begin("queue", 1, 2)
    now[0] += 1.5
    display("bare 4 process(es), round 1/3")
    display.end("queue", "ok", 1.5)
    assert out.getvalue().splitlines() == [
        "[    0.0s] 1/2 queue: starting",
        "[    1.5s] 1/2 queue | bare 4 process(es), round 1/3",
        "[    1.5s] 1/2 queue: ok in 1.5s",
    ]


def test_display_rewrites_the_step_line_on_a_terminal_and_keeps_the_end_line():
    out = io.StringIO()
    display = Display(stream=out, clock=lambda: 0.0, live=True)
    display.begin("stop", 6, 6)
    display("stopping\n3 agents")
    display.end("stop", "failed", 2.0, "TimeoutError: agents still there")
    text = out.getvalue()
    assert text.count("\r\x1b[K") == 3
    assert "6/6 stop | stopping 3 agents" in text
    assert text.endswith("6/6 stop: failed in 2.0s: TimeoutError: agents still there\n")
