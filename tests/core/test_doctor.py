"""``parallel-autopilot doctor`` (issue 20): each line with its thing missing, each with its fix,
and exit 0 where ``agents.start`` works.

Run as a user runs it (the program in a subprocess, in a repository) wherever the missing thing
can really be taken away: no daemon (DOCKER_HOST at nothing), no compose (a PATH without it),
no image (a tag never built), no credentials, an unreachable PostgreSQL queue. A network
filesystem cannot be mounted here: that line reads a mountinfo file written by the test.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

import parallel_autopilot
from parallel_autopilot import config, doctor
from parallel_autopilot.containers import compose
from parallel_autopilot.errors import EXIT_DOCTOR

PACKAGE_ROOT = Path(parallel_autopilot.__file__).resolve().parents[1]
SECRET = "sk-doctor-secret-123"


def run_doctor(repo: Path, *args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith("INVOKE_AUTOPILOT_")}
    base["PYTHONPATH"] = str(PACKAGE_ROOT)
    base.update(env or {})
    return subprocess.run([sys.executable, "-m", "parallel_autopilot", "doctor", *args], cwd=repo, env=base,
                          capture_output=True, text=True, timeout=timeout)


def checks(proc: subprocess.CompletedProcess) -> dict[str, dict]:
    data = json.loads(proc.stdout)
    assert data["ok"] == (proc.returncode == 0)
    return {c["name"]: c for c in data["checks"]}


def no_credentials(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "no-codex").mkdir(exist_ok=True)
    return {"INVOKE_AUTOPILOT_CODEX_HOME": str(tmp_path / "no-codex")}


def test_outside_a_repository_the_repository_line_fails_with_its_fix(tmp_path):
    proc = run_doctor(tmp_path, "--json")
    assert proc.returncode == EXIT_DOCTOR
    line = checks(proc)["repository"]
    assert line["state"] == "fail" and "cd into the repository" in line["fix"]


@pytest.mark.docker
def test_no_daemon_is_a_failing_line_with_its_fix(git_repo, tmp_path):
    proc = run_doctor(git_repo, "--json", env={"DOCKER_HOST": f"unix://{tmp_path}/no-docker.sock", **no_credentials(tmp_path)})
    assert proc.returncode == EXIT_DOCTOR, proc.stderr
    found = checks(proc)
    assert found["docker"]["state"] == "fail" and "start" in found["docker"]["fix"].lower()
    assert found["image"]["state"] == "skip"
    # the screen says the same in words, the fix under its line
    text = run_doctor(git_repo, env={"DOCKER_HOST": f"unix://{tmp_path}/no-docker.sock"})
    assert text.returncode == EXIT_DOCTOR and "Traceback" not in text.stderr
    lines = text.stdout.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("FAIL") and " docker " in line)
    assert lines[at + 1].strip().startswith("fix: ")
    assert lines[-1] == "agents.start would fail here: fix the FAIL lines"


@pytest.mark.docker
def test_no_compose_is_a_failing_line_naming_how_to_install_v2(git_repo, tmp_path):
    bin_dir = tmp_path / "bin"  # a PATH with git and python, without docker and docker-compose
    bin_dir.mkdir()
    for program in ("git",):
        (bin_dir / program).symlink_to(shutil.which(program))
    proc = run_doctor(git_repo, "--json", env={"PATH": str(bin_dir)})
    found = checks(proc)
    assert proc.returncode == EXIT_DOCTOR
    assert found["compose"]["state"] == "fail" and found["compose"]["fix"] == compose.INSTALL_HINT
    assert found["docker"]["state"] == "ok"  # the daemon is reached through its socket, not the CLI


@pytest.mark.docker
@pytest.mark.skipif(not shutil.which("docker-compose"), reason="docker-compose (v1) not installed")
def test_compose_v1_only_is_a_warning_that_names_v2(git_repo, tmp_path):
    proc = run_doctor(git_repo, "--json", env={"INVOKE_AUTOPILOT_COMPOSE": "v1", **no_credentials(tmp_path)})
    line = checks(proc)["compose"]
    assert line["state"] == "warn" and line["found"].startswith("docker-compose 1.")
    assert line["fix"] == compose.INSTALL_HINT


@pytest.mark.docker
def test_no_image_is_a_warning_with_the_build_command(git_repo, tmp_path):
    proc = run_doctor(git_repo, "--json", env={"INVOKE_AUTOPILOT_IMAGE": "parallel-autopilot:never-built-here",
                                               **no_credentials(tmp_path)})
    line = checks(proc)["image"]
    assert line["state"] == "warn" and "not built" in line["found"]
    assert line["fix"] == "parallel-autopilot build --cli none"


@pytest.mark.docker
def test_no_credentials_for_the_model_kind_fails_and_a_key_is_found_but_never_shown(git_repo, tmp_path):
    env = {"INVOKE_AUTOPILOT_AGENT_KIND": "codex", "INVOKE_AUTOPILOT_AGENT_CLI": "codex",
           "INVOKE_AUTOPILOT_IMAGE": "parallel-autopilot:never-built-here", **no_credentials(tmp_path)}
    proc = run_doctor(git_repo, "--json", env=env)
    found = checks(proc)
    assert proc.returncode == EXIT_DOCTOR
    assert found["credentials (codex)"]["state"] == "fail"
    assert "OPENAI_API_KEY" in found["credentials (codex)"]["fix"]
    assert found["agents (codex)"]["state"] == "fail" and "no credentials" in found["agents (codex)"]["fix"]
    assert found["credentials (claude)"]["state"] == "warn"  # only claude agents need those
    env_file = tmp_path / "agents.env"
    env_file.write_text(f"OPENAI_API_KEY={SECRET}\n")
    proc = run_doctor(git_repo, "--json", env={**env, "INVOKE_AUTOPILOT_ENV_FILE": str(env_file),
                                               "INVOKE_AUTOPILOT_NETWORK": "bridge"})
    found = checks(proc)
    assert found["credentials (codex)"]["state"] == "ok" and str(env_file) in found["credentials (codex)"]["found"]
    assert found["agents (codex)"]["state"] == "ok"
    assert SECRET not in proc.stdout + proc.stderr


def test_state_on_a_network_filesystem_fails_with_its_fix(git_repo, tmp_path):
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(f"36 1 0:30 / / rw - ext4 /dev/sda1 rw\n"
                         f"99 36 0:55 / {git_repo} rw - nfs4 server:/export rw\n")
    settings = config.load({}, repo=str(git_repo))
    line = next(c for c in doctor.examine(settings, 1, mountinfo=str(mountinfo)).checks if c.name == "state")
    assert line.state == "fail" and "nfs4" in line.found
    assert "state_dir" in line.fix or "local" in line.fix
    # the same directory on ext4 is fine
    mountinfo.write_text("36 1 0:30 / / rw - ext4 /dev/sda1 rw\n")
    line = next(c for c in doctor.examine(settings, 1, mountinfo=str(mountinfo)).checks if c.name == "state")
    assert line.state == "ok"


def test_an_unreachable_queue_fails_without_showing_its_password(git_repo, tmp_path):
    started = time.monotonic()
    proc = run_doctor(git_repo, "--json", env={"INVOKE_AUTOPILOT_QUEUE": "postgresql://me:hunter2@127.0.0.1:1/backlog"})
    found = checks(proc)
    assert proc.returncode == EXIT_DOCTOR
    assert found["queue"]["state"] == "fail" and found["queue"]["fix"]
    assert "hunter2" not in proc.stdout + proc.stderr
    assert time.monotonic() - started < 60


def test_too_many_agents_for_this_machine_fails(git_repo):
    settings = config.load({}, repo=str(git_repo))
    line = next(c for c in doctor.examine(settings, 11).checks if c.name == "resources")
    assert line.state == "fail" and "at most" in line.fix


def test_compose_seams_v1_only_and_nothing(git_repo):
    settings = config.load({}, repo=str(git_repo))

    def v1_only(argv, **_):
        if argv[:2] == ["docker", "compose"]:
            return subprocess.CompletedProcess(argv, 1, "", "docker: 'compose' is not a docker command")
        return subprocess.CompletedProcess(argv, 0, "1.29.2\n", "")

    line = doctor._compose(settings, v1_only, lambda name: f"/usr/bin/{name}")
    assert line.state == "warn" and line.found == "docker-compose 1.29.2 (v1, end of life since 2023)"
    line = doctor._compose(settings, v1_only, lambda name: None)
    assert line.state == "fail" and line.fix == compose.INSTALL_HINT


@pytest.mark.docker
@pytest.mark.slow
def test_exit_0_where_agents_start_works(git_repo, tmp_path):
    env = {"INVOKE_AUTOPILOT_NETWORK": "none", "INVOKE_AUTOPILOT_MEMORY": "256m", **no_credentials(tmp_path)}
    proc = run_doctor(git_repo, "--n", "1", "--json", env=env)
    assert proc.returncode == 0, proc.stdout
    assert {c["state"] for c in checks(proc).values()} <= {"ok", "warn"}
    base = {k: v for k, v in os.environ.items() if not k.startswith("INVOKE_AUTOPILOT_")}
    program = [sys.executable, "-m", "parallel_autopilot"]
    run = dict(cwd=git_repo, env={**base, "PYTHONPATH": str(PACKAGE_ROOT), **env}, capture_output=True, text=True)
    try:
        started = subprocess.run([*program, "agents.start", "--n", "1"], timeout=600, **run)
        assert started.returncode == 0, started.stdout + started.stderr
    finally:
        subprocess.run([*program, "agents.stop"], timeout=300, **run)
