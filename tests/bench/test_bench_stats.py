"""bench.stats: summaries of repeated runs and ratios computed pair by pair."""

from __future__ import annotations

import math

import pytest

from parallel_autopilot.bench import stats


def test_summary_is_median_min_max_of_the_runs():
    assert stats.summary([3, 1, 2]) == {"median": 2, "min": 1, "max": 3, "n": 3, "runs": [3.0, 1.0, 2.0]}
    assert stats.summary([4, 1, 2, 3])["median"] == 2.5


@pytest.mark.parametrize("values", [[], [1.0, math.nan], [math.inf]])
def test_summary_refuses_nothing_and_non_finite_runs(values):
    with pytest.raises(ValueError):
        stats.summary(values)


def test_ratio_is_computed_pair_by_pair_not_as_a_ratio_of_medians():
    ours, base = [10.0, 20.0, 40.0], [5.0, 40.0, 20.0]
    assert stats.ratios(ours, base) == [2.0, 0.5, 2.0]
    row = stats.row("case", "metric", "s", ours, baseline=base)
    assert row["ratio"]["median"] == 2.0
    assert row["value"]["median"] / row["baseline"]["median"] == 1.0  # what a ratio of medians would say


def test_ratios_need_one_baseline_run_per_run_and_no_zero():
    with pytest.raises(ValueError, match="pair"):
        stats.ratios([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="zero"):
        stats.ratios([1.0], [0.0])


def test_percentile_interpolates_between_closest_ranks():
    data = list(range(1, 101))  # 1..100
    assert stats.percentile(data, 50) == pytest.approx(50.5)
    assert stats.percentile(data, 99) == pytest.approx(99.01)
    assert stats.percentile(data, 0) == 1 and stats.percentile(data, 100) == 100
    assert stats.percentile([7.0], 99) == 7.0
    with pytest.raises(ValueError):
        stats.percentile([], 50)


def test_a_skipped_row_carries_its_reason_and_no_numbers():
    row = stats.row("10 processes in 5 containers", "throughput", "ops/s", None, skipped="skipped: no image")
    assert row["status"] == "skipped" and row["reason"] == "skipped: no image"
    assert row["value"] is None and row["ratio"] is None


def test_a_row_without_baseline_has_no_ratio_and_keeps_its_target_verdict():
    row = stats.row("N=5", "parallel efficiency", "%", [91.0, 88.0, 95.0], target=">= 90%", met=True, x=5)
    assert row["baseline"] is None and row["ratio"] is None
    assert (row["met"], row["x"], row["value"]["median"]) == (True, 5, 91.0)


def test_failed_and_skipped_scenarios_have_a_reason_and_no_rows():
    result = stats.failed("stop", "stop", "skipped: Docker is not reachable", status="skipped")
    assert (result["status"], result["rows"], result["reason"]) == ("skipped", [], "skipped: Docker is not reachable")


def test_a_count_whose_baseline_is_zero_has_no_ratio_but_keeps_both_values():
    row = stats.row("backlog", "merges rejected for a conflict, hints on", "rejections", [0, 0],
                    baseline=[0, 3], target="0 with hints", met=True)
    assert row["ratio"] is None and row["value"]["median"] == 0 and row["baseline"]["runs"] == [0, 3]
