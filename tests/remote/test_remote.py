"""parallel_autopilot.remote and the fab edge, without SSH: command lines, flags, errors, fan-out.

Command lines are checked by running them in a real ``sh`` against a fake
Python that prints the argv it received, so quoting is tested, not eyeballed.
"""

from __future__ import annotations

import dataclasses
import io
import json
import re
import socket
import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import paramiko
import pytest
from paramiko.ssh_exception import NoValidConnectionsError

from parallel_autopilot import config, remote
from parallel_autopilot.errors import RemoteError
from parallel_autopilot.fleet import AgentStatus
from parallel_autopilot.tasks import remote as remote_tasks
from parallel_autopilot.tasks.edge import Namespace, task

from support.ssh import git, init_repo, run


def settings_for(tmp_path: Path, **values) -> config.Settings:
    return config.load({}, repo=str(tmp_path), **values)


@pytest.fixture
def echo_python(tmp_path) -> Path:
    """A stand-in for the remote Python: prints its argv (after the interpreter) and cwd as JSON."""
    path = tmp_path / "bin" / "python"
    path.parent.mkdir()
    path.write_text(f"#!{sys.executable}\nimport json, os, sys\n"
                    "print(json.dumps({'argv': sys.argv[1:], 'cwd': os.getcwd(), 'flag': os.environ.get('FLAG')}))\n")
    path.chmod(0o755)
    return path


def sh(command: str, home: Path | None = None) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(home or Path.home())}
    return subprocess.run(["sh", "-c", command], capture_output=True, text=True, env=env)


# -- command lines ---------------------------------------------------------------------

@pytest.mark.parametrize("path, quoted", [
    ("/srv/autopilot", "/srv/autopilot"),
    ("/srv/my dir", "'/srv/my dir'"),
    ("~/parallel-autopilot", "~/parallel-autopilot"),
    ("~/my dir/x", "~/'my dir/x'"),
    ("~", "~"),
    ("/x;rm -rf y", "'/x;rm -rf y'"),
])
def test_shell_path_quotes_but_keeps_home_expandable(path, quoted):
    assert remote.shell_path(path) == quoted


def test_program_command_passes_every_word_through_a_real_shell_unchanged(tmp_path, echo_python):
    workdir = tmp_path / "target dir"
    workdir.mkdir()
    s = settings_for(tmp_path, remote_dir=str(tmp_path / "checkout"), remote_python=str(echo_python),
                     remote_repo=str(workdir))
    tricky = ["issues.add", "--title=it's $HOME `id` \"x\" ; rm -rf /", "--body=line1\nline2", "-n=5", ""]
    proc = sh(remote.program_command(s, tricky[0], tricky[1:], env={"FLAG": "a b'c"}))
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["argv"] == ["-m", "parallel_autopilot.program", *tricky]
    assert out["cwd"] == str(workdir)
    assert out["flag"] == "a b'c"


def test_program_command_runs_in_the_checkout_when_no_target_repo_is_set(tmp_path, echo_python):
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    s = settings_for(tmp_path, remote_dir=str(checkout), remote_python=str(echo_python))
    out = json.loads(sh(remote.program_command(s, "agents.status", ["--json"])).stdout)
    assert out["cwd"] == str(checkout) and out["argv"][-2:] == ["agents.status", "--json"]


def test_remote_python_defaults_to_the_checkouts_venv_and_home_expands_there(tmp_path, echo_python):
    home = tmp_path / "home"
    venv_bin = home / "pa" / ".venv" / "bin"
    venv_bin.mkdir(parents=True)
    (venv_bin / "python").symlink_to(echo_python)
    s = settings_for(tmp_path, remote_dir="~/pa")
    assert remote.remote_python(s) == "~/pa/.venv/bin/python"
    proc = sh(remote.program_command(s, "issues.list"), home=home)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["cwd"] == str(home / "pa")


