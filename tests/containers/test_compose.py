"""containers/compose.py: the compose command, its variables, and a real container started through it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from support.shell import open_to_others

from parallel_autopilot import config
from parallel_autopilot.containers import compose
from parallel_autopilot.containers import provision as containers
from parallel_autopilot.errors import ComposeError, GitError, InvalidAgentCount, InvalidInput
from parallel_autopilot.platform import Limits

from support.shell import git

LIMITS = Limits(memory="256m", cpus=0.5, pids=128, max_agents=3, profile="light")


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """An empty HOME: credentials default to ~/.codex, ~/.ssh, ~/.gitconfig."""
    path = tmp_path / "home"
    path.mkdir()
    monkeypatch.setenv("HOME", str(path))
    return path


@pytest.fixture
def settings(git_repo, home):
    return config.load(repo=git_repo, project="pa-test-unit")


class Recorder:
    """A subprocess.run stand-in that records calls and answers with a fixed result."""

    def __init__(self, returncode=0, stdout="", stderr=""):
        self.calls = []
        self.result = (returncode, stdout, stderr)

    def __call__(self, argv, **kwargs):
        self.calls.append((argv, kwargs))
        code, out, err = self.result
        return subprocess.CompletedProcess(argv, code, out, err)


# -- which compose ------------------------------------------------------------



def run_compose(s, args, **kwargs):
    """compose.run with the containers' environment, as fleet calls it."""
    env = containers.compose_env(s, LIMITS, strict=compose.creates(args))
    return compose.run(s, args, limits=LIMITS, env=env, **kwargs)

def everywhere(name):
    """``which`` on a host where every program is installed."""
    return f"/usr/bin/{name}"


def test_detect_prefers_compose_v2():
    assert compose.detect(Recorder(0), which=everywhere) == ["docker", "compose"]


def test_detect_falls_back_to_docker_compose_v1():
    runner = Recorder(1, stderr="docker: unknown command: docker compose")
    assert compose.detect(runner, which=everywhere) == ["docker-compose"]
    assert runner.calls[0][0] == ["docker", "compose", "version"]


def test_detect_without_any_compose_names_the_fix():
    with pytest.raises(ComposeError, match="Compose v2 as a Docker CLI plugin"):
        compose.detect(Recorder(1), which=lambda name: None)


# -- names --------------------------------------------------------------------


def test_project_name_is_stable_and_differs_for_same_named_repositories(tmp_path):
    a = config.Settings(repo=tmp_path / "x" / "app")
    b = config.Settings(repo=tmp_path / "y" / "app")
    assert compose.project_name(a) == compose.project_name(a)
    assert compose.project_name(a) != compose.project_name(b)
    assert compose.project_name(a).startswith("pa-app-")
    weird = config.Settings(repo=tmp_path / "My Repo!")
    assert compose.project_name(weird).startswith("pa-my-repo-")


def test_explicit_project_name_is_used_and_checked(tmp_path):
    assert compose.project_name(config.load(config={}, repo=str(tmp_path), project="Mine_1")) == "mine_1"
    with pytest.raises(InvalidInput, match="project"):
        config.load(config={}, repo=str(tmp_path), project="../x")  # checked once, in config.load


# -- variables ----------------------------------------------------------------


def test_compose_env_passes_limits_and_settings(settings, git_repo):
    env = containers.compose_env(settings, LIMITS)
    assert (env["AGENT_MEMORY"], env["AGENT_CPUS"]) == ("256m", "0.5")
    assert env["AUTOPILOT_PROJECT"] == "pa-test-unit"
    assert env["AUTOPILOT_IMAGE"] == settings.image
    assert env["AUTOPILOT_GIT_DIR"] == str((git_repo / ".git").resolve())
    assert env["AUTOPILOT_WORKTREES"] == str(git_repo / ".worktrees")
    assert env["AUTOPILOT_STATE"] == str(git_repo / ".autopilot")
    assert env["AUTOPILOT_LOGS_DIR"] == str(git_repo / "docs" / "logs")
    assert env["AUTOPILOT_BASE_BRANCH"] == "main"
    assert env["AUTOPILOT_AGENT_KIND"] == "script"
    assert env["AUTOPILOT_AGENT_COMMAND"] == ""
    assert env["AUTOPILOT_STOP_GRACE"] == "30s"
    assert env["AUTOPILOT_GRACE_SECONDS"] == "10"
    assert env["AUTOPILOT_HEALTH_INTERVAL"] == "2s"
    assert env["AUTOPILOT_LEASE_SECONDS"] == "900"
    assert env["AUTOPILOT_POLL_SECONDS"] == "0.5"
    assert env["AUTOPILOT_NETWORK"] == "bridge"
    stat = (git_repo / ".git").stat()
    assert (env["AUTOPILOT_UID"], env["AUTOPILOT_GID"]) == (str(stat.st_uid), str(stat.st_gid))
    assert all(isinstance(v, str) for v in env.values())


