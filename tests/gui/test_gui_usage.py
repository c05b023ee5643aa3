"""The GUI's model figures: tokens per issue (recently done) and per agent, the CLI version, and
"waiting for quota until HH:MM" (fake fleet; the real CLIs: tests/containers/test_agent_clis_real.py)."""

from __future__ import annotations

import dataclasses
import time

import pytest
from support.gui import FakeFleet, TestClient, make_settings

from parallel_autopilot.gui import create_app
from parallel_autopilot.issues import IssueStore

BASE = "http://127.0.0.1:8787"


class QuotaFleet(FakeFleet):
    """The fake fleet, with agent-001 waiting for its quota and reporting its CLI and tokens."""

    until = time.time() + 3600

    def list(self, now=None):
        return [dataclasses.replace(a, activity="quota", waiting_until=self.until, cli="codex 0.171.0",
                                    tokens={"input_tokens": 2400, "output_tokens": 68, "cost_usd": 0.0})
                if a.id == "agent-001" else a for a in super().list(now)]


def test_snapshot_has_tokens_per_issue_and_agent_and_the_quota_wait(tmp_path):
    settings = make_settings(tmp_path)
    store = IssueStore(settings.db_path)
    store.add("resolved by a model")
    store.add("still open")
    claim = store.claim("agent-001")
    store.complete(claim, {"branch": "autopilot/issue-1", "usage": {"input_tokens": 2400, "output_tokens": 68,
                                                                    "cost_usd": 0.0137}})
    fleet = QuotaFleet(store)
    app = create_app(settings, fleet=fleet)
    with TestClient(app, base_url=BASE) as client:
        csrf = {"X-CSRF-Token": app.state.guard.csrf_token}
        assert client.post("/api/agents/start", json={"n": 2}, headers=csrf).status_code < 300
        deadline = time.time() + 10
        while time.time() < deadline and len(client.get("/api/snapshot").json()["agents"]) < 2:
            time.sleep(0.05)
        snap = client.get("/api/snapshot").json()
        (done,) = snap["done"]
        assert done["number"] == 1 and done["usage"]["input_tokens"] == 2400 and done["usage"]["cost_usd"] == 0.0137
        agent = {a["id"]: a for a in snap["agents"]}["agent-001"]
        assert agent["cli"] == "codex 0.171.0" and agent["tokens"]["output_tokens"] == 68
        assert agent["doing"] == "waiting for quota until " + time.strftime("%H:%M", time.localtime(fleet.until))
        assert agent["waiting_until"] == fleet.until
        script = client.get("/static/app.js").text
        assert 'agent.activity === "quota"' in script and "tokenText(issue.usage)" in script


@pytest.mark.docker
def test_the_guis_start_runs_the_preflight_and_starts_nothing(git_repo, tmp_path):
    from parallel_autopilot import fleet

    settings = make_settings(git_repo, agent_kind="claude", agent_cli="none", image="parallel-autopilot-test:absent",
                             codex_home=str(tmp_path / "none"), ssh_dir=str(tmp_path / "none"),
                             gitconfig=str(tmp_path / "none"))
    app = create_app(settings, fleet=fleet.Fleet.open(settings))  # the real fleet: the refusal is Fleet.start's
    with TestClient(app, base_url=BASE) as client:
        csrf = {"X-CSRF-Token": app.state.guard.csrf_token}
        response = client.post("/api/agents/start", json={"n": 1}, headers=csrf)
        assert response.status_code == 422, response.text  # InvalidInput, as every refusal of bad input
        error = response.json()["error"]
        assert "needs @anthropic-ai/claude-code in the image" in error and "inv build --cli claude" in error
        assert "\n" not in error
        snap = client.get("/api/snapshot").json()
        assert snap["operation"]["state"] == "failed" and snap["agents"] == []
    assert not settings.worktrees_path.exists()
