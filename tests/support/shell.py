"""git and the file system, run directly (not through the modules under test)."""

from __future__ import annotations

import subprocess
from pathlib import Path


def git(repo: Path, *args: str) -> str:
    """Run git in ``repo`` and return its stdout (raises on failure)."""
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                          text=True).stdout


def sh(cwd: Path, *args: str) -> str:
    """Run git directly (not through the module under test); stdout stripped."""
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def open_to_others(path: Path) -> None:
    """Let other uids reach ``path``: pytest's base directory is root's 0700.

    Root runs git AS the owner of a repository owned by someone else (git.py),
    so tests that chown a repository to another uid must open the way to it.
    """
    import tempfile

    for parent in path.parents:
        if parent == Path(tempfile.gettempdir()) or parent == parent.parent:
            break
        parent.chmod(parent.stat().st_mode | 0o711)
