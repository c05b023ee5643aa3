"""Budgets and one quota per login (issue 21), end to end at the runtime's level: real runtimes
(``python3 -m parallel_autopilot.runtime``, as test_runtime_agent.py starts them) running the REAL
Codex CLI (the pinned version, from the host's cache) against a scripted model server on 127.0.0.1.

- a runaway agent (the server asks for one more command for ever) is stopped at its token
  budget: ``over_budget``, what it spent recorded, its work committed on its branch; what it
  spent counts against the fleet's budget, which then stops every claim;
- one quota per login: three agents on one API key, one on another; the server answers 429 to
  the first key only. After the first 429 the two other agents of that key send NO request
  until the reset (the server's log proves it), the fourth works on, no attempt is counted.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from parallel_autopilot.containers import agentcli
from parallel_autopilot.issues.logins import fingerprint
from support.modelservers import USAGE_IN, USAGE_OUT, ResponsesServer
from test_runtime_agent import Site, git

pytestmark = pytest.mark.slow

CODEX_BIN = (agentcli.cache_root() / f"codex-{agentcli.PINS['codex'][1]}" / "node_modules" / "@openai"
             / "codex-linux-x64" / "vendor" / "x86_64-unknown-linux-musl" / "bin")
TURN = USAGE_IN + USAGE_OUT  # tokens each scripted turn reports


@pytest.fixture
def site(tmp_path):
    if not (CODEX_BIN / "codex").exists():
        pytest.skip(f"the pinned Codex CLI is not in the host's cache ({CODEX_BIN}): "
                    "python3 -m parallel_autopilot.containers.agentcli codex")
    s = Site(tmp_path)
    yield s
    s.close()


def codex_env(site: Site, agent: str, server: ResponsesServer, key: str, **extra: str) -> dict[str, str]:
    home = site.tmp / "homes" / agent
    home.mkdir(parents=True, exist_ok=True)
    return {"PATH": f"{CODEX_BIN}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}", "HOME": str(home),
            "AUTOPILOT_AGENT_KIND": "codex", "AUTOPILOT_OPENAI_BASE_URL": f"{server.url}/v1",
            "AUTOPILOT_MODEL": "gpt-scripted", "AUTOPILOT_MODEL_RETRIES": "0", "OPENAI_API_KEY": key,
            "AUTOPILOT_STALE_SECONDS": "0", **extra}


def spent_tokens(usage: dict) -> int:
    return int(usage["input_tokens"]) + int(usage["output_tokens"])


def test_a_runaway_agent_is_stopped_at_its_budget_and_the_spent_fleet_budget_stops_claiming(site):
    budget = 5 * TURN - 100  # passed during the fifth model turn
    site.store.set_fleet_budget(tokens=budget)
    site.store.add("Loop for ever", body="The scripted model never stops asking.", budget_tokens=budget)
    site.store.add("The next issue")
    with ResponsesServer(loop=True) as server:
        proc = site.start("agent-001", **codex_env(site, "agent-001", server, "sk-test-one"))
        site.wait(lambda: site.store.get(1).status == "over_budget", "the runaway attempt stopped", timeout=120)
        site.wait(lambda: any(a.state == "budget" for a in site.store.agents()), "the agent to stop claiming")
        requests = len(server.model_requests())
        time.sleep(2)  # claims keep being refused, and no request is sent
        assert site.stop(proc) == 0
    issue = site.store.get(1)
    spent = spent_tokens(issue.usage)
    # stopped promptly: past the budget, by at most the turns in flight when it was noticed
    assert budget < spent <= budget + 3 * TURN, issue.usage
    assert requests <= 8 and len(server.model_requests()) == requests
    assert issue.attempts == 1 and issue.error.startswith(f"over budget: spent {spent} tokens of a budget of {budget}")
    # its work is on its branch, committed like a finished attempt's
    assert issue.branch == "autopilot/issue-1" and issue.commit
    assert git(site.repo, "show", f"{issue.commit}:resolved-1.txt").strip() == "resolved by the scripted model"
    assert "Issue: #1" in git(site.repo, "log", "-1", "--format=%B", issue.commit)
    assert [e.kind for e in site.store.events(1)][-1] == "over_budget"
    # the fleet: what the attempt spent is counted once, and nothing else is claimed
    fleet = site.store.fleet_budget()
    assert fleet["spent"] and fleet["spent_tokens"] == spent and issue.spent_tokens == spent
    assert site.store.get(2).status == "ready" and site.store.get(2).attempts == 0
    notes = [e["error"] for e in site.events("agent-001", "budget")]
    assert notes and "the fleet budget is spent" in notes[0] and f"{spent} of {budget} tokens" in notes[0]


def test_one_login_parks_every_agent_of_it_at_its_first_429_until_the_reset_and_no_other(site):
    reset = 12.0
    key = site.store.login_key()
    logins = {"sk-shared-login": fingerprint(key, "sk-shared-login"), "sk-other": fingerprint(key, "sk-other")}
    keys = {"agent-001": "sk-shared-login", "agent-002": "sk-shared-login", "agent-003": "sk-shared-login",
            "agent-004": "sk-other"}
    site.store.add("First issue")
    with ResponsesServer(refuse_login="sk-shared-login", refuse_until=time.time() + 3600) as server:
        def env(agent):
            return codex_env(site, agent, server, keys[agent], AUTOPILOT_LOGIN=logins[keys[agent]],
                             AUTOPILOT_QUOTA_BACKOFF_SECONDS=str(reset + 3))

        procs = [site.start("agent-001", **env("agent-001"))]
        parks = site.wait(lambda: site.store.parks(), "the first 429 to park the login")
        first_429 = min((s.at for s in server.model_requests() if s.status == 429), default=None)
        assert first_429 is not None, [(s.method, s.path, s.status, s.login) for s in server.seen]
        server.refuse_until = first_429 + reset  # the quota resets this long after the first refusal
        assert parks == {logins["sk-shared-login"]: pytest.approx(first_429 + reset + 3, abs=3)}
        for n in range(2, 7):
            site.store.add(f"Issue {n}")
        procs += [site.start(agent, **env(agent)) for agent in ("agent-002", "agent-003", "agent-004")]
        # the other login works on while the first is parked
        site.wait(lambda: sum(i.status == "done" for i in site.store.list()) >= 2, "agent-004 to work on",
                  timeout=60)
        assert time.time() < server.refuse_until, "the test machine is too slow to see the park"
        parked = {a.id: a for a in site.store.agents() if a.state == "quota"}
        assert {"agent-001", "agent-002", "agent-003"} <= set(parked) or site.events("agent-002", "parked")
        site.wait(lambda: all(i.status == "done" for i in site.store.list()), "every issue done", timeout=120)
        assert site.stop(procs.pop()) == 0  # agent-004: what comes now is for the parked login's agents
        site.store.add("After the reset")
        site.wait(lambda: site.store.get(7).status == "done", "the login's agents to work after the reset",
                  timeout=120)
        for proc in procs:
            assert site.stop(proc) == 0
    shared = [s for s in server.model_requests() if s.login == "sk-shared-login"]
    refused = [s for s in shared if s.status == 429]
    # after the first 429, NO request of that login until the reset, from any of its three agents
    assert [s for s in shared if first_429 < s.at < server.refuse_until] == [], \
        [(s.at - first_429, s.status) for s in shared]
    assert len(refused) == 1
    assert any(s.status == 200 for s in shared)  # and after it, they work
    assert site.store.get(7).owner in ("agent-001", "agent-002", "agent-003")
    other = [s for s in server.model_requests() if s.login == "sk-other"]
    assert other and all(s.status == 200 for s in other) and min(s.at for s in other) < server.refuse_until
    # the two agents that never met the 429 were parked by the queue, and said so
    for agent in ("agent-002", "agent-003"):
        assert site.events(agent, "parked")[0]["login"] == logins["sk-shared-login"]
        said = (site.agent_dir(agent) / "agent.log").read_text()
        assert f"parked: quota (login {logins['sk-shared-login']}) until" in said
    assert "sk-shared-login" not in "".join(p.read_text() for p in site.logs.rglob("*.jsonl"))
    # no attempt counted for the 429: every issue was done at its first counted attempt
    assert [i.attempts for i in site.store.list()] == [1] * 7
    assert [e.kind for e in site.store.events(1)].count("released") == 1


def test_an_agent_at_work_on_a_parked_login_stops_its_cli_at_its_next_heartbeat(site):
    reset = 10.0
    key = site.store.login_key()
    login = fingerprint(key, "sk-shared-login")
    sleeps = []

    def command_for(prompt: str) -> str:
        if "issue #1" in prompt and not sleeps:  # the first attempt at #1 runs a long command
            sleeps.append(time.time())
            return "sleep 60; echo 'slept' > slept-1.txt"
        return "echo 'resolved by the scripted model' > resolved.txt"

    site.store.add("A long command")
    with ResponsesServer(command_for=command_for, refuse_login="sk-shared-login") as server:
        def env(agent):
            return codex_env(site, agent, server, "sk-shared-login", AUTOPILOT_LOGIN=login,
                             AUTOPILOT_QUOTA_BACKOFF_SECONDS=str(reset))

        procs = [site.start("agent-002", **env("agent-002"))]
        attempt_log = site.agent_dir("agent-002") / "issue-1-attempt-1.log"
        site.wait(lambda: attempt_log.exists() and "sleep 60" in attempt_log.read_text(),
                  "agent-002's CLI to run its long command")
        server.refuse_until = time.time() + reset  # the login's quota runs out now
        site.store.add("Meets the 429")
        procs.append(site.start("agent-001", **env("agent-001")))
        site.wait(lambda: site.store.parks(), "agent-001's 429 to park the login")
        first_429 = min(s.at for s in server.model_requests() if s.status == 429)
        # agent-002 learns it at its next heartbeat: its CLI is stopped, the issue given back
        site.wait(lambda: "released" in [e.kind for e in site.store.events(1)], "agent-002 to give #1 back",
                  timeout=10)
        assert time.time() - first_429 < 5 and not (site.workspace("agent-002") / "slept-1.txt").exists()
        site.wait(lambda: all(i.status == "done" for i in site.store.list()), "both done after the reset",
                  timeout=120)
        for proc in procs:
            assert site.stop(proc) == 0
    during = [s for s in server.model_requests() if first_429 < s.at < first_429 + reset]
    assert during == [], [(round(s.at - first_429, 2), s.status) for s in during]
    assert [i.attempts for i in site.store.list()] == [1, 1]  # neither the stopped nor the refused attempt counted
    assert site.events("agent-002", "quota")[0]["login"] == login
