"""Scenario ``queue``: how fast the shared issue store hands out work, against bare loops.

Each round fills a fresh database with W issues, then P worker PROCESSES (spawned,
each with its own connection) claim and complete until the queue is empty:

- **ours**: ``IssueStore.claim`` + ``IssueStore.complete`` (fenced leases, audit events);
- **bare**: the minimal ``UPDATE ... WHERE id = (SELECT ... LIMIT 1) RETURNING`` loop
  on a one-table database with the same pragmas (WAL, busy timeout), no fencing, no events;
- **pg**: the PostgreSQL store (``PgIssueStore``, the same verbs) on a throwaway
  server of the run's own (Unix socket; fsync on, ``synchronous_commit=off``: like
  SQLite's WAL with ``synchronous=NORMAL``, a crash may lose the last commits, never
  corrupt), one fresh database per round;
- **pgbare**: the minimal ``UPDATE ... WHERE id = (SELECT ... FOR UPDATE SKIP LOCKED
  LIMIT 1) RETURNING`` loop on one table of the same server, prepared statements;
- **gateway**: the same verbs as the agents send them, each worker through its own socket
  of one queue gateway process (``issues/gateway.py``) holding the SQLite store; its
  baseline is **ours** (the store opened directly, as ``queue_access: mount`` agents do).

Throughput is W divided by the time from the first worker's start to the last
one's end; claim latency is measured around every claim call (p50 and p99 of
the round). A start barrier (a ``go`` file) keeps process start-up out of it.
The container variant runs the same worker inside agent-image containers with
the database DIRECTORY bind-mounted, as the agents do.

The worker side (:func:`work`, :func:`main`) uses the standard library only for
the SQLite modes: it runs as ``python3 -m parallel_autopilot.bench.queue`` inside
containers. The PostgreSQL modes run on the host (pg8000, imported when used).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from ..issues import IssueStore
from . import stats

TITLE = "issue queue: claim+complete throughput and claim latency"
BARE_LABEL = "bare SQLite UPDATE ... RETURNING"
BARE_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id          INTEGER PRIMARY KEY,
    status      TEXT NOT NULL DEFAULT 'ready',
    owner       TEXT,
    token       INTEGER NOT NULL DEFAULT 0,
    lease_until REAL
);
CREATE INDEX IF NOT EXISTS jobs_pick ON jobs (status, id);
"""
BARE_CLAIM = """UPDATE jobs SET status = 'claimed', owner = ?, token = token + 1, lease_until = ?
                WHERE id = (SELECT id FROM jobs WHERE status = 'ready' ORDER BY id LIMIT 1)
                RETURNING id, token"""
BARE_COMPLETE = "UPDATE jobs SET status = 'done' WHERE id = ? AND token = ? AND status = 'claimed'"
BARRIER_TIMEOUT = 120.0
CONTAINER_MOUNT = "/state"
PG_LABEL = "bare PostgreSQL UPDATE ... FOR UPDATE SKIP LOCKED"
PG_BARE_SCHEMA = [
    """CREATE TABLE jobs (id bigint PRIMARY KEY, status text NOT NULL DEFAULT 'ready', owner text,
                          token bigint NOT NULL DEFAULT 0, lease_until float8)""",
    "CREATE INDEX jobs_ready ON jobs (id) WHERE status = 'ready'",
]
PG_BARE_CLAIM = """UPDATE jobs SET status = 'claimed', owner = :owner, token = token + 1,
                          lease_until = extract(epoch FROM now()) + 900
                   WHERE id = (SELECT id FROM jobs WHERE status = 'ready' ORDER BY id LIMIT 1
                               FOR UPDATE SKIP LOCKED)
                   RETURNING id, token"""
PG_BARE_COMPLETE = """UPDATE jobs SET status = 'done'
                      WHERE id = CAST(:id AS bigint) AND token = CAST(:token AS bigint) AND status = 'claimed'
                      RETURNING id"""
#: The bench's server: durable files, commits not flushed one by one (see the module's doc).
PG_OPTIONS = ("-c", "synchronous_commit=off")
SOURCE_MOUNT = "/bench-src"


# -- the worker (standard library only; runs on the host and in containers) --