def test_compose_env_computes_platform_limits_when_not_given(settings):
    env = containers.compose_env(settings)
    assert env["AGENT_MEMORY"] == "256m"  # agent_kind script -> light profile


def test_fractional_durations_are_exact(git_repo, home):
    s = config.load(repo=git_repo, stop_grace_seconds=5, health_interval_seconds=0.5, poll_seconds=0.25)
    env = containers.compose_env(s, LIMITS)
    assert (env["AUTOPILOT_STOP_GRACE"], env["AUTOPILOT_HEALTH_INTERVAL"]) == ("5s", "500ms")
    assert env["AUTOPILOT_POLL_SECONDS"] == "0.25"
    assert float(env["AUTOPILOT_GRACE_SECONDS"]) < 5


def test_missing_credentials_become_placeholders_in_the_state_dir_never_in_home(settings, home, git_repo):
    env = containers.compose_env(settings, LIMITS)
    state = git_repo / ".autopilot"
    for key, is_dir in (("AUTOPILOT_CODEX_HOME", True), ("AUTOPILOT_SSH_DIR", True),
                        ("AUTOPILOT_GITCONFIG", False), ("AUTOPILOT_ENV_FILE", False)):
        path = Path(env[key])
        assert state in path.parents, key
        assert path.is_dir() if is_dir else (path.is_file() and path.read_text() == ""), key
    assert list(home.iterdir()) == []


def test_existing_credentials_are_mounted_as_they_are(settings, home):
    (home / ".codex").mkdir()
    (home / ".ssh").mkdir()
    (home / ".gitconfig").write_text("[user]\n\tname = Me\n")
    env_file = home / "keys.env"
    env_file.write_text("OPENAI_API_KEY=x\n")
    s = settings.replace(env_file=str(env_file))
    env = containers.compose_env(s, LIMITS)
    assert env["AUTOPILOT_CODEX_HOME"] == str(home / ".codex")
    assert env["AUTOPILOT_SSH_DIR"] == str(home / ".ssh")
    assert env["AUTOPILOT_GITCONFIG"] == str(home / ".gitconfig")
    assert env["AUTOPILOT_ENV_FILE"] == str(env_file)


def test_a_configured_env_file_that_is_missing_is_an_error(settings, home):
    with pytest.raises(InvalidInput, match="env_file .*does not exist"):
        containers.compose_env(settings.replace(env_file=str(home / "nope.env")), LIMITS)


def test_passwd_and_group_name_the_containers_uid(settings):
    env = containers.compose_env(settings, LIMITS, uid=4321, gid=4322)
    passwd = Path(env["AUTOPILOT_PASSWD"]).read_text().splitlines()
    assert "agent:x:4321:4322:parallel-autopilot agent:/home/agent:/bin/sh" in passwd
    assert "agent:x:4322:" in Path(env["AUTOPILOT_GROUP"]).read_text().splitlines()
    assert containers.passwd(0, 0).splitlines()[0] == "root:x:0:0:root:/home/agent:/bin/sh"


def test_detached_head_fails_only_commands_that_create_containers(settings, git_repo):
    git(git_repo, "checkout", "-q", "--detach")
    with pytest.raises(GitError, match="detached HEAD"):
        containers.compose_env(settings, LIMITS)
    assert containers.compose_env(settings, LIMITS, strict=False)["AUTOPILOT_BASE_BRANCH"] == "unknown"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make a repository owned by another uid")
def test_what_it_creates_belongs_to_the_repository_owner(settings, git_repo):
    # root runs git AS the owner (git/runner.py), who must be able to reach the repository:
    # pytest's root-only 0700 base directory is opened for the duration of the test
    subprocess.run(["chown", "-R", "4321:4321", str(git_repo)], check=True)
    open_to_others(git_repo)
    env = containers.compose_env(settings, LIMITS)
    assert (env["AUTOPILOT_UID"], env["AUTOPILOT_GID"]) == ("4321", "4321")
    for key in ("AUTOPILOT_STATE", "AUTOPILOT_LOGS_DIR", "AUTOPILOT_CODEX_HOME", "AUTOPILOT_PASSWD"):
        assert Path(env[key]).stat().st_uid == 4321, key