def test_missing_checkout_and_missing_python_have_their_own_exit_codes_and_lines(tmp_path, echo_python):
    s = settings_for(tmp_path, remote_dir=str(tmp_path / "nowhere"), remote_python=str(echo_python))
    proc = sh(remote.program_command(s, "issues.list"))
    assert (proc.returncode, proc.stdout, proc.stderr) == (remote.NO_CHECKOUT, "", "")
    s = settings_for(tmp_path, remote_dir=str(tmp_path), remote_python=str(tmp_path / "no-python"))
    proc = sh(remote.program_command(s, "issues.list"))
    assert (proc.returncode, proc.stdout, proc.stderr) == (remote.NO_PYTHON, "", "")
    with pytest.raises(RemoteError, match=r"ws: no Python at .*no-python: run `fab -H ws remote.setup`"):
        remote.check_exit(remote.HostResult("ws", remote.NO_PYTHON), s)
    with pytest.raises(RemoteError, match=r"ws: no directory /elsewhere: run `fab -H ws remote.setup`"):
        remote.check_exit(remote.HostResult("ws", remote.NO_CHECKOUT), s, "/elsewhere")
    remote.check_exit(remote.HostResult("ws", 7), s)  # the task's own failure: passed through


# -- flags that reproduce a parsed call ------------------------------------------------------

@task(help={"n": "count", "title": "t", "no_wait": "w", "json": "j", "tag": "tags", "loud": "l"},
      iterable=["tag"])
def sample(c, title, n=None, no_wait=False, json=False, tag=None, loud=True):
    """A task with every kind of parameter."""


def test_cli_args_reproduce_given_values_and_leave_defaults_to_the_remote_config():
    args = remote_tasks.cli_args(sample, {"title": "a b", "n": "5", "no_wait": True, "json": False,
                                          "tag": ["x", "y"], "loud": False})
    assert args == ["--title=a b", "-n=5", "--no-wait", "--tag=x", "--tag=y", "--no-loud"]
    assert remote_tasks.cli_args(sample, {"title": "t", "n": None, "no_wait": False, "json": False,
                                          "tag": [], "loud": True}) == ["--title=t"]


def test_cli_args_parse_back_to_the_same_call():
    """The flags go through invoke's own parser (the remote program's) and give the same kwargs."""
    import invoke

    given = {"title": "-x it's", "n": "3", "no_wait": True, "json": True, "tag": ["a"], "loud": False}
    seen = {}

    @task(help={"n": "count", "title": "t", "no_wait": "w", "json": "j", "tag": "tags", "loud": "l"},
          iterable=["tag"])
    def probe(c, title, n=None, no_wait=False, json=False, tag=None, loud=True):
        """Records its arguments."""
        seen.update(title=title, n=n, no_wait=no_wait, json=json, tag=tag, loud=loud)

    ns = Namespace()
    ns.add_task(probe)
    argv = ["x", "probe", *remote_tasks.cli_args(probe, given)]
    invoke.Program(namespace=ns, name="x", binary="x").run(argv, exit=False)
    assert seen == given


def test_mirror_keeps_every_task_name_help_and_flags_and_runs_locally_without_a_host(tmp_path):
    from parallel_autopilot.tasks import ns as local_ns

    mirrored = remote_tasks.fab_namespace()
    assert set(local_ns.task_names) <= set(mirrored.task_names)
    assert {"remote.setup", "remote.sync", "remote.gui", "remote.test"} <= set(mirrored.task_names)
    for name in local_ns.task_names:
        original, copy = local_ns[name], mirrored[name]
        assert copy.help == original.help
        assert [a.names for a in copy.get_arguments()] == [a.names for a in original.get_arguments()]
    repo = init_repo(tmp_path / "repo")
    import invoke

    ctx = invoke.Context(config=invoke.Config(overrides={"autopilot": {"repo": str(repo)}}))
    mirrored["issues.add"](ctx, title="local one")
    assert (repo / ".autopilot" / "autopilot.db").exists()  # no host: the local task, unchanged


# -- failures become one line ----------------------------------------------------------------

def fake_conn(host="ws", port=22, user="me", timeout=15):
    return SimpleNamespace(original_host=host, host="10.0.0.9", port=port, user=user, connect_timeout=timeout)


@pytest.mark.parametrize("err, pattern", [
    (NoValidConnectionsError({("10.0.0.9", 22): ConnectionRefusedError()}),
     r"^ws: cannot connect to 10.0.0.9:22: connection refused - is sshd running"),
    (socket.gaierror(-2, "Name or service not known"), r"^ws: unknown host '10.0.0.9': check the name"),
    (socket.timeout("timed out"), r"^ws: 10.0.0.9:22 did not answer within 15s"),
    (paramiko.AuthenticationException("Authentication failed."),
     r"^ws: SSH authentication as me@10.0.0.9:22 failed \(Authentication failed.\): check the key"),
    (paramiko.BadHostKeyException("10.0.0.9", paramiko.ECDSAKey.generate(), paramiko.ECDSAKey.generate()),
     r"^ws: the host key of 10.0.0.9:22 is not the one in known_hosts"),
    (paramiko.SSHException("Error reading SSH protocol banner"),
     r"^ws: SSH to 10.0.0.9:22 failed \(Error reading SSH protocol banner\)"),
    (ConnectionResetError(104, "Connection reset by peer"), r"^ws: cannot connect to 10.0.0.9:22 \("),
])
def test_every_ssh_failure_is_one_line_naming_the_host_and_the_fix(err, pattern):
    message = str(remote.failure(err, fake_conn()))
    assert "\n" not in message
    assert re.search(pattern, message), message


