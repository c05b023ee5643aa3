"""What a model CLI's output says: the tokens it used, and whether it hit a rate limit or quota.

Read from the attempt log, which holds the CLI's JSON output:

- codex (``exec --json``): JSONL events; every ``turn.completed`` carries
  ``usage`` (``input_tokens``, ``cached_input_tokens``, ``output_tokens``,
  ``reasoning_output_tokens``). A rate limit ends with an ``error`` /
  ``turn.failed`` event and exit 1: "exceeded retry limit, last status: 429
  Too Many Requests", "Quota exceeded. Check your plan and billing details.",
  or for ChatGPT plans "You've hit your usage limit ... try again at <time>"
  (messages seen from Codex CLI 0.171.0 and in its binary's strings).
- claude (``-p --output-format stream-json``): the last ``{"type": "result"}``
  line has ``usage`` and ``total_cost_usd``; a rate limit is ``is_error`` with
  ``api_error_status: 429`` and a result "API Error: Request rejected (429) ...",
  or for plans "You've hit your ... limit · resets <time>" (Claude Code 2.1.197).

Only the CLI's own error events (and non-JSON lines, i.e. stderr) are searched
for limits, never what the model said: an issue ABOUT rate limits must not put
its agent to sleep. Standard library only.
"""

from __future__ import annotations

import calendar
import json
import re
import time
from dataclasses import dataclass

_LIMIT = re.compile(r"\b429\b|rate.?limit|too many requests|quota|usage limit|hit your .{0,40}limit"
                    r"|credit balance (?:is )?too low|usage_limit_reached", re.I)
_IN = re.compile(r"(?:try again|retry|resets?)\s+in\s+(\d+(?:\.\d+)?)\s*(s|sec|secs|seconds?|m|min|mins|minutes?"
                 r"|h|hr|hrs|hours?)\b", re.I)
_AT = re.compile(r"(?:try again|resets?)(?: at)?\s+(\d{1,2})(?::(\d{2}))?\s*(am|pm)?\b", re.I)
_EPOCH = re.compile(r"\|(\d{10})\b")
_UNIT = {"s": 1, "m": 60, "h": 3600}


@dataclass(frozen=True)
class Limit:
    """A rate limit or exhausted quota: the CLI's message and, when it said, when it resets."""

    message: str
    reset_at: float | None = None


def _events(text: str):
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        if line.startswith("{"):
            try:
                event = json.loads(line)
            except ValueError:
                yield None, line
                continue
            if isinstance(event, dict):
                yield event, line
        else:
            yield None, line


def parse(kind: str, text: str) -> dict | None:
    """The tokens (and cost) the attempt used, or None when the CLI reported nothing."""
    if kind == "codex":
        total = {"input_tokens": 0, "cached_input_tokens": 0, "output_tokens": 0, "reasoning_output_tokens": 0}
        seen = False
        for event, _ in _events(text):
            if event and event.get("type") == "turn.completed" and isinstance(event.get("usage"), dict):
                seen = True
                for key in total:
                    total[key] += int(event["usage"].get(key) or 0)
        return {**total, "turns": None, "cost_usd": None} if seen else None
    if kind == "claude":
        result = None
        for event, _ in _events(text):
            if event and event.get("type") == "result":
                result = event
        if not result or not isinstance(result.get("usage"), dict):
            return None
        u = result["usage"]
        return {"input_tokens": int(u.get("input_tokens") or 0) + int(u.get("cache_creation_input_tokens") or 0)
                + int(u.get("cache_read_input_tokens") or 0),
                "cached_input_tokens": int(u.get("cache_read_input_tokens") or 0),
                "output_tokens": int(u.get("output_tokens") or 0),
                "turns": result.get("num_turns"),
                "cost_usd": result.get("total_cost_usd")}
    return None


