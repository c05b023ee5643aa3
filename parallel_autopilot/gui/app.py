"""The "Parallel Agents" pane and its JSON API: a thin HTTP edge over ``fleet``.

Every action is a call on one :class:`parallel_autopilot.fleet.Fleet` (start, stop,
restart, list, logs, resources) or the issue store; the GUI adds no logic of
its own beyond presenting it. Blocking calls run in worker threads so the
event loop keeps serving the page and its event streams meanwhile.

    app = create_app(settings)                  # Fleet.open(settings)
    app = create_app(settings, fleet=fleet)     # a Fleet built elsewhere (tests: fake runner and docker)
    serve(settings, port=8787)                  # what `inv gui` runs

Endpoints (the OpenAPI schema is at ``/openapi.json``)::

    GET  /                                   the pane
    GET  /api/snapshot | /api/agents | /api/issues | /api/resources
    POST /api/agents/start {"n": 3}          POST /api/agents/stop {"ids": [...]} | {"all": true}
    POST /api/agents/{id}/restart            GET  /api/agents/{id}/logs?tail=N
    GET  /api/events                         (SSE: "snapshot" events)
    GET  /api/agents/{id}/logs/stream        (SSE: "lines", "failure", "end" events)
    GET  /issues/{n}   GET /report           an issue's page; the morning report (HTML)
    GET  /api/issues/{n}/page                its timeline, attempts, check, tokens, diff (review.issue_page)
    GET  /api/report?since=12h               the report as data
    POST /api/issues {"title": ...}          POST /api/issues/import {"text": ..., "name": "x.yaml"}
    POST /api/issues/{n}/retry | block | priority {"priority"} | send-back {"note"} | reject {"note"}
    POST /api/issues/{n}/merge {"dry_run"}   POST /api/merge-queue/run {"dry_run"} | continuous | stop

Every POST needs the page's CSRF token and a local Host (security.py); an issue id that is not
a number of the queue is a 404; every action is in the audit trail as ``gui``.

Errors are ``{"error": "<one line>"}`` with the domain error's HTTP status.
"""

from __future__ import annotations

import functools
import html
import itertools
import json
import logging
import socket
import threading
import time
import webbrowser
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import quote
from typing import TYPE_CHECKING, Annotated, Any, Callable, Literal

import anyio.to_thread
from fastapi import FastAPI, Query, Request
from fastapi import Path as PathParam
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, model_validator
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import ids, notify, review
from .. import report as reports
from ..config import Settings
from ..errors import AgentNotFound, AutopilotError, Conflict, InvalidAgentId, InvalidInput, IssueNotFound, one_line
from ..issues import STATUSES, IssueStore, issuefile
from . import security
from .events import EventStream, LogPumps, SnapshotHub

if TYPE_CHECKING:  # for annotations only: the Fleet module is imported when an app is made
    from ..fleet import Fleet

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
OPEN_STATUSES = ("claimed", "ready")
MAX_LOG_STREAMS = 64  # log views open at once (each holds a thread): create_app(max_log_streams=)
VOLATILE_AGENT_FIELDS = ("uptime", "uptime_text", "heartbeat_age")  # change every second: not a "change"
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'")


# -- the API's shapes (they make the OpenAPI schema) ----------------------------

class ErrorBody(BaseModel):
    """Every refusal and failure: one line that names the fix."""

    error: str


class Agent(BaseModel):
    """One agent: its container joined with what it last reported, and the library's words for it.

    ``state`` and ``health`` are the container's, as Docker gives them; ``status``, ``doing``
    and ``uptime_text`` are what ``agents.status`` and ``fab -H a,b agents.status`` show
    (``AgentStatus.to_dict``): the page shows them too instead of working them out again.
    """

    id: str
    container: str | None = None
    state: str
    health: str | None = None
    activity: str
    issue: int | None = None
    issue_title: str | None = None
    since: float | None = None
    uptime: float | None = None
    heartbeat_age: float | None = None
    restarts: int = 0
    problem: str | None = None  # killed, out of memory, crash-looping, container gone
    cli: str | None = None  # the model CLI and version in its image, e.g. "codex 0.171.0"
    waiting_until: float | None = None  # waiting for a model rate limit / quota to reset
    tokens: dict[str, float] | None = None  # model usage over the issues it completed
    host: str | None = None  # the workstation it runs on (agents are (host, id) on a shared queue)
    ready: bool | None = None  # running, and healthy by Docker's check or by its own report since it started
    status: str | None = None  # ONE word: ready, starting, unhealthy, or the container's (exited, missing...)
    doing: str | None = None  # what it does, in words ("working on #7 Fix it", "waiting for quota until 14:05")
    uptime_text: str | None = None  # "4m05s", "2h03m"


class IssueSummary(BaseModel):
    """An issue as the queue shows it."""

    number: int
    title: str
    priority: str
    status: str
    owner: str | None = None
    attempts: int
    max_attempts: int
    usage: dict[str, Any] | None = None  # model tokens (and cost) of the attempt that resolved it
    depends_on: list[int] = []  # issue 21: the issues it waits for (each merged first)
    waiting: str | None = None  # issue 21: why it cannot start now ("blocked by #3 (rejected): ...")


