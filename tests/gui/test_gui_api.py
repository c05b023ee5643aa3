"""The GUI's JSON API, endpoint by endpoint, over a fake fleet and a real IssueStore."""

from __future__ import annotations

import threading

import pytest
from support.gui import FakeFleet, TestClient, make_settings, wait_until

from parallel_autopilot import platform
from parallel_autopilot.gui import create_app
from parallel_autopilot.issues import IssueStore
from parallel_autopilot.errors import InvalidAgentCount
from parallel_autopilot.ids import agent_count

BASE = "http://127.0.0.1:8787"


@pytest.fixture
def env(tmp_path):
    """settings, store (4 issues), fake fleet, app, client, and the page's CSRF header."""
    settings = make_settings(tmp_path)
    store = IssueStore(settings.db_path)
    store.add("Implement feature X", priority="high")
    store.add("Fix bug in Y", priority="medium")
    store.add("Write the docs", priority="low")
    store.add("Urgent hotfix", priority="urgent")
    fleet = FakeFleet(store)
    app = create_app(settings, fleet=fleet)
    with TestClient(app, base_url=BASE) as client:
        yield type("Env", (), dict(settings=settings, store=store, fleet=fleet, app=app, client=client,
                                    csrf={"X-CSRF-Token": app.state.guard.csrf_token}))


def start(env, n=3):
    response = env.client.post("/api/agents/start", json={"n": n}, headers=env.csrf)
    assert response.status_code == 200, response.text
    return response.json()


def assert_error(response, status):
    assert response.status_code == status, response.text
    body = response.json()
    assert isinstance(body["error"], str) and body["error"] and "\n" not in body["error"]
    assert "Traceback" not in response.text
    return body["error"]


# -- the page ----------------------------------------------------------------------

def test_page_embeds_the_csrf_token_and_loads_its_assets(env):
    page = env.client.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert f'<meta name="csrf-token" content="{env.app.state.guard.csrf_token}">' in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["cache-control"] == "no-store"
    for asset, kind in (("/static/app.js", "javascript"), ("/static/app.css", "css")):
        response = env.client.get(asset)
        assert response.status_code == 200 and kind in response.headers["content-type"]


def test_each_app_has_its_own_csrf_token(tmp_path):
    settings = make_settings(tmp_path)
    fleet = FakeFleet(IssueStore(settings.db_path))
    assert create_app(settings, fleet=fleet).state.guard.csrf_token != \
        create_app(settings, fleet=fleet).state.guard.csrf_token


# -- reading -----------------------------------------------------------------------

def test_snapshot_shows_agents_queue_counts_and_resources(env):
    start(env, 2)
    claim = env.fleet.claim("agent-002")
    env.store.complete(env.fleet.claim("agent-001"))
    snap = env.client.get("/api/snapshot").json()
    assert [a["id"] for a in snap["agents"]] == ["agent-001", "agent-002"]
    working = {a["id"]: a for a in snap["agents"]}["agent-002"]
    assert (working["issue"], working["issue_title"]) == (claim.number, claim.issue.title)
    # the open queue: in-progress work first, then by priority
    assert [(i["title"], i["status"]) for i in snap["issues"]] == [
        ("Urgent hotfix", "claimed"), ("Fix bug in Y", "ready"), ("Write the docs", "ready")]
    assert snap["issues"][0]["owner"] == "agent-002"
    assert snap["open_total"] == 3
    assert snap["counts"] == {"ready": 2, "claimed": 1, "done": 1, "failed": 0, "dead": 0, "blocked": 0,
                              "empty": 0, "merged": 0, "rejected": 0, "over_budget": 0}
    host = platform.detect()  # the real Fleet's resources: this machine's
    assert snap["resources"]["platform"] == f"{host.os} {host.arch}" and snap["max_agents"] == 10
    assert snap["errors"] == [] and snap["repo"] == str(env.settings.repo)


def test_snapshot_without_a_database_is_empty_and_creates_nothing(tmp_path):
    settings = make_settings(tmp_path / "fresh")
    (tmp_path / "fresh").mkdir()
    other = IssueStore(tmp_path / "elsewhere" / "autopilot.db")
    app = create_app(settings, fleet=FakeFleet(other))
    with TestClient(app, base_url=BASE) as client:
        snap = client.get("/api/snapshot").json()
        assert snap["issues"] == [] and snap["open_total"] == 0 and set(snap["counts"].values()) == {0}
        assert client.get("/api/issues").json()["issues"] == []
    assert not settings.db_path.exists()


