"""The orchestration API: start, stop, list and read the logs of agent containers.

This is the design's ``parallel/mod.rs``. The edges (tasks, GUI, Fabric, the
shell wrapper) build ONE :class:`Fleet` and call its methods, nothing below::

    fleet = Fleet.open(settings)
    fleet.start(3)                 # worktrees, image, containers, wait until healthy
    fleet.list()                   # id, container state, health, issue, since, uptime
    fleet.logs("agent-002", tail=50, follow=False)
    fleet.stop(["agent-002"])      # or None for all
    fleet.resources()              # platform, memory, CPUs, max agents
    fleet.merge_loop()             # the merge queue, continuously, while agents work

There are no module-level twins of these methods: every caller (the edges, the
demo, the bench, the tests) opens a Fleet. ``store_for(settings)`` is the one
store of a Settings in this process (``Fleet.store`` reads it). Every check that
can refuse a request runs before anything is changed, so a refused start
starts nothing and loses nothing.
"""

from __future__ import annotations

import datetime as dt
import functools
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from . import issues, platform
from .config import Settings
from .containers import agentcli, compose, daemon, image, provision, queueaccess
from .errors import AgentNotFound, AgentsUnhealthy, Conflict, DockerUnavailable, GitError
from .git import Git, clones
from .ids import agent_count, agent_id, agent_ids
from .issues import IssueNotFound, IssueStore, logins, snapshots

Progress = Callable[[str], None]
LABEL_PROJECT = "parallel-autopilot.project"
LABEL_AGENT = "parallel-autopilot.agent"
LABEL_ROLE = "parallel-autopilot.role"  # the gateway's: "gateway"


@dataclass(frozen=True)
class AgentStatus:
    """One agent as the orchestrator sees it: its container joined with its heartbeat."""

    id: str
    container: str | None
    state: str  # the container's, as Docker says it (running, exited...) or "missing"; the agent's word: status
    health: str | None
    activity: str
    issue: int | None
    issue_title: str | None
    since: float | None
    uptime: float | None
    heartbeat_age: float | None
    restarts: int
    problem: str | None = None  # why it is not working: killed, out of memory, crash-looping, gone
    cli: str | None = None  # the model CLI and its version in the agent's image, e.g. "codex 0.171.0"
    waiting_until: float | None = None  # waiting for a model rate limit / quota to reset
    login: str | None = None  # the keyed fingerprint of its model login (parked together with its peers)
    budget: str | None = None  # state "budget": the fleet budget, spent, in words
    tokens: dict | None = None  # model usage summed over the issues this agent completed
    host: str | None = None  # the workstation it runs on (agents are (host, id) on a shared queue)

    @property
    def ready(self) -> bool:
        """Running, and healthy by Docker's check or by its own report since it started.

        The runtime writes its agents row once booted (old claims released,
        heartbeat running) - the same moment its health check turns green;
        Docker only runs that check every ``health_interval_seconds``.
        """
        if self.state != "running" or self.health == "unhealthy":
            return False
        if self.health == "healthy":
            return True
        reported_since_start = (self.since is not None and self.heartbeat_age is not None
                                and self.heartbeat_age <= (self.uptime or 0) and self.heartbeat_age < 5)
        return reported_since_start and self.activity in ("idle", "working")

    @property
    def status(self) -> str:
        """ONE state word per agent, the real one: the container's state joined with the agent's own report.

        ``ready``, ``starting`` or ``unhealthy`` while the container runs, else the
        container's own state (``exited``, ``restarting``, ``created``, ``dead``,
        ``missing``). Docker's health says "starting" until its first check ran,
        though the agent already reported itself booted: then it is ``ready``, as
        ``agents.start`` said. (``state`` is the container's, as Docker gives it.)
        """
        if self.state != "running":
            return self.state
        if self.health == "unhealthy":
            return "unhealthy"
        return "ready" if self.ready else "starting"

    @property
    def doing(self) -> str:
        """What the agent does, in words: every edge shows this (the tables, fab, the GUI).

        Why it does nothing (killed, out of memory...) first; "waiting for quota
        until HH:MM"; "working on #N title"; "booting" while only its previous
        incarnation has reported; else its own report (idle, stopping...).
        """
        if self.problem:
            return self.problem
        if self.activity == "quota" and self.waiting_until:
            until = time.strftime('%H:%M', time.localtime(self.waiting_until))
            return f"parked: quota (login {self.login}) until {until}" if self.login else \
                f"waiting for quota until {until}"
        if self.activity == "budget":
            return f"not claiming: the fleet budget is spent ({self.budget})" if self.budget else \
                "not claiming: the fleet budget is spent"
        if self.issue:
            return f"working on #{self.issue} {(self.issue_title or '')[:40]}".rstrip()
        reported_since_start = (self.heartbeat_age is not None and self.uptime is not None
                                and self.heartbeat_age <= self.uptime)
        if self.state == "running" and not reported_since_start:
            return "booting"
        return self.activity

    @property
    def uptime_text(self) -> str:
        """The uptime in words: ``4m05s``, ``2h03m``; empty when the container does not run."""
        return duration_text(self.uptime)

    def to_dict(self) -> dict:
        """The fields and the words above (ready, status, doing, uptime_text): the JSON of every edge."""
        return {**asdict(self), "ready": self.ready, "status": self.status, "doing": self.doing,
                "uptime_text": self.uptime_text}