class IssueOut(IssueSummary):
    """An issue with everything the store holds."""

    body: str
    script: str | None = None
    due_at: float
    token: int
    lease_until: float | None = None
    heartbeat_at: float | None = None
    claimed_at: float | None = None
    branch: str | None = None
    commit: str | None = None
    duration: float | None = None
    error: str | None = None
    created_at: float
    updated_at: float
    check_status: str | None = None  # passed | failed | timeout | none (verified work, issue 10)
    check_duration: float | None = None
    check_output: str | None = None
    feedback: str | None = None
    completed_at: float | None = None
    merge_commit: str | None = None
    merged_at: float | None = None
    paths: list[str] = []  # issue 21: the globs it touches


class IssuesOut(BaseModel):
    issues: list[IssueOut]
    counts: dict[str, int]


class Operation(BaseModel):
    """The last start/stop/restart the GUI ran, with its progress lines."""

    id: int
    action: str
    detail: str
    state: Literal["running", "done", "failed"]
    lines: list[str]
    error: str | None = None
    started: float
    finished: float | None = None


class Snapshot(BaseModel):
    """Everything the pane shows; pushed on /api/events whenever it changes."""

    time: float
    repo: str
    agents: list[Agent]
    issues: list[IssueSummary]
    done: list[IssueSummary] = []  # the last issues resolved, newest first, with their tokens
    open_total: int
    counts: dict[str, int]
    resources: dict[str, Any]
    max_agents: int
    operation: Operation | None = None
    errors: list[str]
    merge_queue: "MergeQueueOut | None" = None
    merge_loop: "MergeLoopOut | None" = None


class MergeQueueItem(BaseModel):
    """An issue in the merge queue, with its check result (verified work, issue 10)."""

    number: int
    title: str
    priority: str
    check_status: str | None = None
    check_duration: float | None = None
    merge_commit: str | None = None
    error: str | None = None
    completed_at: float | None = None


class MergeQueueOut(BaseModel):
    """Queued (done, waiting), testing, and the latest merged and rejected issues."""

    queued: list[MergeQueueItem]
    testing: list[MergeQueueItem]
    merged: list[MergeQueueItem]
    rejected: list[MergeQueueItem]


class MergeLoopOut(BaseModel):
    """The merge queue run continuously from the GUI: whether it runs, who started it, its last lines."""

    running: bool
    by: str | None = None
    started: float | None = None
    lines: list[str] = []


Snapshot.model_rebuild()


# -- the backlog and review actions (issue 22) ----------------------------------------

class AddRequest(BaseModel):
    """One issue, as `issues.add` takes it; fields a newer backlog knows (depends_on, paths, budget)
    pass through to the store, which checks them as the CLI's import does."""

    model_config = ConfigDict(extra="allow")
    title: str = Field(..., description="one-line title")
    body: str = ""
    priority: str = "medium"
    check: str | None = None
    script: str | None = None
    max_attempts: StrictInt | None = None

    @model_validator(mode="before")
    @classmethod
    def plain_names(cls, data: Any) -> Any:
        # the store names an unknown field in its message: a field's name is a word, so it stays one line
        if isinstance(data, dict):
            odd = [k for k in data if not (isinstance(k, str) and k.isascii() and k.isidentifier() and len(k) <= 40)]
            if odd:
                raise ValueError(f"field names are words (title, body, priority...): {ascii(odd[0])[:60]} is not one")
        return data


class ImportRequest(BaseModel):
    """An issue file's content (YAML or JSON) and its name (its suffix picks the parser)."""

    model_config = ConfigDict(extra="forbid")
    text: str = Field(..., max_length=5_000_000)
    name: str = Field("issues.yaml", max_length=200, pattern=r"^[A-Za-z0-9._ -]*$",
                      description="the file's name: .json is read as JSON, anything else as YAML")


class PriorityRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    priority: Literal["urgent", "high", "medium", "low"]


class NoteRequest(BaseModel):
    """A reviewer's note: for a send-back it is the next prompt's feedback (required there)."""

    model_config = ConfigDict(extra="forbid")
    note: str = Field("", max_length=4000)


class MergeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    dry_run: StrictBool = False


class IssuesAdded(BaseModel):
    issues: list[IssueOut]


class IssuePage(BaseModel):
    """Everything an issue's page shows (review.issue_page): agent-written text, shown escaped."""

    issue: dict[str, Any]
    extra: dict[str, Any]
    timeline: list[dict[str, Any]]
    attempts: list[dict[str, Any]]
    check: dict[str, Any]
    usage: dict[str, Any] | None = None
    diff: dict[str, Any] | None = None


IssueNumber = Annotated[str, PathParam(description="an issue number: 42 (404 unless the queue has it)",
                                       examples=["1"])]


class StartRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    n: StrictInt = Field(..., ge=1, le=999, description="how many agents: 1 to max_agents (see /api/resources)")