def test_snapshot_reports_docker_down_instead_of_failing(env):
    env.fleet.docker_down = True
    response = env.client.get("/api/snapshot")
    assert response.status_code == 200
    snap = response.json()
    assert snap["agents"] == [] and snap["issues"]  # the queue still shows
    assert any("Docker is not reachable" in e for e in snap["errors"])


def test_agents_lists_the_fleet(env):
    assert env.client.get("/api/agents").json() == []
    start(env, 3)
    agents = env.client.get("/api/agents").json()
    assert [a["id"] for a in agents] == ["agent-001", "agent-002", "agent-003"]
    assert {a["activity"] for a in agents} == {"idle"}


def test_agents_with_docker_down_is_503(env):
    env.fleet.docker_down = True
    assert "Docker" in assert_error(env.client.get("/api/agents"), 503)


def test_issues_by_status(env):
    env.store.complete(env.fleet.claim("agent-001"))
    body = env.client.get("/api/issues").json()
    assert [i["title"] for i in body["issues"]] == ["Implement feature X", "Fix bug in Y", "Write the docs"]
    assert body["counts"]["done"] == 1
    done = env.client.get("/api/issues", params={"status": "done"}).json()["issues"]
    assert [i["title"] for i in done] == ["Urgent hotfix"] and done[0]["owner"] == "agent-001"
    assert len(env.client.get("/api/issues", params={"status": "all"}).json()["issues"]) == 4
    assert_error(env.client.get("/api/issues", params={"status": "bogus"}), 422)


def test_resources(env):
    body = env.client.get("/api/resources").json()
    assert body["cpus"] == platform.detect().cpus and body["max_agents"] == 10 and body["docker"] is True


# -- acting ---------------------------------------------------------------------------

def test_start_runs_the_fleet_and_records_the_operation(env):
    body = start(env, 3)
    assert [a["id"] for a in body["agents"]] == ["agent-001", "agent-002", "agent-003"]
    assert env.fleet.calls == [("start", 3)]
    op = env.client.get("/api/snapshot").json()["operation"]
    assert (op["action"], op["detail"], op["state"], op["error"]) == ("start", "3 agents", "done", None)
    assert op["lines"][-1] == "agent-003 ready" and op["finished"] >= op["started"]


@pytest.mark.parametrize("body", [{"n": 0}, {"n": 11}, {"n": "abc"}, {"n": "3"}, {"n": True}, {"n": 2.5},
                                  {"n": -1}, {"n": None}, {}, {"n": 3, "extra": 1}, [3], "3"])
def test_start_refuses_bad_counts_with_422(env, body):
    message = assert_error(env.client.post("/api/agents/start", json=body, headers=env.csrf), 422)
    assert "n" in message or "count" in message
    assert env.fleet.calls == []


def test_a_hostile_key_name_still_gives_a_one_line_error(env):
    message = assert_error(env.client.post("/api/agents/start", json={"n": 1, "\n\r x": 1}, headers=env.csrf), 422)
    assert message == "invalid request: '\\n\\r x': Extra inputs are not permitted"


def test_start_refuses_a_missing_or_broken_body_with_422(env):
    assert_error(env.client.post("/api/agents/start", headers=env.csrf), 422)
    assert_error(env.client.post("/api/agents/start", content=b"{not json", headers={
        **env.csrf, "content-type": "application/json"}), 422)
    assert env.fleet.calls == []


def test_start_above_the_platform_maximum_names_the_range(env):
    env.fleet.maximum = 5
    message = assert_error(env.client.post("/api/agents/start", json={"n": 6}, headers=env.csrf), 422)
    assert "1 to 5" in message


def test_start_with_docker_down_is_503_and_the_operation_says_why(env):
    env.fleet.docker_down = True
    message = assert_error(env.client.post("/api/agents/start", json={"n": 2}, headers=env.csrf), 503)
    assert "Docker" in message
    op = env.client.get("/api/snapshot").json()["operation"]
    assert op["state"] == "failed" and op["error"] == message


