"""What the agents produced, and bringing it home: merge finished issue branches into the base.

Agents never commit on the base branch; each done issue leaves ``autopilot/issue-N``.
:func:`merge_done` merges them into the base in the main checkout, one ``--no-ff``
merge per issue in number order. A conflict is aborted (the checkout stays as it
was) and reported; the branch is kept for a person or a new issue to resolve.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from .config import Settings
from .errors import Conflict, WorktreeDirty
from .git import Git
from .issues import IssueStore
from .worktrees import base_branch


@dataclass
class MergeReport:
    """Per issue: merged, already merged, conflicted, or skipped (no branch or commit)."""

    base: str
    merged: list[int] = field(default_factory=list)
    already: list[int] = field(default_factory=list)
    conflicts: list[int] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        parts = [f"merged into {self.base}: {_numbers(self.merged)}"]
        if self.already:
            parts.append(f"already merged: {_numbers(self.already)}")
        if self.skipped:
            parts.append(f"nothing to merge (no change): {_numbers(self.skipped)}")
        if self.conflicts:
            parts.append(f"CONFLICTS, left on their branches: {_numbers(self.conflicts)}")
        return "\n".join(parts)


def _numbers(numbers: list[int]) -> str:
    return ", ".join(f"#{n}" for n in numbers) or "none"


def merge_done(settings: Settings, store: IssueStore, numbers: list[int] | None = None,
               dry_run: bool = False) -> MergeReport:
    """Merge the branches of done issues (all, or ``numbers``) into the base branch."""
    git = Git(settings.repo)
    base = base_branch(settings, git)
    current = git.current_branch()
    if current != base:
        raise Conflict(f"the main checkout is on {current or 'a detached HEAD'}, not {base}: "
                       f"`git checkout {base}` first")
    if git.is_dirty():
        raise WorktreeDirty(f"the main checkout {settings.repo} has uncommitted changes: "
                            "commit or stash them first")
    report = MergeReport(base=base)
    wanted = set(numbers) if numbers else None
    for issue in store.list("done"):
        if wanted is not None and issue.number not in wanted:
            continue
        if not issue.branch or not issue.commit or not git.branch_exists(issue.branch):
            report.skipped.append(issue.number)
        elif git.is_merged(issue.commit, base):
            report.already.append(issue.number)
        elif dry_run:
            report.merged.append(issue.number)
        elif git.merge(issue.commit, f"Merge #{issue.number}: {' '.join(issue.title.split())[:60]}"
                                     f"\n\nBranch: {issue.branch}\nAgent: {issue.owner}"):
            report.merged.append(issue.number)
        else:
            report.conflicts.append(issue.number)
    return report
