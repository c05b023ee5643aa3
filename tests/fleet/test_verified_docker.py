"""Verified work end to end (issue 10): 3 agents in REAL containers (network none, light profile)
on a real repository with a real unittest suite, script issues, the real merge queue.

What the scripts see of their prompt: every kind gets ``AUTOPILOT_PROMPT`` (the prompt a model
kind is given, the previous attempt's feedback included); the scripts echo it, so it lands in
the attempt log ``<logs>/agents/<agent>/issue-<N>-attempt-<k>.log``.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from parallel_autopilot import config, fleet
from parallel_autopilot.merge import queue as mergequeue
from support.waiting import wait_for as _wait_for

pytestmark = [pytest.mark.docker, pytest.mark.slow]

CHECK = "python3 -m unittest -q"
IMAGE = "parallel-autopilot-test-verified:latest"  # its own tag, removed after the test


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "safe.directory=*", "-C", str(repo), *args], check=True,
                          capture_output=True, text=True).stdout.strip()


def make_repo(path: Path) -> Path:
    path.mkdir(parents=True)
    git(path, "init", "-q", "-b", "main")
    git(path, "config", "user.name", "Host User")
    git(path, "config", "user.email", "host@example.invalid")
    (path / "calc.py").write_text("def add(a, b):\n    return a + b\n")
    (path / "shapes.py").write_text("SIDES = {'triangle': 3}\n")
    (path / "test_calc.py").write_text(
        "import unittest\nimport calc\nimport shapes\n\n\nclass T(unittest.TestCase):\n"
        "    def test_add(self):\n        self.assertEqual(calc.add(2, 3), 5)\n\n"
        "    def test_shapes(self):\n        self.assertEqual(shapes.SIDES['triangle'], 3)\n")
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "calc, shapes and tests")
    git(path, "branch", "feature")  # a branch of the user's that no agent may touch
    return path


def wait_for(predicate, timeout=180.0, step=0.5, what="condition"):
    return _wait_for(predicate, timeout, step, what)



def objects(repo: Path) -> set[str]:
    """Every file of the user's object store (loose objects and packs)."""
    root = repo / ".git" / "objects"
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def attempt_log(settings, number: int, attempt: int) -> str:
    found = list((settings.logs_path / "agents").glob(f"agent-*/issue-{number}-attempt-{attempt}.log"))
    return found[0].read_text() if found else ""


@pytest.fixture
def site(tmp_path, built_test_image):
    built_test_image(IMAGE)
    repo = make_repo(tmp_path / "repo")
    settings = config.load({}, repo=str(repo), network="none", profile="light", memory="256m", cpus=0.5,
                           lease_seconds=60, poll_seconds=0.3, stop_grace_seconds=20, health_interval_seconds=1,
                           start_timeout_seconds=180, watchdog_seconds=60, backoff_seconds=1, max_attempts=2,
                           image=IMAGE, check=CHECK, check_timeout=60, merge_requeue=True, base_branch="main",
                           codex_home=str(tmp_path / "no-codex"), ssh_dir=str(tmp_path / "no-ssh"),
                           gitconfig=str(tmp_path / "no-gitconfig"))
    yield repo, settings
    try:
        fleet.Fleet.open(settings).stop(progress=lambda _: None)
    except Exception:  # noqa: BLE001 - best-effort teardown
        pass


GOOD = ("printf 'def mul(a, b):\\n    return a * b\\n' > mathx.py; "
        "printf 'import unittest\\nimport mathx\\n\\n\\nclass M(unittest.TestCase):\\n"
        "    def test_mul(self):\\n        self.assertEqual(mathx.mul(2, 3), 6)\\n' > test_mul.py")
BAD = 'echo "$AUTOPILOT_PROMPT"; sed -i "s/a + b/a - b/" calc.py; exit 0'
SQUARE = "echo \"$AUTOPILOT_PROMPT\"; sleep 1; printf \"SIDES = {'triangle': 3, 'square': 4}\\n\" > shapes.py"
PENTAGON = ("echo \"$AUTOPILOT_PROMPT\"; sleep 1; if grep -q square shapes.py; then printf \"SIDES = {'triangle': 3, 'square': 4, "
            "'pentagon': 5}\\n\" > shapes.py; else printf \"SIDES = {'triangle': 3, 'pentagon': 5}\\n\" > shapes.py; fi")
# commits, moves refs/heads/main (its own and, trying, the user's), deletes the user's branches, gc --prune=now
ROGUE = ("echo rogue > rogue.txt; git add -A; git commit -qm rogue; "
         "user=$(git config remote.origin.url)/.git; "
         "git update-ref refs/heads/main HEAD; "
         "git --git-dir=$user update-ref refs/heads/main HEAD || echo 'could not move the user main'; "
         "git --git-dir=$user branch -D feature || echo 'could not delete feature'; "
         "git --git-dir=$user branch -D autopilot/issue-1 || echo 'could not delete issue-1'; "
         "for other in $(dirname $user)/.worktrees/agent-00*; do "
         "git -C $other branch -D autopilot/issue-1 2>/dev/null || echo \"no repository at $other\"; done; "
         "git update-ref -d refs/remotes/origin/main; "
         "git --git-dir=$user gc --prune=now || echo 'could not gc the user repo'; "
         "git gc -q --prune=now; exit 0")