class FakeConnection:
    """Stands in for a fabric Connection: runs a callable instead of SSH."""

    def __init__(self, host, behaviour):
        self.original_host, self.host, self.port, self.user, self.connect_timeout = host, host, 22, "me", 5
        self.behaviour = behaviour
        self.closed = False

    def run(self, command, **kwargs):
        return self.behaviour(command, kwargs)

    def close(self):
        self.closed = True


def test_run_many_runs_hosts_at_once_keeps_their_order_and_isolates_a_down_host():
    barrier = threading.Barrier(3, timeout=10)  # passes only if the three hosts run at the same time

    def ok(command, kwargs):
        barrier.wait()
        return SimpleNamespace(exited=0, stdout=f"did {command}", stderr="")

    def down(command, kwargs):
        barrier.wait()
        raise NoValidConnectionsError({("b", 22): ConnectionRefusedError()})

    conns = [FakeConnection("a", ok), FakeConnection("b", down), FakeConnection("c", ok)]
    results = remote.run_many(conns, "x")
    assert [r.host for r in results] == ["a", "b", "c"]
    assert [r.ok for r in results] == [True, False, True]
    assert results[0].stdout == "did x"
    assert "b: cannot connect" in str(results[1].error)
    assert remote.first_failure(results) == RemoteError.exit_code
    assert all(c.closed for c in conns)


def test_run_many_streams_whole_lines_prefixed_by_host():
    def chatty(command, kwargs):
        for chunk in ("one\ntw", "o\nthr", "ee"):
            kwargs["out_stream"].write(chunk)
        return SimpleNamespace(exited=3, stdout="", stderr="")

    out = io.StringIO()
    results = remote.run_many([FakeConnection("h1", chatty)], "x", prefix_to=out, err_to=io.StringIO())
    assert out.getvalue() == "h1 | one\nh1 | two\nh1 | three\n"
    assert results[0].code == 3 and remote.first_failure(results) == 3


# -- the laptop's own build --------------------------------------------------------------------