def duration_text(seconds: float | None) -> str:
    """Whole seconds in words, ``0m05s``, ``4m05s``, ``2h03m`` (empty for None): an agent's uptime."""
    if seconds is None:
        return ""
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"


def _quiet(_: str) -> None:
    pass


_stores: dict[tuple, IssueStore] = {}
_stores_lock = threading.Lock()


def store_for(settings: Settings, *, git: Git | None = None,
              reconnect_seconds: float | None = None) -> IssueStore:
    """The shared issue store of this repository (one per database and process).

    Cached: the GUI asks for the agents several times a second, and an
    IssueStore is thread-safe and reconnects by itself after a fork.
    ``reconnect_seconds`` bounds how long a PostgreSQL store waits for a server
    that went away (the issues.* tasks, where a person waits, say so sooner).
    """
    key = (settings.queue_target, settings.host, settings.max_attempts, settings.backoff_seconds,
           reconnect_seconds, settings.aging_seconds)
    options = {} if reconnect_seconds is None else {"reconnect_seconds": reconnect_seconds}
    with _stores_lock:
        store = _stores.get(key)
        # a SQLite file removed or replaced under the cache (issues.restore) is opened anew
        if store is None or (not settings.queue and not settings.db_path.exists()):
            store = _stores[key] = issues.open_store(settings.queue_target, host=settings.host,
                                                     max_attempts=settings.max_attempts,
                                                     backoff_seconds=settings.backoff_seconds,
                                                     aging_seconds=settings.aging_seconds, **options)
            if not settings.queue:
                try:  # the state directory was just made: keep it out of `git status` and every merge
                    clones.exclude_tool_dirs(settings, git)
                except GitError:
                    pass  # not a git repository (yet): worktrees.create says so when it matters
        return store


def close_store(settings: Settings) -> None:
    """Close and forget this process's cached store of the database (before it is replaced)."""
    with _stores_lock:
        for key in [k for k in _stores if k[0] == settings.queue_target]:
            _stores.pop(key).close()


