"""Running parallel-autopilot on a remote Linux workstation over SSH.

When a host is given, the laptop runs NO task code against its own Docker or
database: it builds one shell command line that runs the same task in the
workstation's checkout with the workstation's Python::

    cd ~/parallel-autopilot && exec ~/parallel-autopilot/.venv/bin/python \\
        -m parallel_autopilot.program agents.start --n=5

and runs it over a Fabric ``Connection`` (``~/.ssh/config`` aliases work).
This module builds those command lines (:func:`program_command`), runs one on
one host (:func:`run`) or on many in parallel (:func:`run_many`), turns every
way SSH can fail into one :class:`RemoteError` line (:func:`failure`), and
holds the multi-step jobs :func:`setup` and :func:`sync` and the GUI tunnel
(:func:`serve_tunnelled`). It knows nothing of invoke's tasks; Fabric is imported
lazily, only when a connection is made.
"""

from __future__ import annotations

import contextlib
import io
import logging
import shlex
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence, TextIO

from .config import Settings
from .errors import DockerUnavailable, RemoteError
from .printable import printable

Progress = Callable[[str], None]

#: Exit codes of the wrapper line when the checkout or the Python is missing
#: on the host (the shell's own messages are silenced: we name the fix).
NO_CHECKOUT = 201
NO_PYTHON = 202

#: The module the remote Python runs: the same task collection as `inv`.
PROGRAM = "parallel_autopilot.program"


# -- command lines -----------------------------------------------------------

def shell_path(path: str) -> str:
    """``path`` quoted for the remote POSIX shell, keeping a leading ``~/`` expandable."""
    text = str(path)
    if text == "~":
        return "~"
    if text.startswith("~/"):
        rest = text[2:]
        return "~/" + shlex.quote(rest) if rest else "~/"
    return shlex.quote(text)


def remote_dir(settings: Settings) -> str:
    """The parallel-autopilot checkout on the workstation (``autopilot.remote_dir``)."""
    return str(settings.remote_dir)


def remote_python(settings: Settings) -> str:
    """The workstation's Python: ``autopilot.remote_python`` or ``<remote_dir>/.venv/bin/python``."""
    return str(settings.remote_python or f"{remote_dir(settings).rstrip('/')}/.venv/bin/python")


def remote_workdir(settings: Settings) -> str:
    """Where remote tasks run: the target repository (``remote_repo``), else the checkout."""
    return str(settings.remote_repo or remote_dir(settings))


def program_command(settings: Settings, task: str, args: Sequence[str] = (),
                    env: Mapping[str, str] | None = None) -> str:
    """The shell line that runs ``task args`` on the workstation, every word quoted.

    A missing directory exits :data:`NO_CHECKOUT` and a missing Python
    :data:`NO_PYTHON` (see :func:`check_exit`); ``exec`` makes the task the
    process a PTY's Ctrl-C reaches.
    """
    workdir, python = remote_workdir(settings), remote_python(settings)
    assignments = "".join(f"{k}={shlex.quote(str(v))} " for k, v in (env or {}).items())
    words = " ".join(shlex.quote(str(a)) for a in (task, *args))
    return (f"cd {shell_path(workdir)} 2>/dev/null || exit {NO_CHECKOUT}; "
            f"command -v {shell_path(python)} >/dev/null 2>&1 || exit {NO_PYTHON}; "
            f"{assignments}exec {shell_path(python)} -m {PROGRAM} {words}")


def script_command(settings: Settings, script: str, args: Sequence[str] = ()) -> str:
    """The shell line that runs ``bash <remote_dir>/<script> args`` in the workstation's checkout."""
    words = " ".join(shlex.quote(str(a)) for a in args)
    return (f"cd {shell_path(remote_dir(settings))} 2>/dev/null || exit {NO_CHECKOUT}; "
            f"exec bash {shlex.quote(script)} {words}").rstrip()


# -- connections and failures --------------------------------------------------