def test_the_wheel_of_this_install_holds_every_package_file_and_installs_as_this_version(tmp_path):
    import zipfile

    import parallel_autopilot
    from parallel_autopilot import distribution

    wheel = distribution.build_wheel(tmp_path / "dist")
    assert wheel.name == f"parallel_autopilot-{parallel_autopilot.__version__}-py3-none-any.whl"
    archive = zipfile.ZipFile(wheel)
    names = set(archive.namelist())
    package = {f"parallel_autopilot/{p.relative_to(distribution.PACKAGE).as_posix()}"
               for p in distribution.package_files()}
    assert package <= names and "parallel_autopilot/containers/files/Dockerfile" in names
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    info = f"parallel_autopilot-{parallel_autopilot.__version__}.dist-info"
    meta = archive.read(f"{info}/METADATA").decode()
    assert f"Version: {parallel_autopilot.__version__}" in meta and "Requires-Dist: invoke" in meta
    record = archive.read(f"{info}/RECORD").decode().splitlines()
    assert len(record) == len(names)
    # pip accepts it: installed with no dependencies into a bare target, the files are there
    target = tmp_path / "target"
    run(sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", target, wheel, cwd=tmp_path)
    assert (target / "parallel_autopilot" / "containers" / "files" / "docker-compose.yml").is_file()


def test_a_busy_local_port_is_refused_before_the_tunnel():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(RemoteError, match=f"local port {port} is in use: give another with --local-port"):
            remote.check_local_port(port)


# -- several hosts, one table -------------------------------------------------------------------

def test_agents_status_on_several_hosts_is_one_table_with_a_line_per_down_host(tmp_path, capsys):
    # what `agents.status --json` prints on a host: the agents' fields and the library's words for them
    agent = AgentStatus(id="agent-001", container="pa_agent-001_1", state="running", health="healthy",
                        activity="working", issue=7, issue_title="Fix the parser", since=0.0, uptime=3725.0,
                        heartbeat_age=1.0, restarts=1)
    idle = dataclasses.replace(agent, id="agent-002", issue=None, activity="idle", uptime=65.0, restarts=0)
    results = [
        remote.HostResult("alpha", 0, json.dumps([agent.to_dict(), idle.to_dict()])),
        remote.HostResult("beta", None, error=RemoteError("beta: cannot connect to 10.0.0.2:22: connection refused")),
        remote.HostResult("gamma", 0, "[]"),
        remote.HostResult("delta", 7, "", "error: Docker is not reachable (no socket): start the daemon\n"),
    ]
    seen = []

    def answers(result):  # a host that gives ``result`` (or its SSH failure) for every command
        def behaviour(command, kwargs):
            seen.append(command)
            if result.error is not None:
                raise result.error
            return SimpleNamespace(exited=result.exited, stdout=result.stdout, stderr=result.stderr)
        return behaviour

    conns = [FakeConnection(result.host, answers(result)) for result in results]
    s = settings_for(tmp_path, remote_dir="/srv/pa")
    code = remote_tasks._agents_status(conns, s, {"json": False, "watch": 0})
    out = capsys.readouterr().out.splitlines()
    assert "agents.status --json" in seen[0]
    assert out[0].split() == ["host", "agent", "container", "health", "doing", "uptime", "restarts"]
    assert out[2].split() == ["alpha", "agent-001", "running", "healthy", "working", "on", "#7", "Fix", "the",
                              "parser", "1h02m", "1"]
    assert out[3].split() == ["alpha", "agent-002", "running", "healthy", "idle", "1m05s", "0"]
    assert out[4].split() == ["gamma", "(no", "agents)"]
    assert out[5:] == ["error: beta: cannot connect to 10.0.0.2:22: connection refused",
                       "error: delta: Docker is not reachable (no socket): start the daemon"]
    assert code == RemoteError.exit_code  # the first failing host decides, in host order

    code = remote_tasks._agents_status(conns, s, {"json": True, "watch": 0})
    records = json.loads(capsys.readouterr().out)
    assert [(r["host"], r.get("id"), "error" in r) for r in records] == [
        ("alpha", "agent-001", False), ("alpha", "agent-002", False), ("beta", None, True), ("delta", None, True)]


# -- what a host printed, shown here -------------------------------------------------------------

HOSTILE = "Fix \x1b]0;pwned\x07\x1b[2J\rOK \x9b31m\u202eevil"
HOSTILE_SHOWN = "Fix \\x1b]0;pwned\\x07\\x1b[2J\\x0dOK \\x9b31m\\u202eevil"


def test_agents_status_on_several_hosts_shows_agent_text_escaped(tmp_path, capsys):
    # a host's JSON carries the agent-written title as it is (JSON escapes it); the table here escapes
    agent = AgentStatus(id="agent-001", container="c", state="running", health="healthy", activity="working",
                        issue=7, issue_title=HOSTILE, since=0.0, uptime=5.0, heartbeat_age=1.0, restarts=0)
    answers = {"alpha": SimpleNamespace(exited=0, stdout=json.dumps([agent.to_dict()]), stderr=""),
               "beta": SimpleNamespace(exited=4, stdout="", stderr="error: refused: \x1b]0;pwned\x07 \u202eevil\n")}
    conns = [FakeConnection(host, lambda command, kwargs, host=host: answers[host]) for host in answers]
    remote_tasks._agents_status(conns, settings_for(tmp_path), {"json": False, "watch": 0})
    out = capsys.readouterr().out
    assert f"working on #7 {HOSTILE_SHOWN}" in out and "error: beta: refused: \\x1b]0;pwned\\x07 \\u202eevil" in out
    assert not re.search("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e]", out)


def test_lines_streamed_from_several_hosts_are_escaped_and_their_crlf_kept():
    def hostile(command, kwargs):  # a host on an older checkout prints agent text raw; a pty ends lines CRLF
        kwargs["out_stream"].write(f"log {HOSTILE}\r\nnext\r\n")
        return SimpleNamespace(exited=0, stdout="", stderr="")

    out = io.StringIO()
    remote.run_many([FakeConnection("h1", hostile)], "x", prefix_to=out, err_to=io.StringIO())
    assert out.getvalue() == f"h1 | log {HOSTILE_SHOWN}\r\nh1 | next\r\n"