# -- running ------------------------------------------------------------------


def test_run_builds_one_command_line_with_project_file_and_variables(settings):
    runner = Recorder(0, stdout="ok")
    proc = run_compose(settings, ["ps", "-q"], runner=runner, compose=["docker-compose"])
    argv, kwargs = runner.calls[0]
    override = settings.state_path / "container" / "limits.yml"
    assert argv == ["docker-compose", "--ansi", "never", "-p", "pa-test-unit", "-f",
                    str(compose.compose_file()), "-f", str(override), "ps", "-q"]
    assert kwargs["env"]["AGENT_MEMORY"] == "256m"
    assert kwargs["env"]["PATH"] == os.environ["PATH"]
    assert proc.stdout == "ok"


def test_pids_limit_is_an_integer_in_the_override_for_every_service(settings):
    import yaml

    path = compose.limits_override(settings, LIMITS)
    data = yaml.safe_load(path.read_text())["services"]
    assert data == {name: {"pids_limit": 128} for name in compose.services()}


def test_run_failure_is_one_line_with_composes_error(settings):
    stderr = "Creating pa-agent-001 ...\nERROR: for agent-001  Cannot start service: boom\nfinal noise\n"
    with pytest.raises(ComposeError) as err:
        run_compose(settings, ["up", "-d", "agent-001"], runner=Recorder(1, stderr=stderr),
                    compose=["docker-compose"])
    assert str(err.value) == "compose up -d agent-001 failed (exit 1): ERROR: for agent-001 Cannot start service: boom"


def test_asking_for_an_undefined_agent_is_refused_before_compose_runs(settings):
    runner = Recorder(0)
    with pytest.raises(InvalidAgentCount, match="agent-011 not defined.*at most 10 agents"):
        run_compose(settings, ["up", "-d", "agent-001", "agent-011"], runner=runner,
                    compose=["docker-compose"])
    assert runner.calls == []


def test_missing_compose_binary_is_a_compose_error(settings):
    def missing(argv, **kwargs):
        raise FileNotFoundError(argv[0])

    with pytest.raises(ComposeError, match="not installed"):
        run_compose(settings, ["ps"], runner=missing, compose=["docker-compose"])


def test_last_error_prefers_the_line_that_says_what_failed():
    assert compose.last_error("a\nERROR: no such image\nStopping ... done\n") == "ERROR: no such image"
    assert compose.last_error("just this\n") == "just this"
    assert compose.last_error("") == ""


# -- a real container ---------------------------------------------------------

UID = 4321


@pytest.fixture
def owned_repo(tmp_path, git_repo, home, monkeypatch):
    """A repository, worktree agent-001 and credentials, all owned by a non-root uid."""
    if os.geteuid() != 0:
        pytest.skip("needs root to make a repository owned by another uid")
    from parallel_autopilot.git import clones as worktrees

    # root works on a repository owned by someone else (as CI does for this test)
    monkeypatch.setenv("GIT_CONFIG_COUNT", "1")
    monkeypatch.setenv("GIT_CONFIG_KEY_0", "safe.directory")
    monkeypatch.setenv("GIT_CONFIG_VALUE_0", "*")
    (home / ".codex").mkdir()
    (home / ".codex" / "auth.json").write_text("{}\n")
    (home / ".ssh").mkdir()
    (home / ".ssh" / "id_test").write_text("not a key\n")
    (home / ".gitconfig").write_text("[user]\n\tname = Host User\n")
    project = f"pa-test-{uuid.uuid4().hex[:8]}"
    s = config.load(repo=git_repo, project=project, network="none", stop_grace_seconds=7,
                    health_interval_seconds=1, pids_limit=128)
    worktrees.create(s, 1)
    subprocess.run(["chown", "-R", f"{UID}:{UID}", str(git_repo), str(home)], check=True)
    open_to_others(git_repo)
    yield s
    run_compose(s, ["down", "--timeout", "1"], check=False)


