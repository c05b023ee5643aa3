"""The agents' repositories: ``<repo>/.worktrees/agent-NNN``, each a clone of its OWN.

Isolation (issue 10). Each agent works in its own repository, made with
``git clone --shared``: its ``.git`` is a real directory with its own refs,
index, stash and new objects, and ``objects/info/alternates`` points at the
user's object directory, so a clone costs no copy. The containers mount the
user's ``.git`` READ-ONLY at its own absolute path (the alternates path, and
the clone's ``origin``) and only their own clone read-write: an agent can move
its own refs and nothing else - not the user's base, not another agent's
branches, not the user's object store (``git gc --prune=now`` in a clone prunes
only the clone's own objects). The host side - the merge queue - fetches
``autopilot/issue-N`` from the clone into the user's repository.

The host reads a clone only in ways an untrusted repository cannot turn
against it, even while its agent rewrites it: the clone is never the
repository of a host git. Its refs and HEAD are read as a remote's
(``git ls-remote``/``git fetch``: ``upload-pack``, which git keeps safe for
untrusted repositories); its files are compared by a git directory of the
host's own with a copy of the clone's index (:func:`clone_state`), so the
clone's configuration (filters, fsmonitor, includes, hooks) is never read. A
clone whose configuration names a program anyway is evidence of an attack: it
is listed ``suspect`` and kept for the user to look at.

:func:`create` is idempotent (a healthy clone is reused untouched; an empty or
missing directory is cloned; an agent worktree of the OLD layout - a linked
``git worktree`` sharing the user's ``.git`` - is migrated when clean, its
``agent/NNN`` branch kept, and refused with the fix when it has uncommitted
changes). :func:`remove` never loses work: it refuses a dirty clone or one
holding refs (branches, stash) whose commits no branch of the user's
repository has, unless forced - and it checks every target before it touches
any. Branches ``autopilot/issue-*`` of the user's repository are never deleted here.
Every git command goes through :mod:`parallel_autopilot.git`.
"""

from __future__ import annotations

import builtins
import os
import re
import shutil
import stat
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Protocol

from ..errors import AgentNotFound, GitError, UnmergedWork, WorktreeDirty
from ..ids import agent_branch, agent_id, agent_ids
from .runner import Git, WorktreeEntry


class Settings(Protocol):
    """What the clones need of a configuration: where things are (``config.Settings`` has it;
    the clones sit below the configuration and take its values, they do not load one)."""

    repo: Path
    base_branch: str | None

    @property
    def worktrees_path(self) -> Path: ...

    @property
    def state_path(self) -> Path: ...

    @property
    def logs_path(self) -> Path: ...


_AGENT_DIR = re.compile(r"^agent-[0-9]{3}$")


@dataclass(frozen=True)
class Worktree:
    """One agent's worktree as it is now.

    ``branch`` is what is checked out (``agent/001``, or ``autopilot/issue-7``
    while the agent works; None when detached or missing); ``ahead`` counts the
    commits of ``agent_branch`` not in ``base`` (None when that branch is gone).
    ``state`` is ``ok`` (the agent's own clone), ``legacy`` (a linked worktree
    of the old layout), ``missing`` (registered, directory gone), ``broken``
    (registered, but its ``.git`` file is gone), ``unregistered`` (a directory
    that is neither) or ``suspect`` (a clone whose config names programs, or
    whose index git cannot read alone: not inspected). ``unmerged`` lists a
    clone's refs whose commits no branch of the user's repository has.
    """

    id: str
    path: Path
    agent_branch: str
    base: str
    state: str
    branch: str | None = None
    head: str | None = None
    dirty: bool | None = None
    ahead: int | None = None
    locked: bool = False
    unmerged: tuple[str, ...] = ()

    @property
    def exists(self) -> bool:
        """True when the directory is there."""
        return self.state != "missing"

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data."""
        data = asdict(self)
        data["path"] = str(self.path)
        data["exists"] = self.exists
        return data


@dataclass
class RemoveReport:
    """What :func:`remove` did: worktrees removed, agent branches deleted, and what it kept and why."""

    removed: list[str] = field(default_factory=builtins.list)
    deleted_branches: list[str] = field(default_factory=builtins.list)
    kept: dict[str, str] = field(default_factory=dict)  # agent id -> one-line reason

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data."""
        return {"removed": self.removed, "deleted_branches": self.deleted_branches, "kept": self.kept}

    def summary(self) -> str:
        """Human-readable lines: removed, deleted branches, and each kept worktree with its reason."""
        lines = [f"removed worktrees: {', '.join(self.removed) or 'none'}",
                 f"deleted branches: {', '.join(self.deleted_branches) or 'none'}"]
        lines += [f"kept {agent}: {why} (commit or merge it, or use --force)" for agent, why in self.kept.items()]
        return "\n".join(lines)


