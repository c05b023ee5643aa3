"""Agent-written text reaches the terminal escaped: no escape sequence, CR, C1 or bidi character raw.

A hostile agent writes titles (through `issues.add` in its script, or an issue file), errors,
feedback and check output (its fail result) and its log. The tasks that show them print every
control character visibly (``\\x1b``, ``\\x0d``, ``\\u202e``); ``--json`` stays JSON.
"""

from __future__ import annotations

import ast
import io
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import invoke
import pytest

from parallel_autopilot.errors import Conflict
from parallel_autopilot.issues import IssueStore
from parallel_autopilot.tasks import agents as agent_tasks
from parallel_autopilot.tasks import edge
from parallel_autopilot.tasks import logs as log_tasks

PROGRAM = shutil.which("parallel-autopilot")

#: a window title, a screen clear, a CR that overwrites, an 8-bit CSI, a bidi override
TITLE = "Fix \x1b]0;pwned\x07\x1b[2J\rOK \x9b31m\u202eevil"
TITLE_SHOWN = "Fix \\x1b]0;pwned\\x07\\x1b[2J\\x0dOK \\x9b31m\\u202eevil"
#: a hidden hyperlink, a clipboard write, a bidi isolate, rich markup
ERROR = "check red \x1b]8;;https://evil.example/\x1b\\here\x1b]8;;\x1b\\ \x1b]52;c;cm0gLXJmIH4=\x07 \u2066x\u2069 [blink]!"
ERROR_SHOWN = ("check red \\x1b]8;;https://evil.example/\\x1b\\here\\x1b]8;;\\x1b\\ \\x1b]52;c;cm0gLXJmIH4=\\x07 "
               "\\u2066x\\u2069 [blink]!")
#: what a terminal would act on (TAB and LF are fine; a CR only as part of CRLF, absent here)
RAW = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def assert_safe(out: str) -> None:
    found = RAW.search(out)
    assert found is None, f"raw {found.group()!r} printed: {out!r}"


@pytest.fixture
def hostile_queue(git_repo):
    """An issue whose title, body, error, feedback and check output an agent wrote."""
    store = IssueStore(git_repo / ".autopilot" / "autopilot.db")
    store.add(TITLE, body=f"body {ERROR}")
    claim = store.claim("agent-001")
    store.fail(claim, ERROR, feedback=f"feedback {ERROR}",
               check={"check_status": "failed", "check_duration": 1.0, "check_output": f"output {ERROR}"})
    store.close()
    return git_repo


