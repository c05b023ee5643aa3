"""``remote.*`` and the ``fab`` side of every task: run them on a Linux workstation.

``fab -H workstation agents.start --n 5`` runs the WHOLE task on the
workstation (its checkout, its Docker, its database): :func:`mirror` copies
the task collection so that each task, given a host, sends its own command
line over SSH instead of running its Python on the laptop; with no host it
is the local task, unchanged. With several hosts (``-H a,b``) the
:class:`Executor` (installed by ``fabric.yaml``) hands a task ALL of them at
once, so ``agents.status`` prints one table with a host column.

``remote.setup``, ``remote.sync`` and ``remote.gui`` act on the workstation
itself: install the laptop's own build (its wheel), again after an upgrade, tunnel to its GUI.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json as jsonlib
import shlex
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Sequence

import fabric
import invoke

from .. import config, remote
from ..errors import EXIT_INTERRUPTED, AutopilotError, RemoteError
from .edge import Namespace, echo, emit_json, error_line, settings, table, task

#: Tasks that run with a PTY when the named flag is set (None: always), so the
#: remote side sees a terminal and Ctrl-C on the laptop stops it there.
INTERACTIVE: dict[str, str | None] = {"logs.tail": "follow", "agents.status": "watch", "gui.serve": None}


# -- settings and hosts ------------------------------------------------------------

def configured_hosts(settings: config.Settings) -> list[str]:
    """``autopilot.remote_hosts`` as a list (it may be a list or ``"a,b"``)."""
    value = settings.remote_hosts or []
    if isinstance(value, str):
        value = value.split(",")
    return [str(h).strip() for h in value if str(h).strip()]


def connections(c, settings: config.Settings) -> list:
    """The Connections a remote task acts on: fab's ``-H`` hosts, else ``autopilot.remote_hosts``."""
    if isinstance(c, HostGroup):
        conns = list(c.connections)
    elif isinstance(c, fabric.Connection):
        conns = [c]
    else:
        hosts = configured_hosts(settings)
        if not hosts:
            raise RemoteError("no host given: run it as `fab -H HOST ...` (or set autopilot.remote_hosts)")
        conns = [remote.connection(h, fabric.Config()) for h in hosts]
    for conn in conns:
        if not conn.connect_timeout:
            conn.connect_timeout = float(settings.remote_connect_timeout)
    remote.quiet_paramiko()
    return conns


def is_remote(c) -> bool:
    """True when fab gave this task a host (a Connection) or several (a HostGroup)."""
    return isinstance(c, (fabric.Connection, HostGroup))


class HostGroup(invoke.Context):
    """The context of a task fab runs on several hosts at once: their Connections."""

    def __init__(self, hosts: Sequence[str], config) -> None:
        super().__init__(config=config)
        # a clone each: Connection adds its IdentityFile to the config it is given
        conns = [fabric.Connection(h, config=config.clone()) for h in hosts]
        for conn, host in zip(conns, hosts):
            conn._set(autopilot_label=host)  # "h:2222" stays "h:2222" in the table
        self._set(connections=conns)


# -- the task collection, mirrored -------------------------------------------------

def cli_args(t: invoke.Task, kwargs: dict[str, Any]) -> list[str]:
    """The command-line flags that reproduce ``kwargs`` for task ``t`` on the remote side.

    Values equal to the default are left out, so the workstation's own
    config decides them there.
    """
    args = []
    for arg in t.get_arguments():
        key = arg.attr_name or arg.name
        if key not in kwargs:
            continue
        value, default = kwargs[key], arg.default
        long = arg.names[0]
        flag = f"-{long}" if len(long) == 1 else f"--{long}"
        if arg.kind is bool:
            if bool(value) != bool(default):
                args.append(flag if value else f"--no-{long}")
        elif arg.kind is list:
            args += [f"{flag}={v}" for v in value or []]
        elif arg.incrementable:
            args += [flag] * (int(value or 0) - int(default or 0))
        elif value is not None and value != default:
            args.append(f"{flag}={value}")
    return args


def _pty(name: str, kwargs: dict[str, Any]) -> bool:
    if name not in INTERACTIVE:
        return False
    flag = INTERACTIVE[name]
    return flag is None or bool(kwargs.get(flag))


