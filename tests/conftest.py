"""Fixtures shared by the whole suite. Keep this file small: one fixture, one purpose."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from parallel_autopilot import pgcluster
from parallel_autopilot.issues import open_store

pytest_plugins = ["fixtures_ssh"]  # sshd + workstation fixtures of the remote (Fabric) tests

#: A fixed, round start time for stores driven by a fake clock (2023-11-14).
T0 = 1_700_000_000.0


class FakeClock:
    """A clock that moves only when told to: ``clock()`` is now, ``clock.advance(s)`` moves it."""

    def __init__(self, start: float = T0):
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    """A fake clock starting at :data:`T0`."""
    return FakeClock()


@pytest.fixture(scope="session")
def pg_cluster():
    """A real PostgreSQL server of the session's own: Unix socket only, stopped at the end.

    Skips (with the reason) only where no server can be had: no binaries
    (scripts/bootstrap.sh --postgres installs them) or no user to run it as.
    """
    problem = pgcluster.unavailable()
    if problem:
        pytest.skip(f"PostgreSQL: {problem}")
    try:
        import pg8000  # noqa: F401
    except ImportError:
        pytest.skip("PostgreSQL: the pg8000 driver is missing: pip install -e '.[test]'")
    cluster = pgcluster.Cluster().start()
    yield cluster
    cluster.destroy()


@pytest.fixture
def pg_url(pg_cluster) -> str:
    """The URL of a fresh, empty database on the session's PostgreSQL server."""
    return pg_cluster.create_database()


#: The queue backends every store test runs against.
BACKENDS = ["sqlite", "postgresql"]


@pytest.fixture(params=BACKENDS)
def queue_target(request, tmp_path) -> str:
    """Where a store lives, once per backend: a state directory, or a fresh database's URL."""
    if request.param == "postgresql":
        return request.getfixturevalue("pg_url")
    return str(tmp_path / "state")


@pytest.fixture
def store(queue_target, clock):
    """An issue store (each backend in turn) on the fake ``clock``, backoff 30 s, 3 attempts."""
    with open_store(queue_target, clock=clock) as s:
        yield s


def git(repo: Path, *args: str) -> str:
    """Run git in ``repo`` and return its stdout (raises on failure)."""
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                          text=True).stdout


def sh(cwd: Path, *args: str) -> str:
    """Run git directly (not through the module under test); stdout stripped."""
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def hermetic_git(monkeypatch, tmp_path_factory):
    """No user or system git configuration leaks into the test."""
    empty = tmp_path_factory.mktemp("gitconfig") / "config"
    empty.write_text("")
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(empty))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")


@pytest.fixture
def git_repo(tmp_path) -> Path:
    """A temporary git repository with one commit on ``main`` (and its own identity)."""
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    git(repo, "config", "user.name", "Test")
    git(repo, "config", "user.email", "test@example.invalid")
    git(repo, "config", "commit.gpgsign", "false")
    (repo / "README.md").write_text("test repository\n")
    git(repo, "add", "README.md")
    git(repo, "commit", "-q", "-m", "initial commit")
    return repo


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


# -- images that tests build: removed by the test, checked at the session's end ----------

_BUILT_TEST_IMAGES: set[str] = set()


@pytest.fixture
def built_test_image():
    """``built_test_image(tag)`` registers an image tag the test builds; it is removed afterwards.

    Only the tags registered in THIS session are checked at its end (other runs on the
    same daemon may be building theirs right now).
    """
    tags: list[str] = []

    def register(tag: str) -> str:
        tags.append(tag)
        _BUILT_TEST_IMAGES.add(tag)
        return tag

    yield register
    for tag in tags:
        subprocess.run(["docker", "rmi", "-f", tag], capture_output=True)


def _images_left() -> list[str]:
    left = []
    for tag in sorted(_BUILT_TEST_IMAGES):
        proc = subprocess.run(["docker", "image", "inspect", tag], capture_output=True)
        if proc.returncode == 0:
            left.append(tag)
    return left


def pytest_sessionfinish(session, exitstatus):
    """The suite leaves no image it built behind (263 MB each)."""
    left = _images_left()
    if left:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(f"test images left behind: {', '.join(left)}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def wait_for(predicate, timeout=120.0, step=0.3, what="condition"):
    """Poll ``predicate`` until it returns something truthy (returned); AssertionError naming ``what``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
