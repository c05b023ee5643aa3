"""parallel_autopilot.runtime.settings: the AUTOPILOT_* environment, read once."""

from __future__ import annotations

from pathlib import Path

import pytest

from parallel_autopilot.errors import InvalidAgentId, InvalidInput
from parallel_autopilot.runtime.settings import RuntimeSettings

BASE = {"AUTOPILOT_AGENT_ID": "7", "AUTOPILOT_DB": "/state/autopilot.db",
        "AUTOPILOT_WORKSPACE": "/workspace", "AUTOPILOT_LOGS": "/logs"}


def test_defaults_and_derived_intervals():
    s = RuntimeSettings.from_env(BASE)
    assert s.agent_id == "agent-007"  # any accepted spelling, canonical form
    assert (s.db, s.workspace, s.logs) == (Path("/state/autopilot.db"), Path("/workspace"), Path("/logs"))
    assert (s.kind, s.base_branch, s.lease_seconds, s.max_attempts) == ("script", "main", 900, 3)
    assert s.heartbeat_file == Path("/run/autopilot/heartbeat")
    assert s.renew_seconds == 300 and s.report_seconds == 1 and s.stall_seconds == 30
    # a peer whose agents row is silent this long is presumed dead: its issue comes back in
    # seconds (a report every second leaves room for five missed ones)
    assert s.stale_seconds == 6 and s.poll_seconds == 0.5


def test_every_variable_is_read():
    s = RuntimeSettings.from_env({**BASE, "AUTOPILOT_BASE_BRANCH": "develop", "AUTOPILOT_AGENT_KIND": "command",
                                  "AUTOPILOT_AGENT_COMMAND": "x {number}", "AUTOPILOT_LEASE_SECONDS": "6",
                                  "AUTOPILOT_MAX_ATTEMPTS": "5", "AUTOPILOT_BACKOFF_SECONDS": "0",
                                  "AUTOPILOT_ISSUE_TIMEOUT": "7.5", "AUTOPILOT_POLL_SECONDS": "0.5",
                                  "AUTOPILOT_WATCHDOG_SECONDS": "8", "AUTOPILOT_GRACE_SECONDS": "0",
                                  "AUTOPILOT_HEARTBEAT_FILE": "/tmp/hb", "AUTOPILOT_CREDENTIALS": "/creds",
                                  "AUTOPILOT_STALE_SECONDS": "0"})
    assert (s.base_branch, s.kind, s.command) == ("develop", "command", "x {number}")
    assert (s.lease_seconds, s.renew_seconds, s.max_attempts, s.backoff_seconds) == (6, 2, 5, 0)
    assert (s.issue_timeout, s.poll_seconds, s.watchdog_seconds, s.grace_seconds) == (7.5, 0.5, 8, 0)
    assert (s.heartbeat_file, s.credentials, s.stale_seconds) == (Path("/tmp/hb"), Path("/creds"), 0)
    assert s.stall_seconds == 4


@pytest.mark.parametrize("change, message", [
    ({"AUTOPILOT_DB": ""}, "AUTOPILOT_DB is not set"),
    ({"AUTOPILOT_AGENT_KIND": "gpt"}, "AUTOPILOT_AGENT_KIND='gpt' is unknown"),
    ({"AUTOPILOT_AGENT_KIND": "command"}, "needs AUTOPILOT_AGENT_COMMAND"),
    ({"AUTOPILOT_LEASE_SECONDS": "soon"}, "AUTOPILOT_LEASE_SECONDS='soon' is not a number"),
    ({"AUTOPILOT_MAX_ATTEMPTS": "2.5"}, "AUTOPILOT_MAX_ATTEMPTS='2.5' is not an integer"),
    ({"AUTOPILOT_MAX_ATTEMPTS": "0"}, "AUTOPILOT_MAX_ATTEMPTS='0' is too small"),
    ({"AUTOPILOT_GRACE_SECONDS": "-1"}, "AUTOPILOT_GRACE_SECONDS='-1' is too small"),
])
def test_bad_values_are_one_line_naming_the_variable(change, message):
    with pytest.raises(InvalidInput) as err:
        RuntimeSettings.from_env({**BASE, **change})
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_bad_agent_id_is_refused():
    with pytest.raises(InvalidAgentId):
        RuntimeSettings.from_env({**BASE, "AUTOPILOT_AGENT_ID": "../x"})


def test_model_endpoints_and_retries():
    s = RuntimeSettings.from_env({**BASE, "AUTOPILOT_OPENAI_BASE_URL": "http://127.0.0.1:8000/v1/",
                                  "AUTOPILOT_ANTHROPIC_BASE_URL": "https://gateway.example/anthropic",
                                  "AUTOPILOT_MODEL": "gpt-local", "AUTOPILOT_MODEL_RETRIES": "0",
                                  "AUTOPILOT_QUOTA_BACKOFF_SECONDS": "5"})
    assert s.openai_base_url == "http://127.0.0.1:8000/v1" and s.anthropic_base_url.endswith("/anthropic")
    assert s.model == "gpt-local" and s.model_retries == 0 and s.quota_backoff_seconds == 5
    empty = RuntimeSettings.from_env({**BASE, "AUTOPILOT_OPENAI_BASE_URL": "", "AUTOPILOT_MODEL_RETRIES": ""})
    assert empty.openai_base_url is None and empty.model_retries is None
    with pytest.raises(InvalidInput, match="AUTOPILOT_OPENAI_BASE_URL='127.0.0.1:8000' is not a URL"):
        RuntimeSettings.from_env({**BASE, "AUTOPILOT_OPENAI_BASE_URL": "127.0.0.1:8000"})


def test_the_queue_is_the_db_unless_a_queue_file_names_a_url(tmp_path):
    assert RuntimeSettings.from_env(BASE).queue_target() == Path("/state/autopilot.db")
    secret = tmp_path / "queue"
    secret.write_text("postgresql://ap:s3cret@/autopilot?host=/var/run/postgresql\n")
    s = RuntimeSettings.from_env({**BASE, "AUTOPILOT_QUEUE_FILE": str(secret)})
    assert s.queue_target() == "postgresql://ap:s3cret@/autopilot?host=/var/run/postgresql"
    secret.write_text("  \n")
    with pytest.raises(InvalidInput, match="is empty"):
        s.queue_target()
    missing = RuntimeSettings.from_env({**BASE, "AUTOPILOT_QUEUE_FILE": str(tmp_path / "absent")})
    with pytest.raises(InvalidInput, match="cannot read it") as err:
        missing.queue_target()
    assert "\n" not in str(err.value)


def test_the_host_comes_from_autopilot_host():
    assert RuntimeSettings.from_env(BASE).host is None  # by hand on the host: the store's default
    assert RuntimeSettings.from_env({**BASE, "AUTOPILOT_HOST": " ws2 "}).host == "ws2"
