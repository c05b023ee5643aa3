"""The Fleet object without Docker: a real git repository, a real SQLite store, a fake daemon.

The containers are FakeDocker's (tests/support/fleet_fakes.py) and compose is FakeCompose, which
gets the real command line and environment ``compose.run`` builds; everything else -
worktrees (real clones), the store, the snapshots, the claims - is real. The same
operations against a real daemon are in tests/fleet/test_fleet_docker.py.
"""

from __future__ import annotations

import os
import time

import pytest
from support.clock import FakeClock
from support.fleet_fakes import compose_variables, fake_fleet

from parallel_autopilot import config, fleet, platform
from parallel_autopilot.git import runner as git_mod
from parallel_autopilot.errors import AgentNotFound, DockerUnavailable, InvalidAgentCount


@pytest.fixture
def settings(git_repo, tmp_path):
    return config.load({}, repo=str(git_repo), max_agents=4, project="pa-fleet-object",
                       gitconfig=str(tmp_path / "no-gitconfig"))


@pytest.fixture
def clock():
    return FakeClock(time.time())  # the store stamps reports with the real time


@pytest.fixture
def fake(settings, clock):
    return fake_fleet(settings, clock=clock)


def quiet(_: str) -> None:
    pass


def test_start_makes_clones_and_containers_and_returns_them_ready(settings, fake, git_repo):
    the_fleet, docker, runner = fake
    agents = the_fleet.start(2, progress=quiet)
    assert [(a.id, a.state, a.ready, a.activity) for a in agents] == [
        ("agent-001", "running", True, "idle"), ("agent-002", "running", True, "idle")]
    assert sorted(docker.agents("pa-fleet-object")) == ["agent-001", "agent-002"]
    assert all((settings.worktrees_path / a / ".git").is_dir() for a in ("agent-001", "agent-002"))
    assert runner.calls == [["up", "-d", "--no-build", "gateway", "agent-001", "agent-002"]]
    env = runner.envs[0]
    missing = compose_variables() - set(env)
    assert not missing, f"the compose file reads variables the Fleet did not give: {missing}"
    assert env["AUTOPILOT_BASE_BRANCH"] == "main" and env["AUTOPILOT_GIT_DIR"] == str((git_repo / ".git").resolve())
    assert env["AUTOPILOT_PROJECT"] == "pa-fleet-object" and docker.builds == 1
    assert list(settings.state_path.glob("snapshots/*")), "start takes a snapshot of the store first"


def test_start_keeps_running_agents_and_refuses_a_bad_count_before_acting(fake, clock):
    the_fleet, docker, runner = fake
    the_fleet.start(1, progress=quiet)
    first = docker.agents()["agent-001"].attrs["State"]["StartedAt"]
    clock.advance(30)
    the_fleet.start(2, progress=quiet)
    assert docker.agents()["agent-001"].attrs["State"]["StartedAt"] == first
    with pytest.raises(InvalidAgentCount, match="1 to 4"):
        the_fleet.start(5, progress=quiet)
    assert len(runner.calls) == 2


def test_start_with_docker_down_is_one_line_and_creates_nothing(fake, settings):
    the_fleet, docker, runner = fake
    docker.down = True
    with pytest.raises(DockerUnavailable, match="Docker is not reachable"):
        the_fleet.start(1, progress=quiet)
    assert runner.calls == [] and not settings.worktrees_path.exists()


def test_stop_removes_containers_releases_claims_and_refuses_unknown_agents(fake, settings):
    the_fleet, docker, runner = fake
    the_fleet.start(3, progress=quiet)
    store = the_fleet.store
    store.add("held by agent-002")
    claim = store.claim("agent-002")
    with pytest.raises(AgentNotFound, match="no such agent: agent-007; running: agent-001, agent-002, agent-003"):
        the_fleet.stop(["7"], progress=quiet)
    said = []
    assert the_fleet.stop(["2"], progress=said.append) == ["agent-002"]
    assert runner.calls[-2:] == [["stop", "-t", str(settings.stop_grace_seconds), "agent-002"],
                                 ["rm", "-f", "agent-002"]]
    assert sorted(docker.agents()) == ["agent-001", "agent-003"]
    assert store.get(claim.number).status == "ready" and f"agent-002: released #{claim.number}" in said
    assert {r.id: r.state for r in store.agents()}["agent-002"] == "stopped"
    assert the_fleet.stop(progress=quiet) == ["agent-001", "agent-003"]
    assert docker.agents() == {} and the_fleet.list() == []