def bare_connect(db: str | os.PathLike) -> sqlite3.Connection:
    """A connection with the same pragmas the issue store uses."""
    conn = sqlite3.connect(str(db), timeout=30, isolation_level=None)
    conn.execute("PRAGMA busy_timeout = 30000")
    if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
        conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    return conn


def _pg_connect(url: str):
    import pg8000.native

    from ..issues.postgres import connect_options

    return pg8000.native.Connection(**connect_options(url))


def _verbs(mode: str, db: str, name: str) -> tuple[Callable[[], Any], Callable[[Any], None]]:
    if mode in ("ours", "pg"):
        from ..issues import open_store

        store = open_store(db) if mode == "pg" else IssueStore(db)
        return (lambda: store.claim(name)), (lambda claim: store.complete(claim))
    if mode == "gateway":
        from ..issues.gateway import GatewayClient

        client = GatewayClient(gateway_socket(Path(db).parent, name))
        return (lambda: client.claim(name, 900)), (lambda claim: client.complete(claim))
    if mode == "pgbare":
        conn = _pg_connect(db)
        claim_sql, complete_sql = conn.prepare(PG_BARE_CLAIM), conn.prepare(PG_BARE_COMPLETE)

        def pg_claim():
            rows = claim_sql.run(owner=name)
            return rows[0] if rows else None

        def pg_complete(row):
            if not complete_sql.run(id=row[0], token=row[1]):
                raise RuntimeError(f"bare complete of job {row[0]} changed nothing")

        return pg_claim, pg_complete
    if mode == "bare":
        conn = bare_connect(db)

        def claim():
            return conn.execute(BARE_CLAIM, (name, time.time() + 900)).fetchone()

        def complete(row):
            if conn.execute(BARE_COMPLETE, (row[0], row[1])).rowcount != 1:
                raise RuntimeError(f"bare complete of job {row[0]} changed nothing")

        return claim, complete
    raise ValueError(f"unknown mode {mode!r}: ours, bare, pg, pgbare or gateway")


def gateway_socket(directory: Path, name: str) -> Path:
    """Where worker ``name`` (an agent id) finds its socket of the round's gateway."""
    return directory / "gateway" / name / "queue.sock"


def start_gateway(directory: Path, db: Path, names: Sequence[str]):
    """A queue gateway process for the round, as its service runs it; it serves ``names``."""
    import subprocess

    for name in names:
        gateway_socket(directory, name).parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "AUTOPILOT_DB": str(db), "AUTOPILOT_GATEWAY_DIR": str(directory / "gateway"),
           "AUTOPILOT_SNAPSHOT_SECONDS": "0",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[2]),
                                                      os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen([sys.executable, "-m", "parallel_autopilot.issues.gateway"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + BARRIER_TIMEOUT
    while not all(gateway_socket(directory, n).exists() for n in names):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"the queue gateway did not start (exit {proc.poll()})")
        time.sleep(0.01)
    return proc


def work(mode: str, db: str, name: str, directory: str, timeout: float = BARRIER_TIMEOUT) -> None:
    """One worker: connect, say ready, wait for ``go``, claim+complete until empty.

    Writes ``out-<name>.json`` in ``directory``: completed ops, every claim's
    latency in seconds, wall-clock start and end (or an error).
    """
    folder = Path(directory)
    out = folder / f"out-{name}.json"
    try:
        claim, complete = _verbs(mode, db, name)
        (folder / f"ready-{name}").touch()
        deadline = time.monotonic() + timeout
        go = folder / "go"
        while not go.exists():
            if time.monotonic() > deadline:
                raise TimeoutError(f"no go signal after {timeout}s")
            time.sleep(0.001)
        latencies, ops = [], 0
        start = time.time()
        while True:
            t0 = time.perf_counter()
            item = claim()
            elapsed = time.perf_counter() - t0
            if item is None:
                break
            latencies.append(elapsed)
            complete(item)
            ops += 1
        result = {"name": name, "ops": ops, "latencies": latencies, "start": start, "end": time.time()}
    except BaseException as err:  # noqa: BLE001 - reported to the host, which fails the round
        result = {"name": name, "error": f"{err.__class__.__name__}: {err}"}
        out.write_text(json.dumps(result))
        raise SystemExit(1) from None
    out.write_text(json.dumps(result))


def spawn(mode: str, db: str, names: Sequence[str], directory: str) -> list:
    """Start one spawned process per worker name (a fresh interpreter: no inherited connection)."""
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=work, args=(mode, db, name, directory), name=f"bench-{name}", daemon=True)
             for name in names]
    for proc in procs:
        proc.start()
    return procs


