"""The REAL agent CLIs (Codex CLI and Claude Code at their pinned versions, from npm) in REAL agent
containers started by Fleet.start, against scripted model servers on 127.0.0.1 (tests/support/modelservers.py).

The image with both CLIs is built ONCE per session, with the build's network set to ``none`` (the
CLIs come from the host's npm cache), under a tag of this module's own that is removed at the end.
The agents run with ``network: host`` only so that they reach the scripted server on the host's
loopback; the server asserts that every peer was 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from support.modelservers import USAGE_IN, USAGE_OUT, MessagesServer, ResponsesServer
from parallel_autopilot import config, fleet
from parallel_autopilot.containers import agentcli
from parallel_autopilot.containers import image
from parallel_autopilot.merge import queue as mergequeue
from parallel_autopilot.errors import InvalidInput
from support.waiting import wait_for

pytestmark = [pytest.mark.docker, pytest.mark.slow]

TAG = f"parallel-autopilot-test-clis:{os.getpid()}"
TITLE = "Greet the new contributors"
BODY = "Write a friendly greeting file; mention the contributing guide."


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "safe.directory=*", "-C", str(repo), *args], check=True,
                          capture_output=True, text=True).stdout.strip()


def layers(tag: str) -> list[str]:
    return json.loads(subprocess.run(["docker", "image", "inspect", "--format", "{{json .RootFS.Layers}}", tag],
                                     check=True, capture_output=True, text=True).stdout)


def history(tag: str) -> list[str]:
    return subprocess.run(["docker", "history", "-q", "--no-trunc", tag], check=True, capture_output=True,
                          text=True).stdout.split()


@pytest.fixture(scope="module")
def cli_image(tmp_path_factory):
    """(tag, build output) of the image with both CLIs, built offline; removed afterwards."""
    repo = make_repo(tmp_path_factory.mktemp("build") / "repo")
    settings = config.load({}, repo=str(repo), image=TAG, agent_cli="all")
    lines: list[str] = []
    image.build(settings, progress=lines.append, network_mode="none")
    yield settings, lines
    subprocess.run(["docker", "rmi", "-f", TAG], capture_output=True)


def make_repo(path: Path) -> Path:
    path.mkdir(parents=True)
    git(path, "init", "-q", "-b", "main")
    git(path, "config", "user.name", "Host User")
    git(path, "config", "user.email", "host@example.invalid")
    (path / "README.md").write_text("sample\n")
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "first")
    return path


@pytest.fixture
def sample(tmp_path):
    repo = make_repo(tmp_path / "repo")
    made = []

    def factory(**extra):
        values = dict(repo=str(repo), image=TAG, agent_cli="all", network="host", profile="light",
                      memory="512m", cpus=0.5, lease_seconds=60, poll_seconds=0.3, stop_grace_seconds=10,
                      health_interval_seconds=1, start_timeout_seconds=120, watchdog_seconds=60,
                      backoff_seconds=1, issue_timeout=120, model_retries=1, quota_backoff_seconds=3,
                      codex_home=str(tmp_path / "no-codex"), ssh_dir=str(tmp_path / "no-ssh"),
                      gitconfig=str(tmp_path / "no-gitconfig"))
        values.update(extra)
        settings = config.load({}, **values)
        made.append(settings)
        return settings

    yield repo, tmp_path, factory
    for settings in made:
        try:
            fleet.Fleet.open(settings).stop(progress=lambda _: None)
        except Exception:  # noqa: BLE001 - best-effort teardown
            pass



def env_file(tmp_path: Path, kind: str) -> Path:
    path = tmp_path / f"{kind}.env"
    key = "OPENAI_API_KEY=sk-test-not-real" if kind == "codex" else "ANTHROPIC_API_KEY=sk-ant-test-not-real"
    # an inherited IS_SANDBOX=yes (seen on real machines) must not stop Claude Code running as root
    path.write_text(f"{key}\nIS_SANDBOX=yes\n")
    return path


def server_for(kind: str, **options):
    return ResponsesServer(**options) if kind == "codex" else MessagesServer(**options)


def endpoint(kind: str, server) -> dict:
    return ({"openai_base_url": f"{server.url}/v1"} if kind == "codex" else {"anthropic_base_url": server.url})


def attempt_logs(settings, agent="agent-001") -> str:
    root = settings.logs_path / "agents" / agent
    return "\n".join(p.read_text(errors="replace") for p in sorted(root.glob("issue-*-attempt-*.log")))


def test_the_image_builds_without_network_and_a_rebuild_makes_no_layer(cli_image):
    settings, lines = cli_image
    info = image.describe(settings)
    assert info["clis"] == {"codex": agentcli.PINS["codex"][1], "claude": agentcli.PINS["claude"][1]}
    out = subprocess.run(["docker", "run", "--rm", "--network", "none", TAG, "sh", "-c",
                          "codex --version && claude --version && ! command -v node && ! command -v npm"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert f"codex-cli {agentcli.PINS['codex'][1]}" in out.stdout
    assert f"{agentcli.PINS['claude'][1]} (Claude Code)" in out.stdout
    before_layers, before_history = layers(TAG), history(TAG)
    again: list[str] = []
    image.build(settings, progress=again.append, network_mode="none")
    assert layers(TAG) == before_layers and history(TAG) == before_history
    steps = [line for line in again if line.startswith("Step ")]
    assert steps and sum("Using cache" in line for line in again) >= len(steps) - 2  # ARG/FROM lines say none
    assert not [line for line in again if "Running in" in line], "a rebuild with nothing changed ran a step"
    assert image.image_status(settings) == "current"


@pytest.mark.parametrize("kind", ["codex", "claude"])
def test_real_cli_resolves_an_issue_in_a_container(cli_image, sample, kind):
    repo, tmp_path, make = sample
    with server_for(kind) as server:
        settings = make(agent_kind=kind, env_file=str(env_file(tmp_path, kind)), **endpoint(kind, server))
        store = fleet.store_for(settings)
        store.add(TITLE, body=BODY)
        agents = fleet.Fleet.open(settings).start(1, progress=lambda _: None)
        assert agents[0].cli and f"{kind} {agentcli.PINS[kind][1]}" in agents[0].cli
        wait_for(lambda: store.get(1).status in ("done", "dead"), 150, what=f"the real {kind} CLI")
        issue = store.get(1)
        assert issue.status == "done", (issue.error, attempt_logs(settings)[-2000:])
        assert issue.commit and issue.branch == "autopilot/issue-1"
        assert mergequeue.bring_home(settings, store) == [1]  # from the agent's own clone
        assert git(repo, "show", "autopilot/issue-1:resolved-1.txt") == "resolved by the scripted model"
        assert "Issue: #1" in git(repo, "log", "-1", "--format=%B", "autopilot/issue-1")
        assert [e.issue for e in store.events() if e.kind == "done"] == [1]
        assert issue.attempts == 1
        # two model turns (the tool call, the final message), each reporting USAGE_IN/USAGE_OUT
        assert issue.usage["input_tokens"] == 2 * USAGE_IN and issue.usage["output_tokens"] == 2 * USAGE_OUT
        if kind == "claude":
            assert issue.usage["cost_usd"] is not None
        status = {a.id: a for a in fleet.Fleet.open(settings).list()}["agent-001"]
        assert status.tokens["input_tokens"] == 2 * USAGE_IN
        assert len(server.model_requests()) == 2
        assert server.peers() == {"127.0.0.1"}
        prompts = server.prompts()
        assert TITLE in prompts and BODY in prompts and "autopilot/issue-1" in prompts


@pytest.mark.parametrize("kind", ["codex", "claude"])
def test_rate_limit_releases_without_an_attempt_waits_then_resolves(cli_image, sample, kind):
    repo, tmp_path, make = sample
    # codex gets an exhausted quota (it does not retry that: one request); claude a rate limit, which
    # with model_retries=1 it tries twice before giving up. The attempt after the wait succeeds.
    fail_first = 1 if kind == "codex" else 2
    with server_for(kind, fail_first=fail_first, retry_after=1, quota=(kind == "codex")) as server:
        settings = make(agent_kind=kind, env_file=str(env_file(tmp_path, kind)), quota_backoff_seconds=6,
                        **endpoint(kind, server))
        store = fleet.store_for(settings)
        store.add(TITLE, body=BODY, max_attempts=1)  # a counted attempt would make it dead
        fleet.Fleet.open(settings).start(1, progress=lambda _: None)
        waiting = wait_for(lambda: next((a for a in fleet.Fleet.open(settings).list()
                                         if a.activity == "quota" and a.waiting_until), None),
                           120, step=0.2, what="the agent to wait for its quota")
        # the agent parked its login (the keyed fingerprint of the env file's key) until the reset
        assert waiting.doing.startswith(f"parked: quota (login {fleet.Fleet.open(settings).login()}) until ")
        issue = store.get(1)
        assert issue.status in ("ready", "claimed") and server.failures() == fail_first
        wait_for(lambda: store.get(1).status in ("done", "dead"), 150, what="the retry after the wait")
        issue = store.get(1)
        assert issue.status == "done", (issue.error, attempt_logs(settings)[-2000:])
        assert issue.attempts == 1  # the rate-limited attempt was refunded
        kinds = [e.kind for e in store.events() if e.issue == 1]
        assert "released" in kinds and "failed" not in kinds and "dead" not in kinds
        assert mergequeue.bring_home(settings, store) == [1]
        assert git(repo, "show", "autopilot/issue-1:resolved-1.txt") == "resolved by the scripted model"
        assert server.peers() == {"127.0.0.1"}


def run_cli(repo: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["python3", "-m", "parallel_autopilot", *args], cwd=repo, capture_output=True,
                          text=True, timeout=300)


def write_invoke(repo: Path, **values) -> None:
    import yaml

    (repo / "invoke.yaml").write_text(yaml.safe_dump({"autopilot": values}))


@pytest.mark.parametrize("case", ["no-credentials", "network-none", "no-cli"])
def test_a_model_kind_that_cannot_work_is_refused_at_start_in_one_line(cli_image, sample, case):
    repo, tmp_path, make = sample
    values = dict(image=TAG, agent_cli="all", agent_kind="codex", network="host", profile="light",
                  codex_home=str(tmp_path / "no-codex"), env_file=str(env_file(tmp_path, "codex")))
    expected = {"no-credentials": "has no credentials", "network-none": "cannot reach its model with network none",
                "no-cli": "which has none"}[case]
    if case == "no-credentials":
        values["env_file"] = str(tmp_path / "empty.env")
        (tmp_path / "empty.env").write_text("OTHER=1\n")
    elif case == "network-none":
        values["network"] = "none"
    else:
        values["agent_kind"] = "claude"
        values["image"] = "parallel-autopilot-test-no-cli:absent"
        values["agent_cli"] = "codex"  # it would be built with codex only
    write_invoke(repo, **values)
    proc = run_cli(repo, "agents.start", "--n", "2")
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert expected in proc.stderr
    settings = make(**values)
    assert fleet.Fleet.open(settings).list() == []
    assert not settings.worktrees_path.exists()
    with pytest.raises(InvalidInput):
        fleet.Fleet.open(settings).start(1, progress=lambda _: None)
    if case == "network-none":  # an endpoint on the container's own loopback is allowed through
        assert agentcli.preflight(settings.replace(openai_base_url="http://127.0.0.1:9/v1"),
                                  image.image_labels(settings)) == []


def test_a_runaway_real_claude_in_a_container_is_stopped_at_its_token_budget(cli_image, sample):
    """Issue 21: the scripted model never stops asking for commands; the runtime reads Claude Code's
    stream-json as it streams, each model message once, and stops the attempt past its budget."""
    repo, tmp_path, make = sample
    turn = USAGE_IN + 1  # what Claude Code's stream-json says of a message as it starts (output: 1)
    budget = 4 * turn + 100  # passed by the fifth model message
    with server_for("claude", loop=True) as server:
        settings = make(agent_kind="claude", env_file=str(env_file(tmp_path, "claude")),
                        **endpoint("claude", server))
        store = fleet.store_for(settings)
        store.add("Loop for ever", body="The scripted model never stops.", budget_tokens=budget)
        fleet.Fleet.open(settings).start(1, progress=lambda _: None)
        wait_for(lambda: store.get(1).status not in ("ready", "claimed"), 150, what="the runaway claude stopped")
        requests = len(server.model_requests())
    issue = store.get(1)
    assert issue.status == "over_budget", (issue.error, attempt_logs(settings)[-2000:])
    spent = issue.usage["input_tokens"] + issue.usage["output_tokens"]
    assert budget < spent <= budget + 3 * turn and 5 <= requests <= 9, (issue.usage, requests)
    assert issue.error.startswith(f"over budget: spent {spent} tokens of a budget of {budget}")
    # its work is kept: committed on its branch in the agent's clone, brought home like any branch
    assert issue.commit and issue.branch == "autopilot/issue-1" and issue.attempts == 1
    assert mergequeue.bring_home(settings, store) == [1]  # as agents.stop and cleanup do
    assert git(repo, "show", "autopilot/issue-1:resolved-1.txt") == "resolved by the scripted model"
    assert "Issue: #1" in git(repo, "log", "-1", "--format=%B", "autopilot/issue-1")
    assert server.peers() == {"127.0.0.1"}