def test_restart_restarts_one_container_whose_new_incarnation_frees_its_claim(fake, settings, clock):
    the_fleet, docker, runner = fake
    the_fleet.start(2, progress=quiet)
    store = the_fleet.store
    store.add("work")
    claim = store.claim("agent-002")
    store.agent_heartbeat("agent-002", "working", issue=claim.number)
    assert the_fleet.list()[1].issue == claim.number
    clock.advance(60)
    agent = the_fleet.restart("002", progress=quiet)
    assert runner.calls[-1] == ["restart", "-t", str(settings.stop_grace_seconds), "agent-002"]
    assert (agent.id, agent.state, agent.uptime, agent.issue) == ("agent-002", "running", 0.0, None)
    assert store.get(claim.number).status == "ready"
    assert the_fleet.list()[0].uptime == 60.0  # the other one kept running
    with pytest.raises(AgentNotFound, match="agent-009"):
        the_fleet.restart("9", progress=quiet)


def test_list_joins_containers_with_reports_and_shows_the_dead_and_the_gone(fake, settings, clock):
    the_fleet, docker, _ = fake
    assert the_fleet.list() == []
    the_fleet.start(3, progress=quiet)
    store = the_fleet.store
    store.add("the issue")
    claim = store.claim("agent-001")
    store.agent_heartbeat("agent-001", "working", issue=claim.number)
    docker.agents()["agent-002"].attrs["State"].update(Status="exited", ExitCode=137)
    del docker.containers_by_name[docker.agents()["agent-003"].name]  # removed by hand
    other, _, _ = fake_fleet(settings.replace(project="pa-someone-else"), clock=clock)
    other._docker = docker  # the same daemon, another repository's project
    clock.advance(12)
    agents = {a.id: a for a in the_fleet.list()}
    assert (agents["agent-001"].issue, agents["agent-001"].issue_title, agents["agent-001"].uptime) == (
        claim.number, "the issue", 12.0)
    assert (agents["agent-002"].state, agents["agent-002"].problem) == ("exited", "killed (exit 137)")
    assert (agents["agent-003"].state, agents["agent-003"].problem) == ("missing", "container gone")
    assert [a for a in other.list() if a.container] == []  # the reports are the repository's
    assert the_fleet.running_agent_ids() == ["agent-001"]


def test_list_names_the_cli_from_the_images_labels(git_repo, tmp_path, clock):
    settings = config.load({}, repo=str(git_repo), agent_cli="codex", project="pa-fleet-cli",
                           gitconfig=str(tmp_path / "none"))
    the_fleet, _, _ = fake_fleet(settings, clock=clock)
    the_fleet._ensure_image(settings, progress=quiet)
    the_fleet.compose(["up", "-d", "--no-build", "agent-001"])
    (agent,) = the_fleet.list()
    assert agent.cli is not None and agent.cli.startswith("codex ")


def test_one_start_resolves_limits_git_dir_and_base_branch_once(fake, settings, git_repo, monkeypatch):
    """Issue 12's acceptance: counted on a recording Git and a counting platform.limits.

    Patched on the class and the module, not handed to the Fleet: they count EVERY git
    command and limits() of the process, so a Fleet that forgot to pass what it resolved
    (provision, compose and clones resolve it themselves then) fails here.
    """
    repo = git_repo.absolute()
    asked: list[tuple] = []
    plain_run = git_mod.Git._run

    def recording(self, args, timeout, env):
        asked.append((self.path, tuple(str(a) for a in args)))
        return plain_run(self, args, timeout, env)

    monkeypatch.setattr(git_mod.Git, "_run", recording)
    limits_calls = []
    plain_limits = platform.limits
    monkeypatch.setattr(platform, "limits", lambda *a, **kw: limits_calls.append(a) or plain_limits(*a, **kw))
    the_fleet, _, _ = fake
    the_fleet.start(3, progress=quiet)
    in_repo = [args for path, args in asked if path == repo]
    assert in_repo.count(("rev-parse", "--git-common-dir")) == 1
    assert in_repo.count(("symbolic-ref", "--quiet", "--short", "HEAD")) == 1  # the base branch
    assert len(limits_calls) == 1


def test_the_fleet_is_the_one_api_for_counts(settings):
    """No module-level twins of the Fleet's methods (issue 18): the edges, the demo and the bench open a Fleet."""
    assert not any(hasattr(fleet, name) for name in ("check_count", "max_agents", "start_agents", "list_agents"))
    assert fleet.Fleet.open(settings).check_count("3") == 3
    assert fleet.Fleet.open(settings).max_agents(containers=False) == 4


