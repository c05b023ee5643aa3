"""The domain errors of parallel-autopilot.

Every expected failure is an ``AutopilotError`` whose message is ONE line that
names the fix. The edges turn it into that line and ``exit_code`` (tasks) or
into ``http_status`` with a JSON body (GUI). Standard library only.
"""


class AutopilotError(Exception):
    """Base of every expected failure; ``str(err)`` is the user-facing line."""

    exit_code = 1
    http_status = 400


class InvalidInput(AutopilotError):
    """A value given by the user is not acceptable (bad count, bad file...)."""

    exit_code = 2
    http_status = 422


class InvalidAgentCount(InvalidInput):
    """An agent count outside 1..max_agents, or not a number."""


class InvalidAgentId(InvalidInput):
    """An agent id that is not ``1``, ``01``, ``001`` or ``agent-001`` style."""


class MalformedIssueFile(InvalidInput):
    """An issue file that cannot be imported; nothing was imported."""


class NotFound(AutopilotError):
    """A thing asked for by name or number does not exist."""

    exit_code = 3
    http_status = 404


class IssueNotFound(NotFound):
    """No issue with that number."""


class AgentNotFound(NotFound):
    """No agent with that id."""


class Conflict(AutopilotError):
    """The request is valid but the current state forbids it."""

    exit_code = 4
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

    exit_code = 5


class QueueUnavailable(AutopilotError):
    """The PostgreSQL issue queue cannot be reached (within its reconnect window)."""

    exit_code = 13
    http_status = 503


class ClusterUnavailable(AutopilotError):
    """No PostgreSQL server binaries here, or a throwaway cluster would not start (tests, bench)."""


class GitError(AutopilotError):
    """A git command failed (not a git repository, bad base branch...)."""

    exit_code = 6


class DockerUnavailable(AutopilotError):
    """The Docker daemon cannot be reached."""

    exit_code = 7
    http_status = 503


class ComposeError(AutopilotError):
    """docker compose / docker-compose failed or is missing."""

    exit_code = 8
    http_status = 502


class ImageBuildError(AutopilotError):
    """The agent image could not be built."""

    exit_code = 9
    http_status = 502


class AgentsUnhealthy(AutopilotError):
    """Agents did not become healthy in time."""

    exit_code = 10
    http_status = 504


class RemoteError(AutopilotError):
    """A remote host could not be reached or refused the command."""

    exit_code = 11
    http_status = 502


class BenchmarkFailed(AutopilotError):
    """A benchmark scenario failed; the report naming it was still written."""

    exit_code = 12
    http_status = 500


class DatabaseDamaged(AutopilotError):
    """The queue's database file is damaged or foreign; it was left untouched.

    Raised before anything writes to it: garbage, a truncated or zero-length
    file where snapshots exist, a WAL left by another database, another
    program's SQLite file. The line names the file and the fix (``issues.restore``).
    """

    exit_code = 13
    http_status = 503


class MissingDependency(AutopilotError):
    """An optional Python dependency (an extra: gui, bench) is not installed; the line names the pip command."""

    exit_code = 14


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
