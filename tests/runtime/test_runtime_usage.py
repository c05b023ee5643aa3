"""parallel_autopilot.runtime.usage on output captured from the real CLIs (Codex CLI 0.171.0, Claude Code
2.1.197) driven against tests/support/modelservers.py: the end-to-end proof is tests/containers/test_agent_clis_real.py."""

from __future__ import annotations

import calendar
import json

from parallel_autopilot.runtime import usage

CODEX_OK = "\n".join([
    '{"type":"thread.started","thread_id":"01a2"}',
    '{"type":"turn.started"}',
    '{"type":"item.completed","item":{"id":"item_2","type":"agent_message","text":"We hit a rate limit in the '
    'parser, fixed."}}',
    '{"type":"turn.completed","usage":{"input_tokens":2400,"cached_input_tokens":100,"cache_write_input_tokens":0,'
    '"output_tokens":68,"reasoning_output_tokens":3}}',
])
CODEX_429 = "\n".join([
    "Reading additional input from stdin...",
    '{"type":"turn.started"}',
    '{"type":"error","message":"Reconnecting... 1/1 (exceeded retry limit, last status: 429 Too Many Requests)"}',
    '{"type":"turn.failed","error":{"message":"exceeded retry limit, last status: 429 Too Many Requests"}}',
])
CODEX_QUOTA = '{"type":"turn.failed","error":{"message":"Quota exceeded. Check your plan and billing details."}}'
CLAUDE_OK = json.dumps({"type": "result", "subtype": "success", "is_error": False, "num_turns": 2,
                        "result": "Done", "total_cost_usd": 0.0137,
                        "usage": {"input_tokens": 2400, "cache_creation_input_tokens": 10,
                                  "cache_read_input_tokens": 5, "output_tokens": 68}})
CLAUDE_429 = json.dumps({"type": "result", "subtype": "success", "is_error": True, "api_error_status": 429,
                         "result": "API Error: Request rejected (429) · Number of requests has exceeded your "
                                   "rate limit.", "total_cost_usd": 0,
                         "usage": {"input_tokens": 0, "output_tokens": 0}})


def test_codex_usage_is_summed_over_turns():
    spent = usage.parse("codex", CODEX_OK + "\n" + CODEX_OK.splitlines()[-1])
    assert spent["input_tokens"] == 4800 and spent["output_tokens"] == 136 and spent["cached_input_tokens"] == 200
    assert usage.parse("codex", "no json here") is None


def test_claude_usage_and_cost_come_from_the_result():
    spent = usage.parse("claude", '{"type":"system"}\n' + CLAUDE_OK)
    assert spent["input_tokens"] == 2415 and spent["output_tokens"] == 68 and spent["cost_usd"] == 0.0137
    assert spent["turns"] == 2


def test_rate_limits_and_quotas_are_recognised():
    assert "429" in usage.limit("codex", CODEX_429).message
    assert "Quota exceeded" in usage.limit("codex", CODEX_QUOTA).message
    assert "rate limit" in usage.limit("claude", CLAUDE_429).message


def test_the_attempt_header_is_not_a_limit():
    header = "### 2026-12-01T18:00:00Z agent-001 issue #429 attempt 1 token 429 kind codex on autopilot/issue-429"
    assert usage.limit("codex", header + "\n" + CODEX_OK) is None


def test_what_the_model_said_is_not_a_limit():
    # the agent's message mentions a rate limit: an ordinary failure, not a quota wait
    assert usage.limit("codex", CODEX_OK) is None
    assert usage.limit("claude", CLAUDE_OK) is None
    assert usage.limit("script", CODEX_429) is None


def test_reset_times():
    now = calendar.timegm((2026, 12, 1, 18, 0, 0))
    assert usage.reset_time("Rate limit reached. Please try again in 20s.", now) == now + 20
    assert usage.reset_time("try again in 5 minutes", now) == now + 300
    assert usage.reset_time("You've hit your usage limit. Try again at 7:30 PM", now) == now + 5400
    assert usage.reset_time("resets 3pm", now) == now - 3 * 3600 + 86400  # tomorrow
    assert usage.reset_time("Claude AI usage limit reached|1764615600", now) == 1764615600
    assert usage.reset_time("Quota exceeded.", now) is None


# -- the meter: usage as it streams, each model message once (issue 21) ---------------------