def mirror(collection: invoke.Collection, prefix: str = "") -> Namespace:
    """A copy of ``collection`` whose every task runs on the host fab gives it.

    ``remote.*`` tasks are kept as they are: they talk to the host themselves.
    """
    ns = Namespace(collection.name) if collection.name else Namespace()
    ns.configure(dict(collection._configuration))
    for name, t in collection.tasks.items():
        full = f"{prefix}{name}"
        kept = prefix.startswith("remote.")
        ns.add_task(t if kept else _mirror_task(full, t), name=name,
                    default=collection.default == name)
    for name, sub in collection.collections.items():
        ns.add_collection(mirror(sub, prefix=f"{prefix}{name}."), name=name)
    return ns


def _mirror_task(name: str, original: invoke.Task) -> invoke.Task:
    @functools.wraps(original.body)
    def body(c, *args, **kwargs):
        if not is_remote(c):
            return original.body(c, *args, **kwargs)
        try:
            for value, arg in zip(args, [a for a in original.get_arguments() if a.positional]):
                kwargs[arg.attr_name or arg.name] = value
            return _run_remote(c, name, cli_args(original, kwargs), kwargs)
        except AutopilotError as err:
            raise invoke.Exit(error_line(err), code=err.exit_code) from None
        except KeyboardInterrupt:
            raise invoke.Exit("interrupted", code=EXIT_INTERRUPTED) from None

    mirrored = copy.copy(original)
    mirrored.body = body
    return mirrored


def _run_remote(c, name: str, argv: list[str], kwargs: dict[str, Any]) -> None:
    s = settings(c, anywhere=True)
    conns = connections(c, s)
    if len(conns) == 1:
        result = remote.run(conns[0], remote.program_command(s, name, argv), pty=_pty(name, kwargs))
        remote.check_exit(result, s)
        if result.exited:
            # the remote task already printed its one-line error
            raise invoke.Exit(code=result.exited)
        return
    merged = MERGED.get(name)
    code = merged(conns, s, kwargs) if merged else _stream_many(conns, s, name, argv, _pty(name, kwargs))
    if code:
        raise invoke.Exit(code=code)


def _host_error(result: remote.HostResult, s: config.Settings) -> str | None:
    """The one line saying why a host failed before its task could speak, or None."""
    if result.error is not None:
        return str(result.error)
    try:
        remote.check_exit(result, s)
    except RemoteError as err:
        return str(err)
    return None


def _stream_many(conns: list, s: config.Settings, name: str, argv: list[str], pty: bool) -> int:
    """Run a task on every host at once, each output line prefixed with its host."""
    results = remote.run_many(conns, remote.program_command(s, name, argv), prefix_to=sys.stdout, pty=pty)
    for result in results:
        line = _host_error(result, s)
        if line:
            echo(f"{result.host} | error: {line}", file=sys.stderr)
    return remote.first_failure(results)


def _host_agents(result: remote.HostResult, s: config.Settings) -> tuple[list[dict], str | None]:
    """The agents one host reported (``agents.status --json``), or the one line saying why not."""
    problem = _host_error(result, s)
    if problem is None and result.exited == 0:
        try:
            return jsonlib.loads(result.stdout), None
        except ValueError:
            return [], f"{result.host}: agents.status did not print JSON (is its checkout current? remote.sync)"
    if problem is None:  # the remote task's own one-line error
        lines = [line for line in (result.stderr or result.stdout).splitlines() if line.strip()]
        problem = f"{result.host}: {(lines[-1] if lines else f'exit {result.exited}').removeprefix('error: ')}"
    return [], problem