def test_verified_work_and_the_merge_queue_with_three_agents_in_containers(site):
    repo, settings = site
    store = fleet.store_for(settings)
    good = store.add("mul", script=GOOD).number
    bad = store.add("break add", script=BAD).number
    empty = store.add("nothing", script="echo 'looked, nothing to do'").number
    square = store.add("square", script=SQUARE).number
    pentagon = store.add("pentagon", script=PENTAGON).number
    rogue = store.add("rogue", script=ROGUE, max_attempts=1).number
    refs_before = {line for line in git(repo, "for-each-ref", "--format=%(refname) %(objectname)").splitlines()
                   if not line.startswith("refs/heads/autopilot/")}
    objects_before = objects(repo)

    fleet.Fleet.open(settings).start(3, progress=lambda _: None)
    finished = ("done", "dead", "empty", "rejected", "merged")
    wait_for(lambda: all(i.status in finished for i in store.list()), what="every issue to finish its attempts")

    # the user's repository is as it was: refs, objects; the rogue attempt is not done
    refs_now = {line for line in git(repo, "for-each-ref", "--format=%(refname) %(objectname)").splitlines()
                if not line.startswith("refs/heads/autopilot/")}
    assert refs_now == refs_before
    assert objects(repo) == objects_before  # not one object added or pruned
    assert git(repo, "fsck", "--no-progress", "--connectivity-only") == ""
    rogue_issue = store.get(rogue)
    assert rogue_issue.status == "dead" and "changed refs that are not its own" in rogue_issue.error
    rogue_log = attempt_log(settings, rogue, 1)
    assert "could not move the user main" in rogue_log and "could not delete feature" in rogue_log
    assert "no repository at" in rogue_log  # other agents' repositories are not even mounted

    # (b) never done: both attempts failed on the check, its output in the error and the 2nd prompt
    broken = store.get(bad)
    assert broken.status == "dead" and broken.attempts == 2 and broken.check_status == "failed"
    assert "AssertionError" in broken.error
    assert "previous attempt failed this check" not in attempt_log(settings, bad, 1)
    second = attempt_log(settings, bad, 2)
    assert "The previous attempt failed this check: `python3 -m unittest -q`" in second
    assert "AssertionError" in second.split("previous attempt failed this check")[1]
    # (c) not done
    assert store.get(empty).status == "empty" and store.get(empty).commit is None
    assert store.get(good).status == "done" and store.get(good).check_status == "passed"

    # the merge queue, first round: (a) merged; (d) one merged, the other rejected naming the file
    base_before = git(repo, "rev-parse", "main")
    (report,) = fleet.Fleet.open(settings).merge_loop(rounds=1, sleep=lambda _: None, progress=lambda _: None)
    assert good in report.merged and bad not in report.merged
    assert len({square, pentagon} & set(report.merged)) == 1
    loser = ({square, pentagon} - set(report.merged)).pop()
    assert "shapes.py" in report.rejected[loser]
    assert git(repo, "rev-parse", f"refs/autopilot/rejected/issue-{loser}") == git(repo, "rev-parse",
                                                                                   f"autopilot/issue-{loser}")
    assert [e for e in store.events(loser) if e.kind == "rejected"][0].detail.startswith("re-queued")
    # re-queued as a new attempt: it starts from the new base and merges in the next round
    wait_for(lambda: store.get(loser).status in ("done", "dead"), what="the re-queued attempt")
    assert "conflicts in: shapes.py" in attempt_log(settings, loser, 2)
    fleet.Fleet.open(settings).merge_loop(rounds=1, sleep=lambda _: None, progress=lambda _: None)
    assert {store.get(n).status for n in (good, square, pentagon)} == {"merged"}
    assert store.get(bad).status == "dead" and store.get(bad).merge_commit is None

    # the base's check is green after every merge (each first-parent commit since the start)
    added = git(repo, "rev-list", "--first-parent", f"{base_before}..main").split()
    assert len(added) == 3
    for sha in added:
        wt = repo.parent / f"verify-{sha[:8]}"
        git(repo, "worktree", "add", "-q", "--detach", str(wt), sha)
        assert subprocess.run(["bash", "-c", CHECK], cwd=wt, capture_output=True).returncode == 0, sha
        git(repo, "worktree", "remove", "--force", str(wt))
    assert not (repo / "rogue.txt").exists() and git(repo, "status", "--porcelain") == ""
    assert mergequeue.MergeQueue(settings, store).run().outcome == "nothing"
