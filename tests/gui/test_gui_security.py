"""Every refusal of the GUI: DNS rebinding, CSRF, foreign origins, tokens, public binding."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from support.gui import FakeFleet, TestClient, make_settings

from parallel_autopilot.errors import Conflict, InvalidInput
from parallel_autopilot.gui import create_app
from parallel_autopilot.gui.app import bind_socket, serve
from parallel_autopilot.gui.security import Guard, check_bind, is_local_address, split_host
from parallel_autopilot.issues import IssueStore

BASE = "http://127.0.0.1:8787"
TOKEN = "s3cret-token-for-tests-0123456789"

# every endpoint, with a valid body where one is needed
READS = ["/", "/api/snapshot", "/api/agents", "/api/issues", "/api/resources", "/api/agents/1/logs",
         "/openapi.json"]
ACTIONS = [("/api/agents/start", {"n": 1}), ("/api/agents/stop", {"all": True}),
           ("/api/agents/stop", {"ids": ["1"]}), ("/api/agents/1/restart", None)]


def make_env(tmp_path, **kwargs):
    settings = make_settings(tmp_path)
    store = IssueStore(settings.db_path)
    store.add("Something to do")
    fleet = FakeFleet(store)
    fleet.start(1, progress=lambda _: None)
    fleet.calls.clear()
    app = create_app(settings, fleet=fleet, **kwargs)
    return app, fleet


@pytest.fixture
def env(tmp_path):
    app, fleet = make_env(tmp_path)
    with TestClient(app, base_url=BASE) as client:
        yield app, fleet, client, {"X-CSRF-Token": app.state.guard.csrf_token}


def refused(response, status):
    assert response.status_code == status, response.text
    assert set(response.json()) == {"error"} and "\n" not in response.json()["error"]
    return response.json()["error"]


# -- DNS rebinding: the Host header ---------------------------------------------------

@pytest.mark.parametrize("host", ["127.0.0.1:8787", "localhost:8787", "LOCALHOST:8787", "[::1]:8787"])
def test_local_host_names_are_served(env, host):
    _, _, client, _ = env
    assert client.get("/api/resources", headers={"Host": host}).status_code == 200


@pytest.mark.parametrize("host", ["evil.example:8787", "evil.example", "127.0.0.1.evil.example:8787",
                                  "localhost.evil.example:8787", "127.0.0.2:8787", "0.0.0.0:8787",
                                  "127.0.0.1:9999", "localhost", "[::1", "[::1]x", "127.0.0.1:abc",
                                  ":8787", "127.0.0.1:8787:1", "[::2]:8787"])
def test_other_host_names_are_400_on_every_endpoint(env, host):
    _, fleet, client, csrf = env
    for path in [*READS, "/api/events", "/api/agents/1/logs/stream", "/static/app.js"]:
        assert "Host" in refused(client.get(path, headers={"Host": host}), 400)
    for path, body in ACTIONS:
        refused(client.post(path, json=body, headers={**csrf, "Host": host}), 400)
    assert fleet.calls == []


def test_split_host():
    assert split_host("[::1]:8787") == ("[::1]", 8787)
    assert split_host("LocalHost") == ("localhost", None)
    for bad in ("", ":80", "a:b", "a:0", "a:70000", "[::1", "[::1]:", "[::1]80"):
        with pytest.raises(ValueError):
            split_host(bad)


# -- CSRF and origins ------------------------------------------------------------------

@pytest.mark.parametrize("path,body", ACTIONS)
def test_state_changes_without_the_csrf_token_are_403(env, path, body):
    _, fleet, client, _ = env
    assert "CSRF" in refused(client.post(path, json=body), 403)
    assert "CSRF" in refused(client.post(path, json=body, headers={"X-CSRF-Token": "guess"}), 403)
    assert "CSRF" in refused(client.post(path, json=body, headers={"X-CSRF-Token": ""}), 403)
    assert fleet.calls == []


@pytest.mark.parametrize("headers", [
    {"Origin": "http://evil.example"},
    {"Origin": "http://evil.example:8787"},
    {"Origin": "http://127.0.0.1:9999"},
    {"Origin": "http://localhost:8787"},  # another origin, even if local: the page was served as 127.0.0.1
    {"Origin": "null"},
    {"Origin": "file://"},
    {"Referer": "http://evil.example/page"},
    {"Referer": "http://127.0.0.1:9999/"},
    {"Sec-Fetch-Site": "cross-site"},
])
@pytest.mark.parametrize("path,body", ACTIONS)
def test_state_changes_from_another_origin_are_403_even_with_the_token(env, path, body, headers):
    _, fleet, client, csrf = env
    refused(client.post(path, json=body, headers={**csrf, **headers}), 403)
    assert fleet.calls == []


@pytest.mark.parametrize("headers", [{}, {"Origin": BASE}, {"Referer": BASE + "/"},
                                     {"Origin": BASE, "Referer": BASE + "/x", "Sec-Fetch-Site": "same-origin"}])
def test_state_changes_from_the_page_pass(env, headers):
    _, fleet, client, csrf = env
    response = client.post("/api/agents/start", json={"n": 2}, headers={**csrf, **headers})
    assert response.status_code == 200, response.text
    assert fleet.calls == [("start", 2)]


def test_reads_need_no_csrf_token(env):
    _, _, client, _ = env
    for path in READS:
        assert client.get(path).status_code == 200, path


def test_responses_forbid_framing_and_sniffing(env):
    _, _, client, _ = env
    for path in ("/", "/api/snapshot", "/static/app.js", "/api/nothing"):
        response = client.get(path)
        assert response.headers["x-frame-options"] == "DENY"
        assert response.headers["x-content-type-options"] == "nosniff"


def test_websockets_are_refused(env):
    _, _, client, _ = env
    from starlette.websockets import WebSocketDisconnect

    with pytest.raises(WebSocketDisconnect):
        with client.websocket_connect("/api/events") as ws:
            ws.receive_text()


# -- access token ----------------------------------------------------------------------

@pytest.fixture
def tokened(tmp_path):
    app, fleet = make_env(tmp_path, token=TOKEN)
    with TestClient(app, base_url=BASE) as client:
        yield app, fleet, client, {"X-CSRF-Token": app.state.guard.csrf_token}


@pytest.mark.parametrize("auth", [{}, {"X-Autopilot-Token": "wrong"}, {"Authorization": "Bearer wrong"},
                                  {"Authorization": f"Basic {TOKEN}"}, {"X-Autopilot-Token": TOKEN[:-1]}])
def test_with_a_token_every_request_needs_it(tokened, auth):
    _, fleet, client, csrf = tokened
    for path in [*READS, "/api/events", "/api/agents/1/logs/stream"]:
        assert "token" in refused(client.get(path, headers=auth), 401)
    for path, body in ACTIONS:
        refused(client.post(path, json=body, headers={**csrf, **auth}), 401)
    refused(client.get("/api/snapshot", params={"token": "wrong"}), 401)
    assert fleet.calls == []


def test_the_token_can_come_as_header_bearer_or_query(tokened):
    app, fleet, client, csrf = tokened
    assert client.get("/api/snapshot", headers={"X-Autopilot-Token": TOKEN}).status_code == 200
    assert client.get("/api/snapshot", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    assert client.get("/api/snapshot", params={"token": TOKEN}).status_code == 200
    page = client.get("/", params={"token": TOKEN})
    assert f'<meta name="access-token" content="{TOKEN}">' in page.text
    # the page's script and style carry no secret and load without it
    assert client.get("/static/app.js").status_code == 200
    # the token does not replace the CSRF check
    refused(client.post("/api/agents/start", json={"n": 1}, headers={"X-Autopilot-Token": TOKEN}), 403)
    ok = client.post("/api/agents/start", json={"n": 1}, headers={"X-Autopilot-Token": TOKEN, **csrf})
    assert ok.status_code == 200 and fleet.calls == [("start", 1)]


def test_without_a_token_the_page_embeds_none(env):
    _, _, client, _ = env
    assert '<meta name="access-token" content="">' in client.get("/").text


# -- binding -------------------------------------------------------------------------------

@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "[::1]", "127.0.0.5"])
def test_local_addresses_bind_without_flags(host):
    assert is_local_address(host)
    check_bind(host, public=False, token=None)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.20", "example.org"])
def test_a_non_local_address_needs_public_and_a_token(host):
    assert not is_local_address(host)
    with pytest.raises(InvalidInput, match="--public"):
        check_bind(host, public=False, token=TOKEN)
    with pytest.raises(InvalidInput, match="--token"):
        check_bind(host, public=True, token=None)
    with pytest.raises(InvalidInput, match="--token"):
        check_bind(host, public=True, token="short")
    check_bind(host, public=True, token=TOKEN)


def test_public_guards():
    wildcard = Guard.for_bind("0.0.0.0", token=TOKEN)
    assert wildcard.any_host and wildcard.check_host("workstation.lan:8787", 8787) is None
    named = Guard.for_bind("192.168.1.20", token=TOKEN)
    assert not named.any_host and named.check_host("192.168.1.20:8787", 8787) is None
    assert named.check_host("evil.example:8787", 8787)[0] == 400
    # a wildcard bind without a token (never allowed by check_bind) still checks names
    assert not Guard.for_bind("0.0.0.0").any_host


def test_serve_refuses_before_listening(tmp_path):
    settings = make_settings(tmp_path)
    with pytest.raises(InvalidInput, match="--public"):
        serve(settings, host="0.0.0.0", port=0, fleet=FakeFleet(IssueStore(settings.db_path)))


def test_a_busy_port_is_one_line_naming_the_fix():
    sock = bind_socket("127.0.0.1", 0)
    sock.listen()
    try:
        with pytest.raises(Conflict, match="--port"):
            bind_socket("127.0.0.1", sock.getsockname()[1])
    finally:
        sock.close()


def test_inv_gui_refuses_a_public_address_with_one_line(tmp_path):
    (tmp_path / "repo").mkdir()
    subprocess.run(["git", "init", "-q", str(tmp_path / "repo")], check=True)
    proc = subprocess.run([sys.executable, "-m", "parallel_autopilot.program", "gui", "--host", "0.0.0.0"],
                          cwd=tmp_path / "repo", capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert proc.returncode == 2, proc.stderr
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    assert len(lines) == 1 and "--public" in lines[0] and "Traceback" not in proc.stderr


# -- issue 22: the backlog, review and merge queue actions have the same guards --------------

REVIEW_ACTIONS = [("/api/issues", {"title": "injected"}), ("/api/issues/import", {"text": "- title: x\n"}),
                  ("/api/issues/1/retry", None), ("/api/issues/1/block", None),
                  ("/api/issues/1/priority", {"priority": "urgent"}), ("/api/issues/1/send-back", {"note": "x"}),
                  ("/api/issues/1/reject", {"note": "x"}), ("/api/issues/1/merge", {}),
                  ("/api/merge-queue/run", {}), ("/api/merge-queue/continuous", None), ("/api/merge-queue/stop", None)]
REFUSALS = [({"Host": "evil.example:8787"}, 400), ({"Host": "127.0.0.1:9999"}, 400),
            ({"Origin": "http://evil.example"}, 403), ({"Referer": "http://evil.example/x"}, 403),
            ({"Sec-Fetch-Site": "cross-site"}, 403), ({"Origin": "null"}, 403), ({"X-CSRF-Token": ""}, 403),
            ({"X-CSRF-Token": "guess"}, 403)]


@pytest.mark.parametrize("path,body", REVIEW_ACTIONS)
def test_every_new_action_refuses_a_foreign_host_a_cross_site_request_and_a_missing_token(env, path, body):
    app, fleet, client, csrf = env
    store = app.state.pane.store()
    before = [e.to_dict() for e in store.events()], [i.to_dict() for i in store.list()]
    for headers, status in REFUSALS:
        refused(client.post(path, json=body, headers={**csrf, **headers}), status)
    refused(client.post(path, json=body), 403)  # no token at all
    assert ([e.to_dict() for e in store.events()], [i.to_dict() for i in store.list()]) == before
    assert fleet.calls == [] and not app.state.pane.merge_loop["running"]


@pytest.mark.parametrize("bad", ["x", "0", "-3", "1.0", "424242", "1%2F..%2Fetc", "%00", "1 "])
def test_every_new_issue_action_refuses_a_bad_id_with_404(env, bad):
    app, _, client, csrf = env
    store = app.state.pane.store()
    before = len(store.events())
    for path, body in REVIEW_ACTIONS:
        if "/1/" not in path:
            continue
        response = client.post(path.replace("/1/", f"/{bad}/"), json=body, headers=csrf)
        assert response.status_code in (404, 405), (path, bad, response.text)
        assert "\n" not in response.json()["error"]
    assert client.get(f"/api/issues/{bad}/page").status_code in (404, 405)
    assert len(store.events()) == before


def test_a_public_guis_report_and_issue_pages_need_the_token_and_their_links_carry_it(tmp_path):
    app, _ = make_env(tmp_path, token=TOKEN)
    with TestClient(app, base_url=BASE) as client:
        refused(client.get("/report"), 401)
        refused(client.get("/issues/1"), 401)
        refused(client.get("/api/issues/1/page"), 401)
        page = client.get("/report", params={"token": TOKEN})
        assert page.status_code == 200 and f'href="/issues/1?token={TOKEN}"' in page.text
        assert client.get("/issues/1", params={"token": TOKEN}).status_code == 200
