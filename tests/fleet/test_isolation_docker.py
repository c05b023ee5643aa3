"""A hostile agent in a real container, beside honest ones, with default settings (issue 19).

Issue #1 is the attacker: a script that does what a prompt-injected model would do,
from inside its agent container, and writes what each attack got into attack.json
(committed on its branch, so the host reads it after the run). Each attack is
asserted on its own below, with the asset it aimed at checked unchanged on the host;
and every honest issue is done exactly once and merged.
"""

from __future__ import annotations

import json
import subprocess

import pytest

from parallel_autopilot import fleet
from parallel_autopilot.issues import snapshots
from parallel_autopilot.merge import queue as mergequeue
from support.waiting import wait_for
from test_fleet_docker import drained, git, make_repo, make_settings

pytestmark = [pytest.mark.docker, pytest.mark.slow]

HONEST = 6
FORGED = "FORGED-BY-AGENT"

ATTACK = r'''
import json, os, socket, subprocess
report = {}
me = os.environ["AUTOPILOT_AGENT_ID"]
report["me"] = me

def walk(top="/"):
    for root, dirs, files in os.walk(top):
        dirs[:] = [d for d in dirs if os.path.join(root, d) not in ("/proc", "/sys", "/dev")]
        for name in dirs + files:
            yield os.path.join(root, name)

seen = list(walk())
# 1. the queue, by any file or URL it can see
report["queue_files"] = [p for p in seen if os.path.basename(p).startswith("autopilot") and ".db" in p]
report["queue_env"] = sorted(k for k, v in os.environ.items()
                             if k in ("AUTOPILOT_DB", "AUTOPILOT_QUEUE_FILE") or "postgres" in v)
report["state_dir"] = os.path.exists("/state")
# 2. the snapshots
report["snapshots"] = [p for p in seen if "/snapshots/" in p + "/"
                       or (os.path.basename(p).startswith("autopilot-") and p.endswith(".db"))]
# 3. other agents' logs and clones
report["log_dirs"] = sorted(os.listdir("/logs/agents"))
report["log_writes"] = []
for other in ("agent-001", "agent-002", "agent-003"):
    if other == me:
        continue
    try:
        os.makedirs(f"/logs/agents/{other}", exist_ok=True)
        with open(f"/logs/agents/{other}/agent.log", "a") as f:
            f.write("FORGED-BY-AGENT\n")
        report["log_writes"].append(other)
    except OSError:
        pass
report["worktrees"] = [p for p in seen if "/.worktrees/" in p or "/.worktrees" == p[-11:]]
git_dir = os.environ.get("AUTOPILOT_GIT_DIR_SEEN", "")
report["ref_write"] = subprocess.run(["git", "--git-dir", git_dir, "update-ref", "refs/heads/main", "HEAD"],
                                     capture_output=True).returncode == 0 if git_dir else None

# 4. the socket: other agents' claims, another's name, verbs it does not have
def call(verb, args, retry=False):
    with socket.socket(socket.AF_UNIX) as s:
        s.connect("/run/autopilot-queue/queue.sock")
        s.sendall(json.dumps({"verb": verb, "args": args, "retry": retry}).encode() + b"\n")
        return json.loads(s.makefile("rb").readline())

report["hello"] = call("hello", {})["ok"]
report["stolen"] = []
for number in range(2, 2 + NUMBERS):
    for token in range(0, 4):
        for verb, extra in (("complete", {"result": {"branch": "evil", "commit": "0" * 40}}),
                            ("fail", {"error": "evil"}), ("release", {}), ("empty", {"result": {}}),
                            ("renew", {"lease_seconds": 9999})):
            for retry in (False, True):
                reply = call(verb, {"number": number, "token": token, **extra}, retry)
                if "ok" in reply:
                    report["stolen"].append([verb, number, token, retry])
report["claim_as_other"] = call("claim", {"lease_seconds": 30, "worker": "agent-002", "host": "elsewhere"})
report["verbs"] = {v: call(v, {"title": "injected", "number": 2, "sql": "DELETE FROM issues"}).get("error", {})
                   .get("kind") for v in ("add", "list", "retry", "block", "sql", "counts", "events")}
report["heartbeat_as_other"] = call("heartbeat", {"state": "idle", "agent_id": "agent-002"})
open("attack.json", "w").write(json.dumps(report, indent=1))
'''


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """One night with an attacker: three agents, default settings; what the attack got, and the queue."""
    root = tmp_path_factory.mktemp("isolation")
    repo = make_repo(root / "repo")
    # the repository's check runs its committed check.sh: the attacker rewrites it to reach the host
    (repo / "check.sh").write_text("exit 0\n")
    git(repo, "add", "check.sh")
    git(repo, "commit", "-q", "-m", "the check")
    git(repo, "config", "core.hooksPath", ".husky")  # a husky user: git would run the committed hooks
    settings = make_settings(repo, check="sh check.sh")
    store = fleet.store_for(settings)
    attack = ATTACK.replace("NUMBERS", str(HONEST))
    marker = root / "written-on-the-host-by-the-check"
    hooked = root / "run-by-a-host-git-hook"
    evil_check = f"mkdir -p {root} && echo pwned > {marker}; exit 0"
    store.add("attack", priority="urgent", script=(
        f"sleep 4; AUTOPILOT_GIT_DIR_SEEN={settings.repo}/.git python3 - <<'EOF'\n{attack}\nEOF\n"
        f"printf '%s\\n' '{evil_check}' > check.sh\n"
        # and a hook for any host git that would run the repository's hooks (husky style)
        "mkdir -p .husky && for hook in post-merge post-checkout pre-commit; do "
        f"printf '#!/bin/sh\\necho pwned > {hooked}\\n' > .husky/$hook; chmod +x .husky/$hook; done\n"))
    store.add_many([{"title": f"honest {i}", "script": f"sleep 3; echo {i} > honest-{i}.txt"}
                    for i in range(1, HONEST + 1)])
    snapshot = snapshots.take(store)  # the way back: it must be there, unchanged, afterwards
    run = {"settings": settings, "store": store, "repo": repo, "snapshot": snapshot, "marker": marker,
           "hooked": hooked,
           "snapshot_bytes": snapshot.read_bytes(), "main": git(repo, "rev-parse", "main")}
    the_fleet = fleet.Fleet.open(settings)
    try:
        the_fleet.start(3, progress=lambda _: None)
        wait_for(lambda: drained(store), 240, what="the queue to drain")
        mergequeue.bring_home(settings, store)
        run["main_after"] = git(repo, "rev-parse", "main")  # before any merge: what the agents left
        run["attacker"] = store.get(1).owner
        run["report"] = json.loads(git(repo, "show", "autopilot/issue-1:attack.json"))
        yield run
    finally:
        the_fleet.stop(progress=lambda _: None)


