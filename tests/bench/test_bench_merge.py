"""The ``merge`` benchmark scenario on the host, shrunk (no Docker): real repositories, the real
merge queue, check runs counted, red commits looked for."""

from __future__ import annotations

from parallel_autopilot import config
from parallel_autopilot.bench import SCENARIOS, merge
from parallel_autopilot.bench.context import Context


def test_the_merge_scenario_counts_check_runs_and_finds_no_red_commit(tmp_path, git_repo):
    assert "merge" in SCENARIOS
    ctx = Context(settings=config.load({}, repo=str(git_repo)), workdir=tmp_path, run_id="t", quick=True)
    result = merge.run(ctx, quick={"issues": 6, "bad": 3, "check_seconds": 0})
    assert result["status"] == "ok"
    runs = {k: [x["check_runs"] for x in v] for k, v in result["details"]["results"].items()}
    # K=1: one run each; K=4: [0-3] red -> [0,1] green, [2,3] red -> [2], [3]; then [4,5]
    # K=8: [0-5] red -> [0-2] green, [3-5] red -> [3] red, [4,5] green
    assert runs == {"1": [6], "4": [6], "8": [5]}
    assert all(x["red"] == 0 for v in result["details"]["results"].values() for x in v)
    rows = {r["metric"]: r for r in result["rows"]}
    assert rows["time to merge, K = 4"]["baseline_label"] == "one at a time (K = 1)"
    # no agent image in this run: the container's cost per check is a skipped row, with the reason
    cost = rows["seconds per check, in a container"]
    assert cost["status"] == "skipped" and "not prepared" in cost["reason"]
