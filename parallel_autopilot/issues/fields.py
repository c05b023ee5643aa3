"""What an issue (and a result) may say: the fields both stores check on the way in.

:func:`validate_fields` checks one issue's fields for ``add`` (both stores call it),
:func:`validate_result` what a completion may record. Standard library only: the
stores run in the agent containers.
"""

from __future__ import annotations

from typing import Any, Mapping

from ..errors import InvalidInput

PRIORITIES = ("urgent", "high", "medium", "low")
#: What a completion may record about the attempt.
RESULT_FIELDS = ("branch", "commit", "duration", "check_status", "check_duration", "check_output", "usage")


def validate_result(result: Mapping[str, Any] | None) -> dict[str, Any]:
    """A completion's (or a failed check's) result as a dict; InvalidInput names an unknown field."""
    result = dict(result or {})
    unknown = set(result) - set(RESULT_FIELDS)
    if unknown:
        raise InvalidInput(f"unknown result field(s) {sorted(unknown)}: use {', '.join(RESULT_FIELDS)}")
    return result


def _invalid(where: str, field: Any, problem: str) -> InvalidInput:
    err = InvalidInput(f"{where}: {problem}")
    err.field = field  # which field is at fault: an issue file reports that field's line
    return err


def validate_fields(item: Mapping[str, Any], where: str = "issue") -> dict[str, Any]:
    """Check one issue's fields for :meth:`IssueStore.add`; return them normalised.

    The InvalidInput raised names the field at fault in its ``field`` attribute
    (None when the item as a whole is wrong).
    """
    if not isinstance(item, Mapping):
        raise _invalid(where, None, f"expected a mapping with at least a title, got {type(item).__name__}")
    allowed = {"number", "title", "body", "priority", "script", "check", "max_attempts", "budget_tokens", "budget_usd"}
    unknown = sorted(set(item) - allowed, key=str)
    if unknown:
        raise _invalid(where, unknown[0], f"unknown field(s) {', '.join(map(str, unknown))}; "
                                          f"allowed: {', '.join(sorted(allowed))}")
    title = item.get("title")
    if not isinstance(title, str) or not title.strip():
        raise _invalid(where, "title" if "title" in item else None, "a non-empty 'title' is required")
    priority = item.get("priority", "medium")
    if priority not in PRIORITIES:
        raise _invalid(where, "priority", f"priority {priority!r} is not one of {', '.join(PRIORITIES)}")
    body = item.get("body", "")
    script = item.get("script")
    if not isinstance(body, str):
        raise _invalid(where, "body", "'body' must be text")
    if script is not None and not isinstance(script, str):
        raise _invalid(where, "script", "'script' must be text")
    check = item.get("check")
    if check is not None and (not isinstance(check, str) or not check.strip()):
        raise _invalid(where, "check", "'check' must be a non-empty command")
    number = item.get("number")
    if number is not None and (isinstance(number, bool) or not isinstance(number, int) or number < 1):
        raise _invalid(where, "number", "'number' must be a positive integer")
    max_attempts = item.get("max_attempts")
    if max_attempts is not None and (isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or max_attempts < 1):
        raise _invalid(where, "max_attempts", "'max_attempts' must be a positive integer")
    budget_tokens = item.get("budget_tokens")
    if budget_tokens is not None and (isinstance(budget_tokens, bool) or not isinstance(budget_tokens, int)
                                      or budget_tokens < 1):
        raise _invalid(where, "budget_tokens", "'budget_tokens' must be a positive integer (tokens)")
    budget_usd = item.get("budget_usd")
    if budget_usd is not None and (isinstance(budget_usd, bool) or not isinstance(budget_usd, (int, float))
                                   or not 0 < budget_usd < 1e9):
        raise _invalid(where, "budget_usd", "'budget_usd' must be a positive number (US dollars)")
    return {
        "budget_tokens": budget_tokens,
        "budget_usd": None if budget_usd is None else float(budget_usd),
        "number": number,
        "title": title.strip(),
        "body": body,
        "priority": priority,
        "script": script,
        "check": check,
        "max_attempts": max_attempts,
    }