def test_a_second_start_while_one_runs_is_409_and_the_event_loop_stays_free(env):
    env.fleet.gate = threading.Event()
    results = {}
    worker = threading.Thread(target=lambda: results.setdefault("first", env.client.post(
        "/api/agents/start", json={"n": 2}, headers=env.csrf)))
    worker.start()
    try:
        # held inside compose up (the gate): every step before it has said its line
        wait_until(lambda: ((env.client.get("/api/snapshot").json()["operation"] or {}).get("lines") or [""])[-1]
                   == "starting 2 agent(s)", what="the start to be running")
        # the blocking fleet call runs in a thread: the server still answers meanwhile
        running = env.client.get("/api/snapshot").json()["operation"]
        assert running["state"] == "running" and "worktrees: agent-001, agent-002" in running["lines"]
        assert "still running" in assert_error(
            env.client.post("/api/agents/stop", json={"all": True}, headers=env.csrf), 409)
    finally:
        env.fleet.gate.set()
        worker.join(30)
    assert results["first"].status_code == 200
    assert env.fleet.calls == [("start", 2)]


def test_stop_some_then_all_releases_their_claims(env):
    start(env, 3)
    first, second = env.fleet.claim("agent-001"), env.fleet.claim("agent-002")
    response = env.client.post("/api/agents/stop", json={"ids": ["2", "agent-002"]}, headers=env.csrf)
    assert response.json() == {"stopped": ["agent-002"]}
    assert env.store.get(second.number).status == "ready"
    assert env.store.get(first.number).status == "claimed"
    response = env.client.post("/api/agents/stop", json={"all": True}, headers=env.csrf)
    assert response.json() == {"stopped": ["agent-001", "agent-003"]}
    assert env.store.list("claimed") == []
    assert env.client.get("/api/agents").json() == []


@pytest.mark.parametrize("body", [{}, {"ids": []}, {"ids": "agent-001"}, {"all": False},
                                  {"all": "yes"}, {"ids": ["agent-001"], "all": True}, {"id": "1"}])
def test_stop_refuses_bad_bodies_with_422(env, body):
    start(env, 1)
    assert_error(env.client.post("/api/agents/stop", json=body, headers=env.csrf), 422)
    assert env.fleet.calls == [("start", 1)]


@pytest.mark.parametrize("ident", ["999", "../../etc/passwd", "001;rm", "agent-004", "0", "", "x" * 5000])
def test_stop_of_an_unknown_agent_is_404_and_stops_nothing(env, ident):
    start(env, 3)
    assert_error(env.client.post("/api/agents/stop", json={"ids": ["agent-001", ident]}, headers=env.csrf), 404)
    assert len(env.client.get("/api/agents").json()) == 3


def test_restart_one_agent(env):
    start(env, 2)
    claim = env.fleet.claim("agent-002")
    body = env.client.post("/api/agents/2/restart", headers=env.csrf).json()
    # a new incarnation (Docker counts only its restart policy's restarts, not `restart`)
    assert body["id"] == "agent-002" and body["restarts"] == 0 and body["uptime"] < 5
    assert env.store.get(claim.number).status == "ready"
    assert env.fleet.calls[-1] == ("restart", "agent-002")


# paths a client may send for a hostile id: raw, percent-encoded, double-encoded
UNKNOWN = ["999", "001;rm", "..%2F..%2Fetc%2Fpasswd", "%2e%2e", "agent-001%00", "agent-1000", "-1", "1e3",
           "agent-001;rm%20-rf", "%252e%252e%252f"]


@pytest.mark.parametrize("ident", UNKNOWN)
def test_unknown_or_malformed_agent_ids_are_404_everywhere(env, ident):
    start(env, 1)
    assert_error(env.client.post(f"/api/agents/{ident}/restart", headers=env.csrf), 404)
    assert_error(env.client.get(f"/api/agents/{ident}/logs"), 404)
    assert_error(env.client.get(f"/api/agents/{ident}/logs/stream"), 404)
    assert env.fleet.calls == [("start", 1)]


def test_traversal_through_dot_segments_is_404(env):
    start(env, 1)
    for path in ("/api/agents/../../etc/passwd/logs", "/api/agents/agent-001/../../../etc/passwd"):
        assert_error(env.client.get(path), 404)