def main(argv: Sequence[str] | None = None) -> int:
    """``python3 -m parallel_autopilot.bench.queue --mode ours --db D --dir D --names w00,w01``."""
    parser = argparse.ArgumentParser(prog="parallel_autopilot.bench.queue", description=main.__doc__)
    parser.add_argument("--mode", choices=("ours", "bare"), required=True)
    parser.add_argument("--db", required=True)
    parser.add_argument("--dir", required=True)
    parser.add_argument("--names", required=True, help="comma-separated worker names")
    args = parser.parse_args(argv)
    procs = spawn(args.mode, args.db, args.names.split(","), args.dir)
    for proc in procs:
        proc.join()
    return max(proc.exitcode or 0 for proc in procs)


# -- the host side: rounds, containers, figures ----------------------------

def prepare(mode: str, db: Path | str, issues: int) -> None:
    """A fresh database holding ``issues`` ready items (``db``: a file, or a PostgreSQL URL)."""
    if mode in ("ours", "pg", "gateway"):
        from ..issues import open_store

        store = open_store(db) if mode == "pg" else IssueStore(db)
        store.add_many([{"title": f"bench issue {i}"} for i in range(issues)])
        store.close()
        return
    if mode == "pgbare":
        conn = _pg_connect(str(db))
        for statement in PG_BARE_SCHEMA:
            conn.run(statement)
        conn.run("INSERT INTO jobs (id) SELECT generate_series(1, CAST(:n AS bigint))", n=issues)
        conn.run("ANALYZE jobs")
        conn.close()
        return
    conn = bare_connect(db)
    conn.executescript(BARE_SCHEMA)
    conn.execute("BEGIN")
    conn.executemany("INSERT INTO jobs (status) VALUES ('ready')", [() for _ in range(issues)])
    conn.execute("COMMIT")
    conn.close()


def verify(mode: str, db: Path | str, issues: int) -> None:
    """Every item done, exactly once (the figures of a broken queue mean nothing)."""
    if mode in ("ours", "pg", "gateway"):
        from ..issues import open_store

        store = open_store(db) if mode == "pg" else IssueStore(db)
        done = len(store.list("done"))
        completions = sum(1 for e in store.events() if e.kind == "done")
        store.close()
    elif mode == "pgbare":
        conn = _pg_connect(str(db))
        done = completions = conn.run("SELECT COUNT(*) FROM jobs WHERE status = 'done'")[0][0]
        conn.close()
    else:
        conn = bare_connect(db)
        done = completions = conn.execute("SELECT COUNT(*) FROM jobs WHERE status = 'done'").fetchone()[0]
        conn.close()
    if done != issues or completions != issues:
        raise RuntimeError(f"{mode} queue: {done} done and {completions} completions of {issues} issues")