class Fleet:
    """The agents of one repository, with what every operation needs resolved once.

    Built once per edge (a task, the GUI, a Fabric call)::

        fleet = Fleet.open(settings)
        fleet.start(3); fleet.list(); fleet.stop()

    The repository's Git, its common git directory, the base branch, the
    compose project, the platform limits and the compose runner are resolved
    on first use (``cached_property``): a GUI status poll pays only for the
    Docker listing it makes. ``runner`` replaces ``subprocess.run`` under
    compose (it gets the full command line and environment), ``docker`` the
    Docker SDK client, ``ensure_image`` the image step, ``clock`` the time:
    the seams of the tests that run without a daemon.
    """

    def __init__(self, settings: Settings, *, runner: Callable[..., Any] | None = None, docker: Any = None,
                 clock: Callable[[], float] = time.time,
                 ensure_image: Callable[..., str] | None = None) -> None:
        self.settings = settings
        self.clock = clock
        self._runner = runner
        self._docker = docker
        self._ensure_image = ensure_image or image.ensure_image

    @classmethod
    def open(cls, settings: Settings, *, runner: Callable[..., Any] | None = None, docker: Any = None,
             clock: Callable[[], float] = time.time,
             ensure_image: Callable[..., str] | None = None) -> "Fleet":
        """The Fleet of ``settings`` (nothing is run until an operation needs it)."""
        return cls(settings, runner=runner, docker=docker, clock=clock, ensure_image=ensure_image)

    # -- resolved once ---------------------------------------------------------

    @functools.cached_property
    def git(self) -> Git:
        return Git(self.settings.repo)

    @functools.cached_property
    def git_dir(self) -> Path:
        """The repository's common git directory (what the containers mount)."""
        return self.git.common_dir()

    @functools.cached_property
    def base_branch(self) -> str:
        return clones.base_branch(self.settings, self.git)

    @functools.cached_property
    def project(self) -> str:
        return compose.project_name(self.settings)

    @functools.cached_property
    def limits(self) -> platform.Limits:
        return platform.limits(self.settings)

    #: what may change while a long-lived Fleet (the GUI's) waits between operations
    _CHANGING = ("base_branch", "limits")

    def refresh(self) -> None:
        """Forget the branch checked out and the limits (free memory): each start resolves them anew, once."""
        for name in self._CHANGING:
            self.__dict__.pop(name, None)

    @property
    def store(self) -> IssueStore:
        # not cached here: store_for keeps one per database and process already, and opens a
        # new one when the file was replaced (issues.restore), which a copy here would miss
        return store_for(self.settings, git=self.git)

    def docker(self) -> Any:
        """The Docker client, pinged: a daemon that went away is DockerUnavailable, not a traceback."""
        if self._docker is None:
            return daemon.client()  # the process's one client, pinged on every call
        self._docker.ping()
        return self._docker

    def compose(self, args: list[str]):
        """``compose.run`` with the containers' environment for these limits."""
        strict = compose.creates(args)
        git_dir, base = (self.git_dir, self.base_branch) if strict else self._tolerant()
        env = provision.compose_env(self.settings, self.limits, strict=strict, git_dir=git_dir, base_branch=base)
        env["AUTOPILOT_LOGIN"] = self.login() if strict else ""
        # a given runner stands in for the compose program: nothing to detect on this machine
        return compose.run(self.settings, args, limits=self.limits, env=env,
                           **({"runner": self._runner, "compose": list(compose.V2)} if self._runner else {}))

    def login(self) -> str:
        """The keyed fingerprint of the agents' model login ("" for a script kind or no credential):
        every agent using it parks together when it meets its quota (issue 21)."""
        secret = agentcli.login_secret(self.settings, str(self.settings.agent_kind))
        return logins.fingerprint(self.store.login_key(), secret) if secret else ""

    def _tolerant(self) -> tuple[Path | None, str | None]:
        # stop, rm: a repository whose base branch went away must still stop its agents
        # (None: compose_env falls back as it does without a fleet)
        try:
            return self.git_dir, self.base_branch
        except GitError:
            return None, None

    # -- counting ----------------------------------------------------------------

    @property
    def _mounted(self) -> bool:
        """``queue_access: mount``: the agents open the queue themselves (no gateway)."""
        return str(self.settings.queue_access) == "mount"

    def max_agents(self, *, containers: bool = True) -> int:
        """How many agents this machine may run (platform default, memory, override).

        With ``containers`` the compose file's services bound it too; worktrees
        alone (``worktrees.create``) need no service, so only the platform does.
        """
        limit = self.limits.max_agents
        return min(limit, len(compose.services(self.settings))) if containers else limit

    def check_count(self, n, *, containers: bool = True) -> int:
        """The one agent-count rule of every edge: ``n`` as an int in 1..max_agents,
        or InvalidAgentCount naming the range."""
        return agent_count(n, self.max_agents(containers=containers))

    # -- operations --------------------------------------------------------------

    def running_agent_ids(self) -> list[str]:
        """The agents of this repository whose container runs (Docker only: the store is not opened)."""
        containers = self.docker().containers.list(filters={"label": f"{LABEL_PROJECT}={self.project}"})
        return sorted(c.labels[LABEL_AGENT] for c in containers if c.labels.get(LABEL_AGENT))

    def start(self, n, *, progress: Progress = print, wait: bool = True) -> list[AgentStatus]:
        """Run agents agent-001..agent-00n; those already running are kept.

        Order: validate the count, reach Docker, open the store (refuses an unsafe
        filesystem), then act: image, worktrees, containers, wait for health.
        """
        settings = self.settings
        self.refresh()
        count = self.check_count(n)
        self.docker()
        for warning in self.preflight(count):
            progress(warning)
        store = self.store
        if not store.shared:  # PostgreSQL checks its own pages; a snapshot of it is issues.migrate's
            snapshots.at_start(store, progress)
        # a fleet run starts its own budget (issue 21); on a shared queue, the latest start's holds
        store.set_fleet_budget(settings.fleet_budget_tokens, settings.fleet_budget_usd)
        limits = ([f"{settings.fleet_budget_tokens} tokens"] if settings.fleet_budget_tokens is not None else []) + \
            ([f"${settings.fleet_budget_usd:.2f}"] if settings.fleet_budget_usd is not None else [])
        if limits:
            progress(f"fleet budget: {', '.join(limits)}")
        self.release_gone(store)
        self._ensure_image(settings, progress=progress)
        ids = agent_ids(count)
        progress(f"worktrees: {', '.join(ids)}")
        clones.create(settings, count, git=self.git, base=self.base_branch)
        git_dir = self.git_dir
        provision.hand_over(settings, [settings.state_path, settings.logs_path, settings.worktrees_path,
                                        git_dir / "worktrees", git_dir / "refs" / "heads" / "agent",
                                        git_dir / "logs" / "refs" / "heads" / "agent"], git_dir=git_dir)
        progress(f"starting {count} agent(s)")  # and, unless queue_access is mount, their queue gateway
        self.compose(["up", "-d", "--no-build", *([] if self._mounted else [compose.GATEWAY]), *ids])
        if wait:
            self.wait_healthy(ids, progress=progress)
        return [a for a in self.list() if a.id in ids]

    def preflight(self, count: int = 1) -> list[str]:
        """Refuse a model kind that cannot work (CLI in the image, credentials, network); warnings.

        Runs before anything is created: InvalidInput names the fix in one line.
        The image's labels count when it is current; otherwise it is about to be
        built from these settings, and their ``agent_cli`` counts.
        """
        settings = self.settings
        if settings.queue and self._mounted:  # a PostgreSQL queue the agents' network cannot reach
            queueaccess.check_network(settings, settings.queue)
        if str(settings.agent_kind) not in agentcli.MODEL_KINDS:
            return []
        current = image.image_status(settings) == "current"
        return agentcli.preflight(settings, image.image_labels(settings) if current else None, count)

    def merge_loop(self, *, stop: threading.Event | None = None, progress: Progress = print,
                   rounds: int | None = None, sleep: Callable[[float], None] | None = None,
                   check_runner: Callable[..., Any] | None = None, watch: Any = None) -> list:
        """Run the merge queue every ``merge_poll_seconds`` until ``stop`` is set (or ``rounds`` ran).

        What ``agents.start --merge`` runs in the foreground: done issues are
        checked on the tip and merged (or rejected) while the agents keep working.
        Returns the reports of the rounds that did something. ``check_runner``: where the
        checks run (default: ``autopilot.merge_check_runner``'s). ``watch``: the notifications
        (default: ``notify.Watch.from_settings``), looked at before each round.
        """
        from . import notify
        from .merge import queue as mergequeue

        settings = self.settings
        stop = stop or threading.Event()
        wait = sleep or stop.wait
        store = self.store
        reports, done = [], 0
        # False: none here (the GUI's own watch looks already: one watch, each event said once)
        watch = notify.Watch.from_settings(settings, self) if watch is None else (watch or None)
        while not stop.is_set() and (rounds is None or done < rounds):
            if watch is not None:
                watch.tick()  # a rejection of the last round, a drained backlog: said once (never raises)
            done += 1
            try:
                report = mergequeue.MergeQueue(settings, store, progress=progress, runner=check_runner).run()
            except (Conflict, DockerUnavailable) as err:  # another queue runs (issues.merge by hand), or
                # the daemon its checks run in is away for a moment: next round, the agents keep working
                progress(f"merge queue: {err}")
                wait(float(settings.merge_poll_seconds or 5))
                continue
            if report.outcome != "nothing":
                progress(report.summary())
                reports.append(report)
            wait(float(settings.merge_poll_seconds or 5))
        return reports

    def wait_healthy(self, ids: Iterable[str], *, progress: Progress = print,
                     timeout: float | None = None, clock: Callable[[], float] = time.monotonic,
                     sleep: Callable[[float], None] = time.sleep) -> list[AgentStatus]:
        """Block until every agent in ``ids`` is running and ready (see AgentStatus.ready), or AgentsUnhealthy."""
        settings = self.settings
        wanted = set(ids)
        deadline = clock() + (timeout if timeout is not None else settings.start_timeout_seconds)
        reported = set()
        while True:
            agents = {a.id: a for a in self.list() if a.id in wanted}
            healthy = {i for i, a in agents.items() if a.ready}
            for i in sorted(healthy - reported):
                progress(f"{i} ready")
            reported |= healthy
            if healthy == wanted:
                return [agents[i] for i in sorted(wanted)]
            if clock() > deadline:
                bad = ", ".join(f"{i} ({agents[i].state}/{agents[i].health})" if i in agents else f"{i} (missing)"
                                for i in sorted(wanted - healthy))
                raise AgentsUnhealthy(f"not healthy after {settings.start_timeout_seconds}s: {bad}; "
                                      "see `inv logs.tail --id <id>`")
            sleep(0.25)

    def stop(self, ids: Iterable[str] | None = None, *, progress: Progress = print) -> list[str]:
        """Stop and remove the given agents (all when None); free any claim they still hold.

        Each agent gets ``stop_grace_seconds`` to release its issue itself (SIGTERM);
        whatever a killed agent still held is released here.
        """
        settings = self.settings
        running = {a.id: a for a in self.list()}
        if ids is None:
            targets = sorted(running)
        else:
            targets = sorted({agent_id(i) for i in ids})
            missing = [i for i in targets if i not in running]
            if missing:
                raise AgentNotFound(f"no such agent: {', '.join(missing)}; running: "
                                    f"{', '.join(sorted(running)) or 'none'} (see `agents.status`)")
        if not targets:
            progress("no agents running")
            if ids is None:
                self._stop_gateway()  # left alone by agents that all died
            return []
        progress(f"stopping {', '.join(targets)} (grace {settings.stop_grace_seconds}s)")
        present = [t for t in targets if running[t].container]  # a missing one has nothing to stop
        if present:
            self.compose(["stop", "-t", str(settings.stop_grace_seconds), *present])
            self.compose(["rm", "-f", *present])
        store = self.store
        for target in targets:
            freed = store.release_agent(target, reason="stopped by the orchestrator")
            if freed:
                progress(f"{target}: released #{', #'.join(map(str, freed))}")
            store.agent_heartbeat(target, "stopped")  # a runtime killed at the end of its grace could not say so
        if set(targets) == set(running):  # the last agent: the gateway goes too, and the queue's URL
            self._stop_gateway()
            if settings.queue:
                queueaccess.forget(settings, self.project, provision.repo_owner(settings, git_dir=self.git_dir)[0])
        from .merge import queue as mergequeue

        try:  # what the agents finished comes home (autopilot/issue-N in the repository)
            mergequeue.bring_home(settings, store)
        except GitError as err:
            progress(f"could not fetch finished work from the agents' repositories: {err}")
        return targets

    def _stop_gateway(self) -> None:
        """Stop and remove the queue gateway's container, if there is one (it outlives no agent)."""
        found = self.docker().containers.list(all=True, filters={"label": [f"{LABEL_PROJECT}={self.project}",
                                                                           f"{LABEL_ROLE}=gateway"]})
        if found:
            self.compose(["stop", "-t", "10", compose.GATEWAY])
            self.compose(["rm", "-f", compose.GATEWAY])

    def restart(self, agent: str, *, progress: Progress = print) -> AgentStatus:
        """Restart one agent's container (it releases its old claim when it boots)."""
        target = agent_id(agent)
        if target not in {a.id for a in self.list()}:
            raise AgentNotFound(f"no such agent: {target} (see `agents.status`)")
        self.compose(["restart", "-t", str(self.settings.stop_grace_seconds), target])
        progress(f"{target} restarted")
        return next(a for a in self.list() if a.id == target)

    def release_gone(self, store: IssueStore | None = None) -> dict[str, list[int]]:
        """Free claims held by agents whose container no longer runs (crash recovery)."""
        store = store or self.store
        alive = {a.id for a in self.list() if a.state in ("running", "restarting")}
        freed = {}
        for issue in store.list("claimed"):
            if not issues.on_this_host(store, issue):  # another host's agent: not ours to see
                continue
            if issue.owner and issue.owner.startswith("agent-") and issue.owner not in alive:
                freed.setdefault(issue.owner, []).extend(
                    store.release_agent(issue.owner, reason="container gone"))
        return freed

    def list(self, now: float | None = None) -> list[AgentStatus]:  # noqa: A003 - the API reads fleet.list()
        """The agents of this repository: container state and health joined with heartbeats."""
        settings = self.settings
        now = self.clock() if now is None else now
        docker = self.docker()
        containers = docker.containers.list(all=True, filters={"label": f"{LABEL_PROJECT}={self.project}"})
        rows = {}
        titles = {}
        spent: dict[str, list] = {}
        fleet_budget = None
        if settings.queue or settings.db_path.exists():
            store = self.store
            rows = {r.id: r for r in store.agents(host=store.host)}  # never another host's agent-001
            if any(r.state == "budget" for r in rows.values()):
                fleet_budget = issues.spent_words(store.fleet_budget() or {})
            if containers:
                for done in store.list():
                    if done.usage and done.owner and issues.on_this_host(store, done):
                        spent.setdefault(done.owner, []).append(done.usage)
        cli = _cli_label(containers, docker)
        gateway = next((c for c in containers if c.labels.get(LABEL_ROLE) == "gateway"), None)
        gateway_down = None if gateway is None or self._mounted else gateway_problem(gateway.attrs.get("State", {}))
        result = []
        for container in containers:
            attrs = container.attrs
            ident = container.labels.get(LABEL_AGENT)
            if not ident:
                continue
            state = attrs.get("State", {})
            running = state.get("Status") == "running"
            started = _parse_time(state.get("StartedAt")) if running else None
            row = rows.pop(ident, None)
            # a dead container's last report says "working": it works on nothing now
            issue = row.issue if row and row.state == "working" and running else None
            restarts = attrs.get("RestartCount", 0)
            if issue is not None and issue not in titles:
                try:
                    titles[issue] = store.get(issue).title
                except IssueNotFound:
                    titles[issue] = None
            result.append(AgentStatus(
                id=ident,
                container=container.name,
                state=state.get("Status", "unknown"),
                health=(state.get("Health") or {}).get("Status"),
                activity=(row.state if row else "unknown") if running else state.get("Status", "unknown"),
                issue=issue,
                issue_title=titles.get(issue),
                since=started,
                uptime=round(now - started, 1) if started else None,
                heartbeat_age=round(now - row.heartbeat_at, 1) if row else None,
                restarts=restarts,
                problem=problem(state, restarts) or (gateway_down if running else None),
                cli=cli.get(attrs.get("Image")),
                waiting_until=getattr(row, "waiting_until", None) if row and row.state == "quota" else None,
                login=getattr(row, "login", None) if row else None,
                budget=fleet_budget if row and row.state == "budget" else None,
                tokens=_tokens(spent.get(ident)),
                host=settings.host,
            ))
        # an agent that reported but has no container any more (removed by hand, its host
        # rebooted) and never said "stopped": shown as missing, not silently left out
        for row in rows.values():
            if row.state != "stopped" and row.id.startswith("agent-"):
                result.append(AgentStatus(
                    id=row.id, container=None, state="missing", health=None, activity="missing", issue=None,
                    issue_title=None, since=None, uptime=None, heartbeat_age=round(now - row.heartbeat_at, 1),
                    restarts=0, problem="container gone", host=row.host))
        return sorted(result, key=lambda a: a.id)

    def logs(self, agent: str | None = None, tail: int = 100, follow: bool = False,
             stop: threading.Event | None = None, poll: float = 0.25) -> Iterator[str]:
        """Lines of one agent's log (or of all agents, prefixed with the id).

        With ``follow`` the generator keeps yielding new lines until ``stop`` is
        set. An unknown agent raises AgentNotFound before anything is yielded.
        """
        settings = self.settings
        if agent is not None:
            paths = {agent_id(agent): agent_log_path(settings, agent)}
            if not paths[agent_id(agent)].exists() and agent_id(agent) not in {a.id for a in self.list()}:
                raise AgentNotFound(f"no logs for {agent_id(agent)}: it never ran here (see `agents.status`)")
        else:
            root = settings.logs_path / "agents"
            paths = {p.name: p / "agent.log" for p in sorted(root.glob("agent-*"))} if root.exists() else {}
        return _follow(paths, tail, follow, stop or threading.Event(), poll, prefix=agent is None)

    def resources(self) -> dict:
        """Platform, memory, CPUs, per-agent limits and the maximum number of agents."""
        host = platform.detect()  # measured now (memory in use); the limits were resolved once
        limits = self.limits
        try:
            self.docker()
            docker_ok = True
        except Exception:  # noqa: BLE001 - any failure means "not reachable" here
            docker_ok = False
        return {
            "platform": f"{host.os} {host.arch}",
            "arch": host.arch,
            "cpus": host.cpus,
            "memory_total": host.memory_total,
            "memory_used": host.memory_total - host.memory_available,
            "max_agents": self.max_agents(),
            "memory_per_agent": limits.memory,
            "cpus_per_agent": limits.cpus,
            "profile": limits.profile,
            "docker": docker_ok,
        }


