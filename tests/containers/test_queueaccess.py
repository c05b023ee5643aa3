"""containers/queueaccess.py: how containers reach a PostgreSQL queue (secret file, socket mount, network)."""

from __future__ import annotations

import stat

import pytest
from support.composes import BOTH
import yaml

from parallel_autopilot import config
from parallel_autopilot.containers import compose
from parallel_autopilot.containers import provision as containers
from parallel_autopilot.containers import queueaccess
from parallel_autopilot.errors import InvalidInput

PASSWORD = "s3cret-Pw-91x"


@pytest.fixture
def runtime_dir(tmp_path, monkeypatch):
    # the secret's base directory: a directory of the test's own, not the machine's /run/user
    path = tmp_path / "xdg-runtime"
    path.mkdir()
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(path))
    return path


@pytest.fixture
def socket_dir(tmp_path):
    path = tmp_path / "pgsock"
    path.mkdir()
    return path


def test_sqlite_gets_empty_placeholders_and_no_queue_file(git_repo, runtime_dir):
    settings = config.load(repo=git_repo)
    env = containers.compose_env(settings)
    assert env["AUTOPILOT_QUEUE_FILE"] == ""
    generated = settings.state_path / compose.GENERATED
    assert env["AUTOPILOT_QUEUE_SECRET"] == str(generated / "empty-queue")
    assert (generated / "empty-queue").read_text() == ""
    assert env["AUTOPILOT_QUEUE_SOCKET_DIR"] == str(generated / "empty-queue-socket")
    assert env["AUTOPILOT_QUEUE_SOCKET_TARGET"] == queueaccess.SOCKET_PLACEHOLDER_TARGET
    assert not list(runtime_dir.iterdir())  # no secret written for SQLite


def test_the_url_is_a_0400_file_of_the_agents_uid_outside_every_mount(git_repo, runtime_dir, socket_dir):
    url = f"postgresql://agent:{PASSWORD}@/queue?host={socket_dir}"
    settings = config.load(repo=git_repo, queue=url, network="none")
    env = containers.compose_env(settings, uid=12345, gid=12346)
    secret = queueaccess.secret_dir(settings, env["AUTOPILOT_PROJECT"], 12345) / "queue-url"
    assert env["AUTOPILOT_QUEUE_SECRET"] == str(secret)
    assert env["AUTOPILOT_QUEUE_FILE"] == queueaccess.SECRET_TARGET
    info = secret.stat()
    assert stat.S_IMODE(info.st_mode) == 0o400 and (info.st_uid, info.st_gid) == (12345, 12346)
    assert stat.S_IMODE(secret.parent.stat().st_mode) == 0o700 and secret.parent.stat().st_uid == 12345
    assert secret.read_text().strip() == url
    assert not [k for k, v in env.items() if PASSWORD in v], "the password is in the compose environment"
    # in none of the directories the containers mount
    for key in queueaccess.MOUNTED:
        assert not queueaccess._inside(secret, type(secret)(env[key])), key
    # a second start rewrites it (a changed URL), still 0400
    settings2 = settings.replace(queue=url.replace("/queue", "/queue2"))
    containers.compose_env(settings2, uid=12345, gid=12346)
    assert "/queue2" in secret.read_text() and stat.S_IMODE(secret.stat().st_mode) == 0o400
    assert [p.name for p in secret.parent.iterdir()] == ["queue-url"]  # no temporary left


def test_a_unix_socket_directory_is_mounted_at_its_own_path(git_repo, runtime_dir, socket_dir):
    settings = config.load(repo=git_repo, queue=f"postgresql://postgres@/db?host={socket_dir}", network="none")
    env = containers.compose_env(settings)
    assert env["AUTOPILOT_QUEUE_SOCKET_DIR"] == env["AUTOPILOT_QUEUE_SOCKET_TARGET"] == str(socket_dir)
    encoded = str(socket_dir).replace("/", "%2F")
    env = containers.compose_env(settings.replace(queue=f"postgresql://postgres@{encoded}/db"))
    assert env["AUTOPILOT_QUEUE_SOCKET_TARGET"] == str(socket_dir)


