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
from test_fleet_docker import drained, git, sample  # noqa: F401 - sample is a fixture

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
report["snapshots"] = [p for p in seen if "/snapshots" in p or os.path.basename(p).startswith("autopilot-")]
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


def test_a_hostile_agent_reaches_only_its_own_claim_clone_and_log(sample):
    repo, make = sample
    settings = make()
    store = fleet.store_for(settings)
    attack = ATTACK.replace("NUMBERS", str(HONEST))
    store.add("attack", priority="urgent",
              script=f"sleep 4; AUTOPILOT_GIT_DIR_SEEN={settings.repo}/.git python3 - <<'EOF'\n{attack}\nEOF\n")
    store.add_many([{"title": f"honest {i}", "script": f"sleep 3; echo {i} > honest-{i}.txt"}
                    for i in range(1, HONEST + 1)])
    snapshot = snapshots.take(store)  # the way back: it must be there, unchanged, afterwards
    snapshot_bytes = snapshot.read_bytes()
    main_before = git(repo, "rev-parse", "main")

    the_fleet = fleet.Fleet.open(settings)
    the_fleet.start(3, progress=lambda _: None)
    wait_for(lambda: drained(store), 240, what="the queue to drain")
    attacker = store.get(1).owner
    assert store.get(1).status == "done", store.get(1)
    mergequeue.bring_home(settings, store)
    report = json.loads(git(repo, "show", "autopilot/issue-1:attack.json"))
    assert report["me"] == attacker

    # the queue: no file, no URL, no state directory in its container
    assert report["queue_files"] == [] and report["queue_env"] == [] and report["state_dir"] is False
    store.quick_check()
    # the snapshots: out of sight, and the host's are unchanged
    assert report["snapshots"] == []
    assert snapshot.read_bytes() == snapshot_bytes
    # other agents' logs and clones: not there; nothing forged reached the host's logs
    assert report["log_dirs"] == [attacker]
    assert report["worktrees"] == []
    for path in settings.logs_path.rglob("*"):
        if path.is_file() and attacker not in path.parts:
            assert FORGED not in path.read_text(errors="replace"), path
    # the user's refs: read-only
    assert report["ref_write"] is False and git(repo, "rev-parse", "main") == main_before
    # the socket: it is itself, it can act on no other claim, in no other name, with no other verb
    assert report["hello"]["agent"] == attacker
    assert report["stolen"] == []
    assert report["claim_as_other"]["ok"]["issue"]["number"] == 1  # its own claim, as itself
    assert set(report["verbs"].values()) == {"InvalidInput"}
    assert report["heartbeat_as_other"] == {"ok": None}
    assert {a.id for a in store.agents()} == {"agent-001", "agent-002", "agent-003"}
    refused = [e for e in store.events() if e.kind.startswith("refused-")]
    assert refused and {e.worker for e in refused} == {attacker}  # each refusal recorded, as the attacker

    # every honest issue done exactly once, by whoever claimed it, then merged
    events = store.events()
    for number in range(2, HONEST + 2):
        done = [e for e in events if e.issue == number and e.kind == "done"]
        claims = [e for e in events if e.issue == number and e.kind == "claimed"]
        assert len(done) == 1 and done[0].worker == claims[-1].worker, (number, done, claims)
    report_merge = mergequeue.MergeQueue(settings, store, progress=lambda _: None).run()
    assert {i.status for i in store.list()} == {"merged"}, report_merge.summary()
    for i in range(1, HONEST + 1):
        assert git(repo, "show", f"main:honest-{i}.txt") == str(i)

    the_fleet.stop(progress=lambda _: None)
    running = subprocess.run(["docker", "ps", "-q", "--filter", f"label=parallel-autopilot.project={the_fleet.project}"],
                             capture_output=True, text=True, check=True).stdout.split()
    assert running == []  # the gateway stopped with the last agent