class Meter:
    """What an attempt has spent so far, read from the CLI's events AS THEY STREAM, each model message once.

    Transcripts repeat messages, so a naive sum of every usage seen overstates:

    - claude (``stream-json``): one ``assistant`` event per content block, each
      carrying its whole message's usage under the same ``message.id``; a message
      is counted once, by id (its latest usage: output grows while it streams).
      The final ``result`` event's totals and ``total_cost_usd`` win when it comes.
    - codex: ``exec --json`` reports usage only at ``turn.completed`` (each turn
      once); while a turn runs, its session log (``$CODEX_HOME/sessions/.../rollout-*.jsonl``)
      has a ``token_count`` event per model response whose ``total_token_usage``
      is the thread's running total: the largest total seen is what was spent,
      however often an event repeats.

    Tokens are input (cached input included) plus output, as the CLIs report them.
    Feed it lines with :meth:`feed`; :meth:`spent` is the usage dict of :func:`parse`.
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._messages: dict[str, tuple[int, int, int]] = {}  # claude: id -> (input, cached, output)
        self._result: dict | None = None  # claude: the final result's usage dict
        self._turns: list[tuple[int, int, int]] = []  # codex: each turn.completed
        self._running = (0, 0, 0)  # codex: the session log's largest running total

    def feed(self, line: str) -> None:
        """One line of the CLI's output or of codex's session log (anything else is ignored)."""
        line = line.strip()
        if not line.startswith("{"):
            return
        try:
            event = json.loads(line)
        except ValueError:
            return
        if not isinstance(event, dict):
            return
        kind = event.get("type")
        if self.kind == "claude":
            if kind == "assistant" and isinstance(event.get("message"), dict):
                message = event["message"]
                u = message.get("usage")
                if isinstance(u, dict) and message.get("id"):
                    seen = self._messages.get(str(message["id"]), (0, 0, 0))
                    now = (_int(u, "input_tokens") + _int(u, "cache_creation_input_tokens")
                           + _int(u, "cache_read_input_tokens"), _int(u, "cache_read_input_tokens"),
                           _int(u, "output_tokens"))
                    self._messages[str(message["id"])] = tuple(max(a, b) for a, b in zip(seen, now))
            elif kind == "result" and isinstance(event.get("usage"), dict):
                self._result = parse("claude", line)
        elif self.kind == "codex":
            if kind == "turn.completed" and isinstance(event.get("usage"), dict):
                u = event["usage"]
                self._turns.append((_int(u, "input_tokens"), _int(u, "cached_input_tokens"),
                                    _int(u, "output_tokens")))
            elif kind == "event_msg" and isinstance(event.get("payload"), dict):
                payload = event["payload"]
                info = payload.get("info") if payload.get("type") == "token_count" else None
                total = info.get("total_token_usage") if isinstance(info, dict) else None
                if isinstance(total, dict):
                    now = (_int(total, "input_tokens"), _int(total, "cached_input_tokens"),
                           _int(total, "output_tokens"))
                    if sum(now) - now[1] > sum(self._running) - self._running[1]:
                        self._running = now

    def spent(self) -> dict | None:
        """Tokens (and cost, when the CLI said) so far, or None before any usage was seen."""
        if self.kind == "claude":
            if self._result is not None:
                return self._result
            if not self._messages:
                return None
            parts = list(zip(*self._messages.values()))
            return {"input_tokens": sum(parts[0]), "cached_input_tokens": sum(parts[1]),
                    "output_tokens": sum(parts[2]), "turns": len(self._messages), "cost_usd": None}
        if self.kind == "codex":
            turns = tuple(sum(t[i] for t in self._turns) for i in range(3))
            best = max((turns, self._running), key=lambda t: t[0] + t[2])
            if not self._turns and self._running == (0, 0, 0):
                return None
            return {"input_tokens": best[0], "cached_input_tokens": best[1], "output_tokens": best[2],
                    "reasoning_output_tokens": 0, "turns": None, "cost_usd": None}
        return None

    @property
    def tokens(self) -> int:
        """Input plus output tokens so far."""
        return tokens(self.spent())

    @property
    def cost_usd(self) -> float | None:
        spent = self.spent()
        return None if spent is None or spent.get("cost_usd") is None else float(spent["cost_usd"])


def tokens(usage: dict | None) -> int:
    """Input plus output tokens of a usage dict (0 for None)."""
    if not usage:
        return 0
    return int(usage.get("input_tokens") or 0) + int(usage.get("output_tokens") or 0)


def over(usage: dict | None, budget_tokens: int | None, budget_usd: float | None,
         before_tokens: int = 0, before_usd: float = 0.0) -> str | None:
    """``"spent 6060 tokens of a budget of 5000"`` when ``usage`` (plus what the issue's earlier
    attempts spent, ``before_*``: the budget is the issue's) passed a budget, else None."""
    spent = tokens(usage) + int(before_tokens or 0)
    if budget_tokens is not None and spent > budget_tokens:
        earlier = f" ({before_tokens} by earlier attempts)" if before_tokens else ""
        return f"spent {spent} tokens of a budget of {budget_tokens}{earlier}"
    cost = (usage or {}).get("cost_usd")
    if budget_usd is not None and cost is not None and float(cost) + float(before_usd or 0.0) > budget_usd:
        earlier = f" (${before_usd:.4f} by earlier attempts)" if before_usd else ""
        return f"spent ${float(cost) + float(before_usd or 0.0):.4f} of a budget of ${budget_usd:.4f}{earlier}"
    return None


def _int(mapping: dict, key: str) -> int:
    try:
        return int(mapping.get(key) or 0)
    except (TypeError, ValueError):
        return 0


def limit(kind: str, text: str, now: float | None = None, events_only: bool = False) -> Limit | None:
    """A rate limit / quota the CLI gave up on, or None (an ordinary failure).

    ``events_only``: only the CLI's own JSON error events count, not its stderr (while
    it runs: a warning that names a path with "quota" in it must not park a login).
    """
    if kind not in ("codex", "claude"):
        return None
    now = time.time() if now is None else now
    found = None
    for event, line in _events(text):
        if event is None:
            if events_only:
                continue
            if line.startswith("### "):
                continue  # the runtime's own header ("issue #429 ... token 429"), not the CLI's
            candidate = line  # stderr, or a line that is not the CLI's JSON
        elif kind == "codex" and event.get("type") in ("error", "turn.failed"):
            candidate = event.get("message") or (event.get("error") or {}).get("message") or ""
        elif kind == "claude" and event.get("type") == "result" and event.get("is_error"):
            candidate = str(event.get("result") or "")
            if event.get("api_error_status") == 429:
                candidate = candidate or "429"
        else:
            continue
        if candidate and _LIMIT.search(candidate):
            found = candidate
    if found is None:
        return None
    return Limit(" ".join(found.split())[:300], reset_time(found, now))


def reset_time(message: str, now: float) -> float | None:
    """When the limit resets, from the message ("in 20s", "at 3pm", "|<epoch>"); None if unsaid."""
    epoch = _EPOCH.search(message)
    if epoch:
        return float(epoch.group(1))
    after = _IN.search(message)
    if after:
        return now + float(after.group(1)) * _UNIT[after.group(2)[0].lower()]
    at = _AT.search(message)
    if at:
        hour, minute, half = int(at.group(1)), int(at.group(2) or 0), (at.group(3) or "").lower()
        if half == "pm" and hour < 12:
            hour += 12
        if half == "am" and hour == 12:
            hour = 0
        if hour > 23 or minute > 59 or (not half and at.group(2) is None):
            return None  # "resets 3" says nothing sure
        day = time.gmtime(now)
        stamp = calendar.timegm((day.tm_year, day.tm_mon, day.tm_mday, hour, minute, 0))
        return stamp if stamp > now else stamp + 86400
    return None


def total(usages) -> dict:
    """Sum of usage dicts (per agent, per run); None entries are skipped."""
    out = {"input_tokens": 0, "output_tokens": 0, "cost_usd": 0.0, "issues": 0}
    for u in usages:
        if not u:
            continue
        out["issues"] += 1
        out["input_tokens"] += int(u.get("input_tokens") or 0)
        out["output_tokens"] += int(u.get("output_tokens") or 0)
        out["cost_usd"] += float(u.get("cost_usd") or 0.0)
    out["cost_usd"] = round(out["cost_usd"], 6)
    return out
