"""A word when someone is needed: a command and/or a webhook, called once per event.

Settings (``autopilot:`` keys): ``notify_command`` (run with the event's JSON on stdin, no
shell) and/or ``notify_webhook`` (the JSON POSTed to it); ``notify_stuck_seconds``.

Events, each said ONCE (a condition is said when it starts, and again only after it cleared)::

    backlog-drained        nothing ready, claimed or failed any more (after there was)
    merge-rejected         the merge queue rejected an issue (one per rejection in the trail)
    agent-crash-looping    an agent's container keeps restarting (fleet.problem says so)
    agent-stuck            an agent's heartbeat is older than notify_stuck_seconds
    quota-all-parked       every running agent waits for a model quota
    budget-spent           the fleet run's budget is spent (``store.fleet_budget()``; also a
                           ``budget-spent`` event in the trail, or :meth:`Watch.condition`)

A notifier that fails (a command that exits non-zero or hangs, a webhook that refuses or
times out) is logged and forgotten: it never raises into an agent, the merge queue or the GUI.

    watch = Watch.from_settings(settings, fleet)     # None when nothing is configured
    watch.tick()                                      # look once; the GUI and the merge loop call it
"""

from __future__ import annotations

import json
import logging
import shlex
import subprocess
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable

from .config import Settings
from .issues import IssueStore

if TYPE_CHECKING:
    from .fleet import Fleet

log = logging.getLogger(__name__)

#: Seconds a command or a webhook may take before it is given up on.
TIMEOUT = 10.0
BACKLOG = ("ready", "claimed", "failed")
EVENTS = ("backlog-drained", "merge-rejected", "agent-crash-looping", "agent-stuck", "quota-all-parked",
          "budget-spent")


@dataclass
class Notifier:
    """Where a word goes: ``command`` (argv words; JSON on stdin) and/or ``webhook`` (JSON POSTed)."""

    command: str | None = None
    webhook: str | None = None
    timeout: float = TIMEOUT
    failures: list[str] = field(default_factory=list)  # the last failures, for the GUI and the tests
    sent: int = 0

    def send(self, payload: dict) -> bool:
        """Say ``payload`` to every configured sink; True when all took it. Never raises."""
        body = json.dumps(payload, sort_keys=True, default=str).encode()
        ok = True
        if self.command:
            try:
                proc = subprocess.run(shlex.split(self.command), input=body, capture_output=True,
                                      timeout=self.timeout, check=False)
                if proc.returncode != 0:
                    raise OSError(f"exited with code {proc.returncode}")
            except (OSError, ValueError, subprocess.SubprocessError) as err:
                ok = self._failed(f"notify_command failed: {err}")
        if self.webhook:
            try:
                request = urllib.request.Request(self.webhook, data=body, method="POST",
                                                 headers={"content-type": "application/json",
                                                          "user-agent": "parallel-autopilot"})
                with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310 - the user's URL
                    response.read(1024)
            except Exception as err:  # noqa: BLE001 - any failure of the network is the notifier's, not ours
                ok = self._failed(f"notify_webhook failed: {err}")
        self.sent += 1
        return ok

    def _failed(self, line: str) -> bool:
        log.warning("%s", line)
        self.failures = [*self.failures[-9:], " ".join(line.split())[:300]]
        return False


