"""parallel_autopilot.runtime.logs: per-agent human log, JSON events, attempt logs."""

from __future__ import annotations

import io
import json

from parallel_autopilot.runtime.logs import AgentLog, last_line


def test_lines_and_events_go_to_the_agents_own_files_and_stdout(tmp_path):
    out = io.StringIO()
    log = AgentLog(tmp_path, "agent-003", "inc1", clock=lambda: 1_700_000_000.25, stdout=out)
    log.line("hello\nworld")
    log.event("claimed", "claimed #4", issue=4, token=2, commit=None)
    log.event("quiet", issue=5)
    assert log.dir == tmp_path / "agents" / "agent-003"
    text = (log.dir / "agent.log").read_text()
    assert text == ("2023-11-14T22:13:20Z agent-003 hello world\n"
                    "2023-11-14T22:13:20Z agent-003 claimed #4\n")
    assert out.getvalue() == text
    events = [json.loads(line) for line in (log.dir / "events.jsonl").read_text().splitlines()]
    assert events == log.events()
    assert events[0] == {"time": "2023-11-14T22:13:20Z", "ts": 1700000000.25, "agent": "agent-003",
                         "incarnation": "inc1", "event": "claimed", "issue": 4, "token": 2}
    assert events[1]["event"] == "quiet"
    assert log.attempt_path(4, 2) == log.dir / "issue-4-attempt-2.log"


def test_two_agents_never_share_a_file(tmp_path):
    a = AgentLog(tmp_path, "agent-001", "x", stdout=io.StringIO())
    b = AgentLog(tmp_path, "agent-002", "x", stdout=io.StringIO())
    paths_a = {a.agent_log, a.events_file, a.attempt_path(1, 1)}
    paths_b = {b.agent_log, b.events_file, b.attempt_path(1, 1)}
    assert not paths_a & paths_b


def test_a_closed_stdout_does_not_stop_logging(tmp_path):
    out = io.StringIO()
    out.close()
    log = AgentLog(tmp_path, "agent-001", "x", stdout=out)
    log.line("still written")
    assert "still written" in log.agent_log.read_text()


def test_last_line_skips_headers_and_blank_lines(tmp_path):
    path = tmp_path / "attempt.log"
    assert last_line(path) is None
    path.write_text("### header\n")
    assert last_line(path) is None
    path.write_text("### header\nfirst\nboom: it broke\n\n  \n")
    assert last_line(path) == "boom: it broke"
    path.write_text("x" * 500 + "\n")
    assert last_line(path, limit=50) == "x" * 47 + "..."


def test_one_reader_of_a_logs_end_serves_last_line_tail_and_the_merge_check(tmp_path):
    from pathlib import Path

    from parallel_autopilot.merge import checks as checkbox
    from parallel_autopilot.runtime.logs import read_end, tail

    log = tmp_path / "big.log"
    # far more than any reader reads: only the end is read, undecodable bytes replaced
    log.write_bytes(b"old line\n" * 20000 + b"### header\n" + "".join(f"line {i}\n" for i in range(30)).encode()
                    + b"\xff broken\n\n")
    assert len(read_end(log, 100)) == 100 and read_end(tmp_path / "missing", 100) is None
    assert last_line(log) == "\ufffd broken"
    assert tail(log, lines=3) == "line 28\nline 29\n\ufffd broken"
    assert "### header" not in tail(log, lines=40) and "### header" in tail(log, lines=40, skip_prefix=None)
    assert checkbox._tail(log).splitlines() == [f"line {i}" for i in range(11, 30)] + ["\ufffd broken"]
    assert checkbox._tail(Path(tmp_path / "missing")) == "" and tail(tmp_path / "missing") is None
