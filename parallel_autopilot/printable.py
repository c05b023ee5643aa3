"""Untrusted text made safe to print on a terminal. Standard library only.

Agents are hostile (an agent follows any prompt injection it reads): an issue's title, body, error and feedback, a
check's output, an agent's log and the names of its files and refs are written by an agent,
and a person reads them in a terminal. Printed raw, ``"\\x1b]0;...\\x07"`` retitles the window,
``"\\x1b[2J"`` clears the screen, ``"\\x1b]8;;URL\\x07"`` hides a link behind other text,
``"\\x1b]52;c;...\\x07"`` writes the clipboard, a carriage return overwrites the line it is on,
and a bidi override (U+202E) shows the characters after it in another order than they are.

:func:`printable` shows each such character VISIBLY instead, as the escape Python's ``repr``
uses: ``\\x1b`` for ESC, ``\\x0d`` for a lone carriage return, ``\\x9b`` for a C1 control,
``\\u202e`` for a bidi override. Plain ASCII: it survives any terminal, copy and paste, a log
file and ``grep``, and says which byte it was. Escaped are:

- the C0 controls (U+0000-U+001F) but TAB and LF, and DEL (U+007F); a carriage return is kept
  only right before a line feed (``"\\r\\n"`` ends a line, it overwrites nothing);
- the C1 controls (U+0080-U+009F): 8-bit CSI/OSC to some terminals;
- the bidi embeddings, overrides and isolates (U+202A-U+202E, U+2066-U+2069);
- lone surrogates (U+D800-U+DFFF): undecodable bytes kept by ``surrogateescape``, which a
  C-locale stdout writes back as the raw byte (0x9b is CSI).

Everything else, ordinary text and non-ASCII letters included, comes back unchanged, byte for
byte. A backslash is NOT escaped (paths and regular expressions stay readable), so an agent can
write the six characters ``\\x1b`` itself: they read as what they are, four harmless characters.
The result is itself printable: applying it twice changes nothing.

Every edge that prints agent-written text on a terminal goes through it (the tasks through
``tasks/edge.py``: ``echo``, ``table``, ``rich_table`` and the one-line errors). ``--json``
output needs it not: JSON escapes every control character itself. The GUI inserts text, never
markup, and needs it not either (``gui/static/app.js``).
"""

from __future__ import annotations

import re

#: One character that a terminal would act on or reorder, or a CR that is not a line end.
UNSAFE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\ud800-\udfff]|\r(?!\n)")


def _visible(match: re.Match) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(value: object) -> str:
    """``value`` as text (``str(value)``) with every control, C1 and bidi character shown as ``\\xNN``/``\\uNNNN``.

    Newline and tab stay as they are, and ``"\\r\\n"``; see the module's docstring for the list
    and why. Ordinary text comes back unchanged.
    """
    text = value if isinstance(value, str) else str(value)
    return UNSAFE.sub(_visible, text) if UNSAFE.search(text) else text