class Round:
    """One measurement: ``procs`` workers of ``mode`` on a fresh database of ``issues``.

    ``containers`` > 0 splits the workers over that many containers of ``image``.
    """

    def __init__(self, ctx, mode: str, procs: int, issues: int, label: str,
                 containers: int = 0, image: str | None = None, url: str | None = None):
        self.ctx, self.mode, self.procs, self.issues = ctx, mode, procs, issues
        self.url = url  # the round's PostgreSQL database (modes pg, pgbare)
        self.containers, self.image = containers, image
        self.dir = ctx.workdir / f"queue-{label}"
        # the gateway serves agents by their ids
        self.names = [f"agent-{i + 1:03d}" if mode == "gateway" else f"w{i:02d}" for i in range(procs)]
        self.container_names: list[str] = []

    def run(self) -> dict[str, float]:
        """Prepare, start, release the barrier, wait, verify; return the round's figures."""
        self.dir.mkdir(parents=True)
        db = self.url or self.dir / "queue.db"
        prepare(self.mode, db, self.issues)
        gateway = start_gateway(self.dir, db, self.names) if self.mode == "gateway" else None
        try:
            waiters = self._start(db)
            self._barrier(waiters)
            (self.dir / "go").touch()
            self._join(waiters)
        finally:
            self._remove_containers()
            if gateway is not None:
                gateway.terminate()
                gateway.wait(30)
        outs = [json.loads((self.dir / f"out-{n}.json").read_text()) for n in self.names]
        errors = [f"{o['name']}: {o['error']}" for o in outs if "error" in o]
        if errors:
            raise RuntimeError(f"queue worker failed: {errors[0]}")
        verify(self.mode, db, self.issues)
        ops = sum(o["ops"] for o in outs)
        span = max(o["end"] for o in outs) - min(o["start"] for o in outs)
        latencies = [x for o in outs for x in o["latencies"]]
        return {"throughput": ops / span, "p50": stats.percentile(latencies, 50) * 1000,
                "p99": stats.percentile(latencies, 99) * 1000, "ops": ops, "seconds": span}

    # -- starting workers ---------------------------------------------------

    def _start(self, db: Path) -> list:
        if not self.containers:
            return [("process", p) for p in spawn(self.mode, str(db), self.names, str(self.dir))]
        from ..containers import daemon  # host side only: the worker in a container never gets here
        from .sandbox import LABEL_BENCH, docker_step

        package = Path(__file__).resolve().parents[1]  # this very parallel_autopilot/, mounted read-only
        cpus = max(0.5, round((os.cpu_count() or 1) / self.containers, 2))
        waiters = []
        for k in range(self.containers):
            names = self.names[k::self.containers]
            name = f"pa-bench-{self.ctx.run_id}-queue-{k}"
            self.container_names.append(name)
            with docker_step(f"docker run {name}"):
                container = daemon.client().containers.run(
                    self.image, ["-m", "parallel_autopilot.bench.queue", "--mode", self.mode,
                                 "--db", f"{CONTAINER_MOUNT}/queue.db", "--dir", CONTAINER_MOUNT,
                                 "--names", ",".join(names)],
                    detach=True, name=name, labels={LABEL_BENCH: self.ctx.run_id}, network_mode="none",
                    mem_limit="256m", nano_cpus=int(cpus * 1e9), user=f"{os.getuid()}:{os.getgid()}",
                    entrypoint="python3",
                    environment={"PYTHONPATH": SOURCE_MOUNT, "PYTHONDONTWRITEBYTECODE": "1"},
                    volumes={str(self.dir): {"bind": CONTAINER_MOUNT, "mode": "rw"},
                             str(package): {"bind": f"{SOURCE_MOUNT}/parallel_autopilot", "mode": "ro"}})
            waiters.append(("container", container))
        return waiters

    @staticmethod
    def _exit_code(container) -> int | None:
        """The container's exit code, None while it has not ended."""
        container.reload()
        state = container.attrs.get("State") or {}
        return None if container.status in ("created", "running") else int(state.get("ExitCode", 1))

    def _alive(self, waiter) -> bool:
        kind, handle = waiter
        return handle.is_alive() if kind == "process" else self._exit_code(handle) is None

    def _barrier(self, waiters: list) -> None:
        deadline = time.monotonic() + BARRIER_TIMEOUT
        while not all((self.dir / f"ready-{n}").exists() for n in self.names):
            if not all(self._alive(w) for w in waiters):
                self._join(waiters, timeout=5)
                raise RuntimeError(self._failure(waiters) or "a queue worker exited before it was ready")
            if time.monotonic() > deadline:
                raise RuntimeError(f"queue workers not ready after {BARRIER_TIMEOUT:.0f}s")
            time.sleep(0.01)

    def _join(self, waiters: list, timeout: float = 600) -> None:
        for kind, handle in waiters:
            if kind == "process":
                handle.join(timeout)
                if handle.is_alive():
                    handle.kill()
                    raise RuntimeError(f"queue worker {handle.name} did not finish in {timeout:.0f}s")
            else:
                try:
                    handle.wait(timeout=timeout)
                except Exception:  # noqa: BLE001 - the SDK says "too long" with a requests timeout
                    handle.kill()
                    raise RuntimeError(f"queue container did not finish in {timeout:.0f}s") from None
        problem = self._failure(waiters)
        if problem:
            raise RuntimeError(problem)

    def _failure(self, waiters: list) -> str | None:
        for kind, handle in waiters:
            if kind != "container":
                continue
            code = self._exit_code(handle)
            if code not in (None, 0):
                err = handle.logs(stdout=False, stderr=True).decode(errors="replace").strip().splitlines()
                return f"queue container exited {code}: {err[-1] if err else 'no output'}"
        return None

    def _remove_containers(self) -> None:
        if self.container_names:
            from ..containers import daemon

            daemon.remove(self.container_names)


