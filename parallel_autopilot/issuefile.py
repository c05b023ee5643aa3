"""Reading issue files (YAML or JSON lists) for ``issues.import``.

A file is checked whole before anything is imported: the first problem is
reported with the line it is on, and nothing is added.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from .errors import MalformedIssueFile
from .issues import validate_fields
from .errors import InvalidInput


class _LineLoader(yaml.SafeLoader):
    """A SafeLoader that remembers the line of every mapping (``__line__``)."""

    def construct_mapping(self, node, deep=False):
        mapping = super().construct_mapping(node, deep=deep)
        mapping["__line__"] = node.start_mark.line + 1
        return mapping


def load(path: Path) -> list[dict[str, Any]]:
    """The issues in ``path``, validated; MalformedIssueFile names the line at fault."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise MalformedIssueFile(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise MalformedIssueFile(f"{path}: cannot read it ({err.__class__.__name__}): give a UTF-8 YAML or JSON file") from None
    try:
        data = yaml.load(text, Loader=_LineLoader)  # JSON is YAML: one parser, line numbers for both
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        line = f"line {mark.line + 1}" if mark else "unknown line"
        raise MalformedIssueFile(f"{path}:{line.split()[-1]}: not valid YAML/JSON ({err.problem}); nothing imported") from None
    if data is None:
        return []
    if isinstance(data, dict) and "issues" in data and len(data) <= 2:
        data = data["issues"]
    if not isinstance(data, list):
        raise MalformedIssueFile(f"{path}:1: expected a list of issues (or a mapping with an 'issues' list); nothing imported")
    items = []
    for index, item in enumerate(data, start=1):
        line = item.pop("__line__", "?") if isinstance(item, dict) else "?"
        try:
            fields = validate_fields(item, f"issue {index}")
        except InvalidInput as err:
            raise MalformedIssueFile(f"{path}:{line}: {err}; nothing imported") from None
        items.append(fields)
    return items
