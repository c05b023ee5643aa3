"""The merge queue: the ONLY writer of the base branch. Nothing red or conflicting reaches it.

For each ``done`` issue, in priority-then-completion order, in a worktree of its
own (``<.git>/autopilot-merge/worktree``, never the user's checkout, which may
be dirty or on another branch):

1. bring the issue's commit home: fetch ``autopilot/issue-N`` from the agent's
   own repository (``.worktrees/agent-NNN``) into the user's repository and
   point ``refs/heads/autopilot/issue-N`` at the commit the issue RECORDED (an
   agent that moved its branch afterwards changes nothing);
2. stack it on the current tip of the base with ``git merge --no-ff``. A merge,
   not a rebase: the agent's commit keeps its sha (its ``Issue``/``Agent``/
   ``Lease-Token`` trailers stay the audited object, "is it merged?" stays an
   ancestry question, ``cleanup`` can drop the branch with ``git branch -d``),
   and the base's first-parent history is exactly the sequence of tested
   candidates;
3. run the check (the repository's ``check`` plus the issues' own) on the
   result, with ``check_timeout``;
4. green: advance ``refs/heads/<base>`` with ``git update-ref <ref> NEW OLD`` -
   a compare-and-swap under git's ref lock, so a commit or push that landed
   meanwhile is never overwritten; when the swap fails the candidate is rebuilt
   and re-tested on the new tip. Then the issue is ``merged`` (with its merge
   commit) and the user's checkout is updated only when it is clean and on the
   base (``git read-tree -m -u OLD NEW``); otherwise its files are untouched;
5. red or conflicting: ``rejected`` with the check's tail or the conflicting
   files in ``error`` and ``feedback``; its branch is kept (and its commit under
   ``refs/autopilot/rejected/issue-N``); with ``merge_requeue`` it goes back to
   the queue at once as a new attempt with that report in its prompt.

Batches (``merge_batch`` K > 1): K issues are stacked and tested once; green
merges all K with one ref update, red bisects (each half is landed the same
way, recursively) until the culprits are single issues. An issue that
conflicts with a batch-mate is deferred and tried alone on the new tip.

Crashes. A lock file (``flock``: the kernel drops it with a SIGKILLed holder)
admits one queue at a time; every step is idempotent: the worktree is forced to
a clean detached state before each candidate, the base only ever moves by the
one CAS to a tested commit, and an issue found already contained in the base
(killed between the swap and the database update) is marked merged on resume.

``dry_run`` builds and tests every candidate and moves no ref (the JSON says
``dry_run``; each batch is tested on the unchanged tip).
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

from ..config import Settings
from ..errors import EXIT_NOTHING_TO_MERGE, EXIT_OK, EXIT_SOME_REJECTED, Conflict, GitError, InvalidInput
from ..git import Git, clones
from ..ids import agent_id
from ..issues import PRIORITIES, Issue, IssueStore, on_this_host
from . import checks
from .checks import CheckResult, CheckRunner, run_on_host  # noqa: F401 - named here too (callers)

#: Exit codes of ``issues.merge``, from the one table (``errors.EXIT_CODES``): every outcome its own.
EXIT_MERGED = EXIT_OK  # every queued issue merged (or, with --dry-run, would merge)
EXIT_NOTHING = EXIT_NOTHING_TO_MERGE  # no done issue to merge
EXIT_REJECTED = EXIT_SOME_REJECTED  # at least one issue rejected (red or conflicting); the others merged
EXIT_REFUSED = Conflict.exit_code  # refused before anything was done (another merge queue runs, bad state)

#: Times a candidate is rebuilt and re-tested because the base moved under it, before giving up.
MAX_RETESTS = 10

Progress = Callable[[str], None]


@dataclass
class MergeReport:
    """What one run of the queue did. ``merged`` are "would merge" under ``dry_run``."""

    base: str
    dry_run: bool = False
    batch: int = 1
    merged: list[int] = field(default_factory=list)
    merge_commits: dict[int, str] = field(default_factory=dict)
    rejected: dict[int, str] = field(default_factory=dict)  # number -> one-line reason
    requeued: list[int] = field(default_factory=list)
    already: list[int] = field(default_factory=list)
    check_runs: int = 0
    retests: int = 0  # candidates rebuilt because the base moved under the queue
    base_before: str | None = None
    base_after: str | None = None
    checkout: str = "untouched"
    seconds: float = 0.0

    @property
    def outcome(self) -> str:
        """``nothing``, ``merged`` or ``rejected``."""
        if self.rejected:
            return "rejected"
        return "merged" if (self.merged or self.already) else "nothing"

    @property
    def exit_code(self) -> int:
        return {"nothing": EXIT_NOTHING, "merged": EXIT_MERGED, "rejected": EXIT_REJECTED}[self.outcome]

    def to_dict(self) -> dict:
        return {**asdict(self), "outcome": self.outcome, "exit_code": self.exit_code}

    def summary(self) -> str:
        verb = "would merge into" if self.dry_run else "merged into"
        lines = [f"{verb} {self.base}: {_numbers(self.merged)}"
                 + (f" (batches of {self.batch})" if self.batch > 1 else "")]
        if self.already:
            lines.append(f"already in {self.base}: {_numbers(self.already)}")
        for number, why in self.rejected.items():
            again = " (re-queued)" if number in self.requeued else ""
            lines.append(f"REJECTED #{number}{again}: {why}")
        lines.append(f"check runs: {self.check_runs}" + (f", re-tests after the base moved: {self.retests}"
                                                         if self.retests else ""))
        if not self.dry_run and self.base_before != self.base_after:
            lines.append(f"{self.base}: {(self.base_before or '')[:12]} -> {(self.base_after or '')[:12]}; "
                         f"your checkout: {self.checkout}")
        if self.outcome == "nothing":
            lines.append("nothing to merge: no done issue")
        return "\n".join(lines)


def _numbers(numbers: Iterable[int]) -> str:
    return ", ".join(f"#{n}" for n in numbers) or "none"


def merge_dir(git: Git) -> Path:
    """``<.git>/autopilot-merge``: the queue's worktree, lock and state (the logs: :func:`check_log_dir`).

    Inside the user's git directory, which agent containers see read-only (or
    not at all): no agent can touch a candidate while it is tested.
    """
    return git.common_dir() / "autopilot-merge"


def check_log_dir(settings: Settings) -> Path:
    """``<state>/merge-logs``: what each check printed. In the state directory, which no agent and
    no check container mounts: a check's output is one issue's, never another agent's to read
    (the user's ``.git``, where the queue's worktree lives, is read-only in every container)."""
    return settings.state_path / "merge-logs"


def status(settings: Settings, store: IssueStore) -> dict:
    """The queue as the GUI shows it: queued (done), testing, merged, rejected."""
    testing: list[int] = []
    try:
        state = json.loads((merge_dir(Git(settings.repo)) / "state.json").read_text())
        if state.get("phase") == "testing":
            testing = list(state.get("issues") or [])
    except (OSError, ValueError, GitError):
        pass
    issues = [i for i in store.list(("done", "merged", "rejected")) if on_this_host(store, i)]  # this host's
    pick = lambda s: [_brief(i) for i in _ordered(issues) if i.status == s]  # noqa: E731
    queued = [i for i in pick("done") if i["number"] not in testing]
    return {"queued": queued, "testing": [i for i in pick("done") if i["number"] in testing],
            "merged": pick("merged"), "rejected": pick("rejected")}


def _brief(issue: Issue) -> dict:
    return {"number": issue.number, "title": issue.title, "priority": issue.priority,
            "check_status": issue.check_status, "check_duration": issue.check_duration,
            "merge_commit": issue.merge_commit, "error": issue.error, "completed_at": issue.completed_at}


def _ordered(issues: Iterable[Issue]) -> list[Issue]:
    """Priority first, then completion time (the queue's order)."""
    return sorted(issues, key=lambda i: (PRIORITIES.index(i.priority), i.completed_at or i.updated_at, i.number))


class MergeQueue:
    """One repository's merge queue; :meth:`run` processes what is done now."""

    def __init__(self, settings: Settings, store: IssueStore, *, runner: CheckRunner | None = None,
                 progress: Progress = lambda _: None, batch: int | None = None, requeue: bool | None = None,
                 check: str | None = None, check_timeout: float | None = None,
                 clock: Callable[[], float] = time.time, monotonic: Callable[[], float] = time.monotonic):
        """``clock`` stamps the state file and names the check logs; ``monotonic`` times the run and the checks."""
        self.settings = settings
        self.store = store
        self.clock = clock
        self.monotonic = monotonic
        self.git = Git(settings.repo)
        self.base = clones.base_branch(settings, self.git)
        self.ref = f"refs/heads/{self.base}"
        self.runner = runner or checks.runner_for(settings, monotonic=monotonic)
        self.progress = progress
        self.batch = int(batch if batch is not None else settings.merge_batch or 1)
        if self.batch < 1:
            raise InvalidInput(f"merge batch {self.batch} is too small: use 1 or more")
        self.requeue = bool(settings.merge_requeue if requeue is None else requeue)
        self.check = settings.check if check is None else check
        self.check_timeout = float(check_timeout or settings.check_timeout or 600)
        self.dir = merge_dir(self.git)
        self.worktree = self.dir / "worktree"
        self.log_dir = check_log_dir(settings)
        self._wt: Git | None = None
        self._report: MergeReport | None = None
        self._runs = 0

    # -- the run -------------------------------------------------------------

    def run(self, numbers: Iterable[int] | None = None, dry_run: bool = False) -> MergeReport:
        """Merge every done issue (or those in ``numbers``); the report. Conflict when another queue runs."""
        started = self.monotonic()
        report = self._report = MergeReport(base=self.base, dry_run=dry_run, batch=self.batch)
        clones.exclude_tool_dirs(self.settings, self.git)
        with self._locked():
            report.base_before = self.git.rev_parse(self.ref)
            wanted = set(numbers) if numbers else None
            queue = [i for i in _ordered(self.store.list("done")) if (wanted is None or i.number in wanted)
                     and on_this_host(self.store, i)]
            if queue:
                self._prepare_worktree()
            candidates = [i for i in queue if self._bring_home(i)]
            for start in range(0, len(candidates), self.batch):
                self._land(candidates[start:start + self.batch], dry_run)
            report.base_after = self.git.rev_parse(self.ref)
            self._state("idle", [])
        report.seconds = round(self.monotonic() - started, 3)
        return report

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold ``<merge dir>/lock`` (flock): one queue at a time; the kernel frees it when we die."""
        self.git.makedirs(self.dir)
        fd = os.open(self.dir / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
                raise Conflict(f"another merge queue is running on {self.settings.repo} (pid {holder}): "
                               "wait for it to finish") from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
            yield
        finally:
            os.close(fd)  # closing drops the flock

    def _state(self, phase: str, issues: list[int]) -> None:
        path = self.dir / "state.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"phase": phase, "issues": issues, "at": self.clock(), "pid": os.getpid()}))
        os.replace(tmp, path)

    def _prepare_worktree(self) -> None:
        """The queue's own worktree, detached at the base, clean (repaired if a crash left it half-done).

        Its git is reached through its directory in the user's ``.git`` (:meth:`Git.linked`),
        never through the worktree's ``.git`` file: a check writes the worktree, and could
        point that file at a git directory of its own, with hooks and config of its own.
        The file is written again here, so a check also finds the real one.
        """
        tip = self.git.rev_parse(self.ref)
        try:
            self._wt = self.git.linked(self.worktree, config={"commit.gpgsign": "false"})
        except GitError:  # never made, or a crash left it half-done
            if self.worktree.exists():
                shutil.rmtree(self.worktree)
            self.git.worktree_prune()
            self.git.worktree_add_detached(self.worktree, tip)
            self._wt = self.git.linked(self.worktree, config={"commit.gpgsign": "false"})
        dot_git = self.worktree / ".git"
        if dot_git.is_dir() and not dot_git.is_symlink():
            shutil.rmtree(dot_git)
        else:
            dot_git.unlink(missing_ok=True)
        dot_git.write_text(f"gitdir: {self._wt.explicit_git_dir}\n")
        self._wt.checkout_detached(tip)

    # -- step 1: the issue's commit in the user's repository -------------------

    def _bring_home(self, issue: Issue) -> bool:
        """Fetch the issue's branch from its agent's repository; True when it is a candidate."""
        report = self._report
        branch = issue.branch or f"autopilot/issue-{issue.number}"
        if not issue.commit:
            self._reject(issue, "the issue is done but records no commit", None)
            return False
        where = fetch_issue(self.settings, self.git, issue, write_refs=not report.dry_run, progress=self.progress)
        if where is not None:
            self._reject(issue, f"its commit {issue.commit[:12]} is not on {branch} in {where} "
                                "(the branch was moved or deleted)", None)
            return False
        if self.git.is_merged(issue.commit, self.ref):
            merge = self._merge_commit_of(issue) or self.git.rev_parse(self.ref)
            if not report.dry_run:
                self.store.mark_merged(issue.number, issue.commit, merge)
            report.already.append(issue.number)
            report.merge_commits[issue.number] = merge
            return False
        return True

    def _merge_commit_of(self, issue: Issue) -> str | None:
        out = self.git.run("log", "--first-parent", "-1", "--format=%H",
                           f"--grep=^Merged-Issue: #{issue.number}$", self.ref, "--").strip()
        return out or None

    # -- steps 2-5: stack, test, swap ---------------------------------------

    def _land(self, batch: list[Issue], dry_run: bool) -> None:
        """Land ``batch`` on the current tip: merge all on green, bisect on red, re-test when the base moved."""
        if not batch:
            return
        report = self._report
        for _ in range(MAX_RETESTS + 1):
            tip = self.git.rev_parse(self.ref)
            stacked, commits, deferred = self._stack(tip, batch)
            if stacked:
                numbers = [i.number for i in stacked]
                self._state("testing", numbers)
                self.progress(f"testing {_numbers(numbers)} on {self.base} {tip[:12]}")
                result = self._run_check(stacked)
                if not result.passed:
                    if len(stacked) == 1:
                        self._reject(stacked[0], f"the check failed on {self.base} {tip[:12]}: {_flat(result.output)}",
                                     f"`{self._command(stacked)}` failed on {self.base} with this issue merged:\n"
                                     f"{result.output}")
                    else:
                        half = len(stacked) // 2
                        self.progress(f"red: bisecting {_numbers(numbers)}")
                        self._land(stacked[:half], dry_run)
                        self._land(stacked[half:], dry_run)
                elif dry_run:
                    report.merged += numbers
                else:
                    head = commits[stacked[-1].number]
                    follow = self._checkout_follows()  # judged BEFORE the ref moves under it
                    if not self.git.update_ref(self.ref, head, tip, message=f"merge queue: {_numbers(numbers)}"):
                        report.retests += 1
                        self.progress(f"{self.base} moved while testing {_numbers(numbers)}: re-testing on the new tip")
                        batch = stacked + deferred  # those rejected while stacking are done with
                        continue
                    report.checkout = self._update_checkout(follow, tip, head)
                    for issue in stacked:
                        self.store.mark_merged(issue.number, issue.commit, commits[issue.number])
                        report.merged.append(issue.number)
                        report.merge_commits[issue.number] = commits[issue.number]
                    self.progress(f"merged {_numbers(numbers)}: {self.base} is {head[:12]}")
            for issue in deferred:  # conflicted with a batch-mate: alone, on the new tip
                self._land([issue], dry_run)
            return
        raise Conflict(f"{self.base} moved {MAX_RETESTS} times while {_numbers(i.number for i in batch)} was tested: "
                       "nothing of it was merged; run issues.merge again when the pushes settle")

    def _stack(self, tip: str, batch: list[Issue]) -> tuple[list[Issue], dict[int, str], list[Issue]]:
        """Merge the batch onto ``tip`` in the worktree: (stacked, merge commit per issue, deferred)."""
        wt = self._wt
        wt.checkout_detached(tip)
        stacked, commits, deferred = [], {}, []
        for issue in batch:
            title = " ".join(issue.title.split())[:60]
            message = (f"Merge #{issue.number}: {title}\n\nMerged-Issue: #{issue.number}\n"
                       f"Branch: {issue.branch}\nAgent: {issue.owner}\n")
            files = wt.merge_or_conflicts(issue.commit, message, env=_QUEUE_IDENTITY)
            if files is None:
                stacked.append(issue)
                commits[issue.number] = wt.rev_parse("HEAD")
            elif stacked:
                deferred.append(issue)  # maybe only with a batch-mate that may yet be rejected
            else:
                self._reject(issue, f"conflicts with {self.base} {tip[:12]} in {', '.join(files)}",
                             f"merging it into {self.base} conflicts in: {', '.join(files)}. "
                             f"Start again from the current {self.base} and redo the change.",
                             conflicts=files)
        return stacked, commits, deferred

    def _command(self, issues: list[Issue]) -> str:
        commands = list(dict.fromkeys(c.strip() for c in [self.check, *(i.check for i in issues)] if c and c.strip()))
        return " && ".join(f"({c})" for c in commands) if len(commands) > 1 else (commands[0] if commands else "")

    def _run_check(self, issues: list[Issue]) -> CheckResult:
        command = self._command(issues)
        if not command:
            return CheckResult(True, 0.0, "", "none")
        self._runs += 1
        self._report.check_runs += 1
        log = self.log_dir / f"check-{int(self.clock() * 1000)}-{self._runs}.log"
        result = self.runner(command, self.worktree, self.check_timeout, log)
        self._wt.checkout_detached("HEAD")  # what the check wrote must not reach the next candidate
        return result

    def _reject(self, issue: Issue, why: str, feedback: str | None, conflicts: list[str] | None = None) -> None:
        report = self._report
        report.rejected[issue.number] = why
        if report.dry_run:
            return
        if conflicts:
            # issue 21: the files it conflicted in become paths it touches, so its retry waits
            # while an issue on them is in flight (recorded before the reject re-queues it)
            self.store.add_paths(issue.number, conflicts)
        if issue.commit and self.git.has_commit(issue.commit):
            self.git.update_ref(f"refs/autopilot/rejected/issue-{issue.number}", issue.commit,
                                message="merge queue: rejected")
        updated = self.store.reject(issue.number, issue.commit, feedback or why, requeue=self.requeue)
        if updated.status == "ready":
            report.requeued.append(issue.number)
        self.progress(f"rejected #{issue.number}: {why}")

    # -- the user's checkout -------------------------------------------------

    def _checkout_follows(self) -> str | None:
        """None when the user's checkout is clean and on the base (it follows the base), else why not."""
        current = self.git.current_branch()
        if current != self.base:
            return f"untouched (on {current or 'a detached HEAD'}, not {self.base})"
        if self.git.is_dirty():
            return "untouched (it has local changes)"
        return None

    def _update_checkout(self, why_not: str | None, old: str, new: str) -> str:
        """Bring the user's checkout from ``old`` to ``new`` if it was clean and on the base.

        Otherwise its files stay byte for byte; a checkout ON the base with local
        changes now has HEAD at ``new`` and an index of ``old``: the summary says how
        to catch up once the changes are committed or stashed.
        """
        if why_not is not None:
            if why_not.startswith("untouched (it has local changes"):
                return (f"untouched (it has local changes; after committing or stashing them: "
                        f"git read-tree -m -u {old[:12]} {self.base})")
            return why_not
        self.git.run("read-tree", "-m", "-u", old, new)
        return f"updated to {new[:12]}"


_QUEUE_IDENTITY = {"GIT_AUTHOR_NAME": "parallel-autopilot merge queue",
                   "GIT_AUTHOR_EMAIL": "merge-queue@parallel-autopilot.invalid",
                   "GIT_COMMITTER_NAME": "parallel-autopilot merge queue",
                   "GIT_COMMITTER_EMAIL": "merge-queue@parallel-autopilot.invalid"}


def _clone_of(settings: Settings, issue: Issue) -> Path | None:
    """The repository of the agent that did ``issue`` (None: old layout, or no such clone)."""
    if not issue.owner:
        return None
    try:
        path = settings.worktrees_path / agent_id(issue.owner)
    except InvalidInput:
        return None
    dot_git = path / ".git"
    # an agent's own repository; a symlinked .git would make another repository pass for it
    return path if dot_git.is_dir() and not dot_git.is_symlink() else None


def fetch_issue(settings: Settings, git: Git, issue: Issue, *, write_refs: bool = True,
                progress: Progress = lambda _: None) -> str | None:
    """Bring ``issue``'s recorded commit into the user's repository; None when it is there.

    Fetches ``autopilot/issue-N`` from the agent's clone (into
    ``refs/autopilot/incoming/issue-N``) and points ``refs/heads/autopilot/issue-N``
    at the commit the issue RECORDED (an agent that moved its branch afterwards
    changes nothing). Without ``write_refs`` only objects are fetched. Returns
    where the commit was looked for when it is missing.
    """
    branch = issue.branch or f"autopilot/issue-{issue.number}"
    clone = _clone_of(settings, issue)
    if clone is not None and not git.has_commit(issue.commit):
        try:
            git.fetch_ref(clone, f"refs/heads/{branch}",
                          f"refs/autopilot/incoming/issue-{issue.number}" if write_refs else None)
        except GitError as err:
            progress(f"#{issue.number}: could not fetch {branch} from {clone}: {err}")
    if not git.has_commit(issue.commit):
        return str(clone or settings.repo)
    if write_refs and git.ref_sha(f"refs/heads/{branch}") != issue.commit:
        git.update_ref(f"refs/heads/{branch}", issue.commit, message="parallel-autopilot: the issue's commit")
    return None


def bring_home(settings: Settings, store: IssueStore, progress: Progress = lambda _: None) -> list[int]:
    """Fetch every done, rejected or merged issue's branch from the agents' clones; the numbers fetched.

    ``cleanup`` and ``agents.stop`` call it before a clone can go away, so a
    result never lives only in an agent's repository.
    """
    git = Git(settings.repo)
    fetched = []
    for issue in store.list(("done", "rejected", "merged")):
        if issue.commit and on_this_host(store, issue) and _clone_of(settings, issue) is not None and \
                fetch_issue(settings, git, issue, progress=progress) is None:
            fetched.append(issue.number)
    return fetched


def _flat(text: str) -> str:
    return " | ".join(line.strip() for line in text.splitlines() if line.strip())[-1000:] or "(no output)"


def merge(settings: Settings, store: IssueStore, numbers: Iterable[int] | None = None, *, dry_run: bool = False,
          batch: int | None = None, progress: Progress = lambda _: None, clock: Callable[[], float] = time.time,
          monotonic: Callable[[], float] = time.monotonic) -> MergeReport:
    """Run the merge queue once (what ``issues.merge`` does)."""
    return MergeQueue(settings, store, batch=batch, progress=progress, clock=clock,
                      monotonic=monotonic).run(numbers, dry_run=dry_run)


__all__ = ["MergeQueue", "MergeReport", "CheckResult", "merge", "status", "run_on_host", "merge_dir",
           "fetch_issue", "bring_home",
           "EXIT_MERGED", "EXIT_NOTHING", "EXIT_REJECTED", "EXIT_REFUSED"]
