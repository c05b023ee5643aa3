"""The fleet's side of budgets and one quota per login (issue 21): agents.start starts the run's
budget, the agents get their login's keyed fingerprint (never the credential), and agents.status
says why an agent does nothing: parked on its login's quota, or the fleet budget spent."""

from __future__ import annotations

import time

from parallel_autopilot import config, fleet
from parallel_autopilot.fleet import AgentStatus
from parallel_autopilot.issues.logins import fingerprint
from support.clock import FakeClock
from support.fleet_fakes import fake_fleet


def quiet(_: str) -> None:
    pass


def test_start_starts_the_fleet_budget_and_a_script_fleet_has_no_login(git_repo, tmp_path):
    settings = config.load({}, repo=str(git_repo), max_agents=2, project="pa-fleet-budget",
                           gitconfig=str(tmp_path / "no-gitconfig"), fleet_budget_tokens=50_000)
    the_fleet, _docker, runner = fake_fleet(settings, clock=FakeClock(time.time()))
    said: list[str] = []
    the_fleet.store.set_fleet_budget(tokens=10)
    the_fleet.store.spend(99)  # a spent budget of an earlier run
    the_fleet.start(1, progress=said.append)
    budget = the_fleet.store.fleet_budget()
    assert (budget["budget_tokens"], budget["spent_tokens"], budget["spent"]) == (50_000, 0, False)
    assert "fleet budget: 50000 tokens" in said
    assert runner.envs[0]["AUTOPILOT_LOGIN"] == ""


def test_the_login_is_the_keyed_fingerprint_of_the_credential_never_the_credential(git_repo, tmp_path):
    env_file = tmp_path / "agents.env"
    env_file.write_text("OPENAI_API_KEY=sk-very-secret-key\n")
    settings = config.load({}, repo=str(git_repo), project="pa-fleet-login", agent_kind="codex",
                           env_file=str(env_file), gitconfig=str(tmp_path / "no-gitconfig"))
    the_fleet = fleet.Fleet.open(settings)
    login = the_fleet.login()
    assert login == fingerprint(the_fleet.store.login_key(), "sk-very-secret-key")
    assert len(login) == 12 and "sk-" not in login
    other = config.load({}, repo=str(git_repo), project="pa-fleet-login", agent_kind="script",
                        gitconfig=str(tmp_path / "no-gitconfig"))
    assert fleet.Fleet.open(other).login() == ""


def _agent(**fields) -> AgentStatus:
    values = dict(id="agent-001", container="c", state="running", health="healthy", activity="idle", issue=None,
                  issue_title=None, since=time.time() - 60, uptime=60.0, heartbeat_age=0.4, restarts=0)
    values.update(fields)
    return AgentStatus(**values)


def test_agents_status_says_parked_on_the_logins_quota_and_the_spent_fleet_budget():
    until = time.mktime((2026, 12, 3, 14, 5, 0, 0, 0, -1))
    parked = _agent(activity="quota", waiting_until=until, login="0123456789ab")
    assert parked.doing == "parked: quota (login 0123456789ab) until 14:05"
    assert parked.to_dict()["doing"] == parked.doing
    spent = _agent(activity="budget", budget="50100 of 50000 tokens")
    assert spent.doing == "not claiming: the fleet budget is spent (50100 of 50000 tokens)"
