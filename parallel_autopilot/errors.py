"""The domain errors of parallel-autopilot, and the table of exit codes.

Every expected failure is an ``AutopilotError`` whose message is ONE line that
names the fix. The edges turn it into that line and ``exit_code`` (tasks) or
into ``http_status`` with a JSON body (GUI). Standard library only.

:data:`EXIT_CODES` is the ONE table of the codes the program exits with: one
meaning per code, so a script can tell "nothing to merge" from "the queue is
down". An error family shares its head's code (``InvalidAgentCount`` exits 2,
"invalid input", as ``InvalidInput``); the merge queue's outcomes and the edges'
own exits (interrupted, broken pipe, the runtime's watchdog) have codes no
failure uses. A command that the program runs for you and that fails (a
``remote.test``, a ``c.run``) passes its own code through: those are not ours.
"""

from __future__ import annotations

from typing import NamedTuple


class AutopilotError(Exception):
    """Base of every expected failure; ``str(err)`` is the user-facing line.

    ``exit_code`` is the class's row in :data:`EXIT_CODES` (set from the table below).
    """

    exit_code: int
    http_status = 400


class InvalidInput(AutopilotError):
    """A value given by the user is not acceptable (bad count, bad file...)."""

    http_status = 422


class InvalidAgentCount(InvalidInput):
    """An agent count outside 1..max_agents, or not a number."""


class InvalidAgentId(InvalidInput):
    """An agent id that is not ``1``, ``01``, ``001`` or ``agent-001`` style."""


class MalformedIssueFile(InvalidInput):
    """An issue file that cannot be imported; nothing was imported."""


class NotFound(AutopilotError):
    """A thing asked for by name or number does not exist."""

    http_status = 404


class IssueNotFound(NotFound):
    """No issue with that number."""


class AgentNotFound(NotFound):
    """No agent with that id."""


class Conflict(AutopilotError):
    """The request is valid but the current state forbids it."""

    http_status = 409


class LeaseLost(Conflict):
    """A fenced call (renew/complete/fail/release) with a stale lease token.

    The issue was not changed; the refused attempt was recorded as an event.
    """


class WorktreeDirty(Conflict):
    """A worktree with uncommitted changes would be removed."""


class UnmergedWork(Conflict):
    """A branch with commits not merged into the base would be deleted."""


class UnsafeFilesystem(AutopilotError):
    """The state directory is on a filesystem where SQLite WAL is unsafe."""


class QueueUnavailable(AutopilotError):
    """The PostgreSQL issue queue cannot be reached (within its reconnect window)."""

    http_status = 503


class ClusterUnavailable(AutopilotError):
    """No PostgreSQL server binaries here, or a throwaway cluster would not start (tests, bench)."""


class GitError(AutopilotError):
    """A git command failed (not a git repository, bad base branch...)."""


class DockerUnavailable(AutopilotError):
    """The Docker daemon cannot be reached."""

    http_status = 503


class ComposeError(AutopilotError):
    """docker compose / docker-compose failed or is missing."""

    http_status = 502


class ImageBuildError(AutopilotError):
    """The agent image could not be built."""

    http_status = 502


class AgentsUnhealthy(AutopilotError):
    """Agents did not become healthy in time."""

    http_status = 504


class RemoteError(AutopilotError):
    """A remote host could not be reached or refused the command."""

    http_status = 502


class BenchmarkFailed(AutopilotError):
    """A benchmark scenario failed; the report naming it was still written."""

    http_status = 500


class DatabaseDamaged(AutopilotError):
    """The queue's database file is damaged or foreign; it was left untouched.

    Raised before anything writes to it: garbage, a truncated or zero-length
    file where snapshots exist, a WAL left by another database, another
    program's SQLite file. The line names the file and the fix (``issues.restore``).
    """

    http_status = 503


class MissingDependency(AutopilotError):
    """An optional Python dependency (an extra: gui, bench) is not installed; the line names the pip command."""


# -- the exit codes ------------------------------------------------------------------------------