@pytest.mark.docker
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_container_started_through_compose_has_the_asked_limits_user_and_readonly_credentials(
        owned_repo, tmp_path):
    from parallel_autopilot.containers import daemon as docker_client
    from parallel_autopilot.containers import image

    settings = owned_repo
    docker = docker_client.client()
    image.ensure_image(settings, progress=lambda line: None)
    override = tmp_path / "override.yml"
    # the runtime is not under test here: a command that just stays up
    override.write_text("services:\n  agent-001:\n    command: [sleep, '300']\n"
                        "    healthcheck: {test: [CMD, 'true'], interval: 1s}\n")
    compose_v1 = ["docker-compose"] if shutil.which("docker-compose") else None
    run_compose(settings, ["up", "-d", "agent-001"], files=[override], compose=compose_v1)
    name = f"{settings.project}-agent-001"
    container = docker.containers.get(name)
    host = container.attrs["HostConfig"]
    cfg = container.attrs["Config"]

    assert host["Memory"] == 256 * 1024**2
    assert host["NanoCpus"] == 500_000_000
    assert host["PidsLimit"] == 128
    assert host["Init"] is True
    assert host["CapDrop"] == ["ALL"]
    assert "no-new-privileges:true" in host["SecurityOpt"]
    assert host["RestartPolicy"]["Name"] == "on-failure"
    assert host["NetworkMode"] == "none"
    assert cfg["User"] == f"{UID}:{UID}"
    assert cfg["StopTimeout"] == 7
    assert cfg["Labels"]["parallel-autopilot.project"] == settings.project
    assert cfg["Labels"]["parallel-autopilot.agent"] == "agent-001"
    env = dict(item.split("=", 1) for item in cfg["Env"])
    assert env["AUTOPILOT_AGENT_ID"] == "agent-001" and env["AUTOPILOT_BASE_BRANCH"] == "main"
    mounts = {m["Destination"]: m for m in container.attrs["Mounts"]}
    for target in ("/run/credentials/codex", "/run/credentials/ssh", "/run/credentials/gitconfig"):
        assert mounts[target]["RW"] is False, target
    assert mounts["/workspace"]["Source"] == str(settings.worktrees_path / "agent-001")

    def sh(script: str) -> tuple[int, str]:
        code, out = container.exec_run(["sh", "-c", script])
        return code, out.decode().strip()

    assert sh("id -u; id -g; whoami") == (0, f"{UID}\n{UID}\nagent")
    # credentials are read-only, even for their owner
    for path in ("/run/credentials/codex/auth.json", "/run/credentials/ssh/new", "/run/credentials/gitconfig"):
        code, out = sh(f"echo x >> {path}")
        assert code != 0 and "Read-only file system" in out, (path, out)
    # HOME and the heartbeat directory are writable; the workspace is the agent's own clone, at the
    # base; the user's .git is read-only inside (issue 10)
    assert sh("touch $HOME/x /run/autopilot/heartbeat && echo ok") == (0, "ok")
    main = subprocess.run(["git", "-C", str(settings.repo), "rev-parse", "main"], capture_output=True,
                          text=True, check=True).stdout.strip()
    assert sh("git -C /workspace rev-parse HEAD") == (0, main)
    git_dir = settings.repo / ".git"
    code, out = sh(f"touch {git_dir}/refs/heads/rogue")
    assert code != 0 and "Read-only file system" in out, out
    assert sh("echo hi > /workspace/made-inside && echo ok") == (0, "ok")
    made = settings.worktrees_path / "agent-001" / "made-inside"
    assert made.stat().st_uid == UID
    assert sh("python3 -c 'import parallel_autopilot; print(parallel_autopilot.__file__)'") == \
        (0, "/opt/parallel-autopilot/parallel_autopilot/__init__.py")
    # a privilege the agent does not need is gone (cap_drop ALL)
    code, _ = sh("chown 0 /workspace/made-inside")
    assert code != 0

    listed = run_compose(settings, ["ps", "-q"], files=[override], compose=compose_v1)
    assert container.id in listed.stdout
    run_compose(settings, ["stop", "-t", "1", "agent-001"], compose=compose_v1)
    container.reload()
    assert container.status == "exited"
    assert json.dumps(container.attrs["State"]).count("Restarting\": true") == 0


def test_compose_is_only_the_cli_adapter_it_imports_no_worktrees_or_git():
    # the containers' environment and ownership live in containers/provision.py
    code = ("import sys, parallel_autopilot.containers.compose; "
            "print(sorted(m for m in ('parallel_autopilot.git.clones', 'parallel_autopilot.git', "
            "'parallel_autopilot.containers.provision') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.docker
def test_the_suite_runs_on_compose_v2():
    """The test command installs Compose v2 (the one Docker ships); ``auto`` picks it, so every
    container test runs on it. Without v2 here, this fails instead of the suite silently using v1."""
    assert compose.command("auto") == compose.V2
    assert compose.version().startswith("docker compose 2.")


def test_compose_setting_insists_on_a_program(tmp_path):
    assert compose.command("v1") == compose.V1 and compose.command("v2") == compose.V2