def _agents_status(conns: list, s: config.Settings, kwargs: dict[str, Any]) -> int:
    """``agents.status`` on several hosts: ONE table with a host column; a down host is one line."""
    command = remote.program_command(s, "agents.status", ["--json"])
    while True:
        results = remote.run_many(conns, command)
        records, rows, problems = [], [], []
        for result in results:
            agents, problem = _host_agents(result, s)
            # an agent names its own host (autopilot.host, the hostname by default); the
            # connection it was read through is kept beside it
            records += [{**a, "host": a.get("host") or result.host, "connection": result.host} for a in agents]
            # the words are the host's library's (AgentStatus.to_dict), shown as they came; a host on an
            # older checkout gives no "doing": its agents' own report stands in
            rows += [(result.host, a["id"], a.get("state"), a.get("health") or "", a.get("doing") or a.get("activity"),
                      a.get("uptime_text") or "", a.get("restarts", 0)) for a in agents]
            if problem:
                problems.append(problem)
                records.append({"host": result.host, "error": problem})
            elif not agents:
                rows.append((result.host, "(no agents)", "", "", "", "", ""))
        if kwargs.get("json"):
            emit_json(records)
        else:
            if rows:
                echo(table(rows, ["host", "agent", "container", "health", "doing", "uptime", "restarts"]))
            for problem in problems:
                echo(f"error: {problem}")
        if not kwargs.get("watch"):
            return remote.first_failure(results)
        time.sleep(float(kwargs["watch"]))
        echo()


#: Tasks whose output from several hosts is merged into one table.
MERGED: dict[str, Callable[[list, config.Settings, dict], int]] = {"agents.status": _agents_status}


# -- fab's executor: all hosts to one call ------------------------------------------

class GroupCall(invoke.Call):
    """A Call run once with every host (a HostGroup), not once per host."""

    def __init__(self, *args, hosts: Sequence[str] = (), **kwargs):
        super().__init__(*args, **kwargs)
        self.hosts = list(hosts)

    def clone_kwargs(self):
        return {**super().clone_kwargs(), "hosts": self.hosts}

    def make_context(self, config):
        return HostGroup(self.hosts, config)


class Executor(fabric.Executor):
    """fab's Executor, except: several hosts -> ONE call with a group; no -H -> configured hosts.

    Installed for ``fab`` by ``tasks.executor_class`` in ``fabric.yaml``
    next to the fabfile. Without it, ``-H a,b`` still works, host after host.
    """

    def expand_calls(self, calls, apply_hosts=True):
        if apply_hosts:
            _reload_ssh_config(self.config)
        hosts = self._hosts() if apply_hosts and not self.core.remainder else []
        if not hosts:
            return super().expand_calls(calls, apply_hosts=apply_hosts)
        expanded = []
        for call in calls:
            if isinstance(call, invoke.Task):
                call = invoke.Call(task=call)
            expanded += self.expand_calls(call.pre, apply_hosts=False)
            if len(hosts) == 1:
                expanded.append(self.parameterize(call, {"host": hosts[0]}))
            else:
                expanded.append(call.clone(into=GroupCall, with_={"hosts": hosts}))
            expanded += self.expand_calls(call.post, apply_hosts=False)
        return expanded

    def _hosts(self) -> list[str]:
        given = self.core[0].args.hosts.value
        if given:
            return [h for h in given.split(",") if h]
        try:
            return configured_hosts(settings(invoke.Context(config=self.config), anywhere=True))
        except AutopilotError:
            return []


def _reload_ssh_config(cfg) -> None:
    """Honour ``ssh_config_path`` given in a ``-f`` runtime file.

    fab loads the ssh config files before it merges the runtime file, so the
    path set there would be ignored; load the ssh config again from it.
    """
    import paramiko

    path = cfg.get("ssh_config_path")
    if path and cfg._runtime_ssh_path != path:
        cfg._set(base_ssh_config=paramiko.SSHConfig())
        cfg.load_ssh_config()


# -- remote.* ---------------------------------------------------------------------

def _each_host(conns: list, job: Callable[[Any], None]) -> None:
    """Run ``job(conn)`` for every host at once; each failure is one line, the first one exits."""
    failures: list[AutopilotError | None] = [None] * len(conns)

    def one(index: int) -> None:
        try:
            job(conns[index])
        except AutopilotError as err:
            failures[index] = err
            echo(error_line(err), file=sys.stderr, flush=True)

    with ThreadPoolExecutor(max_workers=min(8, len(conns))) as pool:
        list(pool.map(one, range(len(conns))))
    failed = [f for f in failures if f is not None]
    if failed:
        raise invoke.Exit(code=failed[0].exit_code)