def connection(host: str, config: Any = None, connect_timeout: float | None = None):
    """A (lazy) Fabric Connection to ``host``; ssh config aliases resolve here."""
    quiet_paramiko()
    from fabric import Config, Connection

    conn = Connection(host, config=config if config is not None else Config())
    if connect_timeout and not conn.connect_timeout:
        conn.connect_timeout = connect_timeout
    return conn


def host_name(conn) -> str:
    """The host as the user wrote it (the alias), for messages and table rows."""
    label = getattr(conn, "__dict__", {}).get("autopilot_label")
    return label or getattr(conn, "original_host", None) or conn.host


def quiet_paramiko() -> None:
    """Keep paramiko's own log lines (tracebacks included) off stderr: we print one line instead."""
    # without a handler, logging's last-resort handler would print them
    logger = logging.getLogger("paramiko")
    if not any(isinstance(h, logging.NullHandler) for h in logger.handlers):
        logger.addHandler(logging.NullHandler())


def failure(err: BaseException, conn) -> RemoteError:
    """The one-line RemoteError for an SSH failure ``err`` while talking to ``conn``."""
    import paramiko
    from paramiko.ssh_exception import NoValidConnectionsError

    # the first kind that matches names the fix; a table, so that each case is one row
    rules = [
        (NoValidConnectionsError, "cannot connect to {where}: connection refused - is sshd running "
                                  "there and the port right (Port in ~/.ssh/config)?"),
        (socket.gaierror, "unknown host {host!r}: check the name or add a Host alias to ~/.ssh/config"),
        ((socket.timeout, TimeoutError), "{where} did not answer within {timeout}s: "
                                         "is the machine up and reachable?"),
        (paramiko.BadHostKeyException, "the host key of {where} is not the one in known_hosts: "
                                       "if the machine was reinstalled, remove its old line (ssh-keygen -R)"),
        (paramiko.AuthenticationException, "SSH authentication as {user} failed ({text}): check the key "
                                           "(IdentityFile in ~/.ssh/config or fab -i KEY) and authorized_keys there"),
        ((paramiko.SSHException, EOFError), "SSH to {where} failed ({text}): is it an SSH server, "
                                            "and does `ssh {name} true` work?"),
        (OSError, "cannot connect to {where} ({text}): check the network and ~/.ssh/config"),
    ]
    name, where = host_name(conn), f"{conn.host}:{conn.port}"
    facts = {"name": name, "where": where, "host": conn.host, "user": f"{conn.user}@{where}",
             "timeout": conn.connect_timeout or "?", "text": _text(err)}
    for kinds, problem in rules:
        if isinstance(err, kinds):
            return RemoteError(f"{name}: " + problem.format(**facts))
    return RemoteError(f"{name}: {err.__class__.__name__}: {_text(err)}")


def _text(err: BaseException) -> str:
    text = " ".join(str(err).split()) or err.__class__.__name__
    return text if len(text) <= 160 else text[:157] + "..."


#: Everything a Connection raises when the SSH session itself fails.
def _ssh_errors() -> tuple[type[BaseException], ...]:
    import paramiko

    return (paramiko.SSHException, OSError, EOFError)


@dataclass(frozen=True)
class HostResult:
    """What one host did: its exit code and captured output, or why SSH failed."""

    host: str
    exited: int | None
    stdout: str = ""
    stderr: str = ""
    error: RemoteError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.exited == 0

    @property
    def code(self) -> int:
        """The exit code this result stands for (RemoteError's for an SSH failure)."""
        if self.error is not None:
            return self.error.exit_code
        return self.exited or 0


def run(conn, command: str, *, pty: bool = False, hide: bool = False, stdin: bool | None = None,
        out_stream: TextIO | None = None, err_stream: TextIO | None = None) -> HostResult:
    """Run ``command`` on ``conn``; output streams through unless ``hide``.

    A non-zero exit is a result, not an exception; an SSH failure raises
    RemoteError (one line). Local stdin is forwarded when ``stdin`` (default:
    with a ``pty``).
    """
    forward = pty if stdin is None else stdin
    try:
        result = conn.run(command, pty=pty, hide=hide, warn=True, in_stream=None if forward else False,
                          out_stream=out_stream, err_stream=err_stream)
    except _ssh_errors() as err:
        raise failure(err, conn) from None
    return HostResult(host_name(conn), result.exited, result.stdout, result.stderr)


