"""printable.py: agent-written text shown on a terminal, every control character visible, the rest unchanged."""

from __future__ import annotations

import re

import pytest

from parallel_autopilot.printable import printable

#: what a terminal would act on: C0 but TAB and LF, DEL, C1, the bidi overrides and isolates, lone surrogates
RAW = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


@pytest.mark.parametrize("hostile, shown", [
    ("\x1b]0;pwned\x07Fix it", "\\x1b]0;pwned\\x07Fix it"),  # window title (OSC 0, BEL)
    ("\x1b[2J\x1b[H", "\\x1b[2J\\x1b[H"),  # clear the screen, cursor home
    ("\x1b]8;;https://evil.example/\x1b\\click\x1b]8;;\x1b\\", "\\x1b]8;;https://evil.example/\\x1b\\click\\x1b]8;;\\x1b\\"),
    ("\x1b]52;c;cm0gLXJmIH4K\x07", "\\x1b]52;c;cm0gLXJmIH4K\\x07"),  # clipboard write
    ("tests passed\rtests FAILED", "tests passed\\x0dtests FAILED"),  # a CR overwrites the line
    ("\x9b2J \x9d0;x\x9c", "\\x9b2J \\x9d0;x\\x9c"),  # C1: 8-bit CSI, OSC, ST
    ("\x00\x08\x0b\x0c\x7f", "\\x00\\x08\\x0b\\x0c\\x7f"),
    ("user\u202e\u2066txt.exe\u2069\u202c", "user\\u202e\\u2066txt.exe\\u2069\\u202c"),  # bidi reordering
    ("\u202a\u202b\u202d\u2067\u2068", "\\u202a\\u202b\\u202d\\u2067\\u2068"),
    ("bytes \udc9b2J", "bytes \\udc9b2J"),  # surrogateescape'd 0x9b: a raw CSI on a C-locale stdout
])
def test_every_control_character_is_shown_visibly(hostile, shown):
    out = printable(hostile)
    assert out == shown
    assert not RAW.search(out) and "\r" not in out
    assert printable(out) == out  # safe already: a second pass changes nothing


@pytest.mark.parametrize("ordinary", [
    "Fix the parser", "", "line one\nline two\n", "a\tb", "windows\r\nline ends\r\n",
    "naïve café, 日本語, emoji 🚀, Ünïcödé", "C:\\path\\x1b is six characters", "[bold]not markup[/bold] 100%",
    "\u200f\u00a0\u2028",  # not controls a terminal acts on: unchanged
])
def test_ordinary_text_comes_back_byte_for_byte(ordinary):
    assert printable(ordinary) == ordinary


def test_a_lone_cr_before_a_crlf_is_shown_and_the_line_end_kept():
    assert printable("a\r\r\nb\r") == "a\\x0d\r\nb\\x0d"


def test_any_value_is_shown_as_its_text():
    assert printable(42) == "42"
    assert printable(ValueError("bad \x1b[31mred")) == "bad \\x1b[31mred"
    assert printable(None) == "None"


def test_exactly_the_listed_code_points_are_escaped_in_all_of_unicode():
    for code in range(0x110000):
        char = chr(code)
        unsafe = (code < 0x20 and char not in "\t\n") or 0x7f <= code <= 0x9f or 0x202a <= code <= 0x202e \
            or 0x2066 <= code <= 0x2069 or 0xd800 <= code <= 0xdfff
        expected = (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}") if unsafe else char
        assert printable(char) == expected, hex(code)
