"""containers/files/docker-compose.yml: every service gets the whole anchor.

YAML merges are shallow: a service's own ``environment:``/``labels:``/``volumes:``
would replace the anchor's. PyYAML resolves ``<<`` merges, so these tests see
each service exactly as compose does.
"""

from __future__ import annotations

import re

import pytest
import yaml
from support.composes import BOTH

from parallel_autopilot.containers import compose
from parallel_autopilot.containers import provision as containers
from parallel_autopilot.defaults import memory_bytes
from parallel_autopilot.errors import ComposeError

RUNTIME_VARIABLES = {
    "AUTOPILOT_QUEUE_SOCKET", "AUTOPILOT_WORKSPACE", "AUTOPILOT_LOGS", "AUTOPILOT_BASE_BRANCH",
    "AUTOPILOT_AGENT_KIND", "AUTOPILOT_AGENT_COMMAND", "AUTOPILOT_LEASE_SECONDS", "AUTOPILOT_MAX_ATTEMPTS",
    "AUTOPILOT_BACKOFF_SECONDS", "AUTOPILOT_ISSUE_TIMEOUT", "AUTOPILOT_POLL_SECONDS", "AUTOPILOT_WATCHDOG_SECONDS",
    "AUTOPILOT_GRACE_SECONDS", "AUTOPILOT_HEARTBEAT_FILE", "AUTOPILOT_AGENT_ID", "HOME", "AUTOPILOT_CHECK",
    "AUTOPILOT_CHECK_TIMEOUT", "AUTOPILOT_HOST",
}
# a same-host PostgreSQL socket directory, at its own path (containers/queueaccess.py)
SOCKET_TARGET = "${AUTOPILOT_QUEUE_SOCKET_TARGET:?set by parallel_autopilot.containers.compose}"
# what an agent mounts: credentials read-only, its own clone, log and gateway socket; nothing shared
AGENT_TARGETS = {"/run/credentials/codex", "/run/credentials/ssh", "/run/credentials/gitconfig", "/etc/passwd",
                 "/etc/group", "/workspace", "/run/autopilot-queue", "${AUTOPILOT_GIT_DIR}"}
#: what no agent may mount: the queue, its snapshots, every agent's logs, the queue's URL and server
SHARED = {"/state", "/logs", "/run/secrets/autopilot-queue", SOCKET_TARGET}
READ_ONLY = {"/run/credentials/codex", "/run/credentials/ssh", "/run/credentials/gitconfig",
             "/etc/passwd", "/etc/group", "/run/secrets/autopilot-queue", SOCKET_TARGET,
             "${AUTOPILOT_GIT_DIR}"}  # the user's .git: read-only, each agent writes only its own clone
AGENTS = [f"agent-{i:03d}" for i in range(1, 11)]


@pytest.fixture(scope="module")
def text() -> str:
    return compose.compose_file().read_text()


@pytest.fixture(scope="module")
def services(text) -> dict:
    return yaml.safe_load(text)["services"]


def test_defines_agent_001_to_010_and_the_gateway(services):
    assert sorted(services) == [*AGENTS, "gateway"]
    assert compose.services() == AGENTS  # the agents; the gateway is compose.GATEWAY


def test_no_version_key_and_anchors_present(text):
    data = yaml.safe_load(text)
    assert "version" not in data
    assert {"x-agent", "x-agent-env", "x-agent-labels", "x-mounts"} <= set(data)


@pytest.mark.parametrize("agent", AGENTS)
def test_every_service_has_the_full_environment(services, agent):
    env = services[agent]["environment"]
    assert RUNTIME_VARIABLES <= set(env), RUNTIME_VARIABLES - set(env)
    assert env["AUTOPILOT_AGENT_ID"] == agent
    assert env["AUTOPILOT_QUEUE_SOCKET"] == "/run/autopilot-queue/queue.sock"
    assert not {"AUTOPILOT_DB", "AUTOPILOT_QUEUE_FILE"} & set(env)  # no queue of its own to open
    assert env["AUTOPILOT_HEARTBEAT_FILE"].startswith("/run/autopilot/")


@pytest.mark.parametrize("agent", AGENTS)
def test_every_agent_mounts_its_own_clone_log_and_socket_and_nothing_shared(services, agent):
    mounts = {m["target"]: m for m in services[agent]["volumes"]}
    own_log = f"/logs/agents/{agent}"
    assert set(mounts) == AGENT_TARGETS | {own_log}
    assert not SHARED & set(mounts)
    assert mounts["/workspace"]["source"] == f"${{AUTOPILOT_WORKTREES}}/{agent}"
    assert mounts[own_log]["source"] == f"${{AUTOPILOT_LOGS_DIR}}/agents/{agent}"
    assert mounts["/run/autopilot-queue"]["source"] == f"${{AUTOPILOT_STATE}}/gateway/{agent}"
    for target, mount in mounts.items():
        assert mount["type"] == "bind"
        assert bool(mount.get("read_only")) == (target in READ_ONLY), target