def check_exit(result: HostResult, settings: Settings, directory: str | None = None) -> None:
    """Raise the RemoteError naming the fix when the checkout (``directory``) or Python is missing."""
    if result.exited == NO_CHECKOUT:
        raise RemoteError(f"{result.host}: no directory {directory or remote_workdir(settings)}: run "
                          f"`fab -H {result.host} remote.setup` (or set autopilot.remote_dir/remote_repo)")
    if result.exited == NO_PYTHON:
        raise RemoteError(f"{result.host}: no Python at {remote_python(settings)}: run "
                          f"`fab -H {result.host} remote.setup` (or set autopilot.remote_python)")


class PrefixWriter(io.TextIOBase):
    """A text stream that writes whole lines to ``target``, each prefixed ``host | ``.

    Several hosts stream at once; a shared lock keeps their lines whole. The lines are
    :func:`~parallel_autopilot.printable.printable`: the host's program shows agent-written
    text escaped, and a host on an older checkout must not reach this terminal either.
    """

    _lock = threading.Lock()

    def __init__(self, target: TextIO, prefix: str) -> None:
        self.target, self.prefix, self._partial = target, prefix, ""

    def write(self, text: str) -> int:
        *lines, self._partial = (self._partial + text).split("\n")
        if lines:
            with self._lock:
                self.target.write(printable("".join(f"{self.prefix}{line}\n" for line in lines)))
                self.target.flush()
        return len(text)

    def flush(self) -> None:
        pass

    def close_line(self) -> None:
        """Write what is left of an unfinished last line."""
        if self._partial:
            self.write("\n")

    def isatty(self) -> bool:
        return False


def run_many(conns: Sequence[Any], command: str | Callable[[Any], str], *, hide: bool = True,
             prefix_to: TextIO | None = None, err_to: TextIO | None = None, pty: bool = False) -> list[HostResult]:
    """Run ``command`` on every connection at once; results in the order of ``conns``.

    A host that cannot be reached gives a result with ``error`` set, never an
    exception, so one down host does not hide the others. With ``prefix_to``
    output streams live, each line prefixed with its host. Ctrl-C closes every
    connection (with ``pty`` the hosts then stop their commands: SIGHUP).
    """
    def one(conn) -> HostResult:
        line = command(conn) if callable(command) else command
        name = host_name(conn)
        out = err = None
        if prefix_to is not None:
            out = PrefixWriter(prefix_to, f"{name} | ")
            err = PrefixWriter(err_to or sys.stderr, f"{name} | ")
        try:
            return run(conn, line, pty=pty, stdin=False, hide=hide if prefix_to is None else False,
                       out_stream=out, err_stream=err)
        except RemoteError as error:
            return HostResult(name, None, error=error)
        finally:
            for stream in (out, err):
                if stream is not None:
                    stream.close_line()
            with contextlib.suppress(Exception):
                conn.close()

    if not conns:
        return []
    pool = ThreadPoolExecutor(max_workers=min(16, len(conns)))
    try:
        futures = [pool.submit(one, conn) for conn in conns]
        return [future.result() for future in futures]
    except KeyboardInterrupt:
        for conn in conns:  # ends the sessions, so the workers return
            with contextlib.suppress(Exception):
                conn.close()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def first_failure(results: Sequence[HostResult]) -> int:
    """The exit code of the first failed host (in host order), 0 when all succeeded."""
    return next((r.code or 1 for r in results if not r.ok), 0)


# -- first install and updates ---------------------------------------------------