def test_a_long_lived_fleet_starts_from_the_branch_checked_out_now(fake, git_repo):
    """The GUI keeps one Fleet: a start resolves the base branch again (once), not at the first start."""
    from support.shell import git

    the_fleet, _, runner = fake
    the_fleet.start(1, progress=quiet)
    git(git_repo, "checkout", "-q", "-b", "next")
    the_fleet.start(2, progress=quiet)
    assert [env["AUTOPILOT_BASE_BRANCH"] for env in runner.envs] == ["main", "next"]


def test_on_a_postgresql_queue_the_url_is_a_secret_file_that_the_last_stop_removes(git_repo, tmp_path, clock,
                                                                                    pg_url, monkeypatch):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    (tmp_path / "run").mkdir()
    settings = config.load({}, repo=str(git_repo), max_agents=4, project="pa-fleet-pg", queue=pg_url,
                           gitconfig=str(tmp_path / "no-gitconfig"))
    the_fleet, _, runner = fake_fleet(settings, clock=clock)
    the_fleet.start(2, progress=quiet)
    secret = runner.envs[0]["AUTOPILOT_QUEUE_SECRET"]
    assert open(secret).read().strip() == pg_url and pg_url not in " ".join(runner.envs[0].values())
    the_fleet.stop(["1"], progress=quiet)
    assert os.path.exists(secret), "agent-002 still runs and reads it"
    the_fleet.stop(progress=quiet)
    assert not os.path.exists(secret) and not os.path.exists(os.path.dirname(secret))


def test_the_gateway_starts_with_the_agents_its_trouble_shows_on_them_and_it_goes_with_the_last(fake):
    the_fleet, docker, runner = fake
    the_fleet.start(2, progress=quiet)
    gateway = docker.services("pa-fleet-object")["gateway"]
    assert fleet.LABEL_AGENT not in gateway.labels and [a.id for a in the_fleet.list()] == ["agent-001", "agent-002"]
    assert {a.problem for a in the_fleet.list()} == {None}
    gateway.attrs["State"].update(Status="restarting")  # the gateway crashed: Docker restarts it
    assert {a.doing for a in the_fleet.list()} == {
        "queue gateway restarting: its agents cannot claim (see `docker logs` of the gateway, or agents.start)"}
    gateway.attrs["State"].update(Status="running")
    the_fleet.stop(["agent-001"], progress=quiet)
    assert "gateway" in docker.services("pa-fleet-object")  # agent-002 still needs it
    the_fleet.stop(progress=quiet)
    assert runner.calls[-2:] == [["stop", "-t", "10", "gateway"], ["rm", "-f", "gateway"]]
    assert docker.services("pa-fleet-object") == {}


def test_with_queue_access_mount_no_gateway_runs(fake, settings, clock):
    the_fleet, docker, runner = fake_fleet(settings.replace(queue_access="mount"), clock=clock)
    the_fleet.start(1, progress=quiet)
    assert runner.calls == [["up", "-d", "--no-build", "agent-001"]]
    override = settings.state_path / "container" / "queue-mount.yml"  # passed with -f: every agent mounts /state
    assert "AUTOPILOT_DB: /state/autopilot.db" in override.read_text()
    assert the_fleet.stop(progress=quiet) == ["agent-001"]
    assert not [call for call in runner.calls if "gateway" in call]


def test_the_merge_loop_waits_out_a_docker_daemon_that_is_away(settings, clock, git_repo):
    import subprocess

    from parallel_autopilot.errors import DockerUnavailable
    from parallel_autopilot.merge.checks import CheckResult

    the_fleet, _, _ = fake_fleet(settings.replace(check="true"), clock=clock)
    run = lambda *a: subprocess.run(["git", "-C", str(git_repo), *a], check=True, capture_output=True,  # noqa: E731
                                    text=True).stdout.strip()
    run("checkout", "-q", "-b", "autopilot/issue-1")
    (git_repo / "one.txt").write_text("one\n")
    run("add", "one.txt")
    run("commit", "-q", "-m", "one")
    sha = run("rev-parse", "HEAD")
    run("checkout", "-q", "main")
    store = the_fleet.store
    store.add("one")
    store.complete(store.claim("agent-001"), {"branch": "autopilot/issue-1", "commit": sha})
    calls = []

    def check(command, cwd, timeout, log):  # the container runner, its daemon away for the first round
        calls.append(command)
        if len(calls) == 1:
            raise DockerUnavailable("Docker is not running: start it (or set merge_check_runner: host)")
        return CheckResult(True, 0.1, "ok", "passed")

    said = []
    reports = the_fleet.merge_loop(rounds=2, sleep=lambda _: None, progress=said.append, check_runner=check)
    assert "merge queue: Docker is not running: start it (or set merge_check_runner: host)" in said
    assert len(reports) == 1 and store.get(1).status == "merged" and len(calls) == 2