def base_branch(settings: Settings, git: Git | None = None) -> str:
    """The branch agents start from: ``autopilot.base_branch``, else the repository's current branch."""
    git = git or Git(settings.repo)
    base = settings.base_branch or git.current_branch()
    if not base:
        raise GitError(f"{settings.repo} has a detached HEAD: check out a branch or set autopilot.base_branch")
    if not git.branch_exists(base):
        raise GitError(f"base branch {base!r} does not exist in {settings.repo}: "
                       "create it or set autopilot.base_branch to an existing branch")
    return base


def create(settings: Settings, n: int, *, git: Git | None = None, base: str | None = None) -> list[Worktree]:
    """Make (or reuse, or repair, or migrate) the clones ``agent-001`` .. ``agent-00n`` at the base branch.

    ``git`` and ``base`` are what a Fleet resolved already (default: resolved here).
    """
    git = _main_checkout(settings, git)
    base = base or base_branch(settings, git)
    root = settings.worktrees_path
    registered = _registered(git)
    wanted = agent_ids(n)
    # check every directory before creating any, so a refusal leaves nothing half-made
    for agent in wanted:
        path = root / agent
        entry = registered.get(_key(path))
        if entry is not None:
            if entry.locked:
                raise GitError(f"{path} is a locked worktree of the old layout: run `git worktree unlock {path}`, "
                               "then retry (it is migrated to the agent's own clone)")
            if _healthy(path) and git.linked(path).is_dirty(submodules=False):
                raise WorktreeDirty(f"{path} is a worktree of the old layout (sharing {git.common_dir()}) with "
                                    "uncommitted changes: commit or stash them there, then retry (it is migrated "
                                    "to the agent's own clone; its agent branch is kept)")
            continue
        if path.exists() and _non_empty(path) and not _is_clone(path, git):
            raise GitError(f"{path} exists but is not an agent's clone of {settings.repo}: "
                           "move it away or delete it, then retry")
    git.makedirs(root)
    exclude_tool_dirs(settings, git)
    for agent in wanted:
        path = root / agent
        entry = registered.get(_key(path))
        if entry is not None:  # the old layout: clean (checked above), so nothing is lost
            if _healthy(path):
                # forced: git's own cleanliness check would look into submodules, with their config
                git.worktree_remove(path, force=True)
            else:
                if path.exists():
                    shutil.rmtree(path)
            git.worktree_prune()
        if _is_clone(path, git):
            continue  # healthy: reuse untouched, whatever it has checked out
        if path.exists():
            path.rmdir()  # empty (checked above)
        common = git.common_dir()
        git.run("clone", "--quiet", "--shared", "--no-checkout", "--no-tags", "--origin", "origin",
                str(settings.repo), str(path))
        clone = Git(path, timeout=git.timeout)
        # name the user's git directory itself, by the path the containers mount it at
        # (resolved: a symlinked /tmp, a separate git dir), for the objects and for origin
        (path / ".git" / "objects" / "info" / "alternates").write_text(f"{common / 'objects'}\n")
        clone.run("remote", "set-url", "origin", str(common))
        clone.run("checkout", "--quiet", "--detach", f"refs/remotes/origin/{base}", "--")
        for local in clone.branches():
            clone.delete_branch(local, force=True)  # what clone made; the base lives in origin/<base>
    found = {w.id: w for w in list(settings, git=git, base=base)}
    return [found[agent] for agent in wanted]


def list(settings: Settings, *, git: Git | None = None,  # noqa: A001 - the API reads worktrees.list()
         base: str | None = None) -> list[Worktree]:
    """Every agent worktree (registered, or an ``agent-NNN`` directory) in id order."""
    git = _main_checkout(settings, git)
    base = base or base_branch(settings, git)
    root = settings.worktrees_path
    by_id: dict[str, WorktreeEntry] = {}
    for entry in git.worktree_list():
        if _key(entry.path.parent) == _key(root) and _AGENT_DIR.match(entry.path.name):
            by_id[entry.path.name] = entry
    on_disk = {p.name for p in root.iterdir() if p.is_dir() and _AGENT_DIR.match(p.name)} if root.is_dir() else set()
    result = []
    for agent in sorted(set(by_id) | on_disk):
        path = root / agent
        if agent not in by_id and _is_clone(path, git):
            result.append(_inspect_clone(git, agent, path, base))
        else:
            result.append(_inspect(git, agent, path, by_id.get(agent), base))
    return result


