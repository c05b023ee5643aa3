"""The git steps on one agent's repository, all through :mod:`parallel_autopilot.git`.

The workspace is the agent's OWN clone (``git clone --shared`` of the user's
repository, whose ``.git`` the container sees read-only): before each issue the
base is fetched from ``origin`` (the user's repository) into
``refs/remotes/origin/<base>`` and the issue branch starts there. A linked
worktree of the old layout (no ``origin``) starts from the shared ``<base>``.

Work is never silently dropped: whatever an interrupted or failed attempt left
uncommitted is stashed (``git stash push -u``) with a message naming the agent,
the issue and why, in the agent's own repository
(``git -C .worktrees/agent-NNN stash list``).

Between issues HEAD is detached, so no ``autopilot/issue-*`` branch stays
checked out here while another agent may need it (git 2.39 lets ``checkout -B``
reset a branch that another worktree has checked out).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable

from ..errors import GitError
from ..git import Git
from .kinds import identity_email

#: What makes a stash worth retrying: another agent holds the shared ``refs/stash`` lock
#: (git then says "Cannot save the current status" last, and leaves the tree as it was).
_TRANSIENT = ("cannot lock ref", "unable to create", "File exists", "Cannot save the current status")


class Workspace:
    """The worktree at ``path``, worked by ``agent`` on branches started from ``base``."""

    def __init__(self, path: str | os.PathLike, agent: str, base: str, timeout: float | None = None,
                 sleep: Callable[[float], None] = time.sleep):
        self.path = Path(path)
        self.agent = agent
        self.base = base
        self.sleep = sleep
        # No git timeout below the watchdog's: a hung hook must end in a restart,
        # which clears the lock it holds; a killed git would leave index.lock behind.
        # A user's commit.gpgsign (copied ~/.gitconfig) would need a key the container lacks.
        # hooks: inside the agent's own container its repository's hooks are its own business.
        self.git = Git(self.path, timeout=timeout, config={"commit.gpgsign": "false"}, hooks=True)

    def _start_point(self) -> str:
        """What issue branches start from: the user's base, fetched fresh into an own clone."""
        if not self.git.ok("config", "--get", "remote.origin.url"):
            return self.base  # old layout: the shared repository's own branch
        ref = f"refs/remotes/origin/{self.base}"
        self.git.fetch_ref("origin", f"refs/heads/{self.base}", ref)
        return ref

    def check_base(self) -> str:
        """The base branch's commit; GitError naming the setting when it does not exist.

        Checked at boot: a wrong base would otherwise fail every attempt of every issue.
        """
        try:
            return self.git.rev_parse(self._start_point())
        except GitError:
            raise GitError(f"base branch {self.base!r} does not exist in the repository of {self.path}: "
                           "set AUTOPILOT_BASE_BRANCH (autopilot.base_branch) to an existing branch") from None

    def clear_stale_lock(self) -> Path | None:
        """Remove ``index.lock`` left by a git killed with a previous incarnation; its path or None.

        Only called at boot: this worktree is ours alone and nothing of ours runs yet.
        """
        lock = self.git.git_dir() / "index.lock"
        try:
            lock.unlink()
        except FileNotFoundError:
            return None
        return lock

    def dirty(self) -> bool:
        """True when anything is modified, staged or untracked."""
        return self.git.is_dirty()

    def salvage(self, message: str, attempts: int = 5) -> str | None:
        """Stash everything uncommitted (untracked too) under ``message``; the stash sha or None."""
        for attempt in range(1, attempts + 1):
            try:
                return self.git.stash_push(message, name=self.agent, email=identity_email(self.agent))
            except GitError as err:
                if attempt == attempts or not any(t in str(err) for t in _TRANSIENT):
                    raise
                self.sleep(0.2 * attempt)  # another agent is updating refs/stash
        return None

    def start_branch(self, branch: str) -> str:
        """``git checkout -B <branch> <base>``; return the base commit the branch starts at.

        Taken even if another worktree still has it checked out: we hold the
        lease, so that worktree's agent is dead or lost its lease (a container
        killed mid-issue keeps its worktree on the branch until it boots again).
        """
        self.git.checkout_new_branch(branch, self._start_point(), ignore_other_worktrees=True)
        return self.git.rev_parse("HEAD")

    def current_branch(self) -> str | None:
        """The checked-out branch, None when detached."""
        return self.git.current_branch()

    def head(self) -> str:
        """The commit HEAD points at."""
        return self.git.rev_parse("HEAD")

    def commit_all(self, subject: str, trailers: dict[str, str]) -> str | None:
        """Commit every change (``git add -A``) as the agent; the new sha, or None if nothing changed."""
        body = "\n".join(f"{key}: {value}" for key, value in trailers.items())
        return self.git.commit_all(f"{subject}\n\n{body}\n", name=self.agent, email=identity_email(self.agent))

    def foreign_refs(self, branch: str) -> dict[str, str]:
        """Every ref except ``branch`` (the agent's own) and ``refs/stash``: name -> sha.

        Compared before and after the agent runs: an agent that moves, makes or
        deletes any other ref (``git update-ref refs/heads/main HEAD``, deleting a
        remote-tracking branch) has done something no issue asks for. Only in an
        own clone: in the old shared layout other agents move refs all the time.
        """
        if not self.git.ok("config", "--get", "remote.origin.url"):
            return {}
        out = self.git.run("for-each-ref", "--format=%(refname) %(objectname)")
        refs = dict(line.split(" ", 1) for line in out.splitlines() if line)
        refs.pop(f"refs/heads/{branch}", None)
        refs.pop("refs/stash", None)
        return refs

    def discard_leftovers(self) -> None:
        """Drop what the check left (caches, reports): everything of the attempt is committed by now."""
        self.git.run("reset", "--quiet", "--hard")
        self.git.run("clean", "-fdq")

    def detach(self) -> None:
        """Leave the issue branch (HEAD stays on its commit) so other worktrees may take it."""
        if self.git.current_branch() is not None:
            self.git.detach()
