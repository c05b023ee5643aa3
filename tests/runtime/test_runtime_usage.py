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
