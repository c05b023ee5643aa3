"""The one place that runs git. Standard library only: the container runtime uses it too.

``Git(path)`` runs ``git -C path <argv>`` (an argv list, never a shell) with a
timeout and returns its stdout. A failing command raises :class:`GitError`
whose one line is the git command and git's last error line on stderr. Helpers cover
what the worktree manager (host) and the runtime (container) need.

The host's git acts on what agents wrote: their branches, the merge worktree, the
user's checkout after a merge. So a ``Git`` runs no hook and no fsmonitor program
and recurses into no submodule (:data:`NO_PROGRAMS`, on the command line, where it
beats every configuration file) unless it is made with ``hooks=True``: only the
runtime does that, inside the agent's own container, where the hooks are the agent's.
A repository whose configuration an agent writes (its clone) is never the
repository of a host git: the host reads it as a remote (``git fetch``,
``git ls-remote``: ``upload-pack``, which git keeps safe for untrusted
repositories) and looks at its files through a git directory of its own
(``git/clones.py``).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

from ..errors import GitError

#: Seconds a git command may run before it is killed and reported.
DEFAULT_TIMEOUT = 60.0

#: What every host git is told on its command line (``-c``, which wins over every file's
#: settings): run no hook, no fsmonitor program, recurse into no submodule. A relative
#: ``core.hooksPath`` (husky's ``.husky``) would run hooks from the checked-out tree, which
#: on the host is the agents' code; a submodule's own config is whatever its committer wrote.
NO_PROGRAMS = {"core.hooksPath": "/dev/null", "core.fsmonitor": "false", "submodule.recurse": "false"}

# Variables that point git at another repository or index. Inherited from a git
# hook (or a test run from one) they would make ``git -C path`` act elsewhere.
_LOCATION_VARIABLES = (
    "GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_COMMON_DIR", "GIT_OBJECT_DIRECTORY",
    "GIT_ALTERNATE_OBJECT_DIRECTORIES", "GIT_NAMESPACE", "GIT_PREFIX",
)


def _owner_credentials(path: Path) -> tuple[int, int, str] | None:
    """(uid, gid, home) to run git as, when root works on another user's repository.

    git refuses a repository its user does not own ("dubious ownership"), and
    what root's git writes (worktree metadata, refs) would be read-only for
    the agents, who run as the owner. So root runs git AS the owner: nothing
    of the owner's repository is trusted with root, and every file git makes
    belongs to the owner.
    """
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return None
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    stat = probe.stat()
    if stat.st_uid == 0:
        return None
    try:
        import pwd

        home = pwd.getpwuid(stat.st_uid).pw_dir
    except (ImportError, KeyError):
        home = "/nonexistent"
    return stat.st_uid, stat.st_gid, home


def version(timeout: float = 20) -> str | None:
    """``git version 2.39.5`` of this machine, or None when git is not installed."""
    try:
        proc = subprocess.run(["git", "--version"], capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def toplevel_of(start: str | os.PathLike, timeout: float | None = DEFAULT_TIMEOUT) -> Path | None:
    """The top directory of the git worktree containing ``start``; None when it is in none."""
    _, proc = Git(start, timeout=timeout)._run(["rev-parse", "--show-toplevel"], None, None)
    return Path(proc.stdout.strip()) if proc.returncode == 0 else None


@dataclass(frozen=True)
class WorktreeEntry:
    """One record of ``git worktree list --porcelain``."""

    path: Path
    head: str | None = None  # None for a bare repository or a branch without commits
    branch: str | None = None  # short name (``agent/001``); None when detached or bare
    bare: bool = False
    detached: bool = False
    locked: bool = False
    prunable: bool = False  # git knows its directory is gone


class Git:
    """git commands run in one repository or worktree.

    ``timeout`` is in seconds (None: no limit); ``config`` adds ``-c key=value``
    to every command (e.g. ``safe.directory`` inside a container); ``popen`` is
    ``subprocess.Popen`` or a stand-in. Without ``hooks`` every command carries
    :data:`NO_PROGRAMS`; ``hooks=True`` is for the runtime in the agent's container.
    ``git_dir`` names the git directory explicitly (``--git-dir``, with ``path`` as
    the work tree): a ``.git`` file in ``path`` is then never read (see :meth:`linked`).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        timeout: float | None = DEFAULT_TIMEOUT,
        config: Mapping[str, str] | None = None,
        popen: Callable[..., subprocess.Popen] = subprocess.Popen,
        *,
        hooks: bool = False,
        git_dir: str | os.PathLike | None = None,
    ) -> None:
        self.path = Path(path).absolute()
        self.timeout = timeout
        self.config = {**({} if hooks else NO_PROGRAMS), **(config or {})}
        self.explicit_git_dir = Path(git_dir).absolute() if git_dir is not None else None
        self._popen = popen
        self._as_owner = _owner_credentials(self.path)
        self._common_dir: Path | None = None

    def makedirs(self, path: str | os.PathLike) -> None:
        """``mkdir -p`` for a directory git will write into, owned like the repository.

        Root working on another user's repository runs git as that user (see
        ``_owner_credentials``); directories made for git must be theirs too.
        """
        path = Path(path)
        missing = []
        probe = path
        while not probe.exists() and probe != probe.parent:
            missing.append(probe)
            probe = probe.parent
        path.mkdir(parents=True, exist_ok=True)
        if self._as_owner:
            uid, gid, _ = self._as_owner
            for made in missing:
                os.chown(made, uid, gid)

    def __repr__(self) -> str:
        return f"Git({str(self.path)!r})"

    # -- running -----------------------------------------------------------

    def _run(self, args: Sequence[str], timeout: float | None, env: Mapping[str, str] | None):
        argv = ["git", "-C", str(self.path)]
        if self.explicit_git_dir is not None:
            argv += [f"--git-dir={self.explicit_git_dir}", f"--work-tree={self.path}"]
        for key, value in self.config.items():
            argv += ["-c", f"{key}={value}"]
        argv += [str(a) for a in args]
        full_env = {k: v for k, v in os.environ.items() if k not in _LOCATION_VARIABLES}
        full_env["GIT_TERMINAL_PROMPT"] = "0"  # never wait for a password nobody types
        full_env.update(env or {})
        owner = {}
        if self._as_owner:
            uid, gid, home = self._as_owner
            owner = {"user": uid, "group": gid, "extra_groups": [], "cwd": "/"}
            full_env["HOME"] = home
        shown = "git " + " ".join(str(a) for a in args)
        limit = self.timeout if timeout is None else timeout
        try:
            # its own process group, so a timeout also ends what git started
            # (hooks, credential helpers) instead of waiting on their pipes
            proc = self._popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, errors="replace",
                               env=full_env, start_new_session=True, **owner)
        except FileNotFoundError:
            raise GitError("git is not installed: install git (e.g. apt-get install git)") from None
        try:
            out, err = proc.communicate(timeout=limit)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            raise GitError(f"{shown} (in {self.path}) timed out after {limit:g}s: "
                           "check for a stuck lock, hook or slow disk") from None
        except BaseException:  # KeyboardInterrupt: git is in its own session, end it too
            _kill_group(proc)
            raise
        return shown, subprocess.CompletedProcess(argv, proc.returncode, out, err)

    def run(self, *args: str, timeout: float | None = None, env: Mapping[str, str] | None = None) -> str:
        """Run ``git <args>`` here and return its stdout; GitError when it fails."""
        shown, proc = self._run(args, timeout, env)
        if proc.returncode != 0:
            raise GitError(f"{shown} (in {self.path}) failed: {_last_line(proc.stderr, proc.returncode)}")
        return proc.stdout

    def ok(self, *args: str, timeout: float | None = None) -> bool:
        """Run a yes/no git command: True on exit 0, False on exit 1, GitError otherwise."""
        return self._probe(args, timeout)[0]

    def _probe(self, args: Sequence[str], timeout: float | None = None) -> tuple[bool, str]:
        shown, proc = self._run(args, timeout, None)
        if proc.returncode in (0, 1):
            return proc.returncode == 0, proc.stdout
        raise GitError(f"{shown} (in {self.path}) failed: {_last_line(proc.stderr, proc.returncode)}")

    # -- where we are ------------------------------------------------------

    def toplevel(self) -> Path:
        """The top directory of this worktree."""
        return Path(self.run("rev-parse", "--show-toplevel").strip())

    def git_dir(self) -> Path:
        """This worktree's own git directory (``.git`` or ``.git/worktrees/<name>``), absolute."""
        return self._absolute(self.run("rev-parse", "--git-dir").strip())

    def common_dir(self) -> Path:
        """The repository's shared git directory (``.git``) even from a linked worktree, absolute.

        Asked once per Git: a repository's git directory does not move under a
        running command, and worktrees.create alone would ask for it per agent.
        """
        if self._common_dir is None:
            self._common_dir = self._absolute(self.run("rev-parse", "--git-common-dir").strip())
        return self._common_dir

    def linked(self, path: str | os.PathLike, config: Mapping[str, str] | None = None) -> Git:
        """git in ``path``, a linked worktree of this repository, through its administrative directory.

        The directory is found in THIS repository's ``worktrees/`` (its ``gitdir``
        file names ``path``), never through the ``.git`` file inside ``path``:
        whoever writes the worktree (a merge check, an agent of the old layout)
        could point that file at a git directory of its own, with its own hooks
        and configuration. GitError when ``path`` is no worktree of this repository.
        """
        target = _real(Path(path).absolute()) / ".git"  # the .git entry itself is not followed
        admin = self.common_dir() / "worktrees"
        for candidate in sorted(admin.iterdir()) if admin.is_dir() else []:
            try:
                named = Path((candidate / "gitdir").read_text().strip())
            except OSError:
                continue
            if named.is_absolute() and _real(named.parent) / named.name == target:
                return Git(path, timeout=self.timeout, config=config, popen=self._popen, git_dir=candidate)
        raise GitError(f"{path} is not a worktree of {self.path}: "
                       "run `git worktree prune` there and let the tool make it again")

    def _absolute(self, out: str) -> Path:
        path = Path(out)
        return (path if path.is_absolute() else self.path / path).resolve()

    def current_branch(self) -> str | None:
        """The short name of the checked-out branch; None when HEAD is detached."""
        on_branch, name = self._probe(["symbolic-ref", "--quiet", "--short", "HEAD"])
        return (name.strip() or None) if on_branch else None

    def rev_parse(self, rev: str = "HEAD") -> str:
        """The full commit sha ``rev`` names; GitError when it names no commit."""
        return self.run("rev-parse", "--verify", "--end-of-options", f"{rev}^{{commit}}").strip()

    def has_commits(self) -> bool:
        """False for a repository whose current branch has no commit yet."""
        return self.ok("rev-parse", "--verify", "--quiet", "HEAD^{commit}")

    # -- state of the tree -------------------------------------------------

    def status(self, submodules: bool = True) -> list[str]:
        """``git status --porcelain`` lines, untracked files included (ignored ones not).

        ``submodules=False`` does not look inside submodules: git would run in each with
        that submodule's own configuration, which in an agent's tree is the agent's.
        """
        out = self.run("status", "--porcelain=v1", "--untracked-files=all",
                       f"--ignore-submodules={'none' if submodules else 'all'}")
        return [line for line in out.splitlines() if line]

    def is_dirty(self, submodules: bool = True) -> bool:
        """True when anything is modified, staged, deleted or untracked (see :meth:`status`)."""
        return bool(self.status(submodules))

    # -- branches ----------------------------------------------------------

    def branch_exists(self, name: str) -> bool:
        """True when the local branch ``name`` exists."""
        return self.ok("show-ref", "--verify", "--quiet", f"refs/heads/{name}")

    def branches(self, pattern: str | None = None) -> list[str]:
        """Local branch names, optionally matching a ``for-each-ref`` pattern (``agent/*``)."""
        ref = f"refs/heads/{pattern}" if pattern else "refs/heads/"
        out = self.run("for-each-ref", "--format=%(refname:short)", ref)
        return [line for line in out.splitlines() if line]

    def commits_ahead(self, branch: str, base: str) -> int:
        """How many commits ``branch`` has that ``base`` does not."""
        return int(self.run("rev-list", "--count", f"{base}..{branch}", "--").strip())

    def is_merged(self, branch: str, base: str) -> bool:
        """True when every commit of ``branch`` is in ``base``."""
        return self.ok("merge-base", "--is-ancestor", branch, base)

    def merge(self, branch: str, message: str) -> bool:
        """``git merge --no-ff`` of ``branch`` into the checked-out branch.

        True when merged; False on a conflict, after ``git merge --abort`` has
        put the checkout back as it was. Other failures raise GitError.
        """
        shown, proc = self._run(["merge", "--no-ff", "--no-edit", "-m", message, branch], None, None)
        if proc.returncode == 0:
            return True
        if self.ok("rev-parse", "-q", "--verify", "MERGE_HEAD"):
            self.run("merge", "--abort")
            return False
        raise GitError(f"{shown} (in {self.path}) failed: {_last_line(proc.stderr, proc.returncode)}")

    def merge_or_conflicts(self, rev: str, message: str, env: Mapping[str, str] | None = None) -> list[str] | None:
        """``git merge --no-ff rev`` into HEAD: None when merged, else the conflicting paths.

        On a conflict the merge is aborted (the tree is as before). Other failures raise GitError.
        """
        shown, proc = self._run(["merge", "--no-ff", "--no-edit", "-m", message, rev], None, env)
        if proc.returncode == 0:
            return None
        if self.ok("rev-parse", "-q", "--verify", "MERGE_HEAD"):
            files = [f for f in self.run("diff", "--name-only", "--diff-filter=U").splitlines() if f]
            self.run("merge", "--abort")
            return files or ["(unknown)"]
        raise GitError(f"{shown} (in {self.path}) failed: {_last_line(proc.stderr, proc.returncode)}")

    def update_ref(self, ref: str, new: str, old: str | None = None, message: str | None = None) -> bool:
        """Set ``ref`` to ``new``; with ``old`` only if it still points there (compare and swap).

        True when updated; False when the ref had moved (``old`` no longer matches).
        Git locks the ref and checks ``old`` under that lock: a concurrent commit or
        push is never overwritten.
        """
        args = ["update-ref"] + (["-m", message] if message else []) + [ref, new] + ([old] if old else [])
        shown, proc = self._run(args, None, None)
        if proc.returncode == 0:
            return True
        if old is not None and ("cannot lock ref" in proc.stderr or "is at" in proc.stderr):
            return False
        raise GitError(f"{shown} (in {self.path}) failed: {_last_line(proc.stderr, proc.returncode)}")

    def ref_sha(self, ref: str) -> str | None:
        """The sha ``ref`` points at, None when it does not exist."""
        found, out = self._probe(["rev-parse", "-q", "--verify", f"{ref}^{{commit}}"])
        return out.strip() if found and out.strip() else None

    def has_commit(self, sha: str) -> bool:
        """True when the object store holds commit ``sha``."""
        if not sha:
            return False
        _, proc = self._run(["cat-file", "-e", f"{sha}^{{commit}}"], None, None)
        return proc.returncode == 0  # 128 when the object is missing

    # -- reading a change (the GUI's review page: fed from here, never from the browser) --

    #: what a diff of agent-written files must never run: external diff drivers, textconv filters
    DIFF_SAFE = ("--no-ext-diff", "--no-textconv", "--no-color", "--no-renames")

    def merge_base(self, a: str, b: str) -> str | None:
        """The best common ancestor of ``a`` and ``b``; None when they share none."""
        found, out = self._probe(["merge-base", a, b])
        return out.strip() if found and out.strip() else None

    def diff_numstat(self, base: str, head: str) -> list[tuple[int | None, int | None, str]]:
        """(lines added, lines deleted, path) per file changed from ``base`` to ``head``; None, None: binary."""
        out = self.run("diff", *self.DIFF_SAFE, "--numstat", "-z", base, head, "--")
        files = []
        for record in out.split("\0"):
            if not record:
                continue
            added, deleted, path = record.split("\t", 2)
            files.append((None if added == "-" else int(added), None if deleted == "-" else int(deleted), path))
        return files

    def diff_patch(self, base: str, head: str, path: str) -> str:
        """The unified diff of one file from ``base`` to ``head`` (3 lines of context)."""
        return self.run("diff", *self.DIFF_SAFE, "--unified=3", base, head, "--", f":(literal){path}")

    def remote_head(self, source: str | os.PathLike) -> tuple[str | None, str | None]:
        """(branch, commit) of HEAD in the repository ``source``, read as a remote.

        ``git ls-remote --symref`` runs ``upload-pack`` there, which git keeps safe for
        untrusted repositories. The branch is None when HEAD is detached; both are None
        when HEAD has no commit.
        """
        branch = sha = None
        for line in self.run("ls-remote", "--symref", str(source), "HEAD").splitlines():
            value, _, name = line.partition("\t")
            if name != "HEAD":
                continue
            if value.startswith("ref: refs/heads/"):
                branch = value[len("ref: refs/heads/"):]
            elif _SHA.match(value):
                sha = value
        return (branch if sha else None), sha

    def fetch_ref(self, source: str | os.PathLike, ref: str, into: str | None = None) -> bool:
        """``git fetch source +ref:into`` (no tags, no FETCH_HEAD; only the objects when ``into`` is None);
        False when ``source`` lacks ``ref``.

        Fetching runs ``git upload-pack`` in ``source``, which git keeps safe for
        untrusted repositories (no hooks, no repository-configured programs).
        """
        shown, proc = self._run(["fetch", "--quiet", "--no-tags", "--no-write-fetch-head", str(source),
                                 f"+{ref}:{into}" if into else ref], None, None)
        if proc.returncode == 0:
            return True
        if "couldn't find remote ref" in proc.stderr:
            return False
        raise GitError(f"{shown} (in {self.path}) failed: {_last_line(proc.stderr, proc.returncode)}")

    def checkout_detached(self, rev: str) -> None:
        """Force HEAD, index and tree to ``rev`` (detached), dropping every change and untracked file."""
        if self.ok("rev-parse", "-q", "--verify", "MERGE_HEAD"):
            self.run("merge", "--abort")
        self.run("checkout", "--quiet", "--force", "--detach", rev, "--")
        self.run("clean", "-ffdxq")

    def on_a_branch(self, rev: str) -> bool:
        """True when commit ``rev`` is reachable from some local branch (not only from HEAD)."""
        out = self.run("for-each-ref", "--count=1", f"--contains={rev}", "--format=%(refname)", "refs/heads/")
        return bool(out.strip())

    def delete_branch(self, name: str, force: bool = False) -> None:
        """Delete a local branch; without ``force`` git refuses an unmerged one."""
        self.run("branch", "-D" if force else "-d", "--", name)

    def detach(self) -> None:
        """Detach HEAD at its commit, so the branch it was on may be checked out elsewhere."""
        self.run("checkout", "--quiet", "--detach")

    def checkout_new_branch(self, name: str, start: str, ignore_other_worktrees: bool = False) -> None:
        """``git checkout -B name start``: make (or RESET) branch ``name`` at ``start`` and switch to it.

        ``ignore_other_worktrees`` takes the branch even while another worktree has it
        checked out (newer git refuses that; 2.39 does not ask).
        """
        flags = ["--ignore-other-worktrees"] if ignore_other_worktrees else []
        self.run("checkout", "--quiet", *flags, "-B", name, start, "--")

    # -- commits and salvage ----------------------------------------------

    def commit_all(self, message: str, name: str | None = None, email: str | None = None) -> str | None:
        """Stage everything (untracked too) and commit; the new sha, or None when nothing changed.

        ``name``/``email`` set author and committer, so a container without a
        git identity can commit.
        """
        self.run("add", "--all")
        if self.ok("diff", "--cached", "--quiet"):
            return None
        self.run("commit", "--quiet", "--no-edit", "-m", message, env=_identity(name, email))
        return self.rev_parse("HEAD")

    def stash_push(self, message: str, name: str | None = None, email: str | None = None) -> str | None:
        """Save a dirty tree (untracked files too) with ``git stash push -u``; the stash sha or None.

        The stash list lives in the shared ``.git``: every worktree sees it.
        """
        if not self.is_dirty():
            return None
        self.run("stash", "push", "--include-untracked", "-m", message, env=_identity(name, email))
        return self.rev_parse("refs/stash")

    # -- worktrees ---------------------------------------------------------

    def worktree_list(self) -> list[WorktreeEntry]:
        """All worktrees of the repository, the main one first."""
        entries, record = [], {}
        for line in self.run("worktree", "list", "--porcelain").splitlines() + [""]:
            if not line:
                if record:
                    entries.append(_entry(record))
                record = {}
                continue
            key, _, value = line.partition(" ")
            record[key] = value
        return entries

    def worktree_add_detached(self, path: str | os.PathLike, rev: str) -> None:
        """Add a worktree at ``path`` with a detached HEAD at ``rev`` (no branch of its own)."""
        self.run("worktree", "add", "--quiet", "--detach", "--", str(path), rev)

    def worktree_add(self, path: str | os.PathLike, branch: str, start: str | None = None) -> None:
        """Add a worktree at ``path``: on existing ``branch``, or on a new one from ``start``."""
        if start is None:
            self.run("worktree", "add", "--quiet", "--", str(path), branch)
        else:
            self.run("worktree", "add", "--quiet", "-b", branch, "--", str(path), start)

    def worktree_remove(self, path: str | os.PathLike, force: bool = False) -> None:
        """Remove a worktree; without ``force`` git refuses a dirty one."""
        # a single --force removes a dirty worktree; a second one a locked worktree
        flags = ["--force", "--force"] if force else []
        self.run("worktree", "remove", *flags, "--", str(path))

    def worktree_unlock(self, path: str | os.PathLike) -> None:
        """Unlock a locked worktree (prune and remove skip locked ones)."""
        self.run("worktree", "unlock", "--", str(path))

    def worktree_prune(self) -> None:
        """Forget worktrees whose directories are gone."""
        self.run("worktree", "prune")

    def is_ignored(self, path: str | os.PathLike) -> bool:
        """True when git ignores ``path`` (``.gitignore``, ``info/exclude``...)."""
        return self.ok("check-ignore", "--quiet", "--no-index", "--", str(path))