class StopRequest(BaseModel):
    """Either ``{"ids": ["agent-001", ...]}`` or ``{"all": true}``."""

    model_config = ConfigDict(extra="forbid")
    ids: list[str] | None = Field(None, min_length=1, max_length=999)
    all: StrictBool = False

    @model_validator(mode="after")
    def one_of(self) -> "StopRequest":
        if (self.ids is None) == (not self.all):
            raise ValueError('give either "ids": [...] or "all": true')
        return self


class StartOut(BaseModel):
    agents: list[Agent]


class StopOut(BaseModel):
    stopped: list[str]


class LogsOut(BaseModel):
    agent: str
    lines: list[str]


AgentId = Annotated[str, PathParam(description="an agent: 1, 001 or agent-001 (404 unless it is one of this fleet's)",
                                   examples=["agent-001"])]

ERROR_STATUSES = (400, 401, 403, 404, 409, 422, 502, 503, 504)
ERRORS = {status: {"model": ErrorBody} for status in ERROR_STATUSES}
#: the event streams' refusals are JSON too (the route's own media type is text/event-stream)
STREAM_ERRORS = {status: {"description": "refused", "content": {"application/json": {"schema": {
    "type": "object", "properties": {"error": {"type": "string"}}, "required": ["error"]}}}}
    for status in ERROR_STATUSES}


# -- the state behind the pane --------------------------------------------------

