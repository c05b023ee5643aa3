"""How the queue's URL reaches the gateway (or, with ``queue_access: mount``, every agent container):
the secret file, the socket mount, the network.

The URL of a shared queue (``autopilot.queue``) may carry a password, so it never
travels in the compose file, the compose environment or ``docker inspect``: the
host writes it to a file of its own (mode 0400, owned by the agents' uid) in a
directory NO container mounts otherwise (not the state, logs, worktree, git or
credential directories: the state directory, with its generated files, is
mounted whole), and each container gets that one file read-only at
:data:`SECRET_TARGET`, named by ``AUTOPILOT_QUEUE_FILE``.

A server on the same host is best reached through its Unix socket: the socket
DIRECTORY is mounted at the same path, so agents work with network ``none``. A
TCP URL to the loopback needs network ``host`` (a container's own loopback has
no server); :func:`compose_entries` refuses anything else in one line.

With SQLite (no URL) the mounts point at empty placeholders in the generated
directory, like the credential placeholders, and ``AUTOPILOT_QUEUE_FILE`` is empty.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

from ..errors import InvalidInput
from ..issues.urls import redact

if TYPE_CHECKING:  # for annotations only
    from ..config import Settings

#: where the secret file appears inside every container
SECRET_TARGET = "/run/secrets/autopilot-queue"
#: where the (empty) socket placeholder appears when no socket directory is mounted
SOCKET_PLACEHOLDER_TARGET = "/run/autopilot-queue-socket"
_LOOPBACK = ("localhost", "::1")
#: compose variables naming host paths every container mounts (the secret must be in none)
MOUNTED = ("AUTOPILOT_STATE", "AUTOPILOT_LOGS_DIR", "AUTOPILOT_WORKTREES", "AUTOPILOT_GIT_DIR",
           "AUTOPILOT_CODEX_HOME", "AUTOPILOT_SSH_DIR")


def secret_dir(settings: Settings, project: str, uid: int) -> Path:
    """The host directory of ``project``'s secret: under the user's runtime directory
    (a tmpfs: the URL never reaches a disk) or the temporary directory, never mounted."""
    runtime = os.environ.get("XDG_RUNTIME_DIR", "")
    base = Path(runtime) if runtime and Path(runtime).is_dir() else Path(tempfile.gettempdir())
    return base / f"parallel-autopilot-{uid}" / project


def compose_entries(settings: Settings, env: Mapping[str, str], generated: Path, uid: int, gid: int,
                    *, strict: bool = True) -> dict[str, str]:
    """The compose variables of the queue: ``AUTOPILOT_QUEUE_FILE`` (the in-container path, or
    empty for SQLite), ``AUTOPILOT_QUEUE_SECRET`` (the host file), ``AUTOPILOT_QUEUE_SOCKET_DIR``
    and ``AUTOPILOT_QUEUE_SOCKET_TARGET``. Writes the secret file (or the placeholders).

    ``strict`` (commands that create containers) also refuses a network the URL cannot work with.
    """
    url = settings.queue
    mounted = str(settings.queue_access) == "mount"  # else only the gateway reaches the queue
    if not url:
        placeholder_dir = generated / "empty-queue-socket"
        if not placeholder_dir.is_dir():
            placeholder_dir.mkdir(parents=True, exist_ok=True)
            _chown(placeholder_dir, uid, gid)
        placeholder = generated / "empty-queue"
        if not placeholder.is_file():
            placeholder.write_text("")
            _chown(placeholder, uid, gid)
        return {"AUTOPILOT_QUEUE_FILE": "", "AUTOPILOT_QUEUE_SECRET": str(placeholder),
                "AUTOPILOT_QUEUE_SOCKET_DIR": str(placeholder_dir),
                "AUTOPILOT_QUEUE_SOCKET_TARGET": SOCKET_PLACEHOLDER_TARGET, "AUTOPILOT_GATEWAY_NETWORK": "none"}

    socket_dir, tcp_host = _where(url)
    if strict and mounted:  # the gateway reaches a TCP server on the host's network
        check_network(settings, url, tcp_host)
    if socket_dir is None:
        socket_dir, socket_target = generated / "empty-queue-socket", SOCKET_PLACEHOLDER_TARGET
        socket_dir.mkdir(parents=True, exist_ok=True)
    else:
        socket_target = str(socket_dir)
        if strict and not socket_dir.is_dir():
            raise InvalidInput(f"queue: the socket directory {socket_dir} does not exist: start the "
                               "PostgreSQL server, or fix ?host= in autopilot.queue")
    secret = write_secret(secret_dir(settings, env["AUTOPILOT_PROJECT"], uid), url, uid, gid, env)
    return {"AUTOPILOT_QUEUE_FILE": SECRET_TARGET, "AUTOPILOT_QUEUE_SECRET": str(secret),
            "AUTOPILOT_QUEUE_SOCKET_DIR": str(socket_dir), "AUTOPILOT_QUEUE_SOCKET_TARGET": socket_target,
            "AUTOPILOT_GATEWAY_NETWORK": "none" if tcp_host is None else "host"}


def _where(url: str) -> tuple[Path | None, str | None]:
    # pgstore's own URL parsing (libpq's forms): the runtime connects with exactly this
    from ..issues.postgres import connect_options

    options = connect_options(url)
    if "unix_sock" in options:
        return Path(options["unix_sock"]).parent, None
    return None, str(options["host"])


def check_network(settings: Settings, url: str, tcp_host: str | None = None) -> None:
    """InvalidInput unless the agents' network can reach the queue at ``url``."""
    if tcp_host is None:
        _, tcp_host = _where(url)
    network = str(settings.network)
    if tcp_host is None:  # a Unix socket: mounted, works on every network
        return
    loopback = tcp_host in _LOOPBACK or tcp_host.startswith("127.")
    if loopback and network != "host":
        raise InvalidInput(f"queue {redact(url)} is on this host's loopback, which network {network} "
                           "cannot reach: set autopilot.network: host, or give the server's Unix socket "
                           "(postgresql://user@/db?host=/var/run/postgresql)")
    if network == "none":
        raise InvalidInput(f"queue {redact(url)} is a TCP server, which network none cannot reach: "
                           "set autopilot.network to bridge or host, or use a Unix socket on this host")