def remove(settings: Settings, ids: Iterable[Any] | None = None, force: bool = False,
           keep_unsafe: bool = False) -> RemoveReport:
    """Remove agent clones (all, or those in ``ids``); old-layout worktrees with their merged branches.

    Without ``force``, a dirty clone, refs in it whose commits no branch of the
    user's repository has (an attempt not fetched yet, a stash), or (old
    layout) unmerged commits on the agent branch or a detached HEAD on no
    branch make it raise WorktreeDirty/UnmergedWork
    naming every problem, and NOTHING is removed. With ``keep_unsafe`` it does
    not raise: it removes what is safe and reports the rest in ``kept``. With
    ``force`` everything goes (issue branches ``autopilot/issue-*`` still stay).
    """
    git = _main_checkout(settings)
    base = base_branch(settings, git)
    targets = list(settings)
    if ids is not None:
        names = [agent_id(a) for a in ids]
        known = {w.id: w for w in targets}
        missing = [a for a in names if a not in known]
        if missing:
            raise AgentNotFound(f"no worktree {', '.join(missing)} under {settings.worktrees_path}: "
                                "see worktrees.list")
        targets = [known[a] for a in dict.fromkeys(names)]
    problems = {} if force else {w.id: p for w in targets if (p := _problem(git, w, base))}
    if problems and not keep_unsafe:
        dirty = any(kind is WorktreeDirty for kind, _ in problems.values())
        detail = "; ".join(f"{agent} {why}" for agent, (_, why) in problems.items())
        raise (WorktreeDirty if dirty else UnmergedWork)(
            f"refusing to remove, nothing was removed: {detail}: commit or merge the work first, "
            "or use --force to discard it")
    report = RemoveReport(kept={agent: why for agent, (_, why) in problems.items()})
    for w in targets:
        if w.id in report.kept:
            continue
        _remove_one(git, w)
        report.removed.append(w.id)
        if git.branch_exists(w.agent_branch) and (force or git.is_merged(w.agent_branch, base)):
            git.delete_branch(w.agent_branch, force=True)
            report.deleted_branches.append(w.agent_branch)
    root = settings.worktrees_path
    if root.is_dir() and not any(root.iterdir()):
        root.rmdir()
    return report


def drop_merged_issue_branches(settings: Settings) -> list[str]:
    """Delete ``autopilot/issue-*`` branches of the user's repository that are merged into the base.

    Unmerged ones (rejected, not yet merged) are kept; so is every branch when
    the base cannot be resolved.
    """
    git = _main_checkout(settings)
    base = base_branch(settings, git)
    current = git.current_branch()
    dropped = []
    for branch in git.branches("autopilot/issue-*"):
        if branch != current and git.is_merged(branch, base):
            git.delete_branch(branch, force=True)  # -D: "merged" is judged against the base, not HEAD
            dropped.append(branch)
    return dropped


# -- helpers -----------------------------------------------------------------

def _main_checkout(settings: Settings, git: Git | None = None) -> Git:
    git = git or Git(settings.repo)
    if git.git_dir() != git.common_dir():
        raise GitError(f"{settings.repo} is a linked worktree, not the main checkout: "
                       "run from the main checkout or set autopilot.repo to it")
    if not git.has_commits():
        raise GitError(f"{settings.repo} has no commits yet: make a first commit "
                       "(git commit --allow-empty -m init), then create worktrees")
    return git


def _key(path: Path) -> Path:
    # git stores real paths; compare through symlinks (/tmp -> /private/tmp on macOS)
    return Path(path).resolve()


def _registered(git: Git) -> dict[Path, WorktreeEntry]:
    return {_key(e.path): e for e in git.worktree_list()}


def _healthy(path: Path) -> bool:
    # without its .git file, git run in the directory would act on the main checkout
    return (path / ".git").is_file()


def _non_empty(path: Path) -> bool:
    return not path.is_dir() or any(path.iterdir())


def exclude_tool_dirs(settings: Settings, git: Git | None = None) -> None:
    """Keep the tool's own directories out of ``git status``, ``git add -A`` and every merge.

    The state directory (``.autopilot/``), the log directory and the agents'
    ``.worktrees/`` go into ``.git/info/exclude`` when they are created, so they
    never show as changes, never make the user's checkout "dirty" for the merge
    queue and are never committed by an agent working in a linked worktree.
    """
    git = git or Git(settings.repo)
    for root, why in ((settings.worktrees_path, "agents' worktrees"), (settings.state_path, "state"),
                      (settings.logs_path, "logs")):
        _exclude_from_repo(git, settings.repo, root, why)


