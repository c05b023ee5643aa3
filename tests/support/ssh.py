"""Fixtures for the remote (Fabric) tests: a REAL OpenSSH server and a workstation in a temp dir.

Loaded by ``tests/conftest.py`` (``pytest_plugins``). Nothing here touches the
real ``~/.ssh``: sshd reads its own config, host key and authorized_keys from a
temp dir, and the client side gets its own ssh config file with Host aliases:

- ``ws``: the server, with the right key;
- ``ws-wrongkey``: the server, with a key it does not accept;
- ``ws-down``: a port nothing listens on.

The "workstation" is a clone (in a temp dir) of a snapshot of the tree under
test, run by a Python wrapper that puts that clone first on PYTHONPATH, with
its own target repository and database. The "laptop" is another temp git
repository: the cwd of ``fab``, whose state the tests assert is untouched.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SSHD = "/usr/sbin/sshd"

#: Settings of the workstation's target repository: tiny, offline agents (as in test_fleet_docker).
TARGET_SETTINGS = """\
autopilot:
  network: none
  profile: light
  memory: 256m
  cpus: 0.5
  lease_seconds: 60
  poll_seconds: 0.3
  stop_grace_seconds: 10
  health_interval_seconds: 1
  start_timeout_seconds: 150
  watchdog_seconds: 30
  backoff_seconds: 1
  codex_home: {dir}/no-codex
  ssh_dir: {dir}/no-ssh
  gitconfig: {dir}/no-gitconfig
"""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (right now)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run(*argv, cwd=None, env=None, check=True, timeout=120) -> subprocess.CompletedProcess:
    """Run a command, capture text output; raise with its output when ``check`` and it fails."""
    proc = subprocess.run([str(a) for a in argv], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)
    if check and proc.returncode != 0:
        raise AssertionError(f"{argv} exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


def git(repo: Path, *args: str) -> str:
    return run("git", "-C", repo, *args).stdout.strip()


def init_repo(path: Path, files: dict[str, str] | None = None) -> Path:
    """A git repository at ``path`` with one commit holding ``files`` (README.md by default)."""
    path.mkdir(parents=True)
    git(path, "init", "-q", "-b", "main")
    git(path, "config", "user.name", "Test")
    git(path, "config", "user.email", "test@example.invalid")
    git(path, "config", "commit.gpgsign", "false")
    for name, text in (files or {"README.md": "test repository\n"}).items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(text)
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "first")
    return path


@dataclass
class SSHServer:
    """A running sshd on 127.0.0.1 and the client-side ssh config that reaches it."""

    dir: Path
    port: int
    down_port: int
    ssh_config: Path
    process: subprocess.Popen

    def ssh(self, alias: str, command: str) -> subprocess.CompletedProcess:
        """Run ``command`` over the system ssh client (to check the server itself)."""
        return run("ssh", "-F", self.ssh_config, alias, command, check=False, timeout=30)


def _wait_listening(port: int, proc: subprocess.Popen, log: Path, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"sshd exited {proc.returncode}: {log.read_text() if log.exists() else ''}")
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"sshd did not listen on {port} within {timeout}s")


@pytest.fixture(scope="session")
def sshd(tmp_path_factory) -> SSHServer:
    """A real OpenSSH server on 127.0.0.1:<free port>, keys and config in a temp dir."""
    if not os.access(SSHD, os.X_OK):
        pytest.fail(f"{SSHD} is missing: the test command installs openssh-server (scripts/bootstrap.sh --ssh)")
    base = tmp_path_factory.mktemp("sshd")
    for key in ("host_key", "client_key", "wrong_key"):
        run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", key, "-f", base / key)
    shutil.copy(base / "client_key.pub", base / "authorized_keys")
    port, down_port = free_port(), free_port()
    config = base / "sshd_config"
    config.write_text(f"""\
ListenAddress 127.0.0.1
Port {port}
HostKey {base}/host_key
PidFile {base}/sshd.pid
AuthorizedKeysFile {base}/authorized_keys
StrictModes no
UsePAM no
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
PermitRootLogin prohibit-password
Subsystem sftp internal-sftp
LogLevel ERROR
""")
    client = base / "ssh_config"
    entries = [("ws", port, "client_key"), ("ws-wrongkey", port, "wrong_key"), ("ws-down", down_port, "client_key")]
    client.write_text("".join(f"""\
Host {alias}
  HostName 127.0.0.1
  Port {p}
  User {os.environ.get('USER') or 'root'}
  IdentityFile {base}/{key}
  IdentitiesOnly yes
  UserKnownHostsFile {base}/known_hosts
  StrictHostKeyChecking no
  ConnectTimeout 10