def test_the_attacker_ran_as_itself(hostile):
    assert hostile["store"].get(1).status == "done"
    assert hostile["report"]["me"] == hostile["attacker"] == hostile["report"]["hello"]["agent"]


def test_the_queue_is_no_file_url_or_directory_it_can_see(hostile):
    report = hostile["report"]
    assert report["queue_files"] == [] and report["queue_env"] == [] and report["state_dir"] is False
    hostile["store"].quick_check()


def test_the_snapshots_are_out_of_sight_and_unchanged(hostile):
    assert hostile["report"]["snapshots"] == []
    assert hostile["snapshot"].read_bytes() == hostile["snapshot_bytes"]


def test_other_agents_logs_and_clones_are_not_there_and_nothing_forged_reached_the_host(hostile):
    report, attacker = hostile["report"], hostile["attacker"]
    assert report["log_dirs"] == [attacker] and report["worktrees"] == []
    for path in hostile["settings"].logs_path.rglob("*"):
        if path.is_file() and attacker not in path.parts:
            assert FORGED not in path.read_text(errors="replace"), path


def test_the_users_refs_are_read_only(hostile):
    assert hostile["report"]["ref_write"] is False
    assert hostile["main_after"] == hostile["main"]


def test_no_other_claim_can_be_renewed_completed_failed_emptied_or_released(hostile):
    store, attacker = hostile["store"], hostile["attacker"]
    assert hostile["report"]["stolen"] == []
    refused = [e for e in store.events() if e.kind.startswith("refused-")]
    assert {e.kind for e in refused} == {f"refused-{v}" for v in ("complete", "fail", "release", "empty", "renew")}
    assert {e.worker for e in refused} == {attacker}  # each refusal recorded, as the attacker


def test_no_claim_in_another_agents_name(hostile):
    report = hostile["report"]
    assert report["claim_as_other"]["ok"]["issue"]["number"] == 1  # its own claim again, as itself: one at a time
    assert report["heartbeat_as_other"] == {"ok": None}  # its own row
    assert {a.id for a in hostile["store"].agents()} == {"agent-001", "agent-002", "agent-003"}


def test_no_verb_but_its_own(hostile):
    assert set(hostile["report"]["verbs"].values()) == {"InvalidInput"}
    assert len(hostile["store"].list()) == HONEST + 1  # nothing added


def test_every_honest_issue_is_done_exactly_once_and_merged(hostile):
    store, settings, repo = hostile["store"], hostile["settings"], hostile["repo"]
    events = store.events()
    for number in range(2, HONEST + 2):
        done = [e for e in events if e.issue == number and e.kind == "done"]
        claims = [e for e in events if e.issue == number and e.kind == "claimed"]
        assert len(done) == 1 and done[0].worker == claims[-1].worker, (number, done, claims)
    report = mergequeue.MergeQueue(settings, store, progress=lambda _: None).run()
    assert {i.status for i in store.list()} == {"merged"}, report.summary()
    for i in range(1, HONEST + 1):
        assert git(repo, "show", f"main:honest-{i}.txt") == str(i)


def test_the_merge_check_and_host_git_run_no_agent_code_on_the_host(hostile):
    # (the merge queue ran in the test before; once more does nothing, or runs it if alone)
    mergequeue.MergeQueue(hostile["settings"], hostile["store"], progress=lambda _: None).run()
    # the attacker's check.sh and hooks are on the base now (its issue merged: its check exited 0)
    assert hostile["store"].get(1).status == "merged"
    assert "pwned" in git(hostile["repo"], "show", "main:check.sh")
    assert not hostile["marker"].exists()  # the check ran in its container, not here
    assert not hostile["hooked"].exists()  # no host git ran the committed hook


def test_the_gateway_goes_with_the_last_agent(hostile):
    the_fleet = fleet.Fleet.open(hostile["settings"])
    assert subprocess.run(["docker", "ps", "-q", "--filter", f"name={the_fleet.project}-gateway"],
                          capture_output=True, text=True, check=True).stdout.split()
    the_fleet.stop(progress=lambda _: None)
    running = subprocess.run(["docker", "ps", "-aq", "--filter", f"label=parallel-autopilot.project={the_fleet.project}"],
                             capture_output=True, text=True, check=True).stdout.split()
    assert running == []
