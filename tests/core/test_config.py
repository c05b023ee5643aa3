"""parallel_autopilot.config: one Settings for inv, the console program, fab and the GUI."""

from __future__ import annotations

import subprocess

import invoke
import pytest

from parallel_autopilot import config
from parallel_autopilot.errors import GitError, InvalidInput
from parallel_autopilot.tasks import ns


def test_defaults_resolve_against_the_git_top_level(git_repo):
    (git_repo / "sub").mkdir()
    s = config.load(cwd=git_repo / "sub")
    assert s.repo == git_repo.resolve()
    assert s.db_path == git_repo.resolve() / ".autopilot" / "autopilot.db"
    assert s.worktrees_path == git_repo.resolve() / ".worktrees"
    assert s.lease_seconds == 900  # the design's 15 minutes


def test_outside_a_repository_is_one_line_naming_the_fix(tmp_path):
    with pytest.raises(GitError, match="not inside a git repository: cd into one or set autopilot.repo"):
        config.load(cwd=tmp_path)


def test_repository_file_then_environment_then_explicit(git_repo, monkeypatch):
    (git_repo / "invoke.yaml").write_text("autopilot:\n  lease_seconds: 60\n  max_attempts: 5\n")
    assert config.load(cwd=git_repo).lease_seconds == 60
    monkeypatch.setenv("INVOKE_AUTOPILOT_LEASE_SECONDS", "90")
    s = config.load(cwd=git_repo)
    assert (s.lease_seconds, s.max_attempts) == (90, 5)
    assert config.load(cwd=git_repo, lease_seconds=30).lease_seconds == 30


def test_a_task_context_sees_the_repository_file_and_environment(git_repo, monkeypatch):
    """What `inv` and the console program hand a task: defaults installed by the collection."""
    (git_repo / "invoke.yaml").write_text("autopilot:\n  max_attempts: 7\n")
    monkeypatch.setenv("INVOKE_AUTOPILOT_MEMORY", "1g")
    cfg = invoke.Config()
    cfg.load_collection(ns.configuration())
    cfg.load_shell_env()
    s = config.load(cfg, cwd=git_repo)
    assert (s.max_attempts, s.memory) == (7, "1g")  # the file is not hidden by the installed defaults


def test_unknown_keys_and_broken_files_are_refused(git_repo):
    with pytest.raises(InvalidInput, match="unknown setting"):
        config.load({"autopilot": {"leese_seconds": 1}}, cwd=git_repo)
    (git_repo / "invoke.yaml").write_text("autopilot: [\n")
    with pytest.raises(InvalidInput, match="not valid YAML"):
        config.load({}, cwd=git_repo)


def test_console_program_reads_the_target_repositorys_invoke_yaml(git_repo):
    (git_repo / "invoke.yaml").write_text("autopilot:\n  state_dir: elsewhere\n")
    subprocess.run(["parallel-autopilot", "issues.add", "--title", "x"], cwd=git_repo, check=True,
                   capture_output=True)
    assert (git_repo / "elsewhere" / "autopilot.db").exists()


def test_the_host_defaults_to_the_hostname_and_reaches_every_container(git_repo, monkeypatch):
    import socket

    from parallel_autopilot.containers import provision as containers

    assert config.load(cwd=git_repo).host == socket.gethostname()
    monkeypatch.setenv("INVOKE_AUTOPILOT_HOST", "ws2")
    s = config.load(cwd=git_repo)
    assert s.host == "ws2" and s.replace(lease_seconds=60).host == "ws2"
    assert containers.compose_env(s)["AUTOPILOT_HOST"] == "ws2"
    assert config.load(cwd=git_repo, host="ws9").host == "ws9"
