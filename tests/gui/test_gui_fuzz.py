"""Schema-driven fuzzing of the GUI's API: whatever a client sends, never a 500.

schemathesis generates requests from the app's own OpenAPI schema (valid and
invalid bodies, parameters, paths) against the app over a fake fleet with
running agents and a real IssueStore. The event streams are left to
test_gui_sse.py (an accepted stream never ends); their hostile agent ids are
fuzzed here with hypothesis instead.
"""

from __future__ import annotations

import pytest
import schemathesis
from support.gui import FakeFleet, TestClient, make_settings
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from parallel_autopilot import ids
from parallel_autopilot.errors import InvalidAgentId
from parallel_autopilot.gui import create_app
from parallel_autopilot.issues import IssueStore

HOST = "127.0.0.1"  # schemathesis' ASGI client serves as port 80
FUZZ = settings(max_examples=300, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def fuzz_env(tmp_path_factory):
    settings_ = make_settings(tmp_path_factory.mktemp("fuzz"))
    store = IssueStore(settings_.db_path)
    for i in range(5):
        store.add(f"Issue {i}", priority=("urgent", "high", "medium", "low")[i % 4])
    fleet = FakeFleet(store, maximum=4)
    fleet.start(3, progress=lambda _: None)
    app = create_app(settings_, fleet=fleet)
    return app, fleet, {"Host": HOST, "X-CSRF-Token": app.state.guard.csrf_token}


@pytest.fixture(scope="module")
def api_schema(fuzz_env):
    app, _, headers = fuzz_env
    return schemathesis.openapi.from_asgi("/openapi.json", app, headers={"Host": HOST})


# filters belong on the lazy schema: the fixture's own would be replaced
schema = schemathesis.pytest.from_fixture("api_schema").exclude(tag="stream")


@schema.parametrize()
@FUZZ
def test_no_request_makes_a_server_error(case, fuzz_env):
    app, fleet, headers = fuzz_env
    response = case.call(headers=headers)
    assert response.status_code < 500, (case.method, case.formatted_path, case.body, response.text)
    if response.status_code >= 400:
        body = response.json()
        assert isinstance(body["error"], str) and "\n" not in body["error"] and "Traceback" not in response.text
    if not fleet.agents:  # a fuzzed stop emptied the fleet: give the next cases agents again
        fleet.start(3, progress=lambda _: None)


@given(ident=st.text(min_size=1, max_size=40))
@FUZZ
def test_hostile_agent_ids_never_open_a_stream(fuzz_env, ident):
    app, _, headers = fuzz_env
    try:
        if ids.agent_id(ident) in {"agent-001", "agent-002", "agent-003"}:
            return  # a real agent: its stream would stay open
    except InvalidAgentId:
        pass
    with TestClient(app, base_url=f"http://{HOST}") as client:
        for path in ("/api/agents/{}/logs/stream", "/api/agents/{}/logs", "/api/agents/{}/restart"):
            url = path.format(_quote(ident))
            response = client.post(url, headers=headers) if url.endswith("restart") else client.get(url)
            assert response.status_code in (404, 405), (url, response.status_code, response.text)
            assert "error" in response.json()


def _quote(text: str) -> str:
    from urllib.parse import quote

    return quote(text, safe="")
