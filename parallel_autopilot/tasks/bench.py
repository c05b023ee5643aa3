"""``bench``: measure what parallelism buys, against baselines, with a report and a chart."""

from __future__ import annotations

from pathlib import Path

from ..bench import SCENARIOS, report, runner
from ..errors import BenchmarkFailed
from .edge import Namespace, echo, emit_json, require_extra, settings, task

_HELP = {
    "quick": "a small version of every scenario (seconds each, small N)",
    "json": "print the report as JSON on stdout (progress stays on stderr)",
    "repeat": "rounds per figure (default: 3, quick: 2)",
    "out": "directory for the JSON, Markdown and PNG files (default: bench/results)",
}


def _run(c, scenarios, quick, json, repeat, out) -> None:
    with require_extra("bench", "the benchmark's chart"):
        import matplotlib  # noqa: F401 - checked before minutes of measuring, not after
    data, paths = runner.run(settings(c), runner.parse_scenarios(scenarios), quick=quick,
                             repeats=runner.parse_repeats(repeat), out_dir=Path(out) if out else None)
    if json:
        emit_json(data)
    else:
        echo(report.markdown(data))
        echo("\n".join(f"{kind}: {path}" for kind, path in paths.items()))
    failed = runner.failures(data)
    if failed:
        raise BenchmarkFailed(f"{len(failed)} scenario(s) failed ({'; '.join(failed)})"[:400]
                              + f": see {paths['json']}")


@task(default=True, help={"scenarios": f"comma-separated, from {','.join(SCENARIOS)} (default: all)", **_HELP})
def run(c, scenarios=None, quick=False, json=False, repeat=None, out=None):
    """Run the benchmark scenarios; write bench/results/<stamp>.json, .md and .png."""
    _run(c, scenarios, quick, json, repeat, out)


@task(help=_HELP)
def queue(c, quick=False, json=False, repeat=None, out=None):
    """Only the queue scenario: claim throughput and latency at 1, 4, 10 processes vs bare SQLite."""
    _run(c, "queue", quick, json, repeat, out)


ns = Namespace("bench")
ns.add_task(run, default=True)
ns.add_task(queue)

__all__ = ["ns", "run", "queue"]
