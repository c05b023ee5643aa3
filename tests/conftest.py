"""Fixtures shared by the whole suite. Keep this file small: one fixture, one purpose."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from parallel_autopilot.bench import pgcluster
from parallel_autopilot.issues import open_store
from support.clock import FakeClock
from support.images import BUILT_TEST_IMAGES
from support.shell import git

pytest_plugins = ["support.ssh"]  # sshd + workstation fixtures of the remote (Fabric) tests


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


# -- images that tests build: removed by the test, checked at the session's end ----------

@pytest.fixture
def built_test_image():
    """``built_test_image(tag)`` registers an image tag the test builds; it is removed afterwards.

    Only the tags registered in THIS session are checked at its end (other runs on the
    same daemon may be building theirs right now).
    """
    tags: list[str] = []

    def register(tag: str) -> str:
        tags.append(tag)
        BUILT_TEST_IMAGES.add(tag)
        return tag

    yield register
    for tag in tags:
        subprocess.run(["docker", "rmi", "-f", tag], capture_output=True)


def _images_left() -> list[str]:
    left = []
    for tag in sorted(BUILT_TEST_IMAGES):
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