def _step(conn, command: str, what: str) -> str:
    result = run(conn, command, hide=True)
    if result.exited != 0:
        last = [line.strip() for line in (result.stderr or result.stdout).splitlines() if line.strip()]
        raise RemoteError(f"{result.host}: {what} failed: {last[-1] if last else f'exit {result.exited}'}")
    return result.stdout.strip()


def setup(conn, settings: Settings, wheel: Path, *, progress: Progress = print, base_python: str = "python3",
          origin: str | None = None) -> None:
    """First-time install on the workstation, each step reported; safe to run again.

    Copies ``wheel`` (the laptop's own build: :func:`distribution.build_wheel`) into
    ``<remote_dir>/dist``, creates the venv ``<remote_dir>/.venv`` (unless
    ``remote_python`` is set) and installs the wheel there: the workstation runs the
    laptop's version and needs no access to the tool's repository. With ``origin`` the
    tool's checkout is also cloned (or fetched) into ``remote_dir``, for ``remote.test``.
    Then checks that the program runs with the laptop's version and that Docker answers
    (DockerUnavailable when it does not, after everything else is done).
    """
    name, directory = host_name(conn), remote_dir(settings)
    where = shell_path(directory)
    progress(f"{name}: git {_step(conn, 'git --version', 'git check').removeprefix('git version ')}")
    if origin:
        if run(conn, f"test -d {where}/.git", hide=True).exited == 0:
            _step(conn, f"git -C {where} fetch --quiet --prune origin", f"git fetch in {directory}")
            progress(f"{name}: checkout {directory} fetched from origin")
        else:
            _step(conn, f"git clone --quiet {shlex.quote(origin)} {where}", f"git clone {origin}")
            progress(f"{name}: cloned {origin} into {directory}")
    if settings.remote_python:
        _step(conn, f"command -v {shell_path(remote_python(settings))}", "finding autopilot.remote_python")
        progress(f"{name}: using {remote_python(settings)} (autopilot.remote_python)")
    else:
        venv = f"{directory.rstrip('/')}/.venv"
        _step(conn, f"test -x {shell_path(venv)}/bin/python || {base_python} -m venv {shell_path(venv)}",
              f"creating the venv {venv}")
        progress(f"{name}: venv {venv}")
    _install(conn, settings, wheel, progress)
    docker = run(conn, "docker info --format '{{.ServerVersion}}'", hide=True)
    if docker.exited != 0:
        why = (docker.stderr.strip().splitlines() or [f"exit {docker.exited}"])[-1]
        raise DockerUnavailable(f"{name}: Docker does not answer there ({why}): install/start it "
                                "(scripts/bootstrap.sh there), then run remote.setup again")
    progress(f"{name}: docker {docker.stdout.strip()} ok")


def sync(conn, settings: Settings, wheel: Path, *, progress: Progress = print) -> str:
    """After an upgrade here: install the laptop's ``wheel`` on the workstation again; returns the
    version it ran before. RemoteError when remote.setup never ran there."""
    name = host_name(conn)
    python = shell_path(remote_python(settings))
    before = run(conn, f"{python} -m {PROGRAM} --version", hide=True)
    if before.exited != 0:
        raise RemoteError(f"{name}: no parallel-autopilot at {remote_python(settings)}: "
                          f"run `fab -H {name} remote.setup` first")
    old = before.stdout.strip()
    _install(conn, settings, wheel, progress, was=old)
    return old