""" for alias, p, key in entries))
    # sshd refuses to start without its privilege separation directory
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
    log = base / "sshd.log"
    proc = subprocess.Popen([SSHD, "-D", "-f", str(config), "-E", str(log)], stdin=subprocess.DEVNULL)
    try:
        _wait_listening(port, proc, log)
        yield SSHServer(base, port, down_port, client, proc)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _snapshot(dest: Path) -> Path:
    """A git repository holding the tree under test (package, packaging, docker files)."""
    dest.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in ("parallel_autopilot", "docker"):
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, dest / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md", ".dockerignore", ".gitignore", "fabfile.py", "fabric.yaml",
                 "tasks.py", "invoke.yaml"):
        if (ROOT / name).is_file():
            shutil.copy(ROOT / name, dest / name)
    if not (dest / "README.md").exists():
        (dest / "README.md").write_text("parallel-autopilot\n")
    git(dest, "init", "-q", "-b", "main")
    git(dest, "add", "-A")
    git(dest, "-c", "user.name=Test", "-c", "user.email=test@example.invalid", "commit", "-q", "-m", "snapshot")
    return dest


@pytest.fixture(scope="session")
def snapshot_origin(tmp_path_factory) -> Path:
    """A bare repository whose main branch is a snapshot of the tree under test."""
    base = tmp_path_factory.mktemp("origin")
    work = _snapshot(base / "work")
    bare = base / "origin.git"
    run("git", "clone", "-q", "--bare", work, bare)
    return bare


@dataclass
class Workstation:
    """A workstation (checkout + target repository) and a laptop, both in a temp dir."""

    dir: Path
    sshd: SSHServer
    checkout: Path
    target: Path
    python: Path
    laptop: Path
    fab_config: Path
    settings: dict = field(default_factory=dict)

    def write_fab_config(self, **autopilot) -> None:
        """The runtime config fab reads (-f): ssh config path and the remote_* keys."""
        values = {"remote_dir": str(self.checkout), "remote_python": str(self.python),
                  "remote_repo": str(self.target), **autopilot}
        lines = [f"ssh_config_path: {self.sshd.ssh_config}", "autopilot:"]
        lines += [f"  {k}: {v if not isinstance(v, list) else v!r}" for k, v in values.items() if v is not None]
        self.fab_config.write_text("\n".join(lines) + "\n")

    def env(self, **extra: str) -> dict:
        """Environment for fab and the wrapper: the runtime config, unbuffered output."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("INVOKE_", "FABRIC_"))}
        env.update({"INVOKE_RUNTIME_CONFIG": str(self.fab_config), "PYTHONUNBUFFERED": "1"}, **extra)
        return env

    def fab(self, *args: str, host: str | None = "ws", timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
        """Run ``fab [-H host] args`` from the laptop (the fabfile of the tree under test)."""
        argv = ["fab", "--search-root", str(ROOT)] + (["-H", host] if host else []) + list(args)
        return run(*argv, cwd=self.laptop, env=self.env(**env), check=False, timeout=timeout)

    def python_wrapper(self, name: str, **env: str) -> Path:
        """Another Python wrapper for the workstation (e.g. with DOCKER_HOST pointing nowhere)."""
        path = self.dir / name
        exports = "".join(f"export {k}='{v}'\n" for k, v in env.items())
        path.write_text(f"#!/bin/sh\n{exports}PYTHONPATH='{self.checkout}' exec '{sys.executable}' \"$@\"\n")
        path.chmod(0o755)
        return path


@pytest.fixture
def workstation(sshd, snapshot_origin, tmp_path) -> Workstation:
    """A fresh workstation checkout, target repository and laptop for one test."""
    checkout = tmp_path / "ws" / "checkout"
    run("git", "clone", "-q", snapshot_origin, checkout)
    target = init_repo(tmp_path / "ws" / "target", {"README.md": "sample\n"})
    (target / "invoke.yaml").write_text(TARGET_SETTINGS.format(dir=tmp_path / "ws"))
    laptop = init_repo(tmp_path / "laptop")
    station = Workstation(tmp_path, sshd, checkout, target, tmp_path / "ws-python", laptop,
                          tmp_path / "fab.yaml")
    station.python_wrapper("ws-python")
    station.write_fab_config()
    return station


def laptop_untouched(laptop: Path) -> None:
    """Assert the laptop repository holds nothing but its first commit (no state dir, no db)."""
    assert not (laptop / ".autopilot").exists(), "a state directory appeared on the laptop"
    assert not (laptop / ".worktrees").exists(), "worktrees appeared on the laptop"
    assert git(laptop, "status", "--porcelain", "--untracked-files=all", "--ignored") == ""