class Watch:
    """Looks at the queue and the agents; says each event once through a :class:`Notifier`.

    ``store`` and ``agents`` are read on every :meth:`tick` (``agents()``: dicts as
    ``AgentStatus.to_dict`` gives them). The first tick only takes note of what is already so
    (an old rejection, a backlog already empty): a restart of the GUI says nothing twice.
    """

    def __init__(self, notifier: Notifier, store: Callable[[], IssueStore | None],
                 agents: Callable[[], list[dict]], *, repo: str = "", stuck_seconds: float = 600.0,
                 clock: Callable[[], float] = time.time):
        self.notifier = notifier
        self.store = store
        self.agents = agents
        self.repo = repo
        self.stuck_seconds = stuck_seconds
        self.clock = clock
        self.active: set[str] = set()  # conditions said and not yet cleared
        self.cursor: int | None = None  # the last event of the trail looked at
        self.said: list[dict] = []  # every payload said (newest last), for the GUI and the tests
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings, fleet: Fleet, **kwargs: Any) -> "Watch | None":
        """The watch of ``settings``' notify keys over ``fleet``; None when none is set."""
        if not (settings.notify_command or settings.notify_webhook):
            return None
        notifier = Notifier(settings.notify_command, settings.notify_webhook)

        def store() -> IssueStore | None:
            return fleet.store if (settings.queue or settings.db_path.exists()) else None

        return cls(notifier, store, lambda: [a.to_dict() for a in fleet.list()], repo=str(settings.repo),
                   stuck_seconds=float(settings.notify_stuck_seconds), **kwargs)

    # -- conditions ------------------------------------------------------------

    def condition(self, key: str, active: bool, event: str, detail: dict | None = None,
                  first: bool = False) -> None:
        """Say ``event`` when ``key`` becomes active; forget it when it clears (said again next time).

        Public for the code that knows a condition itself (the budget keeper: ``budget-spent``).
        """
        if not active:
            self.active.discard(key)
            return
        if key in self.active:
            return
        self.active.add(key)
        if not first:
            self._say(event, detail or {})

    def _say(self, event: str, detail: dict) -> None:
        payload = {"event": event, "at": self.clock(), "repo": self.repo, **detail}
        self.said.append(payload)
        self.notifier.send(payload)

    def tick(self) -> list[dict]:
        """Look once; the payloads said now. Never raises (a broken read is logged)."""
        with self._lock:
            before = len(self.said)
            try:
                self._look()
            except Exception:  # noqa: BLE001 - a notification must never stop its caller
                log.exception("notify: looking at the fleet failed")
            return self.said[before:]

    def _look(self) -> None:
        first = self.cursor is None
        store = self.store()
        if store is not None:
            counts = store.counts()
            left = sum(counts.get(s, 0) for s in BACKLOG)
            # "drained" is a change: armed while work is left, said once when none is
            if left > 0:
                self.active.add("work-left")
            elif "work-left" in self.active:
                self.active.discard("work-left")
                self._say("backlog-drained", {"counts": counts})
            self._trail(store, first)
            budget = store.fleet_budget()  # the fleet run's budget (issue 21): said once when it is spent
            self.condition("budget", bool(budget and budget["spent"]), "budget-spent",
                           {"budget": budget} if budget else None, first=first)
        agents = self.agents() or []
        running = [a for a in agents if a.get("state") == "running"]
        for agent in agents:
            problem = agent.get("problem") or ""
            ident = agent.get("id")
            self.condition(f"crash:{ident}", "crash-looping" in problem or "restarted" in problem,
                           "agent-crash-looping", {"agent": ident, "problem": problem}, first=first)
            age = agent.get("heartbeat_age")
            self.condition(f"stuck:{ident}", agent.get("state") == "running" and age is not None
                           and age > self.stuck_seconds, "agent-stuck",
                           {"agent": ident, "heartbeat_age": age}, first=first)
        parked = bool(running) and all(a.get("activity") == "quota" for a in running)
        self.condition("quota", parked, "quota-all-parked",
                       {"agents": [a.get("id") for a in running],
                        "until": max((a.get("waiting_until") or 0) for a in running) if running else None},
                       first=first)

    def _trail(self, store: IssueStore, first: bool) -> None:
        events = store.events(limit=500)
        if first:
            self.cursor = events[-1].id if events else 0
            return
        for e in events:
            if e.id <= (self.cursor or 0):
                continue
            self.cursor = e.id
            if e.kind == "rejected" and e.worker == "merge-queue":
                self._say("merge-rejected", {"issue": e.issue, "reason": (e.detail or "")[:500]})
            elif e.kind == "budget-spent":
                self._say("budget-spent", {"issue": e.issue, "detail": (e.detail or "")[:500]})

    # -- running -----------------------------------------------------------------

    def run(self, stop: threading.Event, every: float = 5.0) -> None:
        """Tick every ``every`` seconds until ``stop`` is set (a thread of the GUI)."""
        while not stop.is_set():
            self.tick()
            stop.wait(every)

    def start(self, every: float = 5.0) -> threading.Event:
        """:meth:`run` in a daemon thread; set the returned Event to stop it."""
        stop = threading.Event()
        threading.Thread(target=self.run, args=(stop, every), name="autopilot-notify", daemon=True).start()
        return stop


def events_of(said: Iterable[dict]) -> list[str]:
    """The event names of payloads said (for tests and the GUI)."""
    return [p["event"] for p in said]


__all__ = ["Notifier", "Watch", "EVENTS", "events_of"]
