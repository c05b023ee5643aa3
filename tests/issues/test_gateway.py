"""The queue gateway (issues/gateway.py): an agent acts only as itself, only on its own claims.

Real Unix sockets, a real SQLite store, real processes: the gateway runs as the
service does (``python3 -m parallel_autopilot.issues.gateway``) where a test kills it.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from parallel_autopilot.errors import InvalidInput, LeaseLost, QueueUnavailable
from parallel_autopilot.issues import IssueStore
from parallel_autopilot.issues.gateway import Gateway, GatewayClient
from support.waiting import wait_for

AGENTS = ["agent-001", "agent-002", "agent-003"]


@pytest.fixture
def served(tmp_path):
    """(store, {agent: client}, directory) over a gateway serving three agents in this process."""
    store = IssueStore(tmp_path / "autopilot.db", host="ws1")
    gateway = Gateway(store, log=lambda _: None)
    paths = gateway.listen(tmp_path / "gateway", AGENTS)
    clients = {agent: GatewayClient(path, retry_seconds=2) for agent, path in zip(AGENTS, paths)}
    yield store, clients, tmp_path / "gateway"
    for client in clients.values():
        client.close()
    gateway.close()
    store.close()


def raw(path: Path, request: bytes) -> dict:
    """One request line sent as an attacker would, outside the client."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(str(path))
        sock.sendall(request)
        return json.loads(sock.makefile("rb").readline())


def test_the_socket_is_the_identity_not_what_the_request_says(served):
    store, clients, directory = served
    store.add("one")
    assert clients["agent-002"].hello() == {"agent": "agent-002", "host": "ws1"}
    claim = clients["agent-002"].claim("agent-001", 30)  # names another agent: ignored
    assert store.get(claim.number).owner == "agent-002"
    reply = raw(directory / "agent-003" / "queue.sock",
                b'{"verb": "claim", "args": {"lease_seconds": 30, "worker": "agent-001", "host": "ws2"}}\n')
    assert reply == {"ok": None}  # nothing else ready; and nothing claimed in anyone's name
    assert [(e.kind, e.worker) for e in store.events(claim.number)] == [("added", None), ("claimed", "agent-002")]


@pytest.mark.parametrize("verb", ["renew", "complete", "fail", "empty", "release"])
def test_another_agents_claim_is_refused_recorded_and_unchanged(served, verb):
    store, clients, _ = served
    store.add("held by agent-001")
    held = clients["agent-001"].claim("agent-001", 30)
    before = store.get(held.number)
    thief = clients["agent-002"]
    forged = held.__class__(issue=held.issue, token=held.token, worker="agent-002", lease_until=held.lease_until)
    call = {"renew": lambda: thief.renew(forged, 30),
            "complete": lambda: thief.complete(forged, {"branch": "evil", "commit": "0" * 40}),
            "fail": lambda: thief.fail(forged, "evil"),
            "empty": lambda: thief.empty(forged, {"branch": "evil"}),
            "release": lambda: thief.release(forged)}[verb]
    for token in (held.token, held.token + 1, 0):  # the right token too: it is not agent-002's claim
        forged = forged.__class__(issue=held.issue, token=token, worker="agent-002", lease_until=0.0)
        with pytest.raises(LeaseLost):
            call()
    after = store.get(held.number)
    assert (after.status, after.owner, after.token, after.lease_until) == \
        (before.status, before.owner, before.token, before.lease_until)
    refused = [e for e in store.events(held.number) if e.kind == f"refused-{verb}"]
    assert len(refused) == 3 and {e.worker for e in refused} == {"agent-002"}
    # its holder still finishes it
    assert clients["agent-001"].complete(held, {"branch": "b", "commit": "a" * 40}).status == "done"


@pytest.mark.parametrize("request_line", [
    b'{"verb": "add", "args": {"title": "injected"}}\n',
    b'{"verb": "list", "args": {}}\n',
    b'{"verb": "retry", "args": {"number": 1}}\n',
    b'{"verb": "_write", "args": {"sql": "DELETE FROM issues"}}\n',
    b'{"verb": "claim", "args": {"lease_seconds": "30; DROP TABLE issues"}}\n',
    b'{"verb": "heartbeat", "args": {"state": "idle\'; DELETE FROM agents; --"}}\n',
    b'{"verb": "complete", "args": {"number": "1 OR 1=1", "token": 1}}\n',
    b'not json\n',
    b'[1, 2]\n',
])
def test_nothing_but_its_own_verbs(served, request_line):
    store, _, directory = served
    store.add("one")
    store.add("two")
    before = ([i.to_dict() for i in store.list()], len(store.events()))
    reply = raw(directory / "agent-001" / "queue.sock", request_line)
    assert reply["error"]["kind"] == "InvalidInput" and "\n" not in reply["error"]["message"]
    assert ([i.to_dict() for i in store.list()], len(store.events())) == before


def test_a_request_too_long_is_refused_and_the_connection_closed(served):
    _, _, directory = served
    line = b'{"verb": "hello", "args": {"x": "' + b"a" * (1 << 20) + b'"}}\n'
    assert raw(directory / "agent-001" / "queue.sock", line)["error"]["message"] == "request too long"