def program(repo: Path, *args: str) -> str:
    # bytes: text=True would turn a raw CR into a newline before the test sees it
    proc = subprocess.run([PROGRAM, *args], cwd=repo, capture_output=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.decode()


@pytest.mark.skipif(PROGRAM is None, reason="the console program is not installed (pip install -e .)")
def test_issues_list_and_show_print_agent_text_escaped_and_json_keeps_it(hostile_queue):
    listed = program(hostile_queue, "issues.list")
    assert_safe(listed)
    assert TITLE_SHOWN in listed
    shown = program(hostile_queue, "issues.show", "1")
    assert_safe(shown)
    for field, text in [("title", TITLE_SHOWN), ("body", f"body {ERROR_SHOWN}"), ("error", ERROR_SHOWN),
                        ("feedback", f"feedback {ERROR_SHOWN}"), ("check_output", f"output {ERROR_SHOWN}")]:
        assert f"{field:>14}: {text}\n" in shown, field
    assert ERROR_SHOWN in shown.split("events:")[1]  # the failed event's detail
    # JSON escapes by itself (\u001b): the exact text, for scripts
    data = json.loads(program(hostile_queue, "issues.show", "1", "--json"))
    assert (data["title"], data["error"]) == (TITLE, ERROR)


@pytest.fixture
def hostile_fleet(tmp_path):
    """A real Fleet over a fake Docker: agent-001 works on the hostile issue and wrote its log."""
    from support.gui import FakeFleet, make_settings

    store = IssueStore(make_settings(tmp_path).db_path)
    store.add(TITLE)
    fleet = FakeFleet(store)
    fleet.start(1, progress=lambda _: None)
    fleet.claim("1")
    fleet.log("agent-001", f"log {ERROR}")
    fleet.log("agent-001", "progress 10%\rprogress 100%\x1b[1A\x1b[2K")
    yield fleet
    store.close()


def context(fleet) -> invoke.Context:
    return invoke.Context(config=invoke.Config(overrides={"fleet": fleet}))


def test_agents_status_prints_the_issue_title_escaped(hostile_fleet, capsys):
    agent_tasks.status.body(context(hostile_fleet))
    out = capsys.readouterr().out
    assert_safe(out)
    assert "working on #1 " + TITLE_SHOWN in out
    agent_tasks.status.body(context(hostile_fleet), json=True)
    assert json.loads(capsys.readouterr().out)[0]["issue_title"] == TITLE


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_on_a_terminal_the_rich_table_shows_agent_text_escaped_and_never_as_markup(hostile_fleet, monkeypatch):
    monkeypatch.setenv("TERM", "xterm-256color")
    monkeypatch.delenv("NO_COLOR", raising=False)
    screen = Terminal()
    monkeypatch.setattr(sys, "stdout", screen)
    edge.print_table([(1, TITLE), (2, "[link=https://evil.example/]click[/link] [blink]x[/blink] :warning:")],
                     ["issue", "title"])
    agent_tasks.status.body(context(hostile_fleet))
    out = screen.getvalue()
    assert "\x1b[1m" in out, "rich drew the table (bold headers): the terminal path was taken"
    assert_safe(re.sub(r"\x1b\[[0-9;]*m", "", out))  # rich's own colours only: no OSC, CR, C1 or bidi
    assert TITLE_SHOWN[:30] in out
    assert "[link=https://evil.example/]click[/link] [blink]x[/blink] :warning:" in out


def test_logs_tail_prints_agent_lines_escaped(hostile_fleet, capsys):
    for agent in ("1", None):
        log_tasks.tail.body(context(hostile_fleet), id=agent)
        out = capsys.readouterr().out
        assert_safe(out)
        assert f"log {ERROR_SHOWN}\n" in out
        assert "\\x1b[1A\\x1b[2K\n" in out


def test_a_task_error_is_one_escaped_line():
    @edge.task
    def hostile(c):
        raise Conflict(f"refused: {ERROR}")

    with pytest.raises(invoke.Exit) as exit_:
        hostile.body(invoke.Context())
    assert exit_.value.message == f"error: refused: {ERROR_SHOWN}"
    assert exit_.value.code == Conflict.exit_code


def test_echo_and_table_keep_ordinary_text_byte_for_byte(capsys):
    edge.echo("Fix the parser: naïve café 日本\n\tindented\r\n")
    assert capsys.readouterr().out == "Fix the parser: naïve café 日本\n\tindented\r\n\n"
    assert edge.table([("#1", "Fix the parser"), ("#2", None)], ["issue", "title"]) == (
        "issue  title\n-----  --------------\n#1     Fix the parser\n#2")


def _prints(node: ast.AST) -> bool:
    """``print`` (called or handed on as a progress callback) or ``sys.stdout/stderr.write``."""
    if isinstance(node, ast.Name):
        return node.id == "print"
    return (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "write"
            and isinstance(node.func.value, ast.Attribute) and node.func.value.attr in ("stdout", "stderr"))


def test_the_tasks_print_only_through_the_edge():
    # one place per rule: a bare print() in a task module would show agent text raw
    tasks = Path(edge.__file__).parent
    found = [f"{path.name}:{node.lineno}" for path in sorted(tasks.glob("*.py")) if path.name != "edge.py"
             for node in ast.walk(ast.parse(path.read_text())) if _prints(node)]
    assert found == [], "print through tasks/edge.py (echo, table, print_table, emit_json)"
    assert _prints(ast.parse("progress = print").body[0].value)  # the rule sees what it must
    assert _prints(ast.parse("sys.stderr.write(x)").body[0].value)
