"""The queue gateway: the one door from an agent container to the queue.

Agents never open the queue (no database file, no URL, no password in their
containers). The gateway - one process per compose project, the fleet's
``gateway`` service - holds the store and listens on one Unix socket PER AGENT,
``<state>/gateway/<agent-id>/queue.sock``; each agent container mounts its own
socket's directory and nothing else of the state. Identity is the socket a
request arrives on, never what the request says: through ``agent-003``'s socket
a request acts as ``agent-003`` of this gateway's host, whatever it names.

What an agent can do through it (:data:`VERBS`): claim (for itself, one issue at a time), renew,
complete, fail, empty or release its OWN fenced claim, release its own claims at
boot, report its state (its own row of the agents table). Nothing else: no
other rows, no add, retry or list, no SQL. The fence is the store's: a fenced
verb names the issue, the token AND the holder (this socket's agent on this
host), so a guessed token of another agent's claim is refused, and the refusal
is recorded.

The protocol is one JSON object per line each way (standard library only):
``{"verb": "claim", "args": {...}, "retry": false}`` ->
``{"ok": <result>}`` or ``{"error": {"kind": "LeaseLost", "message": "..."}}``.

Nothing is lost or repeated when the gateway restarts: claims live in the store.
:class:`GatewayClient` (the runtime's side) reconnects with backoff; a claim sent
again returns the claim this agent already holds; a fenced verb sent again is
first looked up (:meth:`~.store.Store.settled`): the write is never repeated blindly.

Run it with ``python3 -m parallel_autopilot.issues.gateway`` (the compose
service does); ``--health`` is its health check.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import socketserver
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Mapping

from ..errors import AutopilotError, InvalidInput, LeaseLost, QueueUnavailable, one_line
from .records import DEFAULT_AGING_SECONDS, DEFAULT_BACKOFF_SECONDS, DEFAULT_MAX_ATTEMPTS, Claim, Issue
from .urls import read_url_file

#: The socket's name in each agent's directory (the container sees ``/run/autopilot-queue/queue.sock``).
SOCKET_NAME = "queue.sock"
#: Where an agent container finds its socket.
AGENT_SOCKET = "/run/autopilot-queue/" + SOCKET_NAME
#: The largest request line accepted (a result with its check output is a few KB).
MAX_LINE = 1 << 20
#: What an agent may ask, and nothing else.
VERBS = ("hello", "claim", "renew", "complete", "fail", "empty", "release", "release_mine", "heartbeat")
#: Errors whose kind crosses the socket as itself; any other is QueueUnavailable at the agent.
_KINDS: dict[str, type[AutopilotError]] = {"LeaseLost": LeaseLost, "InvalidInput": InvalidInput,
                                           "QueueUnavailable": QueueUnavailable}
_AGENT_DIR = re.compile(r"^agent-\d{3}$")
_STATE = re.compile(r"^[a-z][a-z-]{0,31}$")


# -- the server side ------------------------------------------------------------


class Gateway:
    """The store behind one socket per agent; :meth:`handle` is the whole policy."""

    def __init__(self, store: Any, *, log: Callable[[str], None] = print):
        self.store = store
        self.log = log
        self._held: dict[tuple[str, int], Claim] = {}  # (agent, number) -> the claim it was given
        self._servers: list[socketserver.BaseServer] = []

    # -- policy --------------------------------------------------------------

    def handle(self, agent: str, request: Any) -> dict:
        """One request from ``agent`` (the socket's identity): the reply."""
        try:
            if not isinstance(request, dict) or request.get("verb") not in VERBS:
                verb = request.get("verb") if isinstance(request, dict) else None
                raise InvalidInput(f"{verb!r} is not a verb of the gateway (one of {', '.join(VERBS)})")
            args = request.get("args") or {}
            if not isinstance(args, dict):
                raise InvalidInput("args must be an object")
            verb = request["verb"]
            return {"ok": getattr(self, f"_{verb}")(agent, args, bool(request.get("retry")))}
        except AutopilotError as err:
            kind = next((k for k, cls in _KINDS.items() if isinstance(err, cls)), "QueueUnavailable")
            if kind == "InvalidInput":
                self.log(f"refused {agent}: {one_line(str(err))}")
            return {"error": {"kind": kind, "message": one_line(str(err))}}
        except Exception as err:  # the store's own trouble (disk full...): the agent retries later
            self.log(f"error serving {agent}: {err!r}")
            return {"error": {"kind": "QueueUnavailable", "message": one_line(f"gateway: {err!r}")}}

    def _hello(self, agent: str, args: dict, retry: bool) -> dict:
        return {"agent": agent, "host": self.store.host}

    def _claim(self, agent: str, args: dict, retry: bool) -> dict | None:
        # one live claim per agent: a claim sent again (its reply lost, the gateway restarted)
        # gets the claim it holds, not a second one, and a hostile agent cannot hoard the
        # backlog (each claim costs an issue an attempt) while its heartbeat keeps it "alive"
        claim = self.store.held(agent) or self.store.claim(
            agent, _seconds(args, "lease_seconds"), stale_after=_seconds(args, "stale_after", optional=True))
        return None if claim is None else self._remember(agent, claim)

    def _renew(self, agent: str, args: dict, retry: bool) -> dict:
        claim = self.store.renew(self._claim_of(agent, args), _seconds(args, "lease_seconds"))
        return self._remember(agent, claim)

    def _complete(self, agent: str, args: dict, retry: bool) -> dict:
        return self._settle(agent, args, retry, "complete",
                            lambda claim: self.store.complete(claim, _mapping(args, "result")))

    def _empty(self, agent: str, args: dict, retry: bool) -> dict:
        return self._settle(agent, args, retry, "empty",
                            lambda claim: self.store.empty(claim, _mapping(args, "result")))

    def _fail(self, agent: str, args: dict, retry: bool) -> dict:
        return self._settle(agent, args, retry, "fail", lambda claim: self.store.fail(
            claim, _text(args, "error"), feedback=_text(args, "feedback", optional=True),
            check=_mapping(args, "check")))

    def _release(self, agent: str, args: dict, retry: bool) -> dict:
        return self._settle(agent, args, retry, "release", self.store.release)

    def _release_mine(self, agent: str, args: dict, retry: bool) -> list[int]:
        return self.store.release_agent(agent, reason=_text(args, "reason", optional=True) or "agent gone")

    def _heartbeat(self, agent: str, args: dict, retry: bool) -> None:
        state = _text(args, "state")
        if not _STATE.match(state):
            raise InvalidInput(f"state {state[:40]!r} is not a state name")
        self.store.agent_heartbeat(agent, state, issue=_integer(args, "issue"), token=_integer(args, "token"),
                                   incarnation=(_text(args, "incarnation", optional=True) or None),
                                   pid=_integer(args, "pid"),
                                   waiting_until=_seconds(args, "waiting_until", optional=True))

    def _settle(self, agent: str, args: dict, retry: bool, verb: str, call: Callable[[Claim], Issue]) -> dict:
        claim = self._claim_of(agent, args)
        try:
            issue = self.store.settled(claim, verb) if retry else None  # it took effect, its reply was lost
            if issue is None:
                issue = call(claim)
        finally:  # done, or refused: either way no longer a claim of this agent's
            self._held.pop((agent, claim.number), None)
        return _issue_dict(issue)

    def _remember(self, agent: str, claim: Claim) -> dict:
        self._held[(agent, claim.number)] = claim
        return {"issue": _issue_dict(claim.issue), "token": claim.token, "lease_until": claim.lease_until}

    def _claim_of(self, agent: str, args: dict) -> Claim:
        """The claim a fenced verb names, as THIS agent's: the store refuses it unless this agent
        (on this host) holds that issue with that token."""
        number, token = _integer(args, "number", required=True), _integer(args, "token", required=True)
        known = self._held.get((agent, number))
        if known is not None and known.token == token:
            return known
        try:  # the gateway restarted: the issue's attempts (the backoff) come from the store
            issue = self.store.get(number)
        except AutopilotError:
            raise LeaseLost(f"lease lost on issue #{number}: no such claim of {agent}") from None
        return Claim(issue=issue, token=token, worker=agent, lease_until=issue.lease_until or 0.0)

    # -- sockets ---------------------------------------------------------------

    def listen(self, directory: Path, agents: list[str] | None = None) -> list[Path]:
        """Serve every agent directory under ``directory`` (or ``agents``' own), each on its socket."""
        names = agents if agents is not None else sorted(
            p.name for p in directory.iterdir() if p.is_dir() and _AGENT_DIR.match(p.name))
        paths = []
        for name in names:
            path = directory / name / SOCKET_NAME
            path.parent.mkdir(parents=True, exist_ok=True)
            path.unlink(missing_ok=True)  # left by a gateway that was killed
            server = _Server(str(path), _handler(self, name))
            os.chmod(path, 0o600)  # the agents run as our uid; the mount is what keeps them apart
            threading.Thread(target=server.serve_forever, name=f"gateway-{name}", daemon=True).start()
            self._servers.append(server)
            paths.append(path)
        return paths

    def close(self) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()
        self._servers.clear()


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


def _handler(gateway: Gateway, agent: str) -> type[socketserver.StreamRequestHandler]:
    class Handler(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            while True:
                line = self.rfile.readline(MAX_LINE + 1)
                if not line:
                    return
                if len(line) > MAX_LINE:
                    self._send({"error": {"kind": "InvalidInput", "message": "request too long"}})
                    return
                try:
                    request = json.loads(line)
                except ValueError:
                    request = None
                self._send(gateway.handle(agent, request))

        def _send(self, reply: dict) -> None:
            self.wfile.write(json.dumps(reply).encode() + b"\n")
            self.wfile.flush()

    return Handler


def _issue_dict(issue: Issue) -> dict:
    # shallow (Issue.to_dict's asdict copies deeply, and was 40% of a request's time)
    return {name: getattr(issue, name) for name in _ISSUE_FIELDS}


_ISSUE_FIELDS = tuple(Issue.__dataclass_fields__)


def _integer(args: Mapping[str, Any], name: str, required: bool = False) -> int | None:
    value = args.get(name)
    if value is None and not required:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(f"{name} must be an integer")
    return value


def _seconds(args: Mapping[str, Any], name: str, optional: bool = False) -> float | None:
    value = args.get(name)
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1e10:
        raise InvalidInput(f"{name} must be a number of seconds")
    return float(value)


def _text(args: Mapping[str, Any], name: str, optional: bool = False) -> str:
    value = args.get(name)
    if value is None and optional:
        return ""
    if not isinstance(value, str):
        raise InvalidInput(f"{name} must be a string")
    return value


def _mapping(args: Mapping[str, Any], name: str) -> dict | None:
    value = args.get(name)
    if value is not None and not isinstance(value, dict):
        raise InvalidInput(f"{name} must be an object")
    return value


# -- the agent's side -------------------------------------------------------------


class GatewayClient:
    """The queue as an agent sees it: the store's lease verbs, over its own socket.

    The runtime calls it as it would call a store (``claim``, ``renew``, ``complete``...);
    the agent ids it passes are not sent: the socket is the identity. Thread-safe
    (one connection, one request at a time). A dropped connection (the gateway
    restarting) is retried with backoff for ``retry_seconds``, then QueueUnavailable.
    """

    #: The agent reaches no file of the queue: it takes no snapshot (the gateway does).
    shared = True

    def __init__(self, path: str | os.PathLike, *, retry_seconds: float = 30.0, timeout: float = 60.0,
                 on_retry: Callable[[str], None] | None = None, sleep: Callable[[float], None] = time.sleep,
                 monotonic: Callable[[], float] = time.monotonic):
        self.path = str(path)
        self.retry_seconds = retry_seconds
        self.timeout = timeout
        self.on_retry = on_retry
        self._sleep = sleep
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._file: Any = None
        self._outage = False  # said "unreachable", not yet "reachable again"

    # the store's verbs, as the runtime calls them

    def claim(self, worker: str, lease_seconds: float, stale_after: float | None = None) -> Claim | None:
        reply = self._call("claim", {"lease_seconds": lease_seconds, "stale_after": stale_after})
        return None if reply is None else _claim(reply, worker)

    def renew(self, claim: Claim, lease_seconds: float) -> Claim:
        return _claim(self._call("renew", {**_fence(claim), "lease_seconds": lease_seconds}), claim.worker)

    def complete(self, claim: Claim, result: Mapping[str, Any] | None = None) -> Issue:
        return _issue(self._call("complete", {**_fence(claim), "result": dict(result or {})}))

    def empty(self, claim: Claim, result: Mapping[str, Any] | None = None) -> Issue:
        return _issue(self._call("empty", {**_fence(claim), "result": dict(result or {})}))

    def fail(self, claim: Claim, error: str, feedback: str | None = None,
             check: Mapping[str, Any] | None = None) -> Issue:
        return _issue(self._call("fail", {**_fence(claim), "error": error, "feedback": feedback,
                                          "check": dict(check) if check else None}))

    def release(self, claim: Claim) -> Issue:
        return _issue(self._call("release", _fence(claim)))

    def release_agent(self, agent_id: str, reason: str = "agent gone") -> list[int]:
        return list(self._call("release_mine", {"reason": reason}))

    def agent_heartbeat(self, agent_id: str, state: str, issue: int | None = None, token: int | None = None,
                        incarnation: str | None = None, pid: int | None = None,
                        waiting_until: float | None = None) -> None:
        self._call("heartbeat", {"state": state, "issue": issue, "token": token, "incarnation": incarnation,
                                 "pid": pid, "waiting_until": waiting_until})

    def hello(self) -> dict:
        """Who the gateway says this socket is (``{"agent": ..., "host": ...}``)."""
        return self._call("hello", {})

    def close(self) -> None:
        with self._lock:
            self._disconnect()

    # the wire

    def _call(self, verb: str, args: dict) -> Any:
        line = json.dumps({"verb": verb, "args": args}).encode() + b"\n"
        deadline = self._monotonic() + self.retry_seconds
        delay, failed = 0.05, False
        with self._lock:
            while True:
                try:
                    if failed:  # it may have taken effect: a fenced verb is looked up before it is written
                        line = json.dumps({"verb": verb, "args": args, "retry": True}).encode() + b"\n"
                    reply = self._exchange(line)
                    break
                except OSError as err:
                    self._disconnect()
                    failed = True
                    if self._monotonic() + delay > deadline:
                        raise QueueUnavailable(f"the queue gateway at {self.path} is unreachable: {err}; "
                                               "see `docker logs` of the project's gateway container") from None
                    self._say_once(f"queue gateway unreachable ({err}): retrying with backoff")
                    self._sleep(delay)
                    delay = min(delay * 2, 1.0)
            if self._outage:  # one line per outage, not one per retry
                self._outage = False
                if self.on_retry is not None:
                    self.on_retry("queue gateway reachable again")
        if "error" in reply:
            error = reply["error"] or {}
            raise _KINDS.get(error.get("kind"), QueueUnavailable)(error.get("message") or "gateway error")
        return reply.get("ok")

    def _say_once(self, text: str) -> None:
        if not self._outage and self.on_retry is not None:
            self.on_retry(text)
        self._outage = True

    def _exchange(self, line: bytes) -> dict:
        if self._sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(self.timeout)
            try:
                sock.connect(self.path)
            except OSError:
                sock.close()
                raise
            self._sock, self._file = sock, sock.makefile("rb")
        self._sock.sendall(line)
        answer = self._file.readline(MAX_LINE + 1)
        if not answer.endswith(b"\n"):
            raise ConnectionResetError("the gateway closed the connection")
        return json.loads(answer)

    def _disconnect(self) -> None:
        if self._sock is not None:
            try:
                self._file.close()
                self._sock.close()
            except OSError:
                pass
        self._sock = self._file = None


def _fence(claim: Claim) -> dict:
    return {"number": claim.number, "token": claim.token}


def _issue(data: Mapping[str, Any]) -> Issue:
    return Issue(**{k: v for k, v in data.items() if k in Issue.__dataclass_fields__})


def _claim(reply: Mapping[str, Any], worker: str) -> Claim:
    return Claim(issue=_issue(reply["issue"]), token=int(reply["token"]), worker=worker,
                 lease_until=float(reply["lease_until"] or 0.0))


# -- the service ------------------------------------------------------------------


def main(argv: list[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """``python3 -m parallel_autopilot.issues.gateway [--health]``: serve until SIGTERM."""
    argv = sys.argv[1:] if argv is None else argv
    env = os.environ if environ is None else environ
    directory = Path(env.get("AUTOPILOT_GATEWAY_DIR", "/state/gateway"))
    if argv[:1] == ["--health"]:
        return health(directory)
    from . import is_url, open_store, snapshots

    def log(text: str) -> None:
        print(f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} gateway: {text}", flush=True)

    try:
        target = _target(env)
        options: dict[str, Any] = {"on_reconnect": log} if is_url(target) else {"clock": time.time}
        store = open_store(target, host=env.get("AUTOPILOT_HOST") or None,
                           max_attempts=int(env.get("AUTOPILOT_MAX_ATTEMPTS") or DEFAULT_MAX_ATTEMPTS),
                           backoff_seconds=float(env.get("AUTOPILOT_BACKOFF_SECONDS") or DEFAULT_BACKOFF_SECONDS),
                           aging_seconds=float(env.get("AUTOPILOT_AGING_SECONDS") or DEFAULT_AGING_SECONDS),
                           **options)
    except (AutopilotError, ValueError) as err:
        print(f"parallel-autopilot gateway: {one_line(str(err))}", file=sys.stderr, flush=True)
        return getattr(err, "exit_code", 2)
    gateway = Gateway(store, log=log)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    served = gateway.listen(directory)
    log(f"serving {len(served)} agent(s) of host {store.host} from {directory}")
    every = float(env.get("AUTOPILOT_SNAPSHOT_SECONDS") or 600)
    kept = int(env.get("AUTOPILOT_SNAPSHOTS_KEPT") or 10)
    while not stop.wait(min(every, 60.0) if every > 0 else 60.0):
        if every > 0 and not store.shared:  # the snapshots: in the state directory, which no agent mounts
            try:
                path = snapshots.take_if_due(store, every, kept)
                if path is not None:
                    log(f"database snapshot {path.name}")
            except Exception as err:  # a snapshot is a convenience: the next look tries again
                log(f"snapshot failed: {err!r}")
    gateway.close()
    store.close()
    log("stopped")
    return 0


def _target(env: Mapping[str, str]) -> str | Path:
    queue_file = env.get("AUTOPILOT_QUEUE_FILE", "").strip()
    return read_url_file(queue_file) if queue_file else Path(env.get("AUTOPILOT_DB") or "/state/autopilot.db")


def health(directory: Path) -> int:
    """0 when the gateway answers on the first agent's socket (its health check)."""
    sockets = sorted(directory.glob(f"agent-*/{SOCKET_NAME}"))
    if not sockets:
        print(f"no socket under {directory}", file=sys.stderr)
        return 1
    try:
        GatewayClient(sockets[0], retry_seconds=0, timeout=5).hello()
    except AutopilotError as err:
        print(one_line(str(err)), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
