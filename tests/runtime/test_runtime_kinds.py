"""parallel_autopilot.runtime.kinds: argv, environment and credentials per agent kind."""

from __future__ import annotations

import os
import stat

import pytest

from parallel_autopilot.errors import InvalidInput
from parallel_autopilot.issues import Issue
from parallel_autopilot.runtime import kinds


def issue(**fields) -> Issue:
    data = dict(number=42, title="Fix the 'parser' now", body="It breaks on {braces} and $HOME.",
                priority="high", script="make fix", status="claimed", attempts=1, max_attempts=3,
                due_at=0.0, owner="agent-001", token=4, lease_until=None, heartbeat_at=None,
                claimed_at=None, branch=None, commit=None, duration=None, error=None,
                created_at=0.0, updated_at=0.0)
    data.update(fields)
    return Issue(**data)


def argv(kind, item=None, template=None):
    return kinds.command(kind, item or issue(), agent="agent-001", workspace="/workspace", base="trunk",
                         template=template)


def test_script_runs_the_issue_script_with_a_shell():
    assert argv("script")[1:] == ["-c", "make fix"]
    assert os.path.basename(argv("script")[0]) in ("bash", "sh")


def test_script_without_a_script_fails_clearly():
    with pytest.raises(InvalidInput, match="issue #42 has no script"):
        argv("script", issue(script="  "))


def test_codex_and_claude_are_non_interactive_with_the_prompt():
    codex, claude = argv("codex"), argv("claude")
    # Codex CLI 0.171 rejects --full-auto (exit 2); its own sandbox cannot start in our container
    assert codex[:2] == ["codex", "exec"] and "--full-auto" not in codex
    assert {"--dangerously-bypass-approvals-and-sandbox", "--skip-git-repo-check", "--json",
            "--ephemeral"} <= set(codex)
    assert codex[codex.index("-C") + 1] == "/workspace"
    assert claude[:2] == ["claude", "-p"] and "--dangerously-skip-permissions" in claude
    assert claude[claude.index("--output-format") + 1] == "stream-json" and "--verbose" in claude
    prompt = codex[-1]
    assert prompt == claude[2]
    assert "issue #42" in prompt and "Fix the 'parser' now" in prompt and "{braces}" in prompt
    assert "autopilot/issue-42" in prompt and "Do NOT push" in prompt and "trunk" in prompt


def test_codex_writes_its_last_message_and_takes_a_model():
    codex = kinds.command("codex", issue(), agent="agent-001", workspace="/w", base="main",
                          last_message="/logs/x.last.txt", model="gpt-local")
    assert codex[codex.index("-o") + 1] == "/logs/x.last.txt" and codex[codex.index("-m") + 1] == "gpt-local"
    claude = kinds.command("claude", issue(), agent="agent-001", workspace="/w", base="main", model="opus")
    assert claude[claude.index("--model") + 1] == "opus"


def test_is_sandbox_is_forced_to_exactly_1_for_root_claude():
    env = kinds.environment({"IS_SANDBOX": "yes", "HOME": "/h"}, issue(), agent="agent-001", workspace="/w",
                            kind="claude", uid=0)
    assert env["IS_SANDBOX"] == "1"
    env = kinds.environment({"HOME": "/h"}, issue(), agent="agent-001", workspace="/w", kind="claude", uid=1000)
    assert "IS_SANDBOX" not in env


def test_claude_endpoint_and_retries_go_into_its_environment():
    config = kinds.ModelConfig(anthropic_base_url="http://127.0.0.1:9/", retries=1)
    env = kinds.environment({"HOME": "/h"}, issue(), agent="agent-001", workspace="/w", kind="claude",
                            config=config, uid=1000)
    assert env["ANTHROPIC_BASE_URL"] == "http://127.0.0.1:9/"
    assert env["CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC"] == "1" and env["CLAUDE_CODE_MAX_RETRIES"] == "1"
    plain = kinds.environment({"HOME": "/h"}, issue(), agent="agent-001", workspace="/w", kind="claude", uid=1000)
    assert "ANTHROPIC_BASE_URL" not in plain


