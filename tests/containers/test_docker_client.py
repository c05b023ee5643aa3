"""containers/daemon.py: lazy, pinged, and one clear line when the daemon is away."""

from __future__ import annotations

import subprocess
import sys

import pytest

from parallel_autopilot.containers import daemon as docker_client
from parallel_autopilot.errors import DockerUnavailable


@pytest.fixture(autouse=True)
def fresh():
    docker_client.reset()
    yield
    docker_client.reset()


def test_unreachable_daemon_is_one_line_naming_the_fix(monkeypatch, tmp_path):
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-such.sock")
    with pytest.raises(DockerUnavailable) as err:
        docker_client.client()
    message = str(err.value)
    assert message.startswith("Docker is not reachable (")
    assert message.endswith("start the daemon (`sudo systemctl start docker` or scripts/bootstrap.sh)")
    assert "\n" not in message
    assert docker_client.available() is False


def test_importing_the_package_contacts_no_daemon():
    code = ("import parallel_autopilot.containers.daemon, parallel_autopilot.containers.image, parallel_autopilot.containers.compose, "
            "parallel_autopilot.platform, sys; print('docker' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"DOCKER_HOST": "unix:///nonexistent", "PATH": "/usr/bin:/bin"})
    assert out.stdout.strip() == "False"


def test_long_reasons_are_shortened():
    err = docker_client.unavailable("x" * 500)
    assert len(str(err)) < 300


@pytest.mark.docker
def test_client_is_shared_and_pinged():
    first = docker_client.client()
    assert docker_client.client() is first
    fresh = docker_client.new_client(timeout=None)
    try:
        assert fresh is not first and fresh.ping()
    finally:
        fresh.close()


@pytest.mark.docker
def test_kill_stop_and_remove_by_label_on_real_containers():
    """The by-name verbs the bench uses, on real containers of the offline base image."""
    import uuid

    from parallel_autopilot.containers import image

    base = image.offline_base(progress=lambda _: None)
    label = f"parallel-autopilot.test-docker-client={uuid.uuid4().hex[:8]}"
    key, value = label.split("=")
    api = docker_client.client().api
    names = [f"pa-test-dc-{value}-{i}" for i in range(3)]
    try:
        for name in names:
            docker_client.client().containers.run(
                base, ["sleep", "1000"], detach=True, name=name, init=True, labels={key: value},
                network_mode="none", mem_limit="64m", nano_cpus=int(0.5e9))
        docker_client.stop(names[:2], timeout=1)  # both at once, one grace period
        docker_client.kill(names[2])
        states = {n: api.inspect_container(n)["State"] for n in names}
        assert all(not s["Running"] for s in states.values())
        assert states[names[2]]["ExitCode"] == 137  # SIGKILL
        assert docker_client.remove_labelled(label) == 3
        assert api.containers(all=True, filters={"label": label}) == []
        assert docker_client.remove(names) == 0  # already gone: no error
    finally:
        docker_client.remove(names)
