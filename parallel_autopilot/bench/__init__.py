"""``inv bench``: what parallelism buys, measured against baselines in the same run.

One module per scenario, each measuring our figure AND its baseline, run by run:

- :mod:`.queue` - claim+complete throughput and claim latency of the issue store at
  1, 4 and 10 processes (and 10 split over containers) against a bare SQLite loop;
- :mod:`.startup` - ``Fleet.start`` until healthy against bare
  ``git worktree add`` + ``docker run -d``;
- :mod:`.throughput` - makespan of M sleeping issues with N agents, speedup, efficiency;
- :mod:`.recovery` - an agent SIGKILLed mid-issue: seconds until its issue is claimed again;
- :mod:`.stop` - ``Fleet.stop`` mid-work against bare ``docker stop``;
- :mod:`.footprint` - memory of an idle agent against a bare Python container;
- :mod:`.agents` - M issues resolved by the REAL codex CLI against a scripted model
  server with N agents: makespan, efficiency against N = 1, harness overhead per issue.
- :mod:`.merge` - the merge queue: batches of K = 4 and 8 against one at a time.
- :mod:`.backlog` - 24 issues (a chain, a diamond, same-line pairs) with the merge queue
  running: the queue's hints (dependencies, paths) on against off.
- :mod:`.gui` - the pane with 500 issues and 5,000 events in Chromium: first paint, update latency.

:mod:`.runner` runs them and :mod:`.report` writes JSON, Markdown and a PNG chart.

This ``__init__`` stays standard-library-only and imports nothing: the queue
worker (``python3 -m parallel_autopilot.bench.queue``) also runs inside agent
containers, where only the standard library exists.
"""

#: Every scenario, in the order a full run executes them.
SCENARIOS = ("queue", "startup", "throughput", "recovery", "stop", "footprint", "agents", "merge", "backlog",
             "gui")

__all__ = ["SCENARIOS"]
