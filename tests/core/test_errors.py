"""errors.py: one_line, the one helper every edge uses to print an error as one line, and the one
table of exit codes (one meaning per code, every error class in it)."""

import re
from pathlib import Path

import invoke
import pytest

from parallel_autopilot import errors
from parallel_autopilot.errors import GitError, one_line


@pytest.mark.parametrize("value, expected", [
    ("first\n  second\tthird\n", "first second third"),
    (ValueError("bad\nvalue"), "bad value"),
    (GitError("git fetch failed:\r\nfatal: no remote"), "git fetch failed: fatal: no remote"),
    (KeyError(), "KeyError"),  # an exception without a message reads as its class
    ("", ""),
])
def test_whitespace_runs_become_one_space_and_the_text_stays_one_line(value, expected):
    assert one_line(value) == expected


def test_long_text_is_cut_to_the_limit_with_an_ellipsis():
    text = "word " * 200
    cut = one_line(text, limit=50)
    assert len(cut) == 50 and cut.endswith("...") and "\n" not in cut
    assert cut[:-3] == " ".join(text.split())[:47]
    assert one_line("x" * 300) == "x" * 300  # at the default limit: whole
    assert len(one_line("x" * 301)) == 300


# -- the table of exit codes ---------------------------------------------------------------------

def _subclasses(cls: type) -> list[type]:
    return [c for sub in cls.__subclasses__() for c in (sub, *_subclasses(sub))]


#: Every error class errors.py defines, found by walking the family: a new one cannot be forgotten.
ERRORS = [errors.AutopilotError] + [c for c in _subclasses(errors.AutopilotError) if c.__module__ == errors.__name__]
ERROR_ROWS = {code: row for code, row in errors.EXIT_CODES.items() if not isinstance(row.given_by, str)}
OUTCOME_ROWS = {code: row for code, row in errors.EXIT_CODES.items() if isinstance(row.given_by, str)}


def code_of(outcome: str) -> int:
    (code,) = [code for code, row in OUTCOME_ROWS.items() if row.given_by == outcome]
    return code


def test_each_code_has_exactly_one_meaning():
    meanings = [row.meaning for row in errors.EXIT_CODES.values()]
    assert all(m and "\n" not in m for m in meanings) and len(set(meanings)) == len(meanings)
    givers = [g for row in errors.EXIT_CODES.values()
              for g in ([row.given_by] if isinstance(row.given_by, str) else row.given_by)]
    assert len(set(givers)) == len(givers)  # no class, no outcome in two rows
    assert all(isinstance(code, int) and 0 <= code <= 255 for code in errors.EXIT_CODES)


@pytest.mark.parametrize("error", ERRORS, ids=lambda c: c.__name__)
def test_every_error_class_has_its_own_place_in_the_table(error):
    rows = [code for code, row in ERROR_ROWS.items() if error in row.given_by]
    assert len(rows) == 1, f"{error.__name__} has no row (or several) in errors.EXIT_CODES"
    assert error.exit_code == rows[0]


def test_a_family_shares_its_heads_code():
    for code, row in ERROR_ROWS.items():
        head, *members = row.given_by
        assert all(issubclass(m, head) and m.exit_code == code for m in members), row
    assert errors.InvalidAgentCount.exit_code == errors.InvalidInput.exit_code == 2  # one meaning: invalid input


def test_the_codes_the_readme_documents_and_the_ones_that_moved():
    assert errors.DatabaseDamaged.exit_code == 13
    assert errors.QueueUnavailable.exit_code not in (1, 13)  # the queue down is not a damaged file
    assert errors.ClusterUnavailable.exit_code != 1


def test_no_outcome_shares_a_code_with_an_error():
    error_codes = {error.exit_code for error in ERRORS}
    assert error_codes == set(ERROR_ROWS)
    assert not error_codes & set(OUTCOME_ROWS)


def test_the_merge_queue_exits_with_its_outcomes_rows():
    from parallel_autopilot.merge import queue as mergequeue
    from parallel_autopilot.merge.queue import MergeReport

    nothing, merged, rejected = MergeReport(base="main"), MergeReport(base="main", merged=[1]), \
        MergeReport(base="main", merged=[1], rejected={2: "red"})
    assert (nothing.exit_code, merged.exit_code, rejected.exit_code) == \
        (code_of("nothing to merge"), code_of("ok"), code_of("some rejected"))
    assert (mergequeue.EXIT_NOTHING, mergequeue.EXIT_MERGED, mergequeue.EXIT_REJECTED, mergequeue.EXIT_REFUSED) \
        == (code_of("nothing to merge"), code_of("ok"), code_of("some rejected"), errors.Conflict.exit_code)
    assert nothing.to_dict()["exit_code"] == code_of("nothing to merge")


def test_the_edges_own_exits_are_their_rows():
    from parallel_autopilot import program
    from parallel_autopilot.runtime import agent
    from parallel_autopilot.tasks import edge

    assert program.BROKEN_PIPE_EXIT == code_of("broken pipe")
    assert agent.WATCHDOG_EXIT == code_of("watchdog")

    def interrupted(c):
        raise KeyboardInterrupt

    def down(c):
        raise errors.QueueUnavailable("cannot reach the issue queue")

    for body, code in ((interrupted, code_of("interrupted")), (down, errors.QueueUnavailable.exit_code)):
        with pytest.raises(invoke.Exit) as exit_:
            edge.task(body).body(invoke.Context())
        assert exit_.value.code == code


def test_the_readme_shows_the_same_table():
    readme = (Path(errors.__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## Exit codes", 1)[1].split("\n## ", 1)[0]
    rows = dict(re.findall(r"^\| (\d+) \| (.+) \|$", section, re.M))
    assert {int(code): meaning.replace("\\|", "|") for code, meaning in rows.items()} == \
        {code: row.meaning for code, row in errors.EXIT_CODES.items()}