#: Restarts after which a container counts as crash-looping.
CRASH_LOOP_RESTARTS = 3


def problem(state: dict, restarts: int) -> str | None:
    """Why a container is not doing its work, from Docker's State (None when nothing is wrong).

    A clean exit (``docker stop`` gives the runtime its SIGTERM and it exits 0)
    is not a problem; a kill, the OOM killer, a crash loop are.
    """
    status = state.get("Status")
    if state.get("OOMKilled"):
        return "out of memory (killed by the kernel)"
    if status == "restarting" or (restarts >= CRASH_LOOP_RESTARTS and status != "running"):
        return f"crash-looping ({restarts} restarts)"
    if status in ("exited", "dead"):
        code = state.get("ExitCode")
        if code in (0, None):
            return None
        if code == 137:
            return "killed (exit 137)"
        return f"exited with code {code}"
    if restarts >= CRASH_LOOP_RESTARTS:
        return f"restarted {restarts} times"
    return None


def gateway_problem(state: dict) -> str | None:
    """What the running agents cannot do when their queue gateway is not up (None: it is)."""
    status = state.get("Status")
    if status == "running" and (state.get("Health") or {}).get("Status") != "unhealthy":
        return None
    what = "unhealthy" if status == "running" else status or "unknown"
    return f"queue gateway {what}: its agents cannot claim (see `docker logs` of the gateway, or agents.start)"