#: Codes that are outcomes or the edges' own, not an error class's (the values of EXIT_CODES' rows).
EXIT_OK = 0
EXIT_NOTHING_TO_MERGE = 20
EXIT_SOME_REJECTED = 21
EXIT_DOCTOR = 22
EXIT_WATCHDOG = 70  # EX_SOFTWARE: the in-container runtime stalled; its restart policy restarts it
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports Ctrl-C
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: the reader of our output went away (`| head`)


class ExitCode(NamedTuple):
    """One row of :data:`EXIT_CODES`: what a script may conclude from the code, and who gives it."""

    meaning: str
    #: one error family (its head first, every member named) or the name of an outcome
    given_by: tuple[type[AutopilotError], ...] | str


#: Every exit code of parallel-autopilot (tasks, the ``parallel-autopilot`` program, the wrapper,
#: fab, the in-container runtime): code -> its one meaning. The README shows the same table.
EXIT_CODES: dict[int, ExitCode] = {
    EXIT_OK: ExitCode("done (issues.merge: every queued issue merged, or would with --dry-run)", "ok"),
    1: ExitCode("failed with no code of its own: an unexpected error, or a command line invoke "
                "could not parse", (AutopilotError,)),
    2: ExitCode("invalid input (a bad value, agent count, agent id or issue file; a malformed "
                "command line of the wrapper)",
                (InvalidInput, InvalidAgentCount, InvalidAgentId, MalformedIssueFile)),
    3: ExitCode("not found (no such issue or agent)", (NotFound, IssueNotFound, AgentNotFound)),
    4: ExitCode("refused: the current state forbids it (a lost lease, a dirty worktree, unmerged "
                "work; issues.merge: another merge queue runs)", (Conflict, LeaseLost, WorktreeDirty, UnmergedWork)),
    5: ExitCode("the state directory is on a filesystem where SQLite is unsafe", (UnsafeFilesystem,)),
    6: ExitCode("a git command failed", (GitError,)),
    7: ExitCode("the Docker daemon cannot be reached", (DockerUnavailable,)),
    8: ExitCode("docker compose failed or is missing", (ComposeError,)),
    9: ExitCode("the agent image could not be built", (ImageBuildError,)),
    10: ExitCode("agents did not become healthy in time", (AgentsUnhealthy,)),
    11: ExitCode("a remote host could not be reached or refused the command", (RemoteError,)),
    12: ExitCode("a benchmark scenario failed (its report was written)", (BenchmarkFailed,)),
    13: ExitCode("the queue's database file is damaged or foreign (left untouched)", (DatabaseDamaged,)),
    14: ExitCode("an optional Python dependency is not installed", (MissingDependency,)),
    15: ExitCode("the PostgreSQL issue queue cannot be reached", (QueueUnavailable,)),
    16: ExitCode("no PostgreSQL server binaries, or a throwaway cluster would not start (tests, bench)",
                 (ClusterUnavailable,)),
    EXIT_NOTHING_TO_MERGE: ExitCode("issues.merge: nothing to merge (no done issue)", "nothing to merge"),
    EXIT_SOME_REJECTED: ExitCode("issues.merge: at least one issue rejected (red or conflicting); the "
                                 "others merged", "some rejected"),
    EXIT_DOCTOR: ExitCode("doctor: something agents.start needs is missing (each line names its fix)",
                          "doctor found a problem"),
    EXIT_WATCHDOG: ExitCode("an agent's runtime stalled past its watchdog (in the container)", "watchdog"),
    EXIT_INTERRUPTED: ExitCode("interrupted (Ctrl-C)", "interrupted"),
    EXIT_BROKEN_PIPE: ExitCode("the reader of the output went away (| head)", "broken pipe"),
}

for _code, _row in EXIT_CODES.items():  # each error class exits with its row's code
    if not isinstance(_row.given_by, str):
        for _error in _row.given_by:
            _error.exit_code = _code
del _code, _row, _error


def one_line(value: object, limit: int = 300) -> str:
    """``value`` (text or an exception) as ONE line of at most ``limit`` characters.

    Whitespace runs (newlines from tracebacks, compose, docker) become one space,
    so an edge can print it after ``error:`` and a JSON reader sees one line.
    An exception without a message reads as its class name.
    """
    text = " ".join(str(value).split())
    if not text and isinstance(value, BaseException):
        text = value.__class__.__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."
