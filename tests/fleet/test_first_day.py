"""First-day edges: what `issues.show` and the demo's summary tell a new user."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time

import pytest

from parallel_autopilot import demo
from parallel_autopilot.issues import IssueStore

PROGRAM = shutil.which("parallel-autopilot")


@pytest.mark.skipif(PROGRAM is None, reason="the console program is not installed (pip install -e .)")
@pytest.mark.parametrize("zone", ["UTC0", "JST-9"])
def test_issues_show_prints_local_times_and_durations_and_json_keeps_epochs(git_repo, zone):
    store = IssueStore(git_repo / ".autopilot" / "autopilot.db")
    store.add("Timed", script="true")
    claim = store.claim("agent-001")
    store.complete(claim, {"branch": "autopilot/issue-1", "commit": "c" * 40, "duration": 125.4})
    env = {"PATH": "/usr/bin:/bin:" + shutil.os.environ["PATH"], "TZ": zone,
           **{k: v for k, v in shutil.os.environ.items() if k == "PYTHONPATH"}}
    shown = subprocess.run([PROGRAM, "issues.show", "1"], cwd=git_repo, env=env, capture_output=True,
                           text=True, timeout=60, check=True).stdout
    data = json.loads(subprocess.run([PROGRAM, "issues.show", "#1", "--json"], cwd=git_repo, env=env,
                                     capture_output=True, text=True, timeout=60, check=True).stdout)
    assert isinstance(data["created_at"], float) and isinstance(data["events"][0]["at"], float)
    assert not re.search(r"\b1[0-9]{9}\.[0-9]", shown), shown  # no raw epoch anywhere
    offset = 9 * 3600 if zone == "JST-9" else 0
    expected = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(data["created_at"] + offset))
    assert re.search(rf"created_at: {expected} \((now|\d+\.\ds ago)\)", shown), shown
    assert "duration: 2m05s" in shown
    assert all(line.startswith(f"   {time.strftime('%Y-%m-%d', time.gmtime(e['at'] + offset))} ")
               for line, e in zip(shown.split("events:\n")[1].splitlines(), data["events"]))


def test_the_demo_summary_says_where_the_repository_is_and_what_to_do_next(tmp_path):
    store = IssueStore(tmp_path / "repo" / ".autopilot" / "autopilot.db")
    store.add_many(demo.sample_issues()[:2])
    result = demo.DemoResult(repo=tmp_path / "repo", issues=store.list(), seconds=3.0)
    steps = demo.next_steps(result)
    text = "\n".join(steps)
    assert f"cd {tmp_path / 'repo'}" in text
    assert [line.split()[1] for line in steps[2:]] == ["issues.list", "issues.merge", "gui", "cleanup"]
    assert "agents.status" in "\n".join(demo.next_steps(result, keep_running=True))


BLOCK_GUI_PACKAGES = """
import sys
class Missing:  # as on a machine where only the base package was installed
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("anyio", "fastapi", "uvicorn", "starlette"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, Missing())
from parallel_autopilot.program import main
main(["parallel-autopilot", "gui"])
"""


def test_a_missing_optional_dependency_is_one_line_naming_the_install_command(git_repo):
    """Beside the real fresh-venv run (test_readme_fresh_clone): the import itself made to fail."""
    import sys

    from parallel_autopilot.errors import MissingDependency

    proc = subprocess.run([sys.executable, "-c", BLOCK_GUI_PACKAGES], cwd=git_repo, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == MissingDependency.exit_code and "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install" in lines[0] and "parallel-autopilot[gui]" in lines[0], lines
