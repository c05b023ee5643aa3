"""The embedded demo: a sample repository, 12 sample issues with scripts, 3 agents.

It runs real containers and real git worktrees, offline: the issues carry shell
scripts (agent kind ``script``), so no model and no network are needed.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .config import Settings
from .errors import AgentsUnhealthy, InvalidInput
from .fleet import Fleet
from .git import Git
from .issues import Issue

SAMPLE_FILES = {
    "README.md": "# textkit\n\nA tiny text toolkit, grown issue by issue by parallel agents.\n",
    "textkit/__init__.py": '"""textkit: small text helpers."""\n',
    ".gitignore": ".autopilot/\n.worktrees/\ndocs/logs/\n",
}


def _module(name: str, body: str, pause: float) -> str:
    """A script that writes textkit/<name>.py after ``pause`` seconds of "thinking"."""
    return f"sleep {pause}\nmkdir -p textkit\ncat > textkit/{name}.py <<'PY'\n{body.strip()}\nPY\n"


SAMPLE_ISSUES = [
    ("urgent", "Add slugify()", _module("slug", '''
import re


def slugify(text: str) -> str:
    """'Hello, World!' -> 'hello-world'."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
''', 3)),
    ("high", "Add word_count()", _module("count", '''
def word_count(text: str) -> int:
    """Number of whitespace-separated words."""
    return len(text.split())
''', 3)),
    ("high", "Add title_case()", _module("case", '''
def title_case(text: str) -> str:
    """Capitalise every word."""
    return " ".join(w[:1].upper() + w[1:] for w in text.split())
''', 3)),
    ("high", "Add truncate()", _module("truncate", '''
def truncate(text: str, width: int, tail: str = "...") -> str:
    """Cut text to width characters, ending with tail when cut."""
    return text if len(text) <= width else text[: max(width - len(tail), 0)] + tail
''', 3)),
    ("medium", "Add is_palindrome()", _module("palindrome", '''
def is_palindrome(text: str) -> bool:
    """True if text reads the same backwards, ignoring case and spaces."""
    letters = [c.lower() for c in text if c.isalnum()]
    return letters == letters[::-1]
''', 3)),
    ("medium", "Add reverse_words()", _module("reverse", '''
def reverse_words(text: str) -> str:
    """'a b c' -> 'c b a'."""
    return " ".join(reversed(text.split()))
''', 3)),
    ("medium", "Add char_frequency()", _module("frequency", '''
from collections import Counter


def char_frequency(text: str) -> dict:
    """How often each character occurs."""
    return dict(Counter(text))
''', 3)),
    ("medium", "Add wrap()", _module("wrap", '''
import textwrap


def wrap(text: str, width: int = 72) -> list:
    """Lines of at most width characters."""
    return textwrap.wrap(text, width)
''', 3)),
    ("low", "Add a CHANGELOG", "sleep 2\nprintf '# Changelog\\n\\n- textkit grows, one agent branch per issue.\\n' > CHANGELOG.md\n"),
    ("low", "Document the helpers in the README", "sleep 2\nprintf '\\n## Helpers\\nslugify, word_count, title_case, truncate and more.\\n' >> README.md\n"),
    ("low", "Add a test for slugify", "sleep 2\nmkdir -p tests\ncat > tests/test_slug.py <<'PY'\n"
     "from textkit.slug import slugify\n\n\ndef test_slugify():\n    assert slugify('Hello, World!') == 'hello-world'\nPY\n"),
    ("low", "Add a MIT licence", "sleep 2\nprintf 'MIT License\\n\\nCopyright (c) textkit authors\\n' > LICENSE\n"),
]


def _git(repo: Path, *args: str) -> None:
    Git(repo).run(*args)


def make_sample_repo(path: Path) -> Path:
    """Create the sample repository (one commit on ``main``) at ``path``."""
    path.mkdir(parents=True, exist_ok=True)
    _git(path, "init", "-q", "-b", "main")
    _git(path, "config", "user.name", "parallel-autopilot demo")
    _git(path, "config", "user.email", "demo@parallel-autopilot.invalid")
    for name, text in SAMPLE_FILES.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(text)
    _git(path, "add", "-A")
    _git(path, "commit", "-q", "-m", "textkit: first commit")
    return path


def sample_issues() -> list[dict]:
    """The 12 sample issues as dicts for ``IssueStore.add_many``."""
    return [{"title": title, "priority": priority, "script": script,
             "body": f"{title} in the textkit sample project."} for priority, title, script in SAMPLE_ISSUES]


@dataclass
class DemoResult:
    """What the demo did: where, and each issue's outcome."""

    repo: Path
    issues: list[Issue]
    seconds: float

    @property
    def ok(self) -> bool:
        return all(i.status == "done" for i in self.issues)


def demo_settings(base: Settings, repo: Path) -> Settings:
    """Settings for the sample repository: offline containers, script agents, light limits."""
    return base.replace(repo=repo, network="none", agent_kind="script", profile="light",
                        base_branch="main", lease_seconds=min(base.lease_seconds, 120), poll_seconds=1.0,
                        project=None, state_dir=".autopilot", worktrees_dir=".worktrees", logs_dir="docs/logs")


def new_directory(path: Path | None = None) -> Path:
    """Where the sample repository goes: ``path`` (must be empty or absent) or a new temp dir."""
    if path is None:
        return Path(tempfile.mkdtemp(prefix="parallel-autopilot-demo-"))
    if path.exists() and any(path.iterdir()):
        raise InvalidInput(f"{path} is not empty: give --dir a new or empty directory")
    return path.resolve()


def run_demo(base: Settings, directory: Path | None = None, agents: int = 3, timeout: float = 600,
             progress: Callable[[str], None] = print, keep_running: bool = False) -> DemoResult:
    """Make the sample repository, seed its issues, run ``agents`` agents until the queue drains."""
    repo = make_sample_repo(directory or new_directory())
    settings = demo_settings(base, repo)
    progress(f"sample repository: {repo}")
    the_fleet = Fleet.open(settings)
    store = the_fleet.store
    store.add_many(sample_issues())
    progress(f"seeded {len(SAMPLE_ISSUES)} issues")
    started = time.monotonic()
    the_fleet.start(agents, progress=progress)
    try:
        last = None
        while True:
            counts = store.counts()
            line = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
            if line != last:
                progress(f"queue: {line}")
                last = line
            if counts["ready"] + counts["claimed"] + counts["failed"] == 0:
                break
            if time.monotonic() - started > timeout:
                raise AgentsUnhealthy(f"the demo queue did not drain in {timeout:.0f}s: "
                                      f"see `inv logs.tail` in {repo}")
            time.sleep(1)
    finally:
        if not keep_running:
            the_fleet.stop(progress=progress)
    return DemoResult(repo=repo, issues=store.list(), seconds=time.monotonic() - started)


def next_steps(result: DemoResult, keep_running: bool = False) -> list[str]:
    """What to do after the demo: where the repository is and the commands that follow."""
    done = sum(i.status == "done" for i in result.issues)
    lines = [f"next, in the sample repository ({done} branches autopilot/issue-N wait there):",
             f"  cd {result.repo}",
             "  parallel-autopilot issues.list              # who did what: status, agent, branch",
             "  parallel-autopilot issues.merge --dry-run   # then without --dry-run: merge the done branches into main",
             "  parallel-autopilot gui                      # the Parallel Agents pane on http://127.0.0.1:8787",
             "  parallel-autopilot cleanup                  # remove the agents and their worktrees (keeps unmerged work)"]
    if keep_running:
        lines.insert(2, "  parallel-autopilot agents.status            # the agents are still running (--keep)")
    return lines