def _exclude_from_repo(git: Git, repo: Path, root: Path, why: str = "agents' worktrees") -> None:
    """Keep ``root`` out of the main checkout's ``git status`` and ``git add -A``.

    Written to ``.git/info/exclude`` (never to a tracked file), only when the
    directory is inside the repository and not ignored already.
    """
    try:
        relative = _key(root).relative_to(_key(repo))
    except ValueError:
        return
    if relative == Path(".") or git.is_ignored(relative):
        return
    exclude = git.common_dir() / "info" / "exclude"
    exclude.parent.mkdir(parents=True, exist_ok=True)
    text = exclude.read_text() if exclude.exists() else ""
    line = f"/{relative.as_posix()}/\n"
    if line not in text.splitlines(keepends=True):
        exclude.write_text(text + ("" if not text or text.endswith("\n") else "\n")
                           + f"# {why} (parallel-autopilot)\n" + line)


#: Config sections of a clone that name no program. Anything else (filters, includes,
#: diff/merge drivers, credential helpers...) names one: no host git reads a clone's
#: config (see :func:`clone_state`), but a clone that has one is evidence of an attack
#: and is kept for the user to look at ("suspect").
_SAFE_SECTIONS = ("core.", "remote.", "branch.", "extensions.", "gc.", "pack.", "user.", "init.", "advice.",
                  "color.", "status.", "maintenance.", "fetch.", "index.", "feature.", "safe.", "commit.")
#: ...and within those, none of the keys that name a program or another file of config.
_UNSAFE_KEYS = re.compile(r"^(core\.(fsmonitor|sshcommand|pager|editor|askpass|hookspath|gitproxy|worktree"
                          r"|alternaterefscommand)|remote\..*\.(uploadpack|receivepack|vcs|proxy)"
                          r"|extensions\.(worktreeconfig|partialclone))$")


def _is_clone(path: Path, git: Git) -> bool:
    """True when ``path`` is an agent's own clone: a real ``.git`` directory sharing the user's objects."""
    dot_git = path / ".git"
    if dot_git.is_symlink() or not dot_git.is_dir() or (dot_git / "commondir").exists():
        return False  # a symlinked .git would make another repository pass for the agent's
    try:
        alternates = (dot_git / "objects" / "info" / "alternates").read_text().split()
    except OSError:
        return False
    objects = _key(git.common_dir() / "objects")
    return any(_key(Path(a)) == objects for a in alternates)


def _safe_config(path: Path, git: Git) -> bool:
    """True when the clone's config holds nothing the host's git could run."""
    try:
        out = git.run("config", "--file", str(path / ".git" / "config"), "--null", "--list")
    except GitError:
        return False
    keys = [item.split("\n", 1)[0].lower() for item in out.split("\0") if item]
    return all(k.startswith(_SAFE_SECTIONS) and not _UNSAFE_KEYS.match(k) for k in keys)


def clone_state(git: Git, path: Path) -> tuple[str | None, str | None, bool]:
    """(branch, HEAD commit, dirty) of the agent's clone at ``path``, without being its git.

    The clone's configuration is the agent's (filters, fsmonitor, includes, hooks) and
    the agent may rewrite it while the host looks, so no host git takes the clone as
    its repository: HEAD is read as a remote's (:meth:`Git.remote_head`), and the files
    are compared by a git directory of the host's own, made in a private temporary
    directory, with the clone's objects as alternates and a COPY of its index and
    ``info/exclude``. Submodules are not looked into (each has its own config).
    GitError when git cannot read that index alone (a split index).
    """
    branch, head = git.remote_head(path)
    scratch = Path(tempfile.mkdtemp(prefix="autopilot-look-"))
    try:
        scratch.chmod(0o711)  # root looking at another user's clone runs git as that user (runner.py)
        own = scratch / "git"
        git.makedirs(own)
        Git(own, timeout=git.timeout).run("init", "--quiet", "--bare")
        (own / "objects" / "info" / "alternates").write_text(
            f"{path / '.git' / 'objects'}\n{git.common_dir() / 'objects'}\n")
        _copy_regular(path / ".git" / "index", own / "index")
        _copy_regular(path / ".git" / "info" / "exclude", own / "info" / "exclude")
        if head:
            (own / "HEAD").write_text(f"{head}\n")
        dirty = Git(path, timeout=git.timeout, git_dir=own).is_dirty(submodules=False)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return branch, head, dirty


