"""``worktrees.*`` through the REAL command line: ``inv`` and ``parallel-autopilot`` as subprocesses."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


def program(name: str) -> list[str]:
    """The console program installed with this Python (not a shim that may pick another one)."""
    exe = BIN / name
    if exe.exists():
        return [str(exe)]
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: pip install -e .")
    return [found]


def sh(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def env(tmp_path_factory) -> dict[str, str]:
    """The environment of the CLI: hermetic git, no INVOKE_AUTOPILOT_* from the caller."""
    empty = tmp_path_factory.mktemp("gitconfig") / "config"
    empty.write_text("")
    values = {k: v for k, v in os.environ.items() if not k.startswith(("INVOKE_", "GIT_"))}
    values.update(GIT_CONFIG_GLOBAL=str(empty), GIT_CONFIG_NOSYSTEM="1")
    return values


@pytest.fixture
def repo(tmp_path: Path, env) -> Path:
    """A target repository whose tasks.py is the one line a user writes."""
    r = tmp_path / "target"
    r.mkdir()
    for args in (["init", "-q", "-b", "main"], ["config", "user.name", "Test"],
                 ["config", "user.email", "test@example.com"]):
        subprocess.run(["git", *args], cwd=r, check=True, env=env)
    (r / "tasks.py").write_text("from parallel_autopilot.tasks import ns  # noqa: F401\n")
    (r / "src").mkdir()
    (r / "src" / "app.py").write_text("print('hello')\n")
    subprocess.run(["git", "add", "-A"], cwd=r, check=True, env=env)
    subprocess.run(["git", "commit", "-q", "-m", "init"], cwd=r, check=True, env=env)
    return r


def run(cli: list[str], cwd: Path, env, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*cli, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def agent_worktrees(repo: Path) -> list[str]:
    """The agents' own clones under .worktrees (a real .git directory each)."""
    root = repo / ".worktrees"
    return sorted(p.name for p in root.iterdir() if (p / ".git").is_dir()) if root.is_dir() else []


@pytest.mark.parametrize("flag", ["--n", "-n"])
def test_create_with_long_and_short_flag(repo, env, flag):
    result = run(program("inv"), repo, env, "worktrees.create", flag, "3")
    assert result.returncode == 0, result.stderr
    assert agent_worktrees(repo) == ["agent-001", "agent-002", "agent-003"]
    assert "agent-003" in result.stdout and result.stderr == ""
    # again: idempotent
    again = run(program("inv"), repo, env, "worktrees.create", flag, "3")
    assert again.returncode == 0, again.stderr
    assert agent_worktrees(repo) == ["agent-001", "agent-002", "agent-003"]


@pytest.mark.parametrize("flag", ["--n", "-n"])
@pytest.mark.parametrize("count", ["0", "-1", "abc", "11"])
def test_bad_counts_are_refused_with_one_line(repo, env, flag, count):
    result = run(program("inv"), repo, env, "worktrees.create", flag, count)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "agent count" in lines[0] and "1 to 10" in lines[0], result.stderr
    assert agent_worktrees(repo) == []


def test_max_agents_setting_raises_the_limit(repo, env):
    (repo / "invoke.yaml").write_text("autopilot:\n  max_agents: 12\n")
    result = run(program("inv"), repo, env, "worktrees.create", "--n", "11")
    assert result.returncode == 0, result.stderr
    assert agent_worktrees(repo)[-1] == "agent-011"


def test_console_program_works_from_a_subdirectory_without_tasks_py(repo, env):
    (repo / "tasks.py").unlink()
    cli = program("parallel-autopilot")
    result = run(cli, repo / "src", env, "worktrees.create", "--n", "2")
    assert result.returncode == 0, result.stderr
    assert agent_worktrees(repo) == ["agent-001", "agent-002"]
    refused = run(cli, repo / "src", env, "worktrees.create", "-n", "abc")
    assert refused.returncode != 0 and len(refused.stderr.strip().splitlines()) == 1
    assert "Traceback" not in refused.stderr


def test_list_json_and_remove(repo, env):
    inv = program("inv")
    assert run(inv, repo, env, "worktrees.create", "--n", "3").returncode == 0
    (repo / ".worktrees" / "agent-002" / "wip.txt").write_text("unsaved\n")

    listed = run(inv, repo, env, "worktrees.list", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert [(r["id"], r["state"], r["branch"], r["dirty"], r["unmerged"]) for r in rows] == [
        ("agent-001", "ok", None, False, []), ("agent-002", "ok", None, True, []),
        ("agent-003", "ok", None, False, [])]
    table = run(inv, repo, env, "worktrees.list")
    assert "dirty" in table.stdout and "agent-003" in table.stdout

    refused = run(inv, repo, env, "worktrees.remove", "--id", "002")
    assert refused.returncode == 4
    assert refused.stderr.strip().splitlines() == [refused.stderr.strip()]
    assert "agent-002 has uncommitted changes" in refused.stderr and "Traceback" not in refused.stderr
    assert agent_worktrees(repo) == ["agent-001", "agent-002", "agent-003"]

    removed = run(inv, repo, env, "worktrees.remove", "--id", "1", "--id", "agent-003", "--json")
    assert removed.returncode == 0, removed.stderr
    assert json.loads(removed.stdout) == {"removed": ["agent-001", "agent-003"],
                                          "deleted_branches": [], "kept": {}}

    forced = run(inv, repo, env, "worktrees.remove", "--force")
    assert forced.returncode == 0, forced.stderr
    assert "agent-002" in forced.stdout
    assert agent_worktrees(repo) == []


def test_bad_id_is_one_line(repo, env):
    result = run(program("inv"), repo, env, "worktrees.remove", "--id", "../x")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "invalid agent id" in result.stderr