def _parse_time(value: str | None) -> float | None:
    if not value or value.startswith("0001-"):
        return None
    # Docker gives RFC 3339 with nanoseconds; Python takes microseconds
    head, _, frac = value.rstrip("Z").partition(".")
    stamp = dt.datetime.fromisoformat(head + (("." + frac[:6]) if frac else "")).replace(tzinfo=dt.timezone.utc)
    return stamp.timestamp()


def _cli_label(containers, docker) -> dict:
    """image id -> "codex 0.171.0" (the CLIs named by each image's labels)."""
    found = {}
    for ident in {c.attrs.get("Image") for c in containers} - {None}:
        try:
            labels = (docker.images.get(ident).attrs.get("Config") or {}).get("Labels") or {}
        except Exception:  # noqa: BLE001 - an image removed under a container: no label
            continue
        names = [f"{k[len(agentcli.LABEL_PREFIX):]} {v}" for k, v in sorted(labels.items())
                 if k.startswith(agentcli.LABEL_PREFIX)]
        found[ident] = ", ".join(names) or None
    return found


def _tokens(usages: list | None) -> dict | None:
    if not usages:
        return None
    total = {"input_tokens": 0, "output_tokens": 0, "cost_usd": 0.0}
    for u in usages:
        total["input_tokens"] += int(u.get("input_tokens") or 0)
        total["output_tokens"] += int(u.get("output_tokens") or 0)
        total["cost_usd"] += float(u.get("cost_usd") or 0.0)
    total["cost_usd"] = round(total["cost_usd"], 6)
    return total