def _copy_regular(source: Path, target: Path) -> None:
    """Copy ``source`` if it is a regular file; a symlink is not followed (an agent's may point anywhere)."""
    try:
        fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return  # missing, or a symlink: git sees no index (every file then counts as a change)
    with os.fdopen(fd, "rb") as src:
        if stat.S_ISREG(os.fstat(src.fileno()).st_mode):
            target.write_bytes(src.read())


def _unmerged_refs(git: Git, path: Path) -> list[str]:
    """The clone's refs whose commits no branch of the user's repository has (read with ls-remote)."""
    out = git.run("ls-remote", str(path))  # not --refs: that hides refs/stash
    refs = []
    for line in out.splitlines():
        sha, _, ref = line.partition("\t")
        if ref.startswith("refs/remotes/") or ref.endswith("^{}"):
            continue  # copies of the user's own branches; peeled tags
        if not (git.has_commit(sha) and git.on_a_branch(sha)):
            refs.append(ref)
    return refs


def _inspect_clone(git: Git, agent: str, path: Path, base: str) -> Worktree:
    branch = agent_branch(agent)
    unmerged = tuple(_unmerged_refs(git, path))
    if not _safe_config(path, git):
        return Worktree(agent, path, branch, base, "suspect", unmerged=unmerged)
    try:
        current, head, dirty = clone_state(git, path)
    except GitError:
        return Worktree(agent, path, branch, base, "suspect", unmerged=unmerged)
    return Worktree(agent, path, branch, base, "ok", branch=current, head=head, dirty=dirty, unmerged=unmerged)


def _inspect(git: Git, agent: str, path: Path, entry: WorktreeEntry | None, base: str) -> Worktree:
    branch = agent_branch(agent)
    ahead = git.commits_ahead(branch, base) if git.branch_exists(branch) else None
    if entry is None:
        return Worktree(agent, path, branch, base, "unregistered", ahead=ahead)
    if not path.exists() or not _healthy(path):
        return Worktree(agent, path, branch, base, "missing" if not path.exists() else "broken",
                        branch=entry.branch, head=entry.head, ahead=ahead, locked=entry.locked)
    # through the worktree's directory in the user's .git, never its own .git file (the agent's to write)
    return Worktree(agent, path, branch, base, "legacy", branch=entry.branch, head=entry.head,
                    dirty=git.linked(path).is_dirty(submodules=False), ahead=ahead, locked=entry.locked)


def _problem(git: Git, w: Worktree, base: str) -> tuple[type, str] | None:
    """Why removing ``w`` would lose work, or None when it is safe."""
    if w.state in ("unregistered", "broken") and _non_empty(w.path):
        return WorktreeDirty, f"({w.path}) holds files but is not a working git worktree"
    if w.state == "suspect":
        return WorktreeDirty, (f"({w.path}) has a git config that could run programs, or an index git cannot "
                               "read alone: not inspected; look at it yourself")
    if w.unmerged:
        return UnmergedWork, f"holds work no branch of the repository has ({', '.join(w.unmerged)})"
    if w.locked:
        return WorktreeDirty, f"is locked (git worktree unlock {w.path})"
    if w.dirty:
        return WorktreeDirty, "has uncommitted changes"
    if w.ahead:
        return UnmergedWork, f"has {w.ahead} commit(s) on {w.agent_branch} not merged into {base}"
    if w.state == "legacy" and w.branch is None and w.head and not git.on_a_branch(w.head):
        return UnmergedWork, f"has a detached HEAD {w.head[:12]} that no branch holds"
    return None


def _remove_one(git: Git, w: Worktree) -> None:
    if w.state in ("ok", "suspect"):  # an agent's own clone: nothing of it lives in the user's .git
        shutil.rmtree(w.path)
    elif w.state in ("unregistered", "broken", "missing"):
        if w.path.exists():
            shutil.rmtree(w.path)  # reached only when empty or forced
        if w.locked:
            git.worktree_unlock(w.path)
        git.worktree_prune()
    else:
        # forced: the check was ours (_problem), git's own would look into submodules with their config
        git.worktree_remove(w.path, force=True)


__all__ = ["Worktree", "RemoveReport", "base_branch", "create", "list", "remove", "exclude_tool_dirs",
           "drop_merged_issue_branches", "clone_state"]