def plan(ctx) -> dict[str, Any]:
    """Sizes of this run (quick: seconds; full: about a minute and a half)."""
    return {
        "processes": ctx.pick([1, 4], [1, 4, 10]),
        "issues_per_round": ctx.pick(200, 2000),
        "containers": ctx.pick({"processes": 4, "containers": 2}, {"processes": 10, "containers": 5}),
        "rounds": ctx.repeats,
    }


def run(ctx) -> dict[str, Any]:
    """Measure ours and bare at each process count, round by round, and build the rows."""
    params = plan(ctx)
    counts, issues = params["processes"], params["issues_per_round"]
    split = params["containers"]
    image, skip = ctx.image, None
    if image is None:
        skip = f"skipped: {ctx.image_problem}"
    params["image"] = image
    results: dict[tuple, list[dict[str, float]]] = {}
    bare_counts = sorted(set(counts) | {split["processes"]})
    cluster, pg_skip = _pg_cluster()
    params["postgresql"] = pg_skip or f"own server, {' '.join(PG_OPTIONS)}"
    try:
        _measure(ctx, results, counts, bare_counts, issues, split, image, skip, cluster)
    finally:
        if cluster is not None:
            cluster.destroy()
    rows = []
    top = 10
    for procs in counts:
        rows += _rows(f"{procs} process{'es' if procs > 1 else ''}", results[("ours", procs, 0)],
                      results[("bare", procs, 0)], targets=procs == top)
    case = f"{split['processes']} processes in {split['containers']} containers"
    if skip is None:
        rows += _rows(case, results[("ours", split["processes"], split["containers"])],
                      results[("bare", split["processes"], 0)], targets=split["processes"] == top)
    else:
        rows.append(stats.row(case, "throughput", "ops/s", None, baseline_label=BARE_LABEL, skipped=skip))
    for procs in counts:
        rows += _pg_rows(f"{procs} process{'es' if procs > 1 else ''}, PostgreSQL", results, procs, pg_skip)
    for procs in counts:
        rows += _gateway_rows(f"{procs} agent{'s' if procs > 1 else ''} through the gateway", results, procs,
                              targets=procs == top)
    notes = ["ours = IssueStore.claim + complete (fenced lease, audit events); "
             f"baseline = {BARE_LABEL} loop, same pragmas, same process count, same round",
             "container rows: workers inside agent-image containers, state directory bind-mounted; "
             "baseline = bare loop with the same number of processes on the host",
             "PostgreSQL rows: PgIssueStore.claim + complete on a throwaway server of this run "
             f"(Unix socket, {' '.join(PG_OPTIONS)}); baseline = {PG_LABEL} loop on the same server, "
             "same round; 'vs SQLite store' divides by ours on SQLite measured in the same round",
             "gateway rows: each process an agent of its own socket of ONE gateway process holding the "
             "SQLite store (issues/gateway.py, what agents in containers use by default); baseline = ours, "
             "the store opened directly by the same number of processes, same round"]
    return stats.scenario("queue", TITLE, rows, params=params, notes=notes,
                          details={"rounds": {f"{m}-{p}-{c}": v for (m, p, c), v in results.items()}})


def _pg_cluster():
    """A throwaway PostgreSQL server for the PostgreSQL rows, or (None, why not)."""
    from . import pgcluster

    problem = pgcluster.unavailable()
    if problem is None:
        try:
            import pg8000  # noqa: F401
        except ImportError:
            problem = "the pg8000 driver is missing: pip install 'parallel-autopilot[postgres]'"
    if problem:
        return None, f"skipped: {problem}"
    try:
        return pgcluster.Cluster(durable=True, options=PG_OPTIONS).start(), None
    except pgcluster.ClusterUnavailable as err:
        return None, f"skipped: PostgreSQL would not start: {err}"