_SHA = re.compile(r"^[0-9a-f]{40}([0-9a-f]{24})?$")


def _real(path: Path) -> Path:
    # git stores real paths; compare through symlinks (/tmp -> /private/tmp on macOS)
    return path.resolve()


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.communicate()


def _identity(name: str | None, email: str | None) -> dict[str, str]:
    env = {}
    if name:
        env["GIT_AUTHOR_NAME"] = env["GIT_COMMITTER_NAME"] = name
    if email:
        env["GIT_AUTHOR_EMAIL"] = env["GIT_COMMITTER_EMAIL"] = email
    return env


def _entry(record: Mapping[str, str]) -> WorktreeEntry:
    branch = record.get("branch")
    if branch and branch.startswith("refs/heads/"):
        branch = branch[len("refs/heads/"):]
    return WorktreeEntry(
        path=Path(record["worktree"]),
        head=record.get("HEAD"),
        branch=branch or None,
        bare="bare" in record,
        detached="detached" in record,
        locked="locked" in record,
        prunable="prunable" in record,
    )


def _last_line(stderr: str, code: int) -> str:
    lines = [line.strip() for line in (stderr or "").splitlines() if line.strip()]
    # git may follow its error with advice ("If you are sure... run git branch -D"):
    # the last fatal/error line says what went wrong
    errors = [line for line in lines if line.startswith(("fatal:", "error:"))]
    return (errors or lines or [f"exit code {code}, no message"])[-1]


__all__ = ["Git", "WorktreeEntry", "DEFAULT_TIMEOUT", "NO_PROGRAMS"]
