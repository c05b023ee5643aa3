"""Agents in REAL containers (issue 3's acceptance): a real daemon, compose, git, SQLite.

Each test gets its own sample repository, so its compose project, containers,
worktrees and database are its own.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from parallel_autopilot import config, fleet
from parallel_autopilot.merge import queue as mergequeue
from parallel_autopilot.errors import DockerUnavailable, InvalidAgentCount
from support.composes import V1_INSTALLED
from support.waiting import wait_for

pytestmark = [pytest.mark.docker, pytest.mark.slow]


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "safe.directory=*", "-C", str(repo), *args], check=True, capture_output=True,
                          text=True).stdout.strip()


def make_repo(path: Path, owner: int | None = None) -> Path:
    path.mkdir(parents=True)
    git(path, "init", "-q", "-b", "main")
    git(path, "config", "user.name", "Host User")
    git(path, "config", "user.email", "host@example.invalid")
    (path / "README.md").write_text("sample\n")
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "first")
    if owner is not None:
        subprocess.run(["chown", "-R", f"{owner}:{owner}", str(path)], check=True)
    return path


def make_settings(repo: Path, **extra) -> config.Settings:
    values = dict(repo=str(repo), network="none", profile="light", memory="256m", cpus=0.5,
                  lease_seconds=60, poll_seconds=0.3, stop_grace_seconds=20, health_interval_seconds=1,
                  start_timeout_seconds=120, watchdog_seconds=30, backoff_seconds=1,
                  codex_home=str(repo.parent / "no-codex"), ssh_dir=str(repo.parent / "no-ssh"),
                  gitconfig=str(repo.parent / "no-gitconfig"))
    values.update(extra)
    return config.load({}, **values)


@pytest.fixture
def sample(tmp_path):
    """(repo, settings) for a fresh sample repository; every agent is removed afterwards."""
    repo = make_repo(tmp_path / "repo")
    made = []

    def factory(**extra):
        settings = make_settings(repo, **extra)
        made.append(settings)
        return settings

    yield repo, factory
    for settings in made:
        try:
            fleet.Fleet.open(settings).stop(progress=lambda _: None)
        except Exception:  # noqa: BLE001 - best-effort teardown
            pass



def drained(store):
    counts = store.counts()
    return counts["ready"] + counts["claimed"] + counts["failed"] == 0


def docker_inspect(name: str) -> dict:
    return json.loads(subprocess.run(["docker", "inspect", name], check=True, capture_output=True,
                                     text=True).stdout)[0]


def container_of(settings, agent="agent-001") -> str:
    return next(a.container for a in fleet.Fleet.open(settings).list() if a.id == agent)


# Compose v2 (what Docker ships) runs the suite; v1 keeps this one while it is supported
@pytest.mark.parametrize("access, program", [("gateway", "v2"), ("mount", "v2"),
                                             pytest.param("gateway", "v1", marks=pytest.mark.skipif(
                                                 not V1_INSTALLED, reason="docker-compose (v1) not installed"))])
def test_three_agents_resolve_twelve_issues_each_exactly_once(sample, access, program):
    repo, make = sample
    settings = make(queue_access=access, compose=program)
    base = git(repo, "rev-parse", "main")
    store = fleet.store_for(settings)
    store.add_many([{"title": f"write file {i}", "script": f"sleep 1; echo {i} > file-{i}.txt"}
                    for i in range(1, 13)])
    agents = fleet.Fleet.open(settings).start(3, progress=lambda _: None)
    assert [a.id for a in agents] == ["agent-001", "agent-002", "agent-003"]
    assert all(a.state == "running" and a.ready for a in agents)
    # Docker's own health check agrees within its interval
    wait_for(lambda: all(a.health == "healthy" for a in fleet.Fleet.open(settings).list()), 30, what="docker health")
    wait_for(lambda: drained(store), 180, what="the queue to drain")

    issues = store.list()
    assert [i.status for i in issues] == ["done"] * 12
    # each agent committed in its own clone; the host brings the results home
    assert sorted(mergequeue.bring_home(settings, store)) == list(range(1, 13))
    done_events = [e for e in store.events() if e.kind == "done"]
    assert sorted(e.issue for e in done_events) == list(range(1, 13))  # exactly once each
    assert not [e for e in store.events() if e.kind.startswith("refused")]
    for issue in issues:
        branch = f"autopilot/issue-{issue.number}"
        assert issue.branch == branch
        assert git(repo, "rev-list", "--count", f"main..{branch}") == "1"  # one commit per issue
        author = git(repo, "log", "-1", "--format=%an", branch)
        assert author.startswith(issue.owner)  # authored by the agent that claimed it
        message = git(repo, "log", "-1", "--format=%B", branch)
        assert f"Issue: #{issue.number}" in message and f"Agent: {issue.owner}" in message
        assert f"Lease-Token: {issue.token}" in message
        assert git(repo, "show", f"{branch}:file-{issue.number}.txt") == str(issue.number)
        assert git(repo, "rev-parse", branch) == issue.commit  # visible in the host repository
    assert git(repo, "rev-parse", "main") == base  # nothing committed on the base branch
    assert {i.owner for i in issues} <= {"agent-001", "agent-002", "agent-003"}
    for agent in ("agent-001", "agent-002", "agent-003"):  # one log directory per agent
        logs = settings.logs_path / "agents" / agent
        assert (logs / "agent.log").exists() and (logs / "events.jsonl").exists()
    mine = {i.number for i in issues if i.owner == "agent-002"}
    attempt_logs = {p.name for p in (settings.logs_path / "agents" / "agent-002").glob("issue-*-attempt-*.log")}
    assert attempt_logs == {f"issue-{n}-attempt-1.log" for n in mine}

    # the compose asked for made the containers (each program labels them with its version)
    made_by = docker_inspect(container_of(settings, "agent-002"))["Config"]["Labels"]["com.docker.compose.version"]
    assert made_by.split(".")[0] == program[1:], made_by
    # the gateway (default) holds the queue; with queue_access: mount every agent mounts it
    mounts = {m["Destination"] for m in docker_inspect(container_of(settings, "agent-002"))["Mounts"]}
    assert ("/state" in mounts) == (access == "mount") and "/run/autopilot-queue" in mounts
    gateway = subprocess.run(["docker", "ps", "-q", "--filter", f"name={fleet.Fleet.open(settings).project}-gateway"],
                             capture_output=True, text=True, check=True).stdout.split()
    assert len(gateway) == (1 if access == "gateway" else 0)

    stopped = fleet.Fleet.open(settings).stop(progress=lambda _: None)
    assert stopped == ["agent-001", "agent-002", "agent-003"]
    assert fleet.Fleet.open(settings).list() == []


def _hammer_host(db: str, worker: str, out: str) -> None:
    from parallel_autopilot.issues import IssueStore, LeaseLost

    store = IssueStore(db)
    done = []
    idle = 0
    while idle < 30:
        claim = store.claim(worker, lease_seconds=300)
        if claim is None:
            idle += 1
            time.sleep(0.1)
            continue
        idle = 0
        try:
            store.complete(claim, {"branch": "host"})
            done.append(claim.number)
        except LeaseLost:
            pass
    Path(out).write_text(json.dumps(done))


def test_two_containers_and_a_host_process_never_double_claim(sample, tmp_path):
    import multiprocessing

    repo, make = sample
    settings = make(poll_seconds=0.2)
    store = fleet.store_for(settings)
    store.add_many([{"title": f"noop {i}", "script": "true"} for i in range(150)])
    fleet.Fleet.open(settings).start(2, progress=lambda _: None)
    ctx = multiprocessing.get_context("spawn")
    out = tmp_path / "host.json"
    host = ctx.Process(target=_hammer_host, args=(str(settings.db_path), "host-1", str(out)))
    host.start()
    wait_for(lambda: drained(store), 240, what="the queue to drain")
    host.join(60)
    assert host.exitcode == 0
    events = store.events()
    claims = {}
    for e in events:
        if e.kind == "claimed":
            claims.setdefault(e.issue, []).append(e.worker)
    assert all(len(workers) == 1 for workers in claims.values()), "an issue was claimed twice"
    # a no-op changes nothing: its own outcome, empty (a host "work" completes as done)
    assert sorted(e.issue for e in events if e.kind in ("done", "empty")) == list(range(1, 151))
    owners = {i.owner for i in store.list()}
    assert "host-1" in owners and owners & {"agent-001", "agent-002"}  # all three really took part


def test_sigterm_mid_issue_releases_the_claim_and_exits_zero_within_grace(sample):
    repo, make = sample
    settings = make(stop_grace_seconds=20)
    store = fleet.store_for(settings)
    store.add("long", script='if [ "$AUTOPILOT_AGENT_ID" = agent-001 ]; then sleep 600; fi; echo ok > done.txt')
    fleet.Fleet.open(settings).start(1, progress=lambda _: None)
    wait_for(lambda: store.get(1).status == "claimed", 60, what="agent-001 to claim")
    name = container_of(settings)
    started = time.monotonic()
    subprocess.run(["docker", "stop", "-t", "20", name], check=True, capture_output=True)
    took = time.monotonic() - started
    state = docker_inspect(name)["State"]
    assert state["ExitCode"] == 0 and took < 20, (state, took)
    issue = store.get(1)
    assert issue.status == "ready" and issue.attempts == 0  # released, not failed
    assert any(e.kind == "released" and e.worker == "agent-001" for e in store.events(1))
    # another agent finishes it
    subprocess.run(["docker", "rm", "-f", name], check=True, capture_output=True)
    fleet.Fleet.open(settings).start(2, progress=lambda _: None)
    fleet.Fleet.open(settings).stop(["agent-001"], progress=lambda _: None)
    wait_for(lambda: store.get(1).status == "done", 90, what="agent-002 to finish")
    assert store.get(1).owner == "agent-002"


def test_sigkill_mid_issue_restarted_agent_releases_and_finishes(sample):
    repo, make = sample
    settings = make()
    store = fleet.store_for(settings)
    store.add("slow", script="sleep 6; echo ok > done.txt")
    fleet.Fleet.open(settings).start(1, progress=lambda _: None)
    wait_for(lambda: store.get(1).status == "claimed", 60, what="a claim")
    name = container_of(settings)
    subprocess.run(["docker", "kill", name], check=True, capture_output=True)  # SIGKILL
    assert store.get(1).status == "claimed"  # nobody said anything yet
    subprocess.run(["docker", "start", name], check=True, capture_output=True)
    wait_for(lambda: store.get(1).status == "done", 90, what="the restarted agent to finish")
    kinds = [(e.kind, e.detail) for e in store.events(1)]
    assert ("released-agent", "previous incarnation") in kinds
    assert [k for k, _ in kinds].count("done") == 1
    assert store.get(1).attempts == 2


def test_crashed_runtime_is_restarted_by_the_restart_policy(sample):
    repo, make = sample
    settings = make()
    store = fleet.store_for(settings)
    store.add("slow", script="sleep 5; echo ok > done.txt")
    fleet.Fleet.open(settings).start(1, progress=lambda _: None)
    wait_for(lambda: store.get(1).status == "claimed", 60, what="a claim")
    name = container_of(settings)
    crash = ("import os\nfor p in os.listdir('/proc'):\n"
             "    if p.isdigit() and int(p) != os.getpid():\n"
             "        cmd = open(f'/proc/{p}/cmdline', 'rb').read()\n"
             "        if b'parallel_autopilot.runtime' in cmd and b'health' not in cmd:\n"
             "            os.kill(int(p), 9)\n")
    # the exec session dies with the container's main process: its exit code says nothing
    subprocess.run(["docker", "exec", name, "python3", "-c", crash], capture_output=True)
    wait_for(lambda: store.get(1).status == "done", 90, what="the restarted agent to finish")
    assert docker_inspect(name)["RestartCount"] >= 1
    assert any(e.kind == "released-agent" for e in store.events(1))


def test_hung_loop_is_restarted_by_the_watchdog(sample):
    repo, make = sample
    settings = make(watchdog_seconds=4)
    store = fleet.store_for(settings)
    fleet.Fleet.open(settings).start(1, progress=lambda _: None)
    # in the agent's own repository (a clone does not take the user's hooks)
    hook = settings.worktrees_path / "agent-001" / ".git" / "hooks" / "pre-commit"
    hook.write_text('#!/bin/sh\nmarker="$(git rev-parse --git-common-dir)/hung-once"\n'
                    'if [ ! -e "$marker" ]; then touch "$marker"; sleep 600; fi\n')
    hook.chmod(0o755)
    store.add("hangs at commit once", script="echo x > x.txt")
    wait_for(lambda: store.get(1).status == "done", 120, what="the issue after a watchdog restart")
    assert docker_inspect(container_of(settings))["RestartCount"] >= 1
    events = (settings.logs_path / "agents" / "agent-001" / "events.jsonl").read_text()
    assert "watchdog" in events


def test_limits_credentials_read_only_and_uid_of_repository_owner():
    import tempfile

    # not under pytest's tmp_path: that is root's 0700 directory, which uid 1234 cannot enter
    tmp_path = Path(tempfile.mkdtemp(prefix="pa-uid-test-"))
    repo = make_repo(tmp_path / "repo", owner=1234)
    codex = tmp_path / "codex-home"
    codex.mkdir()
    (codex / "auth.json").write_text("{}")
    settings = make_settings(repo, memory="200m", cpus=0.5, codex_home=str(codex))
    subprocess.run(["chown", "-R", "1234:1234", str(tmp_path)], check=True)
    try:
        store = fleet.store_for(settings)
        store.add("write", script="echo hi > out.txt")
        fleet.Fleet.open(settings).start(1, progress=lambda _: None)
        name = container_of(settings)
        host = docker_inspect(name)["HostConfig"]
        assert host["Memory"] == 200 * 1024 * 1024
        assert host["NanoCpus"] == 500_000_000
        assert "ALL" in (host.get("CapDrop") or [])
        assert any("no-new-privileges" in o for o in host.get("SecurityOpt") or [])
        uid = subprocess.run(["docker", "exec", name, "id", "-u"], capture_output=True, text=True).stdout.strip()
        assert uid == "1234"
        write = subprocess.run(["docker", "exec", name, "sh", "-c", "echo x > /run/credentials/codex/auth.json"],
                               capture_output=True, text=True)
        assert write.returncode != 0 and "Read-only" in write.stderr
        wait_for(lambda: store.get(1).status == "done", 90, what="the issue")
        worktree = settings.worktrees_path / "agent-001"
        assert (worktree / "out.txt").stat().st_uid == 1234
        assert (settings.logs_path / "agents" / "agent-001" / "agent.log").stat().st_uid == 1234
        assert git(worktree, "log", "-1", "--format=%an", "autopilot/issue-1").startswith("agent-001")
    finally:
        fleet.Fleet.open(settings).stop(progress=lambda _: None)
        shutil.rmtree(tmp_path, ignore_errors=True)


@pytest.mark.parametrize("kind", ["codex", "claude"])
def test_model_cli_kinds_with_stand_in_executables(sample, tmp_path, kind, built_test_image):
    from parallel_autopilot.containers import image

    repo, make = sample
    base = make()
    image.ensure_image(base, progress=lambda _: None)
    context = tmp_path / "fake-image"
    context.mkdir()
    fakes = Path(__file__).resolve().parents[1] / "support" / "fakes"
    shutil.copy(fakes / kind, context / kind)
    from parallel_autopilot.containers import agentcli

    # the label the preflight looks for (a real build sets it: tests/containers/test_agent_clis_real.py)
    (context / "Dockerfile").write_text(f"FROM {base.image}\nCOPY {kind} /usr/local/bin/{kind}\n"
                                        f"LABEL {agentcli.LABEL_PREFIX}{kind}={agentcli.PINS[kind][1]}\n")
    tag = built_test_image(f"parallel-autopilot-test-{kind}:latest")
    subprocess.run(["docker", "build", "-q", "-t", tag, str(context)], check=True, capture_output=True)
    keys = tmp_path / "keys.env"
    keys.write_text("OPENAI_API_KEY=sk-stand-in\nANTHROPIC_API_KEY=sk-stand-in\n")
    # network none is allowed for a model kind only with an endpoint on the container's loopback
    settings = make(image=tag, agent_kind=kind, env_file=str(keys), openai_base_url="http://127.0.0.1:9/v1",
                    anthropic_base_url="http://127.0.0.1:9")
    try:
        store = fleet.store_for(settings)
        store.add("Make the greeting friendlier", body="Say hello nicely.")
        fleet.Fleet.open(settings).start(1, progress=lambda _: None)
        wait_for(lambda: store.get(1).status == "done", 90, what=f"the {kind} stand-in")
        issue = store.get(1)
        assert issue.commit, "the stand-in's edit was committed"
        assert mergequeue.bring_home(settings, store) == [1]
        files = git(repo, "show", "--name-only", "--format=", issue.commit).split()
        argv_file = next(f for f in files if f.endswith(".argv.json"))
        argv = json.loads(git(repo, "show", f"{issue.commit}:{argv_file}"))
        assert argv[0].endswith(kind)
        prompt = " ".join(argv)
        assert "Make the greeting friendlier" in prompt and "autopilot/issue-1" in prompt
        if kind == "codex":
            assert argv[1] == "exec" and "--dangerously-bypass-approvals-and-sandbox" in argv
        else:
            assert "-p" in argv or "--print" in argv
    finally:  # the containers first: an image in use would only lose its tag
        fleet.Fleet.open(settings).stop(progress=lambda _: None)
        subprocess.run(["docker", "rmi", "-f", tag], capture_output=True)


def run_cli(repo: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "INVOKE_AUTOPILOT_NETWORK": "none", "INVOKE_AUTOPILOT_PROFILE": "light",
                **(env or {})}
    return subprocess.run(["parallel-autopilot", *args], cwd=repo, capture_output=True, text=True,
                          env=full_env, timeout=300)


@pytest.mark.parametrize("count", ["0", "11", "abc", "-1"])
def test_start_refuses_bad_counts_with_one_line_and_starts_nothing(sample, count):
    repo, make = sample
    settings = make()
    proc = run_cli(repo, "agents.start", "--n", count)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "agent count" in proc.stderr
    assert fleet.Fleet.open(settings).list() == []
    assert not settings.worktrees_path.exists()
    with pytest.raises(InvalidAgentCount):
        fleet.Fleet.open(settings).start(count, progress=lambda _: None)


def test_start_without_docker_daemon_is_one_line_and_changes_nothing(sample):
    repo, make = sample
    settings = make()
    store = fleet.store_for(settings)
    store.add("kept", script="true")
    before = settings.db_path.read_bytes()
    env = {"DOCKER_HOST": "unix:///nonexistent/docker.sock"}
    proc = run_cli(repo, "agents.start", "--n", "2", env=env)
    assert proc.returncode == DockerUnavailable.exit_code
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "Docker is not reachable" in proc.stderr
    assert not settings.worktrees_path.exists()
    assert store.get(1).status == "ready"
    assert settings.db_path.read_bytes() == before


def test_cleanup_keeps_unmerged_work_unless_forced_and_never_loses_a_result(sample):
    repo, make = sample
    settings = make()
    store = fleet.store_for(settings)
    store.add("change", script="echo change > c.txt")
    fleet.Fleet.open(settings).start(2, progress=lambda _: None)
    wait_for(lambda: store.get(1).status == "done", 90, what="the issue")
    # agent-002's own repository gets a commit that no branch of the user's repository has. Made
    # with plumbing, HEAD untouched: the agent's runtime, still running, moves its own HEAD
    # between issues (a `checkout -b` here raced it: the commit landed on a detached HEAD)
    clone = settings.worktrees_path / "agent-002"
    (clone / "unmerged.txt").write_text("precious\n")
    blob = git(clone, "hash-object", "-w", "unmerged.txt")
    tree = subprocess.run(["git", "-C", str(clone), "mktree"], input=f"100644 blob {blob}\tunmerged.txt\n",
                          capture_output=True, text=True, check=True).stdout.strip()
    commit = git(clone, "-c", "user.name=U", "-c", "user.email=u@x.invalid", "commit-tree", tree, "-m",
                 "unmerged work")
    git(clone, "update-ref", "refs/heads/scratch", commit)
    proc = run_cli(repo, "cleanup")
    assert proc.returncode == 0, proc.stderr
    assert "kept agent-002" in proc.stdout and "refs/heads/scratch" in proc.stdout  # reported as kept
    assert (clone / "unmerged.txt").exists()
    # the done issue's result came home before its clone went, and is not merged: kept
    assert git(repo, "rev-parse", "--verify", "autopilot/issue-1") == store.get(1).commit
    assert not (settings.worktrees_path / "agent-001").exists()
    assert fleet.Fleet.open(settings).list() == []
    forced = run_cli(repo, "cleanup", "--force")
    assert forced.returncode == 0, forced.stderr
    assert not clone.exists()
    assert git(repo, "rev-parse", "--verify", "autopilot/issue-1")
