"""parallel_autopilot.containers.agentcli without Docker: choices, labels, staging from the cache, preflight.

The real thing (npm, the image, the CLIs in containers) is tests/containers/test_agent_clis_real.py."""

from __future__ import annotations

import os
import subprocess

import pytest

from parallel_autopilot import config
from parallel_autopilot.containers import agentcli
from parallel_autopilot.errors import ImageBuildError, InvalidInput


@pytest.fixture
def settings(git_repo, tmp_path):
    keys = tmp_path / "keys.env"
    keys.write_text("# keys\nOPENAI_API_KEY=sk-x\nexport ANTHROPIC_API_KEY = sk-y\n")
    return config.load({}, repo=str(git_repo), agent_kind="codex", agent_cli="all", network="bridge",
                       env_file=str(keys), codex_home=str(tmp_path / "no-codex"), cli_cache=str(tmp_path / "cache"))


def fake_cache(settings, cli):
    found = agentcli.installed(cli, settings)
    exe = found.executable()
    exe.parent.mkdir(parents=True)
    exe.write_text("#!/bin/sh\necho fake\n")
    exe.chmod(0o755)
    if cli == "codex":
        (found.binary_dir() / "codex-path").mkdir()
        (found.binary_dir() / "codex-path" / "rg").write_text("rg")
    return found


def test_choices_and_labels():
    assert agentcli.clis("all") == ["codex", "claude"] and agentcli.clis(None) == []
    assert agentcli.clis("Codex") == ["codex"]
    with pytest.raises(InvalidInput, match="use none, codex, claude or all"):
        agentcli.clis("emacs")
    assert agentcli.labels("claude") == {"parallel-autopilot.cli.claude": agentcli.PINS["claude"][1]}


def test_stage_links_the_binaries_and_is_stable(settings, tmp_path):
    for cli in ("codex", "claude"):
        fake_cache(settings, cli)
    target = tmp_path / "context" / "agent-cli"
    agentcli.stage("all", target, settings, progress=lambda _: None)
    assert os.readlink(target / "bin" / "codex") == "../codex/bin/codex"
    assert os.readlink(target / "bin" / "claude") == "../claude/claude"
    assert (target / "codex" / "codex-path" / "rg").is_file()
    assert (target / "codex.version").read_text().strip() == agentcli.PINS["codex"][1]
    run = subprocess.run([str(target / "bin" / "codex")], capture_output=True, text=True)
    assert run.stdout == "fake\n"
    same = agentcli.installed("codex", settings).executable()
    assert os.path.samefile(target / "codex" / "bin" / "codex", same)  # a hard link, not a copy
    before = {p: p.stat().st_mtime for p in target.rglob("*") if not p.is_symlink()}
    agentcli.stage("all", target, settings, progress=lambda _: None)  # again: nothing changes
    assert {p: p.stat().st_mtime for p in target.rglob("*") if not p.is_symlink()} == before


def test_fetch_uses_npm_once_and_keeps_no_half_install(settings):
    calls = []

    def npm(argv, **_):
        calls.append(argv)
        return subprocess.CompletedProcess(argv, 1, "", "npm ERR! code SELF_SIGNED_CERT_IN_CHAIN")

    with pytest.raises(ImageBuildError, match="SELF_SIGNED_CERT_IN_CHAIN.*npm ping"):
        agentcli.fetch("codex", settings, progress=lambda _: None, runner=npm, which=lambda name: "/usr/bin/npm")
    assert f"@openai/codex@{agentcli.PINS['codex'][1]}" in calls[0]
    assert not agentcli.installed("codex", settings).prefix.exists()
    fake_cache(settings, "codex")
    calls.clear()
    agentcli.fetch("codex", settings, progress=lambda _: None, runner=npm)
    assert calls == []  # cached: npm is not asked again


def labels_ok():
    return {"parallel-autopilot.cli.codex": agentcli.PINS["codex"][1],
            "parallel-autopilot.cli.claude": agentcli.PINS["claude"][1]}


def test_preflight_passes_a_complete_setup(settings):
    assert agentcli.preflight(settings, labels_ok()) == []
    assert agentcli.preflight(settings.replace(agent_kind="claude"), labels_ok(), count=3) == []
    assert agentcli.preflight(settings.replace(agent_kind="script", env_file=None), {}) == []


@pytest.mark.parametrize("change, labels, message", [
    ({}, {}, "has none: set autopilot.agent_cli to codex or all and run `inv build --cli codex`"),
    ({}, {"parallel-autopilot.cli.codex": "0.1.0"}, "has @openai/codex 0.1.0, but"),
    ({"env_file": None}, None, "has no credentials: put OPENAI_API_KEY or CODEX_API_KEY"),
    ({"network": "none"}, None, "cannot reach its model with network none"),
    ({"network": "none", "openai_base_url": "http://10.0.0.5:8000/v1"}, None, "network none"),
])
def test_preflight_refuses_with_the_fix(settings, change, labels, message):
    with pytest.raises(InvalidInput, match=message.replace("(", r"\(").replace("`", ".")):
        agentcli.preflight(settings.replace(**change), labels_ok() if labels is None else labels)


def test_network_none_with_a_loopback_endpoint_is_allowed(settings):
    local = settings.replace(network="none", openai_base_url="http://127.0.0.1:8000/v1")
    assert agentcli.preflight(local, labels_ok()) == []
    assert agentcli.preflight(local, None) == []  # to be built from agent_cli=all


def test_codex_login_in_codex_home_counts_and_several_agents_are_warned(settings, tmp_path):
    home = tmp_path / "codex-home"
    home.mkdir()
    (home / "auth.json").write_text('{"tokens": {}}')
    login = settings.replace(env_file=None, codex_home=str(home))
    assert agentcli.preflight(login, labels_ok(), count=1) == []
    (warning,) = agentcli.preflight(login, labels_ok(), count=3)
    assert "3 codex agents share ONE login" in warning and "one login per agent" in warning


def test_claude_oauth_token_shared_by_agents_is_one_warning(settings, tmp_path):
    keys = tmp_path / "oauth.env"
    keys.write_text("CLAUDE_CODE_OAUTH_TOKEN=tok\n")
    shared = settings.replace(agent_kind="claude", env_file=str(keys))
    (warning,) = agentcli.preflight(shared, labels_ok(), count=2)
    assert "CLAUDE_CODE_OAUTH_TOKEN" in warning and "claude-code#43392" in warning and "one token per agent" in warning
    assert agentcli.preflight(shared, labels_ok(), count=1) == []