def agent_log_path(settings: Settings, agent: str) -> Path:
    """``docs/logs/agents/<agent-id>/agent.log``."""
    return settings.logs_path / "agents" / agent_id(agent) / "agent.log"


def _follow(paths: dict[str, Path], tail: int, follow: bool, stop: threading.Event, poll: float,
            prefix: bool) -> Iterator[str]:
    offsets = {}
    lines = []
    for ident, path in paths.items():
        data = path.read_text(errors="replace") if path.exists() else ""
        offsets[ident] = len(data.encode())
        lines += [(line, ident) for line in data.splitlines()]
    if prefix:
        lines.sort(key=lambda item: item[0][:24])  # lines start with a UTC timestamp
    for line, ident in lines[-tail:] if tail else []:
        yield f"{ident} | {line}" if prefix else line
    buffers = dict.fromkeys(paths, b"")
    while follow and not stop.is_set():
        grew = False
        for ident, path in paths.items():
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                continue
            if size < offsets[ident]:  # truncated or replaced: start over
                offsets[ident] = 0
            if size > offsets[ident]:
                with path.open("rb") as handle:
                    handle.seek(offsets[ident])
                    chunk = handle.read(size - offsets[ident])
                offsets[ident] = size
                *complete, buffers[ident] = (buffers[ident] + chunk).split(b"\n")
                for raw in complete:
                    line = raw.decode(errors="replace")
                    yield f"{ident} | {line}" if prefix else line
                grew = True
        if not grew:
            stop.wait(poll)
