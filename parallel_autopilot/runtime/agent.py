"""The agent loop that runs inside each container.

Boot: release the claims of this agent's previous incarnation at once (it was
killed; expiry is only the last resort), kill an agent group it left behind
(outside a container), remove a stale ``index.lock``, stash whatever it left
uncommitted, record the agent row with a fresh incarnation id.

Loop: claim -> ``git checkout -B autopilot/issue-<N> <base>`` -> run the agent
(own process group, output to ``issue-<N>-attempt-<k>.log``, per-issue
timeout) -> on exit 0 commit everything as the agent with the trailers
``Issue``, ``Agent`` and ``Lease-Token`` and complete with branch, commit and
duration; on a non-zero exit or a timeout stash the changes and fail
(retried after a backoff).

Verified work: exit 0 is not "resolved" (agent CLIs exit 0 when every
command they ran failed). After the commit the runtime runs the check (the
issue's own ``check``, else ``AUTOPILOT_CHECK``) in the worktree, in this
container, with ``AUTOPILOT_CHECK_TIMEOUT``; its output goes to
``issue-<N>-attempt-<k>-check.log``. Pass -> done (check result, duration
and tail recorded); no change -> ``empty`` (not done); red or timed out -> a
failed attempt whose error is the check's last lines, handed to the next
attempt's prompt as feedback. Every claim also takes over an issue whose
agent's heartbeat has been silent for ``stale`` seconds (a killed container),
ahead of newer issues. Idle: sleep ``poll`` seconds +-30 %.

Threads: the heartbeat renews the lease every lease/3 and updates the agents
table; a renewal refused (LeaseLost) stops the agent subprocess at once and
the attempt is dropped (stashed, nothing committed or completed). The monitor
touches the heartbeat file (the health signal) while the main loop makes
progress and exits the process with code 70 when it makes none for
``watchdog`` seconds, so the restart policy brings up a fresh incarnation.

SIGTERM/SIGINT: take no new issue, stop the agent subprocess (SIGTERM, SIGKILL
after ``grace``), release the claim (not a failure: the attempt is refunded),
record state ``stopped``, exit 0.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..errors import AutopilotError, BudgetSpent, DatabaseDamaged, InvalidInput, LeaseLost, LoginParked
from ..issues import Claim, IssueStore, is_url, open_store, snapshots
from ..issues.gateway import GatewayClient
from . import health, kinds, process, usage
from .logs import AgentLog, Follow, last_line, read_end, tail
from .settings import RuntimeSettings
from .workspace import Workspace

#: Exit code of a watchdog exit (EX_SOFTWARE): the restart policy restarts us.
WATCHDOG_EXIT = 70
#: How often the monitor and the heartbeat thread wake up.
TICK = 0.5
#: Lines of the check's output kept in the issue (error, feedback, check_output).
CHECK_TAIL_LINES = 20


@dataclass
class Attempt:
    """One attempt at one issue, shared by the main loop and the heartbeat thread."""

    claim: Claim
    number: int
    attempt: int
    branch: str
    next_renew: float
    proc: subprocess.Popen | None = None
    lost: threading.Event = field(default_factory=threading.Event)
    lost_reason: str | None = None
    parked_until: float | None = None  # another agent of our login hit its quota: stop, give it back
    budget_tokens: int | None = None  # the attempt is stopped past these (issue's own, else the default)
    budget_usd: float | None = None


@dataclass(frozen=True)
class Outcome:
    """How the agent subprocess ended: ``exit`` (with code), ``timeout``, ``stopped``, ``lost``,
    ``over_budget`` (stopped past its budget) or ``parked`` (its login's quota, met by another agent)."""

    kind: str
    code: int | None = None
    duration: float = 0.0
    last: str | None = None
    usage: dict | None = None  # tokens/cost the model CLI reported (runtime/usage.py)
    limit: usage.Limit | None = None  # the CLI gave up on a rate limit / quota
    over: str | None = None  # over_budget: what it spent, of which budget


def jittered(seconds: float, rng: Callable[[], float] = random.random) -> float:
    """``seconds`` +-30 %: idle agents started together do not poll in step."""
    return seconds * (0.7 + 0.6 * rng())


class Agent:
    """One agent: boot, loop until stopped, shut down. See the module doc."""

    def __init__(self, settings: RuntimeSettings, *, clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic,
                 rng: Callable[[], float] = random.random, environ: dict | None = None,
                 exit: Callable[[int], None] = os._exit,
                 kill_descendants: Callable[[], object] = process.kill_descendants):
        self.s = settings
        self.clock = clock
        self.monotonic = monotonic
        self.rng = rng
        self.environ = dict(os.environ if environ is None else environ)
        self._exit = exit
        self._kill_descendants = kill_descendants  # the watchdog's, before it exits
        self.incarnation = uuid.uuid4().hex[:12]
        self.log = AgentLog(settings.logs, settings.agent_id, self.incarnation, clock=clock)
        self.workspace = Workspace(settings.workspace, settings.agent_id, settings.base_branch,
                                   timeout=max(2 * settings.watchdog_seconds, 60.0))
        self.child = process.ChildRecord(f"{settings.heartbeat_file}.child")
        self.store: IssueStore | None = None
        self.stopping = threading.Event()
        self.stop_signal: str | None = None
        self._done = threading.Event()
        self._lock = threading.Lock()  # guards _attempt and every renew against finishing
        self._report_lock = threading.Lock()
        self._attempt: Attempt | None = None
        self.state = "booting"
        now = monotonic()
        self._progress = now
        self._heartbeat_tick: float | None = None  # None until the heartbeat thread runs
        self._booted = False
        self._next_snapshot_look = 0.0
        self._threads: list[threading.Thread] = []
        self.waiting_until: float | None = None  # waiting for a model quota to reset
        self.parked_until: float | None = None  # our login is parked (the last heartbeat said)
        self.budget_note: str | None = None  # why we claim nothing: the fleet budget is spent
        self._quota_streak = 0
        self.model = kinds.ModelConfig(settings.openai_base_url, settings.anthropic_base_url, settings.model,
                                       settings.model_retries)

    # -- progress and signals ---------------------------------------------

    def mark(self) -> None:
        """The main loop is alive (read by the monitor)."""
        self._progress = self.monotonic()

    def request_stop(self, signum: int | None = None, _frame=None) -> None:
        """Signal handler: take no new issue, end the current one gracefully. Does no I/O."""
        if signum is not None and self.stop_signal is None:
            self.stop_signal = signal.Signals(signum).name
        self.stopping.set()

    def _sleep(self, seconds: float) -> None:
        """Sleep in short steps that keep the progress mark fresh; SIGTERM ends it early."""
        deadline = self.monotonic() + seconds
        while not self.stopping.is_set():
            self.mark()
            left = deadline - self.monotonic()
            if left <= 0:
                return
            self.stopping.wait(min(left, TICK))

    # -- boot -------------------------------------------------------------

    def boot(self) -> None:
        """Recover from the previous incarnation and announce this one."""
        s = self.s
        self.log.event("boot", f"boot: incarnation {self.incarnation}, kind {s.kind}, base {s.base_branch}, "
                       f"workspace {s.workspace}", pid=os.getpid(), host=socket.gethostname(),
                       kind=s.kind, base=s.base_branch, workspace=str(s.workspace))
        kinds.check(s.kind, s.command, path=self.environ.get("PATH"))
        leftover = self.child.kill_leftover()
        if leftover:
            self.log.event("killed-leftover", f"killed the agent group {leftover} of the previous incarnation",
                           pgid=leftover)
        copied = kinds.copy_credentials(s.credentials, self.environ.get("HOME"))
        if copied:
            self.log.event("credentials", f"credentials copied into HOME: {', '.join(copied)}", copied=copied)
        written = kinds.prepare_home(s.kind, self.environ.get("HOME"), self.model)
        if written:
            self.log.event("cli-config", f"model endpoint configured in {', '.join(written)}", files=written)
        self.store = self._open_queue()
        self.mark()
        released = self.store.release_agent(s.agent_id, reason="previous incarnation")
        if released:
            self.log.event("released", "released the claims of the previous incarnation: "
                           + ", ".join(f"#{n}" for n in released), issues=released,
                           reason="previous incarnation")
        self.workspace.check_base()
        lock = self.workspace.clear_stale_lock()
        if lock:
            self.log.event("stale-lock", f"removed {lock} left by a killed git", path=str(lock))
        self.mark()
        self._salvage("salvage", "left by a previous incarnation")
        self.workspace.detach()
        self._report("idle")
        health.touch(s.heartbeat_file)
        self._booted = True
        self.mark()

    def _open_queue(self) -> Any:
        """The queue: this agent's socket of the gateway (the default), or the store itself
        (``queue_access: mount``: the database or URL is in this container)."""
        s = self.s
        if s.queue_socket is not None:
            return GatewayClient(s.queue_socket, on_retry=self.log.line)
        target = s.queue_target()
        # PostgreSQL: the lease clock is the DATABASE's (hosts' clocks differ) and an outage is one
        # line in agent.log; SQLite: this process's clock (tests move it)
        options = {"on_reconnect": self.log.line} if is_url(target) else {"clock": self.clock}
        return open_store(target, host=s.host, max_attempts=s.max_attempts,
                          backoff_seconds=s.backoff_seconds, **options)

    def _report(self, state: str | None = None) -> bool:
        """Tell the agents table what we do (``state``, or the current one: the heartbeat's call).

        Serialised, so a periodic report never lands after a newer state. A
        failure (database busy past its timeout) is logged, never raised: the
        next report comes within seconds.
        """
        with self._report_lock:
            if state is not None:
                self.state = state
            attempt = self._attempt
            try:
                parked = self.store.agent_heartbeat(
                    self.s.agent_id, self.state,
                    issue=attempt.number if attempt else None, token=attempt.claim.token if attempt else None,
                    incarnation=self.incarnation, pid=os.getpid(),
                    waiting_until=self.waiting_until if self.state == "quota" else None, login=self.s.login)
                self.parked_until = parked if isinstance(parked, (int, float)) else None
                return True
            except Exception as err:
                self.log.line(f"agents table not updated ({self.state}): {err}")
                return False

    def _salvage(self, reason: str, detail: str, number: int | None = None, attempt: int | None = None) -> str | None:
        """Stash whatever is uncommitted, with a message saying whose and why; never delete it."""
        what = f" #{number} attempt {attempt}" if number is not None else ""
        message = f"autopilot {reason}: {self.s.agent_id}{what} ({detail}) at {_utc(self.clock())}"
        sha = self.workspace.salvage(message)
        if sha:
            self.log.event("salvaged", f"stashed uncommitted changes{what} ({detail}) as {sha[:12]}: "
                           "see `git stash list`", issue=number, stash=sha, reason=reason, message=message)
        return sha

    # -- threads ----------------------------------------------------------

    def _heartbeat(self) -> None:
        """Renew the lease every lease/3 and update the agents table; LeaseLost stops the agent."""
        next_report = self.monotonic()
        while not self._done.is_set():
            now = self.monotonic()
            self._heartbeat_tick = now
            with self._lock:
                attempt = self._attempt
                if attempt and not attempt.lost.is_set() and now >= attempt.next_renew:
                    self._renew(attempt, now)
            if now >= next_report:
                self._report()
                next_report = now + self.s.report_seconds
                self._stop_if_parked()
            self._done.wait(min(TICK, self.s.renew_seconds))

    def _stop_if_parked(self) -> None:
        """Another agent of our login met its quota: stop our model CLI before it sends another request."""
        until = self.parked_until
        if until is None or self.s.kind not in ("codex", "claude"):
            return
        with self._lock:
            attempt = self._attempt
            if attempt is None or attempt.proc is None or attempt.parked_until is not None:
                return
            attempt.parked_until = until
            if attempt.proc.poll() is None:
                process.signal_group(attempt.proc.pid, signal.SIGTERM)

    def _renew(self, attempt: Attempt, now: float) -> None:
        try:
            attempt.claim = self.store.renew(attempt.claim, self.s.lease_seconds)
            attempt.next_renew = now + self.s.renew_seconds
        except LeaseLost as err:
            attempt.lost_reason = str(err)
            attempt.lost.set()
            if attempt.proc is not None and attempt.proc.poll() is None:
                process.signal_group(attempt.proc.pid, signal.SIGTERM)  # at once; the loop escalates
            self.log.event("lease-lost", f"lease lost on #{attempt.number}: stopping its agent, "
                           "nothing will be committed or completed", issue=attempt.number,
                           token=attempt.claim.token, error=str(err))
        except Exception as err:  # e.g. database busy: retry soon, the lease has two more thirds
            attempt.next_renew = now + min(self.s.renew_seconds, 1.0)
            self.log.line(f"lease renewal of #{attempt.number} failed, retrying: {err}")

    def _monitor(self) -> None:
        """Touch the heartbeat file while the loop progresses; exit 70 when it has stalled."""
        while not self._done.is_set() and self.check_progress(self.monotonic()):
            self._done.wait(TICK)

    def check_progress(self, now: float) -> bool:
        """One look of the monitor at ``now``: touch the heartbeat file, or trip the watchdog (False)."""
        s = self.s
        beat = self._heartbeat_tick
        stalled = max(now - self._progress, 0.0 if beat is None else now - beat)
        if stalled > s.watchdog_seconds:
            self._watchdog(stalled)
            return False
        if self._booted and stalled < s.stall_seconds:
            try:
                health.touch(s.heartbeat_file)
            except OSError as err:
                self.log.line(f"heartbeat file not touched: {err}")
        return True

    def _watchdog(self, stalled: float) -> None:
        what = "main loop" if self.monotonic() - self._progress >= stalled - 1 else "heartbeat thread"
        try:
            self.log.event("watchdog", f"watchdog: the {what} made no progress for {stalled:.1f}s "
                           f"(limit {self.s.watchdog_seconds:g}s); exiting {WATCHDOG_EXIT} for a restart",
                           stalled=round(stalled, 1), exit=WATCHDOG_EXIT)
        finally:
            attempt = self._attempt
            if attempt and attempt.proc is not None:
                process.signal_group(attempt.proc.pid, signal.SIGKILL)
            self._kill_descendants()  # a hung git hook, git itself: nothing of ours outlives us
            self._exit(WATCHDOG_EXIT)

    def _start_thread(self, target: Callable[[], None], name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    # -- the loop ---------------------------------------------------------

    def run(self) -> int:
        """Boot, work until SIGTERM, shut down; the exit code."""
        self._start_thread(self._monitor, "monitor")  # the watchdog guards the boot too
        self.boot()
        self._start_thread(self._heartbeat, "heartbeat")
        try:
            while not self.stopping.is_set():
                self.mark()
                try:
                    self._snapshot_if_due()
                    # an issue whose agent went silent is taken over here too, not only when idle:
                    # a busy queue must not leave it to the 15-minute lease
                    claim = self._claim()
                    if claim is None:
                        self._idle()
                    else:
                        self._work(claim)
                except LoginParked as err:  # another agent of our login met the quota: no request until then
                    self._parked(err)
                except BudgetSpent as err:
                    self._budget_spent(err)
                except DatabaseDamaged:
                    raise  # not a passing trouble: one "cannot run" line, exit 13 (main)
                except Exception as err:  # database busy past its timeout, disk full...: not fatal
                    self.log.event("error", f"loop error: {err!r}; going on", error=repr(err),
                                   traceback=traceback.format_exc())
                    self._sleep(jittered(self.s.poll_seconds, self.rng))
        finally:
            self._shutdown()
        return 0

    def _claim(self) -> Claim | None:
        options = {"login": self.s.login} if self.s.login else {}
        claim = self.store.claim(self.s.agent_id, self.s.lease_seconds, stale_after=self.s.stale_seconds or None,
                                 **options)
        if self.budget_note is not None:
            self.budget_note = None
            self.log.event("budget", "the fleet has a budget again: claiming")
        return claim

    def _parked(self, err: LoginParked) -> None:
        """Wait, sending nothing, until our login's quota resets (the queue said when)."""
        until = err.until or self.clock() + self.s.quota_backoff_seconds
        self.waiting_until = until
        self.log.event("parked", f"parked: quota (login {err.login or self.s.login}) until "
                       f"{time.strftime('%H:%M:%S', time.gmtime(until))} UTC: another agent of this login "
                       "met its rate limit / quota", until=until, login=err.login or self.s.login)
        self._report("quota")
        self._sleep(max(0.0, until - self.clock()))
        self.waiting_until = None
        self._report("idle")

    def _budget_spent(self, err: BudgetSpent) -> None:
        """The fleet run's budget is spent: claim nothing, say why, look again now and then."""
        if self.budget_note != str(err):
            self.budget_note = str(err)
            self.log.event("budget", f"not claiming: {err}", error=str(err))
        if self.state != "budget":
            self._report("budget")
        self._sleep(jittered(max(self.s.poll_seconds, 5.0), self.rng))

    def _snapshot_if_due(self) -> None:
        """Every ``snapshot_seconds`` one agent (the first to look, holding the lock) snapshots the db."""
        now = self.monotonic()
        if self.s.snapshot_seconds <= 0 or now < self._next_snapshot_look or self.store.shared:
            return  # (a shared PostgreSQL queue is no file of ours to snapshot)
        self._next_snapshot_look = now + min(self.s.snapshot_seconds, 60.0) * (0.7 + 0.6 * self.rng())
        path = snapshots.take_if_due(self.store, self.s.snapshot_seconds, self.s.snapshots_kept,
                                     now=self.clock())
        if path is not None:
            self.log.event("snapshot", f"database snapshot {path.name}", path=str(path))

    def _idle(self) -> None:
        if self.state != "idle":
            self._report("idle")
        self._sleep(jittered(self.s.poll_seconds, self.rng))

    def _work(self, claim: Claim) -> None:
        issue = claim.issue
        number, k = issue.number, issue.attempts
        branch = kinds.branch_name(number)
        attempt = Attempt(claim=claim, number=number, attempt=k, branch=branch,
                          next_renew=self.monotonic() + self.s.renew_seconds)
        self.log.event("claimed", f"claimed #{number} {issue.title!r} (attempt {k}/{issue.max_attempts}, "
                       f"token {claim.token})", issue=number, attempt=k, token=claim.token, title=issue.title)
        with self._lock:
            self._attempt = attempt
        try:
            self._report("working")
            if self.stopping.is_set():
                self._release(attempt)
                return
            self._attempt_issue(attempt)
        except AutopilotError as err:  # no script, git refused...: the attempt fails, the loop goes on
            self._fail(attempt, str(err), salvage_reason="failed")
        except Exception as err:
            self.log.event("error", f"internal error on #{number}: {err!r}", issue=number,
                           traceback=traceback.format_exc())
            self._fail(attempt, f"internal error in the runtime: {err!r}", salvage_reason="failed")
        finally:
            with self._lock:
                self._attempt = None
            if attempt.proc is not None and attempt.proc.poll() is None:
                process.stop(attempt.proc, 0, tick=self.mark)
            self.child.clear()
            try:
                self.workspace.detach()
            except AutopilotError as err:
                self.log.line(f"could not detach HEAD: {err}")
            self._report("stopping" if self.stopping.is_set() else "idle")

    def _attempt_issue(self, attempt: Attempt) -> None:
        s, issue = self.s, attempt.claim.issue
        last_message = self.log.attempt_path(attempt.number, attempt.attempt).with_suffix(".last.txt")
        attempt.budget_tokens = issue.budget_tokens if issue.budget_tokens is not None else s.budget_tokens
        attempt.budget_usd = issue.budget_usd if issue.budget_usd is not None else s.budget_usd
        metered = attempt.budget_tokens is not None or attempt.budget_usd is not None
        argv = kinds.command(s.kind, issue, agent=s.agent_id, workspace=s.workspace, base=s.base_branch,
                             template=s.command, last_message=last_message, model=s.model, sessions=metered)
        env = kinds.environment(self.environ, issue, agent=s.agent_id, workspace=s.workspace, kind=s.kind,
                                config=self.model, base_branch=s.base_branch)
        if self.workspace.dirty():  # should not happen: every attempt ends clean
            self._salvage("salvage", "found before starting", attempt.number, attempt.attempt)
        base_sha = self.workspace.start_branch(attempt.branch)
        refs_before = self.workspace.foreign_refs(attempt.branch)
        self.mark()
        outcome = self._run_agent(attempt, argv, env)
        if outcome.kind == "stopped":
            self._release(attempt)
        elif outcome.kind == "parked" and not attempt.lost.is_set():
            self._wait_for_quota(attempt, usage.Limit("another agent of this login met its rate limit / quota",
                                                      attempt.parked_until))
        elif outcome.kind == "over_budget" and not attempt.lost.is_set():
            self._over_budget(attempt, base_sha, outcome)
        elif outcome.kind == "lost" or attempt.lost.is_set():
            self._end(attempt)
            self._salvage("lease-lost", "lease lost; attempt dropped", attempt.number, attempt.attempt)
        elif outcome.kind == "timeout":
            self._fail(attempt, f"timed out after {s.issue_timeout:g}s (agent killed); last output: "
                       f"{outcome.last or '(none)'}", salvage_reason="timeout")
        elif outcome.code != 0 and outcome.limit is not None:
            self._wait_for_quota(attempt, outcome.limit)
        elif outcome.code != 0:
            self._fail(attempt, f"{_describe_exit(outcome.code)}; last output: {outcome.last or '(none)'}",
                       salvage_reason="failed")
        elif (changed := _changed_refs(refs_before, self.workspace.foreign_refs(attempt.branch))):
            self._fail(attempt, f"the agent changed refs that are not its own: {', '.join(changed)}; "
                       f"agents may only commit on {attempt.branch}", salvage_reason="failed")
        else:
            self._quota_streak = 0
            self._finish(attempt, base_sha, outcome, env)

    def _run_agent(self, attempt: Attempt, argv: list[str], env: dict[str, str]) -> Outcome:
        s = self.s
        log_path = self.log.attempt_path(attempt.number, attempt.attempt)
        header = (f"### {_utc(self.clock())} {s.agent_id} issue #{attempt.number} attempt "
                  f"{attempt.attempt} token {attempt.claim.token} kind {s.kind} on {attempt.branch}\n")
        return self._run_process(attempt, argv, env, log_path, header, s.issue_timeout, "agent")

    def _run_process(self, attempt: Attempt, argv: list[str], env: dict[str, str], log_path,
                     header: str, timeout: float, what: str) -> Outcome:
        """Run ``argv`` (the agent or the check) in its own group until exit, timeout, stop or lost."""
        s = self.s
        started = self.monotonic()
        with open(log_path, "ab") as out:
            out.write(header.encode())
            out.flush()
            try:
                with self._lock:  # the heartbeat must see the process to stop it
                    if attempt.lost.is_set():
                        return Outcome("lost")
                    if self.stopping.is_set():
                        return Outcome("stopped")
                    attempt.proc = process.start(argv, s.workspace, env, out)
            except OSError as err:
                raise InvalidInput(f"cannot start {argv[0]!r}: {err.strerror or err}") from None
        proc = attempt.proc
        self.child.write(proc.pid)
        doing = f"#{attempt.number} ({s.kind}, " if what == "agent" else f"the check of #{attempt.number} ("
        self.log.event("started" if what == "agent" else "check-started",
                       f"started {doing}pid {proc.pid}), output in {Path(log_path).name}",
                       issue=attempt.number, attempt=attempt.attempt, pid=proc.pid, log=str(log_path))
        deadline = started + timeout
        kind = None
        watch = _Watch(s.kind, log_path, env, attempt) if what == "agent" and s.kind in ("codex", "claude") else None
        over = None
        while True:
            self.mark()
            try:
                code = proc.wait(timeout=0.2)
                break
            except subprocess.TimeoutExpired:
                pass
            if watch is not None:
                over = watch.read()
                if watch.limit is None:
                    watch.limit = usage.limit(s.kind, "\n".join(watch.new), self.clock(), events_only=True)
                    if watch.limit is not None:  # the first 429: park the login NOW, not when the CLI gives up
                        self._park_login(attempt, watch.limit)
            if self.stopping.is_set():
                kind = "stopped"
            elif attempt.lost.is_set():
                kind = "lost"
            elif attempt.parked_until is not None:
                kind = "parked"
            elif watch is not None and watch.limit is not None:
                kind = "exit"  # it would retry into the same wall: stop it, the limit is handled below
            elif over is not None:
                kind = "over_budget"
            elif self.monotonic() >= deadline:
                kind = "timeout"
            if kind:
                if kind == "stopped":
                    self._report("stopping")
                code = process.stop(proc, s.grace_seconds, tick=self.mark, monotonic=self.monotonic)
                if kind == "exit" and not code:
                    code = 1  # stopped on its rate limit
                break
        if kind is None and attempt.parked_until is not None:
            kind = "parked"  # the heartbeat stopped it (its login is parked) and it exited at once
        # children it left in the background must not write into the next step
        process.signal_group(proc.pid, signal.SIGKILL)
        self.child.clear()
        attempt.proc = None
        duration = round(self.monotonic() - started, 3)
        last = last_line(log_path)
        spent, limit = None, None
        if s.kind in ("codex", "claude"):
            text = read_end(log_path, 4 << 20) or ""  # the CLI's last events, at most 4 MiB
            spent = usage.parse(s.kind, text)
            limit = usage.limit(s.kind, text, self.clock()) if code else None
        if watch is not None:
            watch.read()
            metered = watch.meter.spent()
            if metered is not None and usage.tokens(metered) > usage.tokens(spent):
                spent = metered
            limit = limit or watch.limit
            watch.close()
            self._spend(attempt, spent)
            if over is not None:  # say what it spent in all: the CLI streamed on until it stopped
                over = watch.over(spent) or over
        return Outcome(kind or "exit", code, duration, last, spent, limit, over)

    def _run_check(self, attempt: Attempt, env: dict[str, str]) -> tuple[Outcome | None, dict]:
        """Run the check on the committed attempt; (outcome or None when there is none, result fields)."""
        s, issue = self.s, attempt.claim.issue
        command = (issue.check or s.check or "").strip()
        if not command:
            return None, {"check_status": "none"}
        log_path = self.log.dir / f"issue-{attempt.number}-attempt-{attempt.attempt}-check.log"
        header = f"### {_utc(self.clock())} {s.agent_id} check of #{attempt.number}: {command}\n"
        shell = shutil.which("bash") or "sh"
        outcome = self._run_process(attempt, [shell, "-c", command], env, log_path, header,
                                    s.check_timeout, "check")
        try:
            self.workspace.discard_leftovers()  # caches, reports: the tree was committed before
        except AutopilotError as err:
            self.log.line(f"could not clean up after the check of #{attempt.number}: {err}")
        status = ("passed" if outcome.kind == "exit" and outcome.code == 0 else
                  "timeout" if outcome.kind == "timeout" else "failed")
        return outcome, {"check_status": status, "check_duration": outcome.duration,
                         "check_output": tail(log_path, CHECK_TAIL_LINES)}

    # -- endings ----------------------------------------------------------

    def _end(self, attempt: Attempt) -> Claim:
        """Stop renewing; the latest claim (same token) for the fenced call that ends it."""
        with self._lock:
            self._attempt = None
            return attempt.claim

    def _settle(self, attempt: Attempt, call: Callable[[Claim], Any], not_done: str,
                salvage: tuple[str, str] | None = None, lost_note: str | None = None,
                **fields: Any) -> tuple[bool, Any]:
        """The one way an attempt ends in the store (complete, empty, fail, release).

        Stash what the agent left (``salvage``: reason, note), stop renewing,
        then the fenced ``call`` with the latest claim. A lease lost before or
        during the call ends nothing: the issue is someone else's now. Returns
        (True, the call's result) or (False, None).
        """
        number = attempt.number
        if salvage is not None:
            try:
                self._salvage(salvage[0], salvage[1], number, attempt.attempt)
            except AutopilotError as err:
                self.log.line(f"could not stash the changes of #{number}: {err}")
        claim = self._end(attempt)
        if attempt.lost.is_set():  # already reported, unless the caller has more to say
            if lost_note:
                self.log.event("lease-lost", lost_note, issue=number, **fields)
            return False, None
        try:
            return True, call(claim)
        except LeaseLost as err:
            self.log.event("lease-lost", f"#{number} not {not_done}: {err}", issue=number, **fields,
                           error=str(err))
            return False, None

    def _commit(self, attempt: Attempt, base_sha: str) -> str | None | bool:
        """Commit the attempt's work on its branch, fenced; its commit, None (no change) or False
        (the attempt was ended here: lease lost, or the agent left its branch)."""
        s, number = self.s, attempt.number
        if attempt.lost.is_set():  # lost while the agent was exiting: commit nothing
            self._end(attempt)
            self._salvage("lease-lost", "lease lost; attempt dropped", number, attempt.attempt)
            return False
        current = self.workspace.current_branch()
        if current != attempt.branch:
            self._fail(attempt, f"the agent left branch {attempt.branch} for {current or 'a detached HEAD'}: "
                       f"agents must stay on the issue branch", salvage_reason="failed")
            return False
        # renew (fenced) right before committing: an agent presumed dead by its peers,
        # whose issue another agent now works on, must not write onto that branch
        with self._lock:
            self._renew(attempt, self.monotonic())
        if attempt.lost.is_set():
            self._end(attempt)
            self._salvage("lease-lost", "lease lost before the commit; attempt dropped", number, attempt.attempt)
            return False
        subject = f"#{number}: {' '.join(attempt.claim.issue.title.split())}"  # one line, whatever the title
        sha = self.workspace.commit_all(subject[:72], {
            "Issue": f"#{number}", "Agent": s.agent_id, "Lease-Token": str(attempt.claim.token)})
        self.mark()
        head = self.workspace.head()
        if sha:
            self.log.event("committed", f"committed #{number} on {attempt.branch} as {sha[:12]}",
                           issue=number, branch=attempt.branch, commit=sha)
        return head if head != base_sha else None  # the agent may have committed by itself

    def _result(self, attempt: Attempt, base_sha: str, outcome: Outcome) -> tuple[str | None, dict] | None:
        """Commit the attempt's work; (its commit or None when nothing changed, the result to record),
        or None when committing failed (already settled)."""
        commit = self._commit(attempt, base_sha)
        if commit is False:
            return None
        result = {"branch": attempt.branch, "commit": commit, "duration": outcome.duration}
        if outcome.usage is not None:
            result["usage"] = outcome.usage
        return commit, result

    def _finish(self, attempt: Attempt, base_sha: str, outcome: Outcome, env: dict[str, str]) -> None:
        s, number = self.s, attempt.number
        committed = self._result(attempt, base_sha, outcome)
        if committed is None:
            return
        commit, result = committed
        if commit is None:  # an empty change is its own outcome: nothing to check or merge
            self._empty(attempt, result)
            return
        check, checked = self._run_check(attempt, env)
        result.update(checked)
        if check is not None and check.kind in ("stopped", "lost"):
            if check.kind == "stopped":
                self._release(attempt)
            else:
                self._end(attempt)
            return
        if attempt.lost.is_set():
            self._end(attempt)
            return
        if checked["check_status"] != "passed" and check is not None:
            command = (attempt.claim.issue.check or s.check).strip()
            why = (f"timed out after {s.check_timeout:g}s" if check.kind == "timeout"
                   else _describe_exit(check.code))
            report = f"`{command}` {why}:\n{checked['check_output'] or '(no output)'}"
            self._fail(attempt, f"check failed ({why}); last lines: {checked['check_output'] or '(none)'}",
                       salvage_reason="failed", feedback=report, check=checked)
            return
        done, _ = self._settle(
            attempt, lambda claim: self.store.complete(claim, result), "completed",
            lost_note=(f"#{number} finished after its lease was lost: not completed; "
                       f"{(commit or 'no commit')[:12]} stays on {attempt.branch}"), commit=commit)
        if not done:
            return
        self.log.event("completed", f"completed #{number} in {outcome.duration:.1f}s: {commit[:12]} on "
                       f"{attempt.branch}, check {checked['check_status']}",
                       issue=number, attempt=attempt.attempt, **result)

    def _empty(self, attempt: Attempt, result: dict) -> None:
        number = attempt.number
        if not self._settle(attempt, lambda claim: self.store.empty(claim, result), "recorded as empty")[0]:
            return
        self.log.event("empty", f"#{number} exited 0 but changed nothing: status empty (not done)",
                       issue=number, attempt=attempt.attempt)

    def _fail(self, attempt: Attempt, error: str, salvage_reason: str, feedback: str | None = None,
              check: dict | None = None) -> None:
        number = attempt.number
        error = " ".join(error.split())  # one line
        done, issue = self._settle(attempt, lambda claim: self.store.fail(claim, error, feedback=feedback, check=check),
                                   "marked failed", salvage=(salvage_reason, error[:120]))
        if not done:
            return
        self.log.event("failed", f"failed #{number} (attempt {attempt.attempt}/{issue.max_attempts}, now "
                       f"{issue.status}): {error}", issue=number, attempt=attempt.attempt, status=issue.status,
                       error=error)

    def _over_budget(self, attempt: Attempt, base_sha: str, outcome: Outcome) -> None:
        """Stopped past its budget: its work is committed on its branch like a finished attempt's,
        then the issue is ``over_budget`` with what it spent (no check: it did not finish)."""
        number = attempt.number
        committed = self._result(attempt, base_sha, outcome)
        if committed is None:
            return
        commit, result = committed
        error = f"over budget: {outcome.over}; stopped after {outcome.duration:.1f}s"
        done, _ = self._settle(attempt, lambda claim: self.store.over_budget(claim, result, error), "over_budget",
                               lost_note=f"#{number} stopped over budget after its lease was lost: not recorded")
        if done:
            self.log.event("over_budget", f"#{number} {error}; its work is on {attempt.branch} "
                           f"({(commit or 'no change')[:12]})", issue=number, attempt=attempt.attempt, **result)

    def _park_login(self, attempt: Attempt, limit: "usage.Limit") -> float | None:
        """Park our login in the queue until the reset: every agent of it stops sending requests."""
        if not self.s.login:
            return None
        until = limit.reset_at if limit.reset_at and limit.reset_at > self.clock() else \
            self.clock() + self.s.quota_backoff_seconds * 2 ** self._quota_streak
        try:
            parked = self.store.park_login(self.s.login, until, agent=self.s.agent_id, message=limit.message)
        except Exception as err:  # the queue busy: our own wait still holds
            self.log.line(f"could not park login {self.s.login}: {err}")
            return None
        self.log.event("park", f"parked login {self.s.login} until {time.strftime('%H:%M:%S', time.gmtime(parked))} "
                       f"UTC for every agent using it (#{attempt.number}: {limit.message})", issue=attempt.number,
                       login=self.s.login, until=parked)
        return parked

    def _spend(self, attempt: Attempt, spent: dict | None) -> None:
        """What the attempt spent counts against the issue's and the fleet run's budgets (a lost report is logged)."""
        if not spent:
            return
        try:
            self.store.spend(usage.tokens(spent), spent.get("cost_usd"), claim=attempt.claim)
        except Exception as err:
            self.log.line(f"the spending of #{attempt.number} was not recorded: {err}")

    def _wait_for_quota(self, attempt: Attempt, limit: "usage.Limit") -> None:
        """A rate limit or exhausted quota is not the issue's fault: give it back, sleep until the reset.

        The release refunds the attempt, and the issue is ready at once for an
        agent with another credential. Without a reset time from the CLI the
        wait doubles from ``quota_backoff_seconds`` up to an hour.
        """
        number, now = attempt.number, self.clock()
        wait = min(self.s.quota_backoff_seconds * 2 ** self._quota_streak, 3600.0)
        until = limit.reset_at if limit.reset_at and limit.reset_at > now else now + wait
        if attempt.parked_until is None:  # we met it ourselves: the whole login waits (a later park wins)
            until = max(until, self._park_login(attempt, usage.Limit(limit.message, until)) or until)
        self._quota_streak += 1
        self._settle(attempt, self.store.release, "released", salvage=("quota", "rate limit / quota"))
        self.waiting_until = until
        self.log.event("quota", f"rate limit / quota on #{number} (released, attempt refunded): waiting until "
                       f"{time.strftime('%H:%M:%S', time.gmtime(until))} UTC; the CLI said: {limit.message}",
                       issue=number, until=until, message=limit.message, login=self.s.login)
        self._report("quota")
        self._sleep(max(0.0, until - self.clock()))
        self.waiting_until = None

    def _release(self, attempt: Attempt) -> None:
        number = attempt.number
        if not self._settle(attempt, self.store.release, "released", salvage=("stopped", "agent stopped"))[0]:
            return
        self.log.event("released", f"released #{number} (stopping; the attempt is refunded)",
                       issue=number, reason="stopped")

    def _shutdown(self) -> None:
        why = f" on {self.stop_signal}" if self.stop_signal else ""
        self._done.set()
        for thread in self._threads:
            thread.join(timeout=5)  # no periodic report may land after "stopped"
        self._report("stopped")
        self.log.event("stopped", f"stopped{why}", signal=self.stop_signal)


class _Watch:
    """A model CLI's events as they stream: its attempt log, and codex's session log when it keeps one.

    :meth:`read` feeds the new lines to the meter and says when the attempt is past
    its budget; ``new`` holds the attempt log's new lines (searched for a rate limit).
    """

    def __init__(self, kind: str, log_path, env: dict[str, str], attempt: Attempt):
        self.kind = kind
        self.attempt = attempt
        self.meter = usage.Meter(kind)
        self.limit: usage.Limit | None = None
        self.new: list[str] = []
        self._log = Follow(log_path, _size(log_path))
        self._sessions = Path(env["CODEX_HOME"]) / "sessions" if kind == "codex" and env.get("CODEX_HOME") else None
        self._clear_sessions()
        self._followed: dict[Path, Follow] = {}

    def read(self) -> str | None:
        """Feed what is new; what was spent of which budget once past it, else None."""
        self.new = [line for line in self._log.lines() if not line.startswith("### ")]
        for line in self.new:
            self.meter.feed(line)
        if self._sessions is not None and self._sessions.is_dir():
            for path in sorted(self._sessions.rglob("rollout-*.jsonl")):
                follow = self._followed.setdefault(path, Follow(path))
                for line in follow.lines():
                    self.meter.feed(line)
        return self.over(self.meter.spent())

    def over(self, spent: dict | None) -> str | None:
        """What ``spent`` (this attempt's usage) spent of which budget, when past it, else None."""
        issue = self.attempt.claim.issue
        return usage.over(spent, self.attempt.budget_tokens, self.attempt.budget_usd,
                          issue.spent_tokens, issue.spent_usd)

    def close(self) -> None:
        self._clear_sessions()  # a session log is the meter's; nothing piles up in the tmpfs HOME

    def _clear_sessions(self) -> None:
        if self._sessions is not None:
            shutil.rmtree(self._sessions, ignore_errors=True)


def _size(path) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def _changed_refs(before: dict[str, str], after: dict[str, str]) -> list[str]:
    """What happened to refs between two snapshots: ``refs/heads/main (moved)``..."""
    changed = []
    for ref in sorted(set(before) | set(after)):
        if ref not in after:
            changed.append(f"{ref} (deleted)")
        elif ref not in before:
            changed.append(f"{ref} (created)")
        elif before[ref] != after[ref]:
            changed.append(f"{ref} (moved)")
    return changed


def _describe_exit(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def _utc(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def main(environ: dict | None = None) -> int:
    """Entry point of ``python3 -m parallel_autopilot.runtime``: the exit code."""
    try:
        settings = RuntimeSettings.from_env(environ)
    except AutopilotError as err:
        print(f"parallel-autopilot runtime: {err}", file=sys.stderr, flush=True)
        return err.exit_code
    try:
        agent = Agent(settings, environ=environ)
    except OSError as err:
        print(f"parallel-autopilot runtime: cannot write logs under {settings.logs}: {err}", file=sys.stderr,
              flush=True)
        return 1
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, agent.request_stop)
    try:
        return agent.run()
    except AutopilotError as err:  # at boot: bad kind, unsafe filesystem, not a worktree...
        agent.log.event("fatal", f"cannot run: {err}", error=str(err))
        return err.exit_code
    except Exception as err:  # unexpected: one line here, the traceback in events.jsonl
        agent.log.event("fatal", f"cannot run: {err!r}", error=repr(err), traceback=traceback.format_exc())
        return 1
