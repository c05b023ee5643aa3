"""Every task answers ``--help`` and ``-h`` (and does nothing else); a closed pipe is no traceback."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
from invoke import Program

from parallel_autopilot import __version__
from parallel_autopilot.issues import IssueStore
from parallel_autopilot.program import BROKEN_PIPE_EXIT
from parallel_autopilot.tasks import ns

PROGRAM = shutil.which("parallel-autopilot")
TASKS = sorted(ns.task_names)


def _run(argv: list[str]) -> int:
    program = Program(namespace=ns, version=__version__, name="parallel-autopilot", binary="parallel-autopilot")
    try:
        program.run(["parallel-autopilot", *argv])
    except SystemExit as end:
        return end.code or 0
    return 0


def test_the_namespace_has_the_tasks_the_readme_names():
    assert {"issues.add", "issues.show", "issues.retry", "issues.block", "issues.backup", "issues.restore",
            "agents.start", "logs.tail", "cleanup"} <= set(TASKS)


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_every_task_answers_help_and_does_nothing_else(flag, git_repo, monkeypatch, capsys):
    monkeypatch.chdir(git_repo)
    for name in TASKS:
        assert _run([name, flag]) == 0, name
        out = capsys.readouterr()
        assert f"Usage: parallel-autopilot [--core-opts] {name}" in out.out, (name, out)
        assert "error" not in out.err.lower(), (name, out.err)
    assert not (git_repo / ".autopilot" / "autopilot.db").exists()  # `issues.add --help` added nothing


@pytest.mark.skipif(PROGRAM is None, reason="the console program is not installed (pip install -e .)")
def test_issues_add_help_through_the_real_program_adds_no_issue(git_repo):
    db = git_repo / ".autopilot" / "autopilot.db"
    IssueStore(db).close()
    for args in (["issues.add", "--help"], ["issues.show", "-h"], ["issues.retry", "--help"], ["issues.block", "-h"]):
        proc = subprocess.run([PROGRAM, *args], cwd=git_repo, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0 and "Usage:" in proc.stdout, (args, proc.stderr)
    assert IssueStore(db).list() == []
    # a value after a flag that takes one stays a value
    proc = subprocess.run([PROGRAM, "issues.add", "--title", "-h"], cwd=git_repo, capture_output=True, text=True)
    assert proc.returncode == 0 and [i.title for i in IssueStore(db).list()] == ["-h"]


@pytest.mark.skipif(PROGRAM is None, reason="the console program is not installed (pip install -e .)")
@pytest.mark.parametrize("args", [["--help"], ["issues.list"], ["--list"]])
def test_a_reader_that_went_away_is_no_traceback(args, git_repo):
    """A REAL pipe whose read end is closed before the program writes (`| head` that already quit)."""
    IssueStore(git_repo / ".autopilot" / "autopilot.db").add("something to list")
    read, write = os.pipe()
    os.close(read)
    try:
        proc = subprocess.run([PROGRAM, *args], cwd=git_repo, stdout=write, stderr=subprocess.PIPE, text=True,
                              timeout=60)
    finally:
        os.close(write)
    assert proc.stderr == "" and proc.returncode == BROKEN_PIPE_EXIT, proc.stderr


@pytest.mark.skipif(PROGRAM is None, reason="the console program is not installed (pip install -e .)")
def test_help_piped_into_head_is_complete_and_quiet(git_repo):
    proc = subprocess.run(f"{PROGRAM} --help | head -3", shell=True, cwd=git_repo, capture_output=True,
                          text=True, timeout=60, executable="/bin/bash")
    assert proc.returncode == 0 and len(proc.stdout.splitlines()) == 3 and "Traceback" not in proc.stderr


def test_python_m_entry_point_is_the_same_program():
    proc = subprocess.run([sys.executable, "-m", "parallel_autopilot", "issues.show", "--help"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "issues.show" in proc.stdout


@pytest.mark.skipif(PROGRAM is None, reason="the console program is not installed (pip install -e .)")
@pytest.mark.parametrize("args", [["demo", "--n", "abc"], ["agents.status", "--watch", "soon"],
                                  ["issues.backup", "--keep", "x"]])
def test_a_value_of_the_wrong_type_is_one_line(args, git_repo):
    proc = subprocess.run([PROGRAM, *args], cwd=git_repo, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "give e.g." in lines[0], proc.stderr