def _claude_assistant(message_id: str, block: dict, output: int) -> str:
    """One ``assistant`` event of Claude Code's stream-json: one content block, the WHOLE message's usage."""
    return json.dumps({"type": "assistant", "message": {
        "id": message_id, "type": "message", "role": "assistant", "content": [block],
        "usage": {"input_tokens": 1000, "cache_creation_input_tokens": 100, "cache_read_input_tokens": 50,
                  "output_tokens": output}}})


def test_the_claude_meter_counts_a_message_once_however_often_the_transcript_repeats_it():
    # two model messages; the first has three content blocks, so three events carry its usage
    lines = [
        json.dumps({"type": "system", "subtype": "init"}),
        _claude_assistant("msg_1", {"type": "text", "text": "Let me look."}, 5),
        _claude_assistant("msg_1", {"type": "tool_use", "id": "t1", "name": "Bash", "input": {}}, 20),
        _claude_assistant("msg_1", {"type": "tool_use", "id": "t2", "name": "Bash", "input": {}}, 20),
        json.dumps({"type": "user", "message": {"content": [{"type": "tool_result", "tool_use_id": "t1"}]}}),
        _claude_assistant("msg_2", {"type": "text", "text": "Done."}, 30),
        _claude_assistant("msg_2", {"type": "text", "text": "Done."}, 30),
    ]
    meter = usage.Meter("claude")
    for line in lines:
        meter.feed(line)
    assert meter.spent()["input_tokens"] == 2 * 1150 and meter.spent()["output_tokens"] == 20 + 30
    assert meter.tokens == 2350
    naive = sum(json.loads(l)["message"]["usage"]["input_tokens"] + json.loads(l)["message"]["usage"]["output_tokens"]
                + 150 for l in lines if '"assistant"' in l)
    assert naive > meter.tokens * 2  # what a naive sum would have said
    meter.feed(CLAUDE_OK)  # the final result's totals (and its cost) win
    assert (meter.tokens, meter.cost_usd) == (2400 + 15 + 68, 0.0137)


def test_the_codex_meter_reads_the_running_total_of_the_session_log_and_ignores_repeats():
    def token_count(total_in: int, total_out: int) -> str:
        return json.dumps({"type": "event_msg", "payload": {"type": "token_count", "info": {
            "total_token_usage": {"input_tokens": total_in, "cached_input_tokens": 0, "output_tokens": total_out,
                                  "total_tokens": total_in + total_out},
            "last_token_usage": {"input_tokens": 1000, "output_tokens": 10}}}})

    meter = usage.Meter("codex")
    assert meter.spent() is None and meter.tokens == 0
    for n in (1, 2, 2, 3, 3, 3):  # one event per model response, some repeated (a rate-limit update)
        meter.feed(token_count(1000 * n, 10 * n))
    meter.feed(json.dumps({"type": "event_msg", "payload": {"type": "token_count", "info": None}}))
    assert meter.tokens == 3030
    meter.feed('{"type":"item.completed","item":{"id":"item_1","type":"command_execution"}}')
    meter.feed(CODEX_OK.splitlines()[-1])  # the turn's own total at its end: the larger account wins
    assert meter.tokens == 3030
    meter.feed(token_count(4000, 40))
    assert meter.tokens == 4040


def test_over_names_the_budget_passed():
    spent = {"input_tokens": 6000, "output_tokens": 60, "cost_usd": 0.3}
    assert usage.over(spent, 5000, None) == "spent 6060 tokens of a budget of 5000"
    assert usage.over(spent, 7000, 0.25) == "spent $0.3000 of a budget of $0.2500"
    assert usage.over(spent, 7000, None) is None and usage.over(None, 1, 1.0) is None
    # the budget is the issue's: what its earlier attempts spent counts
    assert usage.over(spent, 7000, None, before_tokens=1000) == \
        "spent 7060 tokens of a budget of 7000 (1000 by earlier attempts)"


def test_while_the_cli_runs_only_its_own_error_events_say_rate_limit():
    warning = 'WARNING: could not create PATH aliases under "/home/me/quota-work/.codex"'
    assert usage.limit("codex", warning) is not None  # at exit, stderr counts (as before)
    assert usage.limit("codex", warning, events_only=True) is None
    assert usage.limit("codex", CODEX_429, events_only=True) is not None