def write_secret(directory: Path, url: str, uid: int, gid: int, env: Mapping[str, str] | None = None) -> Path:
    """Write ``url`` to ``directory/queue-url`` (0400, owned by ``uid``; the directory 0700); its path.

    Replaced atomically (a new file renamed over the old), so a container that
    starts meanwhile reads the old URL or the new one, never half of one.
    """
    for key in MOUNTED:
        source = (env or {}).get(key)
        if source and _inside(directory, Path(source)):
            raise InvalidInput(f"the queue secret directory {directory} is inside {key}={source}, which "
                               "every container mounts: set XDG_RUNTIME_DIR (or TMPDIR) elsewhere")
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    for level in (directory.parent, directory):
        level.chmod(0o700)
        _chown(level, uid, gid)
    path = directory / "queue-url"
    temporary = directory / f".queue-url.{os.getpid()}"
    if temporary.exists():
        temporary.unlink()
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
    try:
        os.write(fd, url.encode() + b"\n")
        os.fchmod(fd, 0o400)
    finally:
        os.close(fd)
    _chown(temporary, uid, gid)
    os.replace(temporary, path)
    return path


def forget(settings: Settings, project: str, uid: int) -> None:
    """Remove ``project``'s secret (its last agent is gone; the next start writes it anew)."""
    directory = secret_dir(settings, project, uid)
    (directory / "queue-url").unlink(missing_ok=True)
    try:
        directory.rmdir()
    except OSError:
        pass  # not there, or holds something else: left alone


def _inside(path: Path, top: Path) -> bool:
    try:
        path.resolve().relative_to(top.resolve())
    except ValueError:
        return False
    return True


def _chown(path: Path, uid: int, gid: int) -> None:
    # run as root for a repository owned by someone else: the agents' uid must read it
    if os.geteuid() == 0 and (uid, gid) != (0, 0):
        os.chown(path, uid, gid)


__all__ = ["compose_entries", "check_network", "write_secret", "secret_dir", "forget", "SECRET_TARGET"]