def test_the_gateway_holds_the_state_and_the_queue_url_and_is_supervised(services):
    gateway = services["gateway"]
    mounts = {m["target"]: m for m in gateway["volumes"]}
    assert {"/state", "/run/secrets/autopilot-queue", SOCKET_TARGET} <= set(mounts)
    assert not mounts["/state"].get("read_only")
    assert gateway["command"] == ["python3", "-m", "parallel_autopilot.issues.gateway"]
    assert gateway["restart"] == "unless-stopped"  # Docker restarts it; the CLI may exit
    assert gateway["healthcheck"]["test"][-1] == "--health"
    assert gateway["labels"]["parallel-autopilot.role"] == "gateway"
    assert "parallel-autopilot.agent" not in gateway["labels"]  # not listed as an agent
    assert gateway["cap_drop"] == ["ALL"] and "no-new-privileges:true" in gateway["security_opt"]


@pytest.mark.parametrize("agent", AGENTS)
def test_every_service_has_limits_health_restart_and_hardening(services, agent):
    s = services[agent]
    assert s["container_name"] == f"${{AUTOPILOT_PROJECT}}-{agent}"
    assert s["labels"]["parallel-autopilot.agent"] == agent
    assert s["labels"]["parallel-autopilot.project"].startswith("${AUTOPILOT_PROJECT")
    assert s["init"] is True
    assert s["user"].startswith("${AUTOPILOT_UID") and ":${AUTOPILOT_GID" in s["user"]
    assert s["working_dir"] == "/workspace"
    assert s["mem_limit"].startswith("${AGENT_MEMORY")
    assert s["cpus"].startswith("${AGENT_CPUS")
    assert "pids_limit" not in s  # an integer: compose.limits_override() sets it
    assert s["stop_grace_period"].startswith("${AUTOPILOT_STOP_GRACE")
    assert s["restart"] == "on-failure"
    assert s["healthcheck"]["test"] == ["CMD", "python3", "-m", "parallel_autopilot.runtime.health"]
    assert s["healthcheck"]["interval"].startswith("${AUTOPILOT_HEALTH_INTERVAL")
    assert s["network_mode"].startswith("${AUTOPILOT_NETWORK")
    assert s["cap_drop"] == ["ALL"]
    assert "no-new-privileges:true" in s["security_opt"]
    assert s["env_file"].startswith("${AUTOPILOT_ENV_FILE")
    tmpfs = {entry.split(":")[0]: entry for entry in s["tmpfs"]}
    assert set(tmpfs) == {"/home/agent", "/run/autopilot"}
    assert all("mode=1777" in entry for entry in tmpfs.values())


def test_every_variable_the_file_reads_is_set_by_compose_env(text, tmp_path, git_repo):
    from parallel_autopilot import config

    code = re.sub(r"(?m)(^|\s)#.*$", "", text)  # comments mention ${VARIABLE} too
    read = set(re.findall(r"\$\{([A-Z_]+)", code))
    settings = config.load(repo=git_repo)
    env = containers.compose_env(settings)
    assert read <= set(env), read - set(env)


@pytest.mark.parametrize("program", BOTH)
def test_compose_accepts_the_file_and_refuses_a_missing_limit(tmp_path, git_repo, program):
    from parallel_autopilot import config

    settings = config.load(repo=git_repo)
    env = containers.compose_env(settings)
    proc = compose.run(settings, ["config"], env=env, compose=program)
    rendered = yaml.safe_load(proc.stdout)["services"]
    # v1 prints the value as given, v2 in bytes
    assert str(rendered["agent-003"]["mem_limit"]) in (env["AGENT_MEMORY"], str(memory_bytes(env["AGENT_MEMORY"])))
    assert rendered["agent-003"]["environment"]["AUTOPILOT_AGENT_ID"] == "agent-003"
    assert rendered["agent-010"]["pids_limit"] == settings.pids_limit  # an int, from the override
    del env["AGENT_MEMORY"]
    with pytest.raises(ComposeError, match="AGENT_MEMORY"):
        compose.run(settings, ["config", "-q"], env=env, compose=program)


def test_yaml_parses_with_the_same_result_as_compose_would_see(services):
    # an accidental per-service `environment:` list would drop the merge: guard the shape
    for agent in AGENTS:
        assert isinstance(services[agent]["environment"], dict)
        assert isinstance(services[agent]["labels"], dict)