def _measure(ctx, results, counts, bare_counts, issues, split, image, skip, cluster) -> None:
    modes = ("bare", "ours", "pgbare", "pg", "gateway")
    for r in range(ctx.repeats):
        for procs in bare_counts:
            # neighbours share the machine's noise: rotate who goes first
            order = modes[r % len(modes):] + modes[:r % len(modes)]
            for mode in order:
                if mode != "bare" and procs not in counts:
                    continue
                if mode.startswith("pg") and cluster is None:
                    continue
                url = cluster.create_database(f"{mode}_{procs}_r{r}") if mode.startswith("pg") else None
                ctx.progress(f"{mode} {procs} process(es), round {r + 1}/{ctx.repeats}")
                results.setdefault((mode, procs, 0), []).append(
                    Round(ctx, mode, procs, issues, f"{mode}-{procs}-r{r}", url=url).run())
        if skip is None:
            ctx.progress(f"ours {split['processes']} processes in {split['containers']} containers, "
                         f"round {r + 1}/{ctx.repeats}")
            results.setdefault(("ours", split["processes"], split["containers"]), []).append(
                Round(ctx, "ours", split["processes"], issues, f"ours-{split['processes']}-c{r}",
                      containers=split["containers"], image=image).run())


def _pg_rows(case: str, results: dict, procs: int, skip: str | None) -> list[dict]:
    if skip:
        return [stats.row(case, "throughput", "ops/s", None, baseline_label=PG_LABEL, skipped=skip)]
    pg, bare, lite = results[("pg", procs, 0)], results[("pgbare", procs, 0)], results[("ours", procs, 0)]

    def col(runs, key):
        return [run[key] for run in runs]

    return [
        stats.row(case, "throughput", "ops/s", col(pg, "throughput"), baseline=col(bare, "throughput"),
                  baseline_label=PG_LABEL),
        stats.row(case, "throughput vs SQLite store", "ops/s", col(pg, "throughput"),
                  baseline=col(lite, "throughput"), baseline_label="ours on SQLite"),
        stats.row(case, "claim latency p50", "ms", col(pg, "p50"), baseline=col(bare, "p50"), baseline_label=PG_LABEL),
        stats.row(case, "claim latency p99", "ms", col(pg, "p99"), baseline=col(bare, "p99"), baseline_label=PG_LABEL),
    ]


def _gateway_rows(case: str, results: dict, procs: int, targets: bool) -> list[dict]:
    gateway, ours = results[("gateway", procs, 0)], results[("ours", procs, 0)]

    def col(runs, key):
        return [run[key] for run in runs]

    throughput, p99 = col(gateway, "throughput"), col(gateway, "p99")
    return [
        stats.row(case, "throughput", "ops/s", throughput, baseline=col(ours, "throughput"),
                  baseline_label="ours: the store opened directly", target=">= 1000 ops/s" if targets else None,
                  met=stats.summary(throughput)["median"] >= 1000 if targets else None),
        stats.row(case, "claim latency p50", "ms", col(gateway, "p50"), baseline=col(ours, "p50"),
                  baseline_label="ours: the store opened directly"),
        stats.row(case, "claim latency p99", "ms", p99, baseline=col(ours, "p99"),
                  baseline_label="ours: the store opened directly", target="< 20 ms" if targets else None,
                  met=stats.summary(p99)["median"] < 20 if targets else None),
    ]


def _rows(case: str, ours: list[dict], bare: list[dict], targets: bool) -> list[dict]:
    def col(runs, key):
        return [run[key] for run in runs]

    thr = stats.ratios(col(ours, "throughput"), col(bare, "throughput"))
    p99 = col(ours, "p99")
    return [
        stats.row(case, "throughput", "ops/s", col(ours, "throughput"), baseline=col(bare, "throughput"),
                  baseline_label=BARE_LABEL, target=">= 0.5x baseline" if targets else None,
                  met=stats.summary(thr)["median"] >= 0.5 if targets else None),
        stats.row(case, "claim latency p50", "ms", col(ours, "p50"), baseline=col(bare, "p50"),
                  baseline_label=BARE_LABEL),
        stats.row(case, "claim latency p99", "ms", p99, baseline=col(bare, "p99"), baseline_label=BARE_LABEL,
                  target="< 50 ms" if targets else None,
                  met=stats.summary(p99)["median"] < 50 if targets else None),
    ]


if __name__ == "__main__":
    sys.exit(main())