def test_a_missing_socket_directory_is_one_line(git_repo, runtime_dir, tmp_path):
    settings = config.load(repo=git_repo, queue=f"postgresql://postgres@/db?host={tmp_path}/nowhere")
    with pytest.raises(InvalidInput, match="socket directory .*nowhere does not exist"):
        containers.compose_env(settings)


@pytest.mark.parametrize("network", ["none", "bridge"])
@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_a_loopback_tcp_url_needs_network_host(git_repo, runtime_dir, network, host):
    # with queue_access: mount every agent connects itself: its network must reach the server
    settings = config.load(repo=git_repo, queue=f"postgresql://u:{PASSWORD}@{host}:5432/db", network=network,
                           queue_access="mount")
    with pytest.raises(InvalidInput) as caught:
        containers.compose_env(settings)
    message = str(caught.value)
    assert "\n" not in message and "autopilot.network: host" in message and PASSWORD not in message
    assert not list(runtime_dir.iterdir())  # refused before anything is written
    env = containers.compose_env(settings.replace(network="host"))  # host: fine
    assert env["AUTOPILOT_QUEUE_FILE"] == queueaccess.SECRET_TARGET
    # stop/ps/logs create nothing: they must still work with the bad setting
    containers.compose_env(settings, strict=False)
    # through the gateway (the default) the agents' network does not matter: the gateway is on the host's
    assert containers.compose_env(settings.replace(queue_access="gateway"))["AUTOPILOT_GATEWAY_NETWORK"] == "host"


def test_a_remote_tcp_server_is_refused_on_network_none_only(git_repo, runtime_dir):
    settings = config.load(repo=git_repo, queue="postgresql://u@db.example.internal/q", network="none",
                           queue_access="mount")
    with pytest.raises(InvalidInput, match="network none cannot reach"):
        containers.compose_env(settings)
    containers.compose_env(settings.replace(network="bridge"))


def test_a_secret_directory_inside_a_mounted_directory_is_refused(git_repo, monkeypatch, socket_dir):
    settings = config.load(repo=git_repo, queue=f"postgresql://u:{PASSWORD}@/db?host={socket_dir}")
    settings.state_path.mkdir(parents=True)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(settings.state_path))
    with pytest.raises(InvalidInput, match="inside AUTOPILOT_STATE"):
        containers.compose_env(settings)


@pytest.mark.parametrize("program", BOTH)
def test_docker_compose_config_shows_the_file_not_the_password(git_repo, runtime_dir, socket_dir, program):
    settings = config.load(repo=git_repo, queue=f"postgresql://u:{PASSWORD}@/db?host={socket_dir}",
                           network="none")
    env = containers.compose_env(settings)
    proc = compose.run(settings, ["config"], env=env, compose=["docker-compose"])
    assert PASSWORD not in proc.stdout
    rendered = yaml.safe_load(proc.stdout)["services"]
    # the gateway (the default) holds the URL's file and the server's socket; no agent does
    gateway = rendered["gateway"]
    assert gateway["environment"]["AUTOPILOT_QUEUE_FILE"] == "/run/secrets/autopilot-queue"
    mounts = {m["target"]: m for m in gateway["volumes"]}
    assert mounts["/run/secrets/autopilot-queue"]["source"] == env["AUTOPILOT_QUEUE_SECRET"]
    assert mounts[str(socket_dir)]["read_only"] is True
    agent = rendered["agent-002"]
    assert "AUTOPILOT_QUEUE_FILE" not in agent["environment"]
    assert not {"/run/secrets/autopilot-queue", str(socket_dir), "/state"} & {m["target"] for m in agent["volumes"]}
    # queue_access: mount gives every agent the file and the socket again (and the state directory)
    settings = settings.replace(queue_access="mount")
    proc = compose.run(settings, ["config"], env=containers.compose_env(settings), compose=["docker-compose"])
    assert PASSWORD not in proc.stdout
    agent = yaml.safe_load(proc.stdout)["services"]["agent-002"]
    assert agent["environment"]["AUTOPILOT_QUEUE_FILE"] == "/run/secrets/autopilot-queue"
    mounts = {m["target"]: m for m in agent["volumes"]}
    assert mounts["/run/secrets/autopilot-queue"]["source"] == env["AUTOPILOT_QUEUE_SECRET"]
    assert mounts[str(socket_dir)]["read_only"] is True and "/state" in mounts
