"""errors.one_line: the one helper every edge uses to print an error as one line."""

import pytest

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