def test_logs_of_one_agent_only(env):
    start(env, 3)
    env.fleet.log("agent-001", "one says hi")
    env.fleet.log("agent-002", "two says hi")
    body = env.client.get("/api/agents/002/logs").json()
    assert body == {"agent": "agent-002", "lines": ["agent-002 started", "two says hi"]}
    assert env.client.get("/api/agents/agent-002/logs", params={"tail": 1}).json()["lines"] == ["two says hi"]
    assert env.client.get("/api/agents/agent-002/logs", params={"tail": 0}).json()["lines"] == []


@pytest.mark.parametrize("tail", ["-1", "abc", "10001", "1.5"])
def test_logs_refuse_bad_tails(env, tail):
    start(env, 1)
    assert_error(env.client.get("/api/agents/1/logs", params={"tail": tail}), 422)


def test_logs_of_an_agent_that_reported_but_is_gone(env):
    env.store.agent_heartbeat("agent-005", "stopped")
    env.fleet.log("agent-005", "last words")
    assert env.client.get("/api/agents/5/logs").json()["lines"] == ["last words"]


def test_logs_when_docker_is_down_still_read_reported_agents(env):
    env.store.agent_heartbeat("agent-001", "idle")
    env.fleet.log("agent-001", "hello")
    env.fleet.docker_down = True
    assert env.client.get("/api/agents/1/logs").json()["lines"] == ["hello"]
    assert_error(env.client.post("/api/agents/1/restart", headers=env.csrf), 503)


# -- the shape of errors --------------------------------------------------------------

def test_unknown_routes_and_methods_answer_json(env):
    assert_error(env.client.get("/api/nothing"), 404)
    assert_error(env.client.get("/api/agents/start"), 405)
    assert_error(env.client.delete("/api/agents", headers=env.csrf), 405)


def test_an_unexpected_bug_is_a_json_500_without_a_traceback(env, caplog):
    def broken(now=None):
        raise RuntimeError("secret internals")

    env.fleet.list = broken
    with TestClient(env.app, base_url=BASE, raise_server_exceptions=False) as client:
        response = client.get("/api/agents")
    assert assert_error(response, 500) == "internal error: see the `inv gui` terminal"
    assert "secret" not in response.text
    # the snapshot (what the page shows) survives the same bug and says so
    snap = env.client.get("/api/snapshot").json()
    assert snap["errors"] == ["internal error while reading the fleet: see the `inv gui` terminal"]
    assert snap["issues"] and snap["resources"]


def test_openapi_schema_lists_every_endpoint(env):
    schema = env.client.get("/openapi.json").json()
    assert set(schema["paths"]) == {
        "/api/snapshot", "/api/agents", "/api/issues", "/api/resources", "/api/agents/start",
        "/api/agents/stop", "/api/agents/{agent}/restart", "/api/agents/{agent}/logs", "/api/events",
        "/api/agents/{agent}/logs/stream",
        # issue 22: the backlog, an issue's page, review, the merge queue's controls, the report
        "/api/issues/{number}/page", "/api/issues/import", "/api/issues/{number}/retry",
        "/api/issues/{number}/block", "/api/issues/{number}/priority", "/api/issues/{number}/send-back",
        "/api/issues/{number}/reject", "/api/issues/{number}/merge", "/api/merge-queue/run",
        "/api/merge-queue/continuous", "/api/merge-queue/stop", "/api/report"}
    assert "text/event-stream" in schema["paths"]["/api/events"]["get"]["responses"]["200"]["content"]


def test_ten_agents_and_two_hundred_issues(env):
    for i in range(196):
        env.store.add(f"Issue number {i}", priority=("urgent", "high", "medium", "low")[i % 4])
    start(env, 10)
    for i in range(1, 11):
        env.fleet.claim(str(i))
    snap = env.client.get("/api/snapshot").json()
    assert len(snap["agents"]) == 10 and all(a["issue"] for a in snap["agents"])
    assert len(snap["issues"]) == 200 and snap["open_total"] == 200
    assert [i["status"] for i in snap["issues"][:10]] == ["claimed"] * 10
    ranks = [("urgent", "high", "medium", "low").index(i["priority"]) for i in snap["issues"][10:]]
    assert ranks == sorted(ranks)
    assert snap["counts"]["ready"] == 190 and snap["counts"]["claimed"] == 10