def _install(conn, settings: Settings, wheel: Path, progress: Progress, was: str | None = None) -> None:
    """Copy ``wheel`` to ``<remote_dir>/dist`` and install it with the workstation's Python, replacing
    whatever build of the same version was there; RemoteError unless it then runs as this version."""
    from . import __version__

    name, directory = host_name(conn), remote_dir(settings)
    dist = f"{directory.rstrip('/')}/dist"
    _step(conn, f"mkdir -p {shell_path(dist)}", f"creating {dist}")
    home = _step(conn, "printf %s \"$HOME\"", "finding the home directory")
    target = f"{dist}/{wheel.name}"
    local_target = home + target[1:] if target.startswith("~/") else target
    try:
        conn.put(str(wheel), local_target)
    except _ssh_errors() as err:
        raise failure(err, conn) from None
    python, quoted = shell_path(remote_python(settings)), shell_path(target)
    pip = f"{python} -m pip install --quiet --disable-pip-version-check"
    # the dependencies first (only those missing), then this build over any of the same version
    _step(conn, f"{pip} {quoted} && {pip} --force-reinstall --no-deps {quoted}", f"pip install {wheel.name}")
    progress(f"{name}: installed {wheel.name} (the build this machine runs)")
    version = _step(conn, f"cd {shell_path(dist)} && {python} -m {PROGRAM} --version", "running the program")
    if __version__ not in version.split():
        raise RemoteError(f"{name}: after the install it runs {version!r}, not {__version__}: is "
                          f"autopilot.remote_python ({remote_python(settings)}) the venv it installs into?")
    progress(f"{name}: {version} ready" + (f" (was {was})" if was and was != version else ""))


# -- the GUI through a tunnel ----------------------------------------------------

def check_local_port(port: int, host: str = "127.0.0.1") -> None:
    """RemoteError when ``host:port`` on the laptop is taken (the tunnel could not listen)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            raise RemoteError(f"local port {port} is in use: give another with --local-port") from None


def _listening(conn, port: int) -> bool:
    """True when something on the host accepts connections on its 127.0.0.1:port."""
    from paramiko import ChannelException

    try:
        channel = conn.transport.open_channel("direct-tcpip", ("127.0.0.1", port), ("127.0.0.1", 0), timeout=10)
    except (ChannelException, EOFError, OSError):
        return False
    channel.close()
    return True


def serve_tunnelled(conn, command: str, local_port: int, remote_port: int, *,
                    ready: Callable[[str], None] = print, timeout: float = 120.0,
                    sleep: Callable[[float], None] = time.sleep,
                    clock: Callable[[], float] = time.monotonic) -> HostResult:
    """Run a server ``command`` on the host (PTY) and forward 127.0.0.1:local_port to its 127.0.0.1:remote_port.

    Both ends are loopback: the server never listens on a public address. The
    tunnel opens only once the server answers (Fabric's forwarder stops for
    good on the first connection it cannot pass on), then ``ready(url)`` is
    called; Ctrl-C is sent to the server through the PTY, and the result is
    its exit.
    """
    check_local_port(local_port)
    try:
        promise = conn.run(command, pty=True, warn=True, asynchronous=True)
    except _ssh_errors() as err:
        raise failure(err, conn) from None
    runner = promise.runner
    try:
        deadline = clock() + timeout
        while not runner.process_is_finished and not _listening(conn, remote_port):
            if clock() > deadline:
                runner.send_interrupt(KeyboardInterrupt())
                promise.join()
                raise RemoteError(f"{host_name(conn)}: nothing listens on its 127.0.0.1:{remote_port} after "
                                  f"{timeout:g}s: see the output above")
            sleep(0.2)
        if runner.process_is_finished:
            result = promise.join()
        else:
            with conn.forward_local(local_port, remote_port=remote_port, remote_host="127.0.0.1",
                                    local_host="127.0.0.1"):
                ready(f"http://127.0.0.1:{local_port}/")
                result = promise.join()  # Ctrl-C here goes to the server through the PTY
    except KeyboardInterrupt:
        runner.send_interrupt(KeyboardInterrupt())
        result = promise.join()
    return HostResult(host_name(conn), result.exited, result.stdout, result.stderr)


__all__ = [
    "NO_CHECKOUT", "NO_PYTHON", "PROGRAM", "HostResult", "PrefixWriter", "check_exit", "check_local_port",
    "connection", "failure", "first_failure", "host_name", "quiet_paramiko", "program_command", "remote_dir", "script_command", "remote_python", "remote_workdir", "run", "run_many", "setup",
    "serve_tunnelled", "shell_path", "sync",
]
