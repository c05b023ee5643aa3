"""scripts/parallel-autopilot.sh: shellcheck-clean, its argument mapping, and end to end.

The mapping is checked against a stand-in program that records its argv (the
wrapper has no logic beyond that mapping); the end-to-end tests run the real
tasks: issues in a temporary repository, real agents in containers, and
``--host`` over the real sshd of tests/support/ssh.py.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from parallel_autopilot import config

from support.ssh import ROOT, TARGET_SETTINGS, init_repo, laptop_untouched

SCRIPT = ROOT / "scripts" / "parallel-autopilot.sh"


def wrapper(*args: str, cwd: Path, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items()
            if not k.startswith(("INVOKE_", "FABRIC_", "PARALLEL_AUTOPILOT_"))}
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=cwd, env={**base, **(env or {})},
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def test_the_wrapper_is_shellcheck_clean():
    shellcheck = shutil.which("shellcheck")
    assert shellcheck, "shellcheck is missing: the test command installs it (scripts/bootstrap.sh --lint)"
    proc = subprocess.run([shellcheck, "--severity=style", str(SCRIPT)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_wrapper_is_strict_and_executable():
    text = SCRIPT.read_text()
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "\nset -euo pipefail\n" in text
    assert os.access(SCRIPT, os.X_OK)


def test_help_names_every_command(tmp_path):
    proc = wrapper("help", cwd=tmp_path)
    assert proc.returncode == 0 and proc.stderr == ""
    for command in ("start N", "stop [ID]", "status [--json]", "logs [ID] [-f]", "cleanup [--force]", "demo",
                    "issues SUB", "test", "help", "--host HOST"):
        assert command in proc.stdout, command


@pytest.mark.parametrize("args", [
    [], ["nope"], ["start"], ["start", "1", "2"], ["stop", "1", "2"], ["status", "--all"], ["logs", "1", "2"],
    ["logs", "--bogus"], ["cleanup", "now"], ["--host"], ["--host="], ["issues"],
])
def test_a_malformed_command_line_is_one_line_and_exit_2(tmp_path, args):
    proc = wrapper(*args, cwd=tmp_path, env={"PARALLEL_AUTOPILOT_PROGRAM": "/bin/false"})
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].endswith("(see: parallel-autopilot.sh help)"), lines
    assert proc.stdout == ""


@pytest.fixture
def recorder(tmp_path) -> tuple[Path, Path]:
    """A stand-in program that records its argv as JSON and exits with $FAKE_EXIT."""
    record = tmp_path / "argv.json"
    fake = tmp_path / "fake-program"
    fake.write_text(f"#!{sys.executable}\nimport json, os, sys\n"
                    f"open({str(record)!r}, 'w').write(json.dumps(sys.argv[1:]))\n"
                    "sys.exit(int(os.environ.get('FAKE_EXIT', '0')))\n")
    fake.chmod(0o755)
    return fake, record


@pytest.mark.parametrize("args, task_argv", [
    (["start", "3"], ["agents.start", "--n=3"]),
    (["stop"], ["agents.stop"]),
    (["stop", "01"], ["agents.stop", "--id=01"]),
    (["stop", "agent-002"], ["agents.stop", "--id=agent-002"]),
    (["status"], ["agents.status"]),
    (["status", "--json"], ["agents.status", "--json"]),
    (["logs"], ["logs.tail"]),
    (["logs", "1", "-f"], ["logs.tail", "--id=1", "--follow"]),
    (["logs", "--follow", "001"], ["logs.tail", "--id=001", "--follow"]),
    (["cleanup"], ["cleanup"]),
    (["cleanup", "--force"], ["cleanup", "--force"]),
    (["demo", "--n", "2"], ["demo", "--n", "2"]),
    (["issues", "add", "--title", "two words"], ["issues.add", "--title", "two words"]),
])
def test_each_command_is_one_task_with_its_arguments_passed_through(tmp_path, recorder, args, task_argv):
    fake, record = recorder
    proc = wrapper(*args, cwd=tmp_path, env={"PARALLEL_AUTOPILOT_PROGRAM": str(fake)})
    assert proc.returncode == 0, proc.stderr
    assert json.loads(record.read_text()) == task_argv


@pytest.mark.parametrize("args, fab_argv", [
    (["--host", "ws", "status"], ["-H", "ws", "agents.status"]),
    (["--host=ws", "stop", "2"], ["-H", "ws", "agents.stop", "--id=2"]),
    (["--host", "a,b", "logs", "1", "-f"], ["-H", "a,b", "logs.tail", "--id=1", "--follow"]),
])
def test_host_runs_the_same_task_through_fab(tmp_path, recorder, args, fab_argv):
    fake, record = recorder
    proc = wrapper(*args, cwd=tmp_path, env={"PARALLEL_AUTOPILOT_FAB": str(fake)})
    assert proc.returncode == 0, proc.stderr
    assert json.loads(record.read_text()) == ["--search-root", str(ROOT), *fab_argv]


def test_host_test_passes_pytest_arguments_as_one_string_that_splits_back(tmp_path, recorder):
    fake, record = recorder
    pytest_args = ["-x", "-k", "a b", "-m", "not docker and not ssh", "it's"]
    proc = wrapper("--host", "ws", "test", *pytest_args, cwd=tmp_path, env={"PARALLEL_AUTOPILOT_FAB": str(fake)})
    assert proc.returncode == 0, proc.stderr
    argv = json.loads(record.read_text())
    assert argv[:5] == ["--search-root", str(ROOT), "-H", "ws", "remote.test"]
    assert argv[5].startswith("--args=") and shlex.split(argv[5][len("--args="):]) == pytest_args


@pytest.mark.parametrize("code", [1, 3, 7, 11])
def test_the_exit_code_is_the_tasks(tmp_path, recorder, code):
    fake, _ = recorder
    proc = wrapper("status", cwd=tmp_path, env={"PARALLEL_AUTOPILOT_PROGRAM": str(fake), "FAKE_EXIT": str(code)})
    assert proc.returncode == code


# -- the real tasks ------------------------------------------------------------------------------

def test_issue_commands_run_the_real_tasks_in_the_current_repository(tmp_path):
    repo = init_repo(tmp_path / "repo")
    added = wrapper("issues", "add", "--title", "from the wrapper", "--priority", "high", cwd=repo)
    assert added.returncode == 0, added.stderr
    listed = wrapper("issues", "list", "--json", cwd=repo)
    assert [(i["title"], i["priority"]) for i in json.loads(listed.stdout)] == [("from the wrapper", "high")]
    missing = wrapper("issues", "show", "42", cwd=repo)
    assert missing.returncode == 3 and missing.stderr.startswith("error: ")


def test_an_invalid_id_is_refused_by_the_task_not_the_wrapper(tmp_path):
    repo = init_repo(tmp_path / "repo")
    proc = wrapper("logs", "../x", cwd=repo)
    assert proc.returncode == 2
    assert "invalid agent id '../x'" in proc.stderr


@pytest.mark.ssh
def test_host_runs_the_command_on_the_workstation(workstation):
    assert workstation.fab("issues.add", "--title=on the workstation").returncode == 0
    proc = wrapper("--host", "ws", "issues", "list", "--json", cwd=workstation.laptop, env=workstation.env())
    assert proc.returncode == 0, proc.stderr
    assert [i["title"] for i in json.loads(proc.stdout)] == ["on the workstation"]
    down = wrapper("--host", "ws-down", "status", cwd=workstation.laptop, env=workstation.env())
    assert down.returncode == 11 and len(down.stderr.splitlines()) == 1, down.stderr
    laptop_untouched(workstation.laptop)


@pytest.fixture
def agent_repo(tmp_path):
    """A repository with tiny offline agent settings; its agents are removed afterwards."""
    repo = init_repo(tmp_path / "repo")
    (repo / "invoke.yaml").write_text(TARGET_SETTINGS.format(dir=tmp_path))
    yield repo
    from parallel_autopilot import fleet

    try:
        fleet.Fleet.open(config.load(None, repo=str(repo))).stop(progress=lambda _: None)
    except Exception:  # noqa: BLE001 - best-effort teardown
        pass


def running(repo: Path) -> list[str]:
    proc = wrapper("status", "--json", cwd=repo)
    assert proc.returncode == 0, proc.stderr
    return [a["id"] for a in json.loads(proc.stdout) if a["state"] == "running"]


@pytest.mark.docker
@pytest.mark.slow
def test_start_status_logs_stop_cleanup_end_to_end(agent_repo):
    repo = agent_repo
    started = wrapper("start", "2", cwd=repo, timeout=900)
    assert started.returncode == 0, started.stdout + started.stderr
    assert running(repo) == ["agent-001", "agent-002"]
    status = wrapper("status", cwd=repo)
    assert status.returncode == 0 and "agent-002" in status.stdout
    logs = [wrapper("logs", spelling, cwd=repo) for spelling in ("1", "01", "001", "agent-001")]
    assert all(p.returncode == 0 for p in logs), [p.stderr for p in logs]
    assert logs[0].stdout.strip() and len({p.stdout for p in logs}) == 1  # one agent, however it is typed
    stopped = wrapper("stop", "2", cwd=repo)
    assert stopped.returncode == 0, stopped.stderr
    assert running(repo) == ["agent-001"]  # only the agent asked for
    cleaned = wrapper("cleanup", cwd=repo)
    assert cleaned.returncode == 0, cleaned.stderr
    assert running(repo) == []
    again = wrapper("stop", "1", cwd=repo)
    assert again.returncode == 3 and "agent-001" in again.stderr  # nothing left to stop: NotFound