def test_codex_endpoint_is_a_config_toml_in_the_agents_home(tmp_path):
    import tomllib

    config = kinds.ModelConfig(openai_base_url="http://127.0.0.1:8/v1", model="m", retries=0)
    written = kinds.prepare_home("codex", tmp_path, config)
    path = tmp_path / ".codex" / "config.toml"
    assert written == [str(path)]
    data = tomllib.loads(path.read_text())
    assert data["model_provider"] == "local" and data["model"] == "m"
    provider = data["model_providers"]["local"]
    assert provider["base_url"] == "http://127.0.0.1:8/v1" and provider["wire_api"] == "responses"
    assert provider["request_max_retries"] == 0 and data["analytics"]["enabled"] is False
    assert data["features"]["plugins"] is False
    assert kinds.prepare_home("codex", tmp_path / "other", kinds.ModelConfig()) == []
    env = kinds.environment({"HOME": str(tmp_path)}, issue(), agent="a", workspace="/w", kind="codex")
    assert env["CODEX_HOME"] == str(tmp_path / ".codex")


def test_command_template_is_split_before_it_is_filled():
    words = argv("command", template="agent --n {number} --t {title} -p {priority} {workspace} '{body}'")
    assert words == ["agent", "--n", "42", "--t", "Fix the 'parser' now", "-p", "high", "/workspace",
                     "It breaks on {braces} and $HOME."]


@pytest.mark.parametrize("template, message", [
    ("agent {nope}", "not a valid template"),
    ("agent 'open", "cannot be split"),
    ("   ", "is empty"),
])
def test_bad_templates_are_refused(template, message):
    with pytest.raises(InvalidInput, match=message):
        kinds.check_template(template)


def test_check_refuses_a_missing_program(tmp_path):
    with pytest.raises(InvalidInput, match="needs 'codex', which is not on PATH: build the image"):
        kinds.check("codex", path=str(tmp_path))
    kinds.check("script", path=str(tmp_path))  # needs only a shell
    (tmp_path / "my-agent").write_text("#!/bin/sh\n")
    (tmp_path / "my-agent").chmod(0o755)
    kinds.check("command", "my-agent {number}", path=str(tmp_path))
    kinds.check("command", "{workspace}/tools/agent {number}", path=str(tmp_path))  # per issue
    with pytest.raises(InvalidInput, match="needs 'other-agent'"):
        kinds.check("command", "other-agent {number}", path=str(tmp_path))


def test_environment_carries_the_issue_and_the_agent_identity():
    env = kinds.environment({"PATH": "/bin", "AUTOPILOT_DB": "/state/db", "GIT_DIR": "/elsewhere",
                             "GIT_SSH_COMMAND": "ssh -i k"}, issue(), agent="agent-001",
                            workspace="/workspace", kind="script")
    assert env["ISSUE_NUMBER"] == "42" and env["ISSUE_TITLE"] == "Fix the 'parser' now"
    assert env["ISSUE_BODY"].startswith("It breaks") and env["ISSUE_PRIORITY"] == "high"
    assert env["AUTOPILOT_AGENT_ID"] == "agent-001" and env["ISSUE_BRANCH"] == "autopilot/issue-42"
    assert env["GIT_AUTHOR_EMAIL"] == "agent-001@parallel-autopilot.invalid"
    assert "AUTOPILOT_DB" not in env and "GIT_DIR" not in env and env["GIT_SSH_COMMAND"] == "ssh -i k"
    assert "IS_SANDBOX" not in env


def test_credentials_are_copied_writable_and_placeholders_skipped(tmp_path):
    source, home = tmp_path / "credentials", tmp_path / "home"
    (source / "codex" / "sessions").mkdir(parents=True)
    (source / "codex" / "auth.json").write_text("{}")
    (source / "ssh").mkdir()  # empty placeholder
    (source / "gitconfig").write_text("[user]\n")
    (source / "netrc").write_text("")  # empty placeholder
    for path in [source / "codex" / "auth.json", source / "codex" / "sessions", source / "codex", source / "gitconfig"]:
        path.chmod(0o500 if path.is_dir() else 0o400)  # what a read-only mount looks like
    home.mkdir()
    try:
        assert kinds.copy_credentials(source, home) == ["codex", "gitconfig"]
        assert (home / ".codex" / "auth.json").read_text() == "{}"
        assert stat.S_IMODE((home / ".codex").stat().st_mode) & stat.S_IWUSR
        (home / ".codex" / "sessions" / "new.json").write_text("written")  # the CLI can write
        assert (home / ".gitconfig").read_text() == "[user]\n"
        assert not (home / ".ssh").exists() and not (home / ".netrc").exists()
        assert kinds.copy_credentials(tmp_path / "missing", home) == []
        assert kinds.copy_credentials(source, None) == []
    finally:
        for path in source.rglob("*"):
            path.chmod(0o700)