class Pane:
    """Settings, the fleet, the issue store and the operation in progress.

    ``fleet`` is the :class:`~parallel_autopilot.fleet.Fleet` of ``settings`` (tests give it a
    fake compose runner and Docker client). Blocking methods are called from threads.
    """

    def __init__(self, settings: Settings, fleet: Fleet, *, clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic, resources_every: float = 5.0,
                 queue_limit: int = 500):
        self.settings = settings
        self.fleet = fleet
        self.clock = clock
        self.monotonic = monotonic
        self.resources_every = resources_every
        self.queue_limit = queue_limit
        self.operation: dict | None = None
        self.hub: SnapshotHub | None = None
        self._op_ids = itertools.count(1)
        self._cached: tuple[float, dict, int] | None = None
        self.merge_loop: dict = {"running": False, "by": None, "started": None, "lines": []}
        self._merge_stop: threading.Event | None = None
        self.watch: Any = None  # the app's notify.Watch (None: no notify_* setting)
        self._merge_thread: threading.Thread | None = None

    # reading

    def store(self) -> IssueStore | None:
        """The fleet's issue store (SQLite, or the PostgreSQL queue of ``autopilot.queue``);
        None while no SQLite database exists (the GUI never creates one)."""
        if self.settings.queue or self.settings.db_path.exists():
            return self.fleet.store  # fleet.store_for's: one per queue and process, renewed after a restore
        return None

    def agents(self) -> list[dict]:
        return [a.to_dict() for a in self.fleet.list()]

    def issues(self, statuses: tuple[str, ...] = OPEN_STATUSES) -> list:
        store = self.store()
        if store is None:
            return []
        found = store.list(list(statuses))
        # in-progress work first, then the queue in the order agents will pick it
        return [i for i in found if i.status == "claimed"] + [i for i in found if i.status != "claimed"]

    def waits(self) -> dict[int, str]:
        """Why each waiting issue cannot start now (the store's words), by number."""
        store = self.store()
        return store.waits() if store is not None else {}

    def counts(self) -> dict[str, int]:
        store = self.store()
        return store.counts() if store is not None else dict.fromkeys(STATUSES, 0)

    def merge_queue(self, recent: int = 20) -> dict:
        """The merge queue: queued (done), testing, the latest merged and rejected, with check results."""
        store = self.store()
        if store is None:
            return {"queued": [], "testing": [], "merged": [], "rejected": []}
        from ..merge import queue as mergequeue

        found = mergequeue.status(self.settings, store)
        found["merged"] = found["merged"][-recent:]
        found["rejected"] = found["rejected"][-recent:]
        return found

    def resources(self) -> tuple[dict, int]:
        """``Fleet.resources`` and ``Fleet.max_agents``, refreshed every ``resources_every`` s."""
        now = self.monotonic()
        if self._cached is None or now - self._cached[0] >= self.resources_every:
            self._cached = (now, self.fleet.resources(), self.fleet.max_agents())
        return self._cached[1], self._cached[2]

    def snapshot(self) -> dict:
        """What the pane shows. A failing part (Docker down) becomes an entry in ``errors``."""
        errors: list[str] = []

        def part(read: Callable[[], Any], default: Any) -> Any:
            try:
                return read()
            except AutopilotError as err:
                errors.append(str(err))
            except Exception:  # noqa: BLE001 - one broken part must not blank the page
                log.exception("reading the fleet for the GUI failed")
                errors.append("internal error while reading the fleet: see the `inv gui` terminal")
            return default

        agents = part(self.agents, [])
        issues, counts = part(lambda: (self.issues(), self.counts()), ([], dict.fromkeys(STATUSES, 0)))
        done = part(lambda: sorted(self.issues(("done",)), key=lambda i: -(i.completed_at or i.updated_at))[:10],
                    [])
        waits = part(self.waits, {})
        resources, maximum = part(self.resources, ({}, 1))
        merge_queue = part(self.merge_queue, {"queued": [], "testing": [], "merged": [], "rejected": []})
        if resources.get("docker") is False and not errors:
            errors.append("Docker is not reachable: start Docker (dockerd or Docker Desktop); this page updates by itself")
        operation = self.operation
        return {
            "time": self.clock(),
            "repo": str(self.settings.repo),
            "agents": agents,
            "issues": [_summary(i, waits) for i in issues[: self.queue_limit]],
            "done": [_summary(i, waits) for i in done],
            "open_total": len(issues),
            "counts": counts,
            "resources": resources,
            "max_agents": maximum,
            "operation": {**operation, "lines": list(operation["lines"])} if operation else None,
            "merge_queue": merge_queue,
            "merge_loop": {**self.merge_loop, "lines": list(self.merge_loop["lines"])},
            "errors": errors,
        }

    def resolve(self, raw: str, *, for_logs: bool = False) -> str:
        """The canonical id of a known agent, or AgentNotFound (also for malformed ids).

        Known: listed by the fleet; for logs also any agent that ever reported
        to the store (its log outlives its container).
        """
        try:
            ident = ids.agent_id(raw)
        except InvalidAgentId:
            raise AgentNotFound(f"no agent {raw[:40]!r}: agent ids look like agent-001") from None
        known: set[str] = set()
        try:
            known = {a.id for a in self.fleet.list()}
        except AutopilotError:
            if not for_logs:
                raise
        if for_logs and ident not in known and self.store() is not None:
            store = self.store()  # this host's agents only: another host's log is not here
            known |= {row.id for row in store.agents(host=store.host)}
        if ident not in known:
            raise AgentNotFound(f"no agent {ident} here: see the running agents (GET /api/agents)")
        return ident

    # acting

    async def run(self, action: str, detail: str, call: Callable[[Callable[[str], None]], Any]) -> Any:
        """Run one blocking fleet call in a thread, publishing its progress.

        One at a time: a second start/stop while one runs is a Conflict (409).
        """
        current = self.operation
        if current and current["state"] == "running":
            raise Conflict(f"{current['action']} {current['detail']} is still running: wait for it to finish")
        op = {"id": next(self._op_ids), "action": action, "detail": detail, "state": "running",
              "lines": [], "error": None, "started": self.clock(), "finished": None}
        self.operation = op
        self._poke()

        def progress(line: str) -> None:
            op["lines"] = [*op["lines"][-19:], str(line)]
            self._poke()

        try:
            result = await anyio.to_thread.run_sync(call, progress)
        except AutopilotError as err:
            op.update(state="failed", error=str(err))
            raise
        except Exception:
            op.update(state="failed", error="internal error: see the `inv gui` terminal")
            raise
        else:
            op["state"] = "done"
        finally:
            op["finished"] = self.clock()
            self._poke()
        return result

    def _poke(self) -> None:
        if self.hub is not None:
            self.hub.poke()

    # the merge queue, continuously (fleet.merge_loop in a thread of this process)

    def start_merge_loop(self, actor: str) -> dict:
        """Run ``fleet.merge_loop`` until :meth:`stop_merge_loop`; Conflict when it runs already."""
        if self._merge_thread is not None and self._merge_thread.is_alive():
            raise Conflict("the merge queue runs continuously already: stop it first")
        store = self.store()
        if store is None:
            raise Conflict("no queue yet: add an issue first")
        store.record(None, "merge-loop-started", actor)
        stop = self._merge_stop = threading.Event()
        state = self.merge_loop = {"running": True, "by": actor, "started": self.clock(), "lines": []}

        def progress(line: str) -> None:
            state["lines"] = [*state["lines"][-19:], one_line(str(line), limit=1000)]
            self._poke()

        def loop() -> None:
            try:
                self.fleet.merge_loop(stop=stop, progress=progress, watch=self.watch or False)
            except Exception as err:  # noqa: BLE001 - said on the page; the GUI goes on
                log.exception("the merge loop failed")
                progress(f"merge queue stopped: {one_line(str(err))}")
            finally:
                state["running"] = False
                self._poke()

        self._merge_thread = threading.Thread(target=loop, name="gui-merge-loop", daemon=True)
        self._merge_thread.start()
        self._poke()
        return dict(state)

    def stop_merge_loop(self, actor: str, wait: float = 0.0) -> dict:
        """Ask the continuous merge queue to stop after its current round (the base is never left half-moved)."""
        if self._merge_stop is None or self._merge_thread is None or not self._merge_thread.is_alive():
            raise Conflict("the merge queue is not running continuously")
        store = self.store()
        if store is not None:
            store.record(None, "merge-loop-stopped", actor)
        self._merge_stop.set()
        if wait:
            self._merge_thread.join(wait)
        self._poke()
        return dict(self.merge_loop)

    def required_store(self) -> IssueStore:
        """The store, or NotFound-like Conflict when no queue exists yet (the GUI never creates one)."""
        store = self.store()
        if store is None:
            return self.fleet.store  # an add creates the queue, as `issues.add` does
        return store


