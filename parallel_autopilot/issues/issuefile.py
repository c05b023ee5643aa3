"""Issue files for ``issues.import``: a whole file checked before anything is added.

The fields of each issue are checked by :mod:`.fields` (what the stores check on
``add``); yaml is imported only here, where a file is read (the host side).

A file is checked whole before anything is imported: the first problem is
reported with the line it is on (the line of the field at fault where there is
one), and nothing is added.

A file is a list of issues, or a mapping whose only key is ``issues``. JSON is
read by the JSON parser (YAML 1.1 refuses tab indentation, which JSON allows);
YAML's composer then only supplies line numbers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import InvalidInput, MalformedIssueFile
from .fields import PRIORITIES, RESULT_FIELDS, check_order, validate_fields, validate_result  # noqa: F401 - named here too

if TYPE_CHECKING:  # annotations only: yaml is imported where a file is read
    import yaml


# -- issue files ------------------------------------------------------------------


@dataclass
class _Lines:
    """Where one list item starts, and where each of its keys is."""

    start: int
    keys: dict[str, int] = field(default_factory=dict)


def _compose(text: str) -> yaml.Node | None:
    import yaml

    loader = yaml.SafeLoader(text)
    try:
        return loader.get_single_node()
    finally:
        loader.dispose()


def _construct(node: yaml.Node) -> Any:
    import yaml

    loader = yaml.SafeLoader("")
    try:
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _issue_nodes(node: yaml.Node | None) -> list[yaml.Node] | None:
    import yaml

    if isinstance(node, yaml.MappingNode) and len(node.value) == 1:
        key, value = node.value[0]
        if isinstance(key, yaml.ScalarNode) and key.value == "issues":
            node = value
    return node.value if isinstance(node, yaml.SequenceNode) else None


def _lines(nodes: list[yaml.Node]) -> list[_Lines]:
    import yaml

    lines = []
    for node in nodes:
        where = _Lines(node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            for key, _ in node.value:
                if isinstance(key, yaml.ScalarNode):
                    where.keys.setdefault(key.value, key.start_mark.line + 1)
        lines.append(where)
    return lines


def _unwrap(data: Any) -> Any:
    if isinstance(data, dict) and list(data) == ["issues"]:
        return data["issues"]
    return data


def _parse(path: Path, text: str) -> tuple[Any, list[_Lines]]:
    """The file's data and the lines of its items (empty where unknown)."""
    import yaml  # here, not at the top: the stores import this module in the containers (stdlib only)

    looks_like_json = path.suffix.lower() == ".json" or text.lstrip()[:1] in ("[", "{")
    if looks_like_json:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            if path.suffix.lower() == ".json":
                raise MalformedIssueFile(f"{path}:{err.lineno}: not valid JSON ({err.msg}); nothing imported") from None
        else:
            try:
                # in valid JSON a tab can only be whitespace: as spaces, YAML reads the same structure
                nodes = _issue_nodes(_compose(text.replace("\t", " ")))
            except yaml.YAMLError:
                nodes = None
            return _unwrap(data), _lines(nodes or [])
    try:
        node = _compose(text)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        problem = err.problem or err.context
        if err.context and err.context_mark and err.problem_mark and err.context_mark.line != mark.line:
            # an unclosed bracket or quote: the problem shows at the end, its start is on this line
            problem += f"; {err.context} that starts on line {err.context_mark.line + 1}"
        raise MalformedIssueFile(
            f"{path}:{mark.line + 1 if mark else 1}: not valid YAML ({' '.join(str(problem).split())}); nothing imported"
        ) from None
    except yaml.YAMLError as err:
        # a reader's error without a mark spans lines: one line, as every refusal is
        raise MalformedIssueFile(f"{path}:1: not valid YAML ({' '.join(str(err).split())}); nothing imported") from None
    if node is None:
        return None, []
    try:
        data = _construct(node)
    except yaml.MarkedYAMLError as err:  # a well-formed document YAML cannot build (a mapping as a key)
        mark = err.problem_mark or err.context_mark
        raise MalformedIssueFile(f"{path}:{mark.line + 1 if mark else 1}: not valid YAML "
                                 f"({' '.join(str(err.problem or err.context).split())}); nothing imported") from None
    except yaml.YAMLError as err:
        raise MalformedIssueFile(f"{path}:1: not valid YAML ({' '.join(str(err).split())}); nothing imported") from None
    return _unwrap(data), _lines(_issue_nodes(node) or [])


def load(path: Path) -> list[dict[str, Any]]:
    """The issues in ``path``, validated; MalformedIssueFile names the line at fault."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise MalformedIssueFile(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise MalformedIssueFile(f"{path}: cannot read it ({err.__class__.__name__}): give a UTF-8 YAML or JSON file") from None
    return loads(text, path)


def loads(text: str, path: Path | str = "issues.yaml") -> list[dict[str, Any]]:
    """The issues in ``text`` (a file's content, ``path`` its name: the GUI's upload), validated as :func:`load`."""
    path = Path(path)
    data, lines = _parse(path, text)
    if data is None:
        return []
    if not isinstance(data, list):
        raise MalformedIssueFile(f"{path}:1: expected a list of issues (or a mapping whose only key is 'issues'); nothing imported")
    items, numbers = [], {}
    for index, item in enumerate(data, start=1):
        where = lines[index - 1] if index <= len(lines) else _Lines(0)
        try:
            fields = validate_fields(item, f"issue {index}")
        except InvalidInput as err:
            line = where.keys.get(str(getattr(err, "field", None)), where.start)
            raise MalformedIssueFile(f"{path}:{line or '?'}: {err}; nothing imported") from None
        number = fields["number"]
        if number is not None and number in numbers:
            line = where.keys.get("number", where.start)
            raise MalformedIssueFile(f"{path}:{line or '?'}: issue {index}: number {number} is already used by "
                                     f"issue {numbers[number]} of this file; nothing imported")
        numbers[number] = index
        items.append(fields)
    try:  # keys, and cycles among the file's issues (numbers of existing issues: the store checks)
        check_order(items)
    except InvalidInput as err:
        index = err.index
        where = lines[index] if index < len(lines) else _Lines(0)
        line = where.keys.get(str(getattr(err, "field", None)), where.start)
        raise MalformedIssueFile(f"{path}:{line or '?'}: {err}; nothing imported") from None
    return items
