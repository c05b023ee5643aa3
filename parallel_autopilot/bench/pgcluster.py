"""A throwaway PostgreSQL cluster in a temporary directory: for the tests and the benchmark.

Serves on a Unix socket only (``listen_addresses=''``: no TCP at all), as an
unprivileged user (PostgreSQL refuses to run as root): ``postgres`` when this
process is root, else the current user. Standard library only::

    with Cluster() as cluster:            # initdb + pg_ctl start
        url = cluster.create_database("t1")   # postgresql://postgres@/t1?host=/tmp/pa-pg-.../sock
        ...
                                         # pg_ctl -m fast stop, directory removed

The binaries come from ``$PG_BIN``, ``pg_config --bindir`` or the newest
``/usr/lib/postgresql/*/bin`` (Debian's ``postgresql`` package, which
scripts/bootstrap.sh --postgres installs). :func:`unavailable` says why a
cluster cannot be had, or None.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

from ..errors import ClusterUnavailable

__all__ = ["Cluster", "ClusterUnavailable", "bindir", "unavailable"]

#: Settings of a throwaway cluster that need not survive a crash of the machine (the tests').
FAST = ("-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off")


def bindir() -> Path | None:
    """The directory holding initdb, pg_ctl and postgres, or None."""
    candidates = [os.environ.get("PG_BIN")]
    pg_config = shutil.which("pg_config")
    if pg_config:
        proc = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True)
        candidates.append(proc.stdout.strip() if proc.returncode == 0 else None)
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin"),
                      key=lambda p: int(Path(p).parent.name) if Path(p).parent.name.isdigit() else 0)
    candidates += reversed(versions)
    for candidate in candidates:
        if candidate and all((Path(candidate) / tool).is_file() for tool in ("initdb", "pg_ctl", "postgres")):
            return Path(candidate)
    return None


def _server_user() -> str | None:
    if os.geteuid() != 0:
        return pwd.getpwuid(os.geteuid()).pw_name
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        return None
    return "postgres"


def unavailable() -> str | None:
    """Why no throwaway cluster can be started here (None: it can)."""
    if bindir() is None:
        return ("no PostgreSQL server binaries (initdb, pg_ctl): install Debian's postgresql package "
                "(scripts/bootstrap.sh --postgres) or set PG_BIN")
    if _server_user() is None:
        return "running as root with no 'postgres' user to run the server as: install the postgresql package"
    return None


class Cluster:
    """One PostgreSQL cluster of its own, on a Unix socket in a temporary directory."""

    def __init__(self, base: str | os.PathLike | None = None, durable: bool = False, port: int = 5432,
                 options: tuple[str, ...] = ()):
        problem = unavailable()
        if problem:
            raise ClusterUnavailable(problem)
        self.bin = bindir()
        self.user = _server_user()
        self.port = port
        self.durable = durable
        self.options = tuple(options)  # more server options, e.g. ("-c", "synchronous_commit=off")
        self.root = Path(tempfile.mkdtemp(prefix="pa-pg-", dir=base))
        self.data = self.root / "data"
        self.socket_dir = self.root / "sock"
        self.log = self.root / "server.log"
        self.running = False
        self._databases = 0

    # -- running tools as the server's user ----------------------------------

    def _run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        kwargs = {"user": self.user} if os.geteuid() == 0 else {}
        proc = subprocess.run([str(self.bin / argv[0]), *argv[1:]], capture_output=True, text=True,
                              cwd=self.root, **kwargs)
        if check and proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            raise ClusterUnavailable(f"{argv[0]} failed: {tail[0]} (log: {self.log})")
        return proc

    def start(self) -> "Cluster":
        """initdb (first time) and start the server; returns self."""
        if os.geteuid() == 0:
            entry = pwd.getpwnam(self.user)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        self.socket_dir.mkdir(exist_ok=True)
        if os.geteuid() == 0:
            os.chown(self.socket_dir, entry.pw_uid, entry.pw_gid)
        if not (self.data / "PG_VERSION").exists():
            self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8",
                      "--no-sync")
        options = ["-k", str(self.socket_dir), "-c", "listen_addresses=", "-p", str(self.port),
                   "-c", "max_connections=100"]
        if not self.durable:
            options += FAST
        options += self.options
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", " ".join(
            f"'{o}'" if o.endswith("=") else o for o in options), "-w", "-t", "60", "start")
        self.running = True
        return self

    def stop(self) -> None:
        """Stop the server (fast: open sessions are ended)."""
        if self.running:
            self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop", check=False)
            self.running = False

    def restart(self) -> None:
        """Stop and start again: every open connection is cut."""
        self.stop()
        self.start()

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> "Cluster":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.destroy()

    # -- databases ----------------------------------------------------------------

    def url(self, database: str = "postgres") -> str:
        """A ``postgresql://`` URL of ``database`` over the Unix socket."""
        port = "" if self.port == 5432 else f":{self.port}"
        return f"postgresql://postgres@{port}/{database}?host={self.socket_dir}"

    def sql(self, statement: str, database: str = "postgres") -> str:
        """Run one statement with psql; its output (tuples only)."""
        proc = self._run("psql", "-X", "-q", "-t", "-A", "-h", str(self.socket_dir), "-p", str(self.port),
                         "-U", "postgres", "-d", database, "-v", "ON_ERROR_STOP=1", "-c", statement)
        return proc.stdout.strip()

    def create_database(self, name: str | None = None, template: str = "template0") -> str:
        """A new empty database (a copy of ``template``); its URL."""
        if name is None:
            self._databases += 1
            name = f"db{self._databases}"
        self.sql(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
        return self.url(name)