def test_the_real_fleet_with_docker_unreachable_answers_503_and_the_snapshot_says_why(tmp_path, monkeypatch):
    from parallel_autopilot.containers import daemon as docker_client

    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-docker.sock")
    docker_client.reset()
    try:
        app = create_app(make_settings(tmp_path))  # the REAL fleet module
        with TestClient(app, base_url=BASE) as client:
            snap = client.get("/api/snapshot").json()
            assert snap["agents"] == [] and snap["resources"]["docker"] is False
            assert len(snap["errors"]) == 1 and snap["errors"][0].startswith("Docker is not reachable")
            assert_error(client.get("/api/agents"), 503)
            csrf = {"X-CSRF-Token": app.state.guard.csrf_token}
            assert "Docker" in assert_error(client.post("/api/agents/start", json={"n": 1}, headers=csrf), 503)
            assert_error(client.post("/api/agents/stop", json={"all": True}, headers=csrf), 503)
    finally:
        docker_client.reset()


def test_start_refuses_too_many_agents_with_the_fleet_rule_message(env):
    message = assert_error(env.client.post("/api/agents/start", json={"n": 11}, headers=env.csrf), 422)
    with pytest.raises(InvalidAgentCount) as rule:
        agent_count(11, env.fleet.maximum)  # what Fleet.check_count says for the same maximum
    assert message == str(rule.value)
    assert env.fleet.calls == []


def test_on_a_postgresql_queue_the_pane_shows_that_backlog_and_this_hosts_agents(tmp_path, pg_url):
    """autopilot.queue set: the GUI reads the PostgreSQL backlog (not a SQLite file) and lists
    this host's agents, never another host's agent-001 that reports to the same queue."""
    from parallel_autopilot import fleet as fleet_module
    from parallel_autopilot.issues import open_store

    settings = make_settings(tmp_path, queue=pg_url, host="ws1")
    store = fleet_module.store_for(settings)
    store.add("shared work", priority="high")
    with open_store(pg_url, host="ws2") as ws2:
        ws2.add("ws2's work")
        ws2.agent_heartbeat("agent-001", "working", issue=ws2.claim("agent-001").number)
    fake = FakeFleet(store, settings=settings)
    app = create_app(settings, fleet=fake)
    try:
        with TestClient(app, base_url=BASE) as client:
            csrf = {"X-CSRF-Token": app.state.guard.csrf_token}
            assert client.post("/api/agents/start", json={"n": 1}, headers=csrf).status_code == 200
            wait_until(lambda: [a["host"] for a in client.get("/api/agents").json()] == ["ws1"], what="ws1's agent")
            snap = client.get("/api/snapshot").json()
            # ws2's agent-001 took the high-priority issue; ws1's start freed nothing of it
            assert sorted((i["title"], i["status"]) for i in snap["issues"]) == [
                ("shared work", "claimed"), ("ws2's work", "ready")]
            assert not settings.db_path.exists(), "the GUI opened a SQLite queue beside the PostgreSQL one"
    finally:
        fleet_module.close_store(settings)


def test_the_queue_says_what_a_waiting_issue_waits_for(env):
    """Issue 21: dependencies and paths in the snapshot and /api/issues, in the store's words."""
    after = env.store.add("After the hotfix", priority="urgent", depends_on=[4], paths=["src/*.py"])
    snap = env.client.get("/api/snapshot").json()
    shown = {i["number"]: i for i in snap["issues"]}
    assert shown[after.number]["depends_on"] == [4]
    assert shown[after.number]["waiting"] == "waiting for #4 (ready)" and shown[1]["waiting"] is None
    listed = {i["number"]: i for i in env.client.get("/api/issues").json()["issues"]}
    assert listed[after.number]["paths"] == ["src/*.py"] and listed[after.number]["waiting"] == "waiting for #4 (ready)"
    env.store.block(4)
    snap = env.client.get("/api/snapshot").json()
    waiting = {i["number"]: i["waiting"] for i in snap["issues"]}[after.number]
    assert waiting.startswith("blocked by #4 (blocked)")