def test_a_claim_sent_again_returns_the_claim_it_holds(served):
    store, clients, directory = served
    store.add("one")
    store.add("two")
    first = clients["agent-001"].claim("agent-001", 30)
    # its reply was lost: the client sends it again, marked so; not a second issue
    again = raw(directory / "agent-001" / "queue.sock",
                b'{"verb": "claim", "args": {"lease_seconds": 30}, "retry": true}\n')["ok"]
    assert (again["issue"]["number"], again["token"]) == (first.number, first.token)
    assert store.counts()["claimed"] == 1


def test_an_agent_holds_one_claim_at_a_time(served):
    store, clients, _ = served
    for i in range(3):
        store.add(f"issue {i}")
    first = clients["agent-001"].claim("agent-001", 30)
    for _ in range(3):  # a hostile agent asking again and again gets the same issue, not the backlog
        assert clients["agent-001"].claim("agent-001", 30).number == first.number
    assert store.counts()["claimed"] == 1 and store.get(first.number).attempts == 1
    clients["agent-001"].complete(first, {"branch": "b", "commit": "a" * 40})
    assert clients["agent-001"].claim("agent-001", 30).number != first.number  # then the next one


def test_a_fenced_verb_sent_again_is_looked_up_not_repeated(served):
    store, clients, directory = served
    store.add("one")
    held = clients["agent-001"].claim("agent-001", 30)
    clients["agent-001"].complete(held, {"branch": "b", "commit": "a" * 40})
    # the same complete again, as the client sends it after a lost reply
    request = {"verb": "complete", "args": {"number": held.number, "token": held.token,
                                            "result": {"branch": "b", "commit": "a" * 40}}, "retry": True}
    reply = raw(directory / "agent-001" / "queue.sock", json.dumps(request).encode() + b"\n")
    assert reply["ok"]["status"] == "done"
    kinds = [e.kind for e in store.events(held.number)]
    assert kinds.count("done") == 1 and not [k for k in kinds if k.startswith("refused")]
    # another agent cannot use the lookup to read the row
    request["retry"] = True
    stolen = raw(directory / "agent-002" / "queue.sock", json.dumps(request).encode() + b"\n")
    assert stolen["error"]["kind"] == "LeaseLost"


def test_an_unreachable_gateway_is_queue_unavailable_in_one_line(tmp_path):
    client = GatewayClient(tmp_path / "nowhere.sock", retry_seconds=0.3)
    with pytest.raises(QueueUnavailable) as caught:
        client.hello()
    assert "\n" not in str(caught.value) and "nowhere.sock" in str(caught.value)


def test_bad_lease_arguments_are_invalid_input(served):
    _, clients, _ = served
    with pytest.raises(InvalidInput):
        clients["agent-001"].claim("agent-001", -5)


# -- the service: a real process, killed with SIGKILL ------------------------------


def _start_gateway(state: Path) -> subprocess.Popen:
    env = {**os.environ, "AUTOPILOT_DB": str(state / "autopilot.db"), "AUTOPILOT_GATEWAY_DIR": str(state / "gateway"),
           "AUTOPILOT_HOST": "ws1", "AUTOPILOT_SNAPSHOT_SECONDS": "0",
           "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.Popen([sys.executable, "-m", "parallel_autopilot.issues.gateway"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_for(lambda: subprocess.run([sys.executable, "-m", "parallel_autopilot.issues.gateway", "--health"],
                                    env=env, capture_output=True).returncode == 0, 30, 0.1, "the gateway")
    return proc


def _agent(path: str, agent: str, out: str) -> None:
    client = GatewayClient(path, retry_seconds=30)
    done, idle = [], 0
    while idle < 20:
        claim = client.claim(agent, 30)
        if claim is None:
            idle += 1
            time.sleep(0.05)
            continue
        idle = 0
        client.complete(claim, {"branch": f"autopilot/issue-{claim.number}", "commit": "c" * 40})
        done.append(claim.number)
    Path(out).write_text(json.dumps(done))


def test_ten_agent_processes_through_a_gateway_killed_twice_do_every_issue_once(tmp_path):
    state = tmp_path / "state"
    agents = [f"agent-{i:03d}" for i in range(1, 11)]
    for agent in agents:
        (state / "gateway" / agent).mkdir(parents=True)
    store = IssueStore(state / "autopilot.db", host="ws1")
    store.add_many([{"title": f"issue {i}"} for i in range(400)])
    gateway = _start_gateway(state)
    ctx = multiprocessing.get_context("spawn")
    workers = [ctx.Process(target=_agent, args=(str(state / "gateway" / a / "queue.sock"), a,
                                                 str(tmp_path / f"{a}.json"))) for a in agents]
    for worker in workers:
        worker.start()
    try:
        for _ in range(2):  # SIGKILL mid-run: the agents retry, the new gateway serves them
            wait_for(lambda: store.counts()["done"] >= 40, 60, 0.05, "some work")
            gateway.send_signal(signal.SIGKILL)
            gateway.wait()
            gateway = _start_gateway(state)
        for worker in workers:
            worker.join(120)
            assert worker.exitcode == 0
    finally:
        gateway.terminate()
        gateway.wait(10)
    done = sorted(n for a in agents for n in json.loads((tmp_path / f"{a}.json").read_text()))
    assert done == list(range(1, 401))  # each issue reported done by exactly one agent
    events = store.events()
    assert sorted(e.issue for e in events if e.kind == "done") == list(range(1, 401))
    assert not [e for e in events if e.kind.startswith("refused")]
    assert store.counts()["done"] == 400