def _summary(issue: Any, waits: dict[int, str] | None = None) -> dict:
    return {**{k: getattr(issue, k) for k in IssueSummary.model_fields if k != "waiting"},
            "waiting": (waits or {}).get(issue.number)}


def fingerprint(snapshot: dict) -> str:
    """What counts as a change of the snapshot: all but clocks and uptimes."""
    stable = {k: v for k, v in snapshot.items() if k != "time"}
    stable["agents"] = [{k: v for k, v in a.items() if k not in VOLATILE_AGENT_FIELDS}
                        for a in snapshot.get("agents", [])]
    return json.dumps(stable, sort_keys=True, default=str)


def _validation_line(errors: list[dict]) -> str:
    if not errors:
        return "invalid request"
    first = errors[0]
    # a client's own key names appear in loc: quote odd ones so the line stays one line
    where = ".".join(str(p) if isinstance(p, int) or str(p).isidentifier() else repr(p)
                     for p in first.get("loc", ()) if p != "body") or "body"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return one_line(f"invalid request: {where}: {first.get('msg', 'invalid')}{more}", limit=1000)


# -- the app ----------------------------------------------------------------------

def create_app(settings: Settings, fleet: Fleet | None = None, *, token: str | None = None,
               bind_host: str = "127.0.0.1", guard: security.Guard | None = None,
               interval: float = 0.75, resources_every: float = 5.0, ping_seconds: float = 15.0,
               max_log_streams: int = MAX_LOG_STREAMS, clock: Callable[[], float] = time.time,
               notify_every: float = 5.0) -> FastAPI:
    """The ASGI app for ``settings``.

    ``interval``: seconds between snapshots while a page listens (a change
    shows within about that). ``token``: when set, every request must carry
    it. ``max_log_streams``: log views open at once, beyond which one is
    refused (409). ``notify_every``: seconds between looks of the notifications' watch (only
    when ``notify_command`` or ``notify_webhook`` is set). ``app.state`` exposes ``pane``,
    ``hub``, ``pumps``, ``guard`` and ``watch``.
    """
    if fleet is None:
        from ..fleet import Fleet  # resolves nothing yet: docker and git are reached on first use

        fleet = Fleet.open(settings)
    pane = Pane(settings, fleet, clock=clock, resources_every=resources_every)
    hub = SnapshotHub(pane.snapshot, interval=interval, fingerprint=fingerprint, ping_seconds=ping_seconds)
    pane.hub = hub
    pumps = LogPumps(ping_seconds=ping_seconds)
    guard = guard or security.Guard.for_bind(bind_host, token=token)
    page = (STATIC / "index.html").read_text()

    watch = notify.Watch.from_settings(settings, fleet)  # None unless notify_command/notify_webhook is set

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        stop_watch = watch.start(every=notify_every) if watch is not None else None
        yield
        if stop_watch is not None:
            stop_watch.set()
        if pane._merge_stop is not None:
            pane._merge_stop.set()  # after its current round: the base is never left half-moved
        await hub.aclose()

    app = FastAPI(
        title="parallel-autopilot",
        summary="Run, watch and stop parallel coding agents",
        description=("The JSON API under the Parallel Agents pane. State-changing requests need the "
                     f"page's CSRF token in `{security.CSRF_HEADER}`; errors are `{{\"error\": \"...\"}}`."),
        version="1",
        lifespan=lifespan,
        redoc_url=None,
    )
    app.state.pane, app.state.hub, app.state.pumps, app.state.guard = pane, hub, pumps, guard
    app.state.watch = pane.watch = watch
    app.add_middleware(security.GuardMiddleware, guard=guard)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.exception_handler(AutopilotError)
    async def domain_error(_: Request, err: AutopilotError) -> JSONResponse:
        return JSONResponse({"error": str(err)}, status_code=err.http_status)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, err: RequestValidationError) -> JSONResponse:
        errors = jsonable_encoder(err.errors(), custom_encoder={Exception: str})
        return JSONResponse({"error": _validation_line(errors), "detail": errors}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, err: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": str(err.detail)}, status_code=err.status_code, headers=err.headers)

    @app.exception_handler(Exception)
    async def crash(_: Request, err: Exception) -> JSONResponse:
        log.error("unexpected error in the GUI", exc_info=err)
        return JSONResponse({"error": "internal error: see the `inv gui` terminal"}, status_code=500)

    def blocking(fn: Callable, *args: Any, **kwargs: Any):
        return anyio.to_thread.run_sync(functools.partial(fn, *args, **kwargs))

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def index() -> HTMLResponse:  # a plain def: FastAPI runs it in a thread (the snapshot blocks)
        # the request passed the token check, so the page may carry the token on
        body = (page.replace("{{csrf}}", html.escape(guard.csrf_token))
                    .replace("{{token}}", html.escape(guard.token or ""))
                    .replace("{{snapshot}}", _inline_json(hub.latest if hub.running and hub.latest else pane.snapshot())))
        return HTMLResponse(body, headers={"cache-control": "no-store", "content-security-policy": CSP})

    @app.get("/api/snapshot", response_model=Snapshot, tags=["read"], responses=ERRORS)
    async def get_snapshot() -> dict:
        """Everything the pane shows, computed now."""
        return await blocking(pane.snapshot)

    @app.get("/api/agents", response_model=list[Agent], tags=["read"], responses=ERRORS)
    async def get_agents() -> list[dict]:
        """The agents of this repository (503 when Docker is down)."""
        return await blocking(pane.agents)

    @app.get("/api/issues", response_model=IssuesOut, tags=["read"], responses=ERRORS)
    async def get_issues(status: Literal["open", "ready", "claimed", "done", "failed", "dead", "blocked", "empty",
                                         "merged", "rejected", "all"]
                         = Query("open", description="open = claimed and ready")) -> dict:
        """Issues of the shared queue, with the count in each status."""
        statuses = {"open": OPEN_STATUSES, "all": STATUSES}.get(status, (status,))

        def read() -> dict:
            waits = pane.waits()
            return {"issues": [{**i.to_dict(), "waiting": waits.get(i.number)} for i in pane.issues(tuple(statuses))],
                    "counts": pane.counts()}

        return await blocking(read)

    @app.get("/api/resources", tags=["read"], responses=ERRORS)
    async def get_resources() -> dict:
        """Platform, memory, CPUs, per-agent limits, max agents, whether Docker answers."""
        resources, maximum = await blocking(pane.resources)
        return {**resources, "max_agents": maximum}

    @app.post("/api/agents/start", response_model=StartOut, tags=["act"], responses=ERRORS)
    async def start(request: StartRequest) -> dict:
        """Run agent-001..agent-00n (running ones are kept); returns when they are healthy."""
        # refused before anything starts (no failed operation for a typo), by fleet's one rule
        n = ids.agent_count(request.n, await blocking(fleet.max_agents))
        started = await pane.run("start", f"{n} agent{'s' if n != 1 else ''}",
                                 lambda progress: fleet.start(n, progress=progress))
        return {"agents": [a.to_dict() for a in started]}

    @app.post("/api/agents/stop", response_model=StopOut, tags=["act"], responses=ERRORS)
    async def stop(request: StopRequest) -> dict:
        """Stop and remove the given agents, or all; their claims are released."""
        targets = None
        if request.ids is not None:
            targets = sorted({await blocking(pane.resolve, raw) for raw in request.ids})
        detail = "all agents" if targets is None else ", ".join(targets)
        stopped = await pane.run("stop", detail,
                                 lambda progress: fleet.stop(targets, progress=progress))
        return {"stopped": list(stopped)}

    @app.post("/api/agents/{agent}/restart", response_model=Agent, tags=["act"], responses=ERRORS)
    async def restart(agent: AgentId) -> dict:
        """Restart one agent's container."""
        ident = await blocking(pane.resolve, agent)
        status = await pane.run("restart", ident,
                                lambda progress: fleet.restart(ident, progress=progress))
        return status.to_dict()

    @app.get("/api/agents/{agent}/logs", response_model=LogsOut, tags=["read"], responses=ERRORS)
    async def logs(agent: AgentId, tail: int = Query(100, ge=0, le=10000)) -> dict:
        """The last ``tail`` lines of one agent's log."""
        ident = await blocking(pane.resolve, agent, for_logs=True)
        lines = await blocking(lambda: list(fleet.logs(ident, tail=tail)))
        return {"agent": ident, "lines": lines}

    # -- issue 22: the backlog, an issue's page, review, the merge queue's controls --------

    issue_page_html = (STATIC / "issue.html").read_text()

    def static_page(template: str) -> HTMLResponse:
        body = (template.replace("{{csrf}}", html.escape(guard.csrf_token))
                        .replace("{{token}}", html.escape(guard.token or "")))
        return HTMLResponse(body, headers={"cache-control": "no-store", "content-security-policy": CSP})

    def existing(raw: str) -> int:
        """The number of an issue the queue has: 404 for a malformed or unknown id (as agents are)."""
        try:
            if not (raw.isascii() and raw.isdigit()):  # a URL names an issue by its number alone
                raise InvalidInput(raw)
            number = review.issue_number(raw)
        except InvalidInput:
            raise IssueNotFound(f"no issue {raw[:40]!r}: issue ids are numbers, e.g. /issues/7") from None
        store = pane.store()
        if store is None:
            raise IssueNotFound(f"no issue #{number}: the queue is empty")
        store.get(number)  # IssueNotFound
        return number

    @app.get("/issues/{number}", response_class=HTMLResponse, include_in_schema=False)
    def issue_html(number: str) -> HTMLResponse:
        existing(number)
        return static_page(issue_page_html)

    @app.get("/api/issues/{number}/page", response_model=IssuePage, tags=["read"], responses=ERRORS)
    async def get_issue_page(number: IssueNumber) -> dict:
        """One issue's page: fields, timeline (the audit trail), attempts' logs, check, tokens, and its diff."""
        n = await blocking(existing, number)
        return await blocking(review.issue_page, settings, pane.store(), n)

    @app.post("/api/issues", response_model=IssuesAdded, tags=["backlog"], responses=ERRORS)
    async def add_issue(request: AddRequest) -> dict:
        """Add one issue (what `issues.add` does, with the same checks and messages)."""
        item = {k: v for k, v in request.model_dump().items() if v is not None or k in (request.model_extra or {})}
        added = await blocking(lambda: pane.required_store().add_many([item], actor=review.GUI_ACTOR))
        pane._poke()
        return {"issues": [i.to_dict() for i in added]}

    @app.post("/api/issues/import", response_model=IssuesAdded, tags=["backlog"], responses=ERRORS)
    async def import_issues(request: ImportRequest) -> dict:
        """Import an issue file's content: all of its issues, or (any malformed) none."""
        name = Path(request.name).name or "issues.yaml"
        items = await blocking(issuefile.loads, request.text, name)
        added = await blocking(lambda: pane.required_store().add_many(items, actor=review.GUI_ACTOR))
        pane._poke()
        return {"issues": [i.to_dict() for i in added]}

    def acted(verb: Callable[..., Any]) -> Callable[..., Any]:
        async def run(number: str, *args: Any) -> dict:
            n = await blocking(existing, number)
            issue = await blocking(verb, pane.store(), n, *args)
            pane._poke()
            return issue.to_dict()
        return run

    @app.post("/api/issues/{number}/retry", response_model=IssueOut, tags=["backlog"], responses=ERRORS)
    async def retry_issue(number: IssueNumber) -> dict:
        """Back to ready with fresh attempts (failed, dead, blocked, done, empty or rejected)."""
        return await acted(lambda store, n: store.retry(n, actor=review.GUI_ACTOR))(number)

    @app.post("/api/issues/{number}/block", response_model=IssueOut, tags=["backlog"], responses=ERRORS)
    async def block_issue(number: IssueNumber) -> dict:
        """Out of the queue until retried (ready or failed)."""
        return await acted(lambda store, n: store.block(n, actor=review.GUI_ACTOR))(number)

    @app.post("/api/issues/{number}/priority", response_model=IssueOut, tags=["backlog"], responses=ERRORS)
    async def set_priority(number: IssueNumber, request: PriorityRequest) -> dict:
        """Change the priority (not while an agent holds it)."""
        return await acted(lambda store, n: store.set_priority(n, request.priority, actor=review.GUI_ACTOR))(number)

    @app.post("/api/issues/{number}/send-back", response_model=IssueOut, tags=["review"], responses=ERRORS)
    async def send_back(number: IssueNumber, request: NoteRequest) -> dict:
        """Back to the queue; the note is in its next attempt's prompt (ISSUE_FEEDBACK, AUTOPILOT_PROMPT)."""
        return await acted(lambda store, n: store.send_back(n, request.note, actor=review.GUI_ACTOR))(number)

    @app.post("/api/issues/{number}/reject", response_model=IssueOut, tags=["review"], responses=ERRORS)
    async def reject_issue(number: IssueNumber, request: NoteRequest) -> dict:
        """Rejected for good (`issues.retry` brings it back); the note is its reason."""
        return await acted(lambda store, n: store.dismiss(n, request.note, actor=review.GUI_ACTOR))(number)

    @app.post("/api/issues/{number}/merge", tags=["review"], responses=ERRORS)
    async def merge_issue(number: IssueNumber, request: MergeRequest | None = None) -> dict:
        """Hand a done issue to the merge queue: it runs the check and moves the base only to green."""
        n = await blocking(existing, number)
        dry = bool(request and request.dry_run)
        return await pane.run("merge", f"#{n}" + (" (dry run)" if dry else ""), lambda progress: review.request_merge(
            settings, pane.store(), n, actor=review.GUI_ACTOR, dry_run=dry, progress=progress))

    @app.post("/api/merge-queue/run", tags=["review"], responses=ERRORS)
    async def merge_queue_run(request: MergeRequest | None = None) -> dict:
        """Run the merge queue once over every done issue (``dry_run``: test, move no ref)."""
        dry = bool(request and request.dry_run)
        store = await blocking(pane.required_store)
        return await pane.run("merge queue", "dry run" if dry else "once", lambda progress: review.run_merge_queue(
            settings, store, actor=review.GUI_ACTOR, dry_run=dry, progress=progress))

    @app.post("/api/merge-queue/continuous", response_model=MergeLoopOut, tags=["review"], responses=ERRORS)
    async def merge_queue_continuous() -> dict:
        """Run the merge queue every ``merge_poll_seconds`` until stopped."""
        return await blocking(pane.start_merge_loop, review.GUI_ACTOR)

    @app.post("/api/merge-queue/stop", response_model=MergeLoopOut, tags=["review"], responses=ERRORS)
    async def merge_queue_stop() -> dict:
        """Stop the continuous merge queue after its current round."""
        return await blocking(pane.stop_merge_loop, review.GUI_ACTOR)

    def report_data(since: str | None) -> dict:
        store = pane.store()
        now = clock()
        if store is None:
            raise IssueNotFound("no queue yet: add an issue first")
        return reports.build(store, since=reports.parse_since(since, now), now=now, logs_path=settings.logs_path)

    @app.get("/api/report", tags=["read"], responses=ERRORS)
    async def get_report(since: str | None = Query(None, max_length=40, description="12h, 30m, 2d or an ISO time")) -> dict:
        """The morning report as data (what `issues.report --format json` prints)."""
        return await blocking(report_data, since)

    @app.get("/report", response_class=HTMLResponse, include_in_schema=False)
    def report_html(since: str | None = Query(None, max_length=40)) -> HTMLResponse:
        query = f"?token={quote(guard.token, safe='')}" if guard.token else ""  # a public GUI's links carry it
        page_html = reports.html_page(report_data(since), stylesheet="/static/app.css", home="/", link_query=query)
        return HTMLResponse(page_html, headers={"cache-control": "no-store", "content-security-policy": CSP})

    @app.get("/api/events", response_class=EventStream, status_code=200, tags=["stream"],
             responses=STREAM_ERRORS)
    async def events() -> EventStream:
        """Server-sent events: a ``snapshot`` event (like /api/snapshot) now and on every change."""
        return EventStream(hub.stream())

    @app.get("/api/agents/{agent}/logs/stream", response_class=EventStream, status_code=200, tags=["stream"],
             responses=STREAM_ERRORS)
    async def logs_stream(agent: AgentId, tail: int = Query(100, ge=0, le=10000)) -> EventStream:
        """Server-sent events: ``lines`` (a JSON list) as the agent's log grows; ``end`` when it stops."""
        ident = await blocking(pane.resolve, agent, for_logs=True)
        if pumps.active >= max_log_streams:  # each holds a thread: bound them
            raise Conflict(f"{max_log_streams} log views are open already: close some pages first")
        stop_event = threading.Event()
        lines = await blocking(fleet.logs, ident, tail=tail, follow=True, stop=stop_event)
        return EventStream(pumps.stream(ident, iter(lines), stop_event))

    return app


# -- serving ------------------------------------------------------------------------

def bind_socket(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` (0 picks a free port), or Conflict naming the fix."""
    name = host.strip("[]")
    family = socket.AF_INET6 if ":" in name else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((name, port))
    except OSError as err:
        sock.close()
        raise Conflict(f"cannot listen on {host}:{port} ({err.strerror or err}): "
                       "pass --port N (is another `inv gui` running?)") from None
    return sock


def _server_class():
    import uvicorn

    class GuiServer(uvicorn.Server):
        """uvicorn's server, ending the app's event streams first when it shuts down.

        Otherwise every open page would hold the shutdown until uvicorn's
        graceful timeout and then be cancelled with a traceback.
        """

        async def shutdown(self, sockets=None) -> None:
            state = self.config.app.state
            state.hub.close_streams()
            state.pumps.close_streams()
            await super().shutdown(sockets)

    return GuiServer


def _inline_json(data: Any) -> str:
    """JSON safe inside <script type="application/json">: no "</script>", "<!--" or "&" can appear."""
    text = json.dumps(jsonable_encoder(data), separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def server_for(app: FastAPI, *, host: str = "127.0.0.1", port: int = 8787):
    """A uvicorn server for ``app`` that ends its event streams when it stops."""
    import uvicorn

    return _server_class()(uvicorn.Config(
        app, host=host, port=port, log_level="warning", access_log=False, lifespan="on",
        timeout_graceful_shutdown=5,  # a last resort: streams are ended before it counts
    ))


def serve(settings: Settings, *, host: str = "127.0.0.1", port: int = 8787, token: str | None = None,
          public: bool = False, open_browser: bool = False, fleet: Fleet | None = None,
          echo: Callable[[str], None] = print, interval: float = 0.75) -> None:
    """Serve the pane until Ctrl-C (what ``inv gui`` runs)."""
    security.check_bind(host, public=public, token=token)
    sock = bind_socket(host, port)
    app = create_app(settings, fleet, token=token, bind_host=host, interval=interval)
    shown = "127.0.0.1" if host.strip("[]") in ("0.0.0.0", "::") else security.url_name(host)
    url = f"http://{shown}:{sock.getsockname()[1]}/" + (f"?token={token}" if token else "")
    server = server_for(app, host=host, port=port)
    echo(f"Parallel Agents for {settings.repo}: {url}  (Ctrl-C stops)")
    if open_browser:
        def open_when_started() -> None:
            while not server.started and not server.should_exit:
                time.sleep(0.1)
            if server.started:
                webbrowser.open(url)

        threading.Thread(target=open_when_started, name="gui-open-browser", daemon=True).start()
    server.run(sockets=[sock])


__all__ = ["create_app", "serve", "server_for", "bind_socket", "Pane", "fingerprint", "Snapshot"]