@task(help={"origin": "also clone the tool's repository (a git URL or path) into autopilot.remote_dir there, "
                      "for remote.test (default: autopilot.remote_origin; none: install only)",
            "python": "Python that creates the venv on the host (default python3)"})
def setup(c, origin=None, python="python3"):
    """Install on the workstation the build this machine runs (its wheel, copied over), in a venv; check Docker."""
    s = settings(c, anywhere=True)
    conns = connections(c, s)
    with _this_build() as wheel:
        _each_host(conns, lambda conn: remote.setup(conn, s, wheel, base_python=python, progress=_say,
                                                    origin=origin or s.remote_origin))


@task
def sync(c):
    """After an upgrade here: install this machine's build on the workstation again (as remote.setup does)."""
    s = settings(c, anywhere=True)
    conns = connections(c, s)
    with _this_build() as wheel:
        _each_host(conns, lambda conn: remote.sync(conn, s, wheel, progress=_say))


@contextlib.contextmanager
def _this_build():
    """The wheel of the parallel-autopilot running here, in a temporary directory."""
    from .. import distribution

    with tempfile.TemporaryDirectory(prefix="parallel-autopilot-wheel-") as directory:
        wheel = distribution.build_wheel(Path(directory))
        _say(f"this machine runs parallel-autopilot {wheel.name.split('-')[1]}: {wheel.name}")
        yield wheel


@task(help={"port": "the GUI's port on the workstation's 127.0.0.1 (default autopilot.gui_port)",
            "local_port": "the tunnel's port on this machine's 127.0.0.1 (default: the same; keep it the "
                          "same for a browser: the GUI accepts only its own port in the Host header)"})
def gui(c, port=None, local_port=None):
    """Open the workstation's GUI here through an SSH tunnel (loopback on both ends); Ctrl-C stops."""
    s = settings(c, anywhere=True)
    conns = connections(c, s)
    if len(conns) != 1:
        raise RemoteError("remote.gui takes one host at a time: fab -H HOST remote.gui")
    conn, number = conns[0], int(port or s.gui_port)
    command = remote.program_command(s, "gui", _gui_args(number), env={"PYTHONUNBUFFERED": "1"})
    name = remote.host_name(conn)
    result = remote.serve_tunnelled(conn, command, int(local_port or number), number, ready=lambda url: _say(
        f"{name}: GUI at {url} (tunnel to its 127.0.0.1:{number}; Ctrl-C stops)"))
    remote.check_exit(result, s)
    if result.exited not in (0, EXIT_INTERRUPTED, None):
        raise invoke.Exit(code=result.exited)


@task(name="test", help={"args": "arguments for pytest there, as one string (e.g. \"-x -m 'not docker'\")"})
def test_(c, args=""):
    """Run the test suite (scripts/test.sh) in the workstation's checkout."""
    s = settings(c, anywhere=True)
    conns = connections(c, s)
    if len(conns) != 1:
        raise RemoteError("remote.test takes one host at a time: fab -H HOST remote.test")
    result = remote.run(conns[0], remote.script_command(s, "scripts/test.sh", shlex.split(args)), pty=True)
    remote.check_exit(result, s, remote.remote_dir(s))
    if result.exited:
        raise invoke.Exit(code=result.exited)


def _gui_args(port: int) -> list[str]:
    """Flags that bind the workstation's ``gui`` task to 127.0.0.1:port, by its own parameters."""
    from . import ns as local_ns

    try:
        names = {a.attr_name or a.name for a in local_ns["gui"].get_arguments()}
    except (KeyError, ValueError):
        names = {"host", "port"}
    args = []
    if "host" in names:
        args.append("--host=127.0.0.1")
    if "port" in names:
        args.append(f"--port={port}")
    return args


_print_lock = threading.Lock()


def _say(line: str) -> None:
    with _print_lock:
        echo(line, flush=True)


ns = Namespace("remote")
for t in (setup, sync, gui, test_):
    ns.add_task(t)


def fab_namespace() -> Namespace:
    """What ``fabfile.py`` exposes: every task mirrored, plus ``remote.*``."""
    from . import ns as local_ns

    mirrored = mirror(local_ns)
    if "remote" not in mirrored.collections:
        mirrored.add_collection(ns)
    return mirrored

