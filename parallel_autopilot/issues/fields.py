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
    allowed = {"number", "title", "body", "priority", "script", "check", "max_attempts",
               "key", "depends_on", "paths"}  # issue 21: the backlog's order
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
    key = item.get("key")
    if key is not None and (not isinstance(key, str) or not key.strip()):
        raise _invalid(where, "key", "'key' must be a non-empty name (other issues of the file say depends_on: [name])")
    depends_on = item.get("depends_on") or []
    if not isinstance(depends_on, list) or any(
            isinstance(d, bool) or not (isinstance(d, int) and d >= 1 or isinstance(d, str) and d.strip())
            for d in depends_on):
        raise _invalid(where, "depends_on", "'depends_on' must be a list of issue numbers and keys of this file")
    paths = item.get("paths") or []
    if not isinstance(paths, list) or any(not isinstance(p, str) or not p.strip() for p in paths):
        raise _invalid(where, "paths", "'paths' must be a list of file globs (e.g. [\"src/parser/*.py\"])")
    return {
        "number": number,
        "title": title.strip(),
        "body": body,
        "priority": priority,
        "script": script,
        "check": check,
        "max_attempts": max_attempts,
        "key": key.strip() if key is not None else None,
        "depends_on": list(dict.fromkeys(d.strip() if isinstance(d, str) else d for d in depends_on)),
        "paths": normalise_paths(paths),
    }


# -- issue 21: the backlog's order --------------------------------------------------

#: Where a glob's literal part ends.
WILDCARDS = "*?["


def normalise_paths(paths: list[str]) -> list[str]:
    """Globs as stored: stripped, without a leading ``./``, each once, in order."""
    out = []
    for path in paths:
        path = path.strip()
        while path.startswith("./"):
            path = path[2:]
        if path not in out:
            out.append(path)
    return out


def literal_prefix(glob: str) -> str:
    """The part of ``glob`` before its first wildcard: every file it matches starts with it.

    So two globs that match one file have prefixes of which one starts with the
    other: the claim's overlap rule (conservative: ``src/*.py`` and ``src/x.txt``
    overlap for it, though no file matches both).
    """
    cut = min((glob.index(c) for c in WILDCARDS if c in glob), default=len(glob))
    return glob[:cut]


def overlap(a: str, b: str) -> bool:
    """The claim's rule (in SQL as ``store.PATHS_OVERLAP``), in Python for the merge queue and tests."""
    pa, pb = literal_prefix(a), literal_prefix(b)
    return pa.startswith(pb) or pb.startswith(pa)


def check_order(items: list[Mapping[str, Any]]) -> list[list[tuple[str, int]]]:
    """Resolve the dependencies of a batch of validated issues; InvalidInput on a cycle or unknown key.

    Returns, for each item, its predecessors as ``("batch", index)`` (an issue of the
    batch, by key or by its explicit number) or ``("number", n)`` (an existing issue:
    the store checks it exists). The error names the item (``index``, from 0) and its field.
    """
    try:
        return _resolve(items)
    except InvalidInput as err:
        err.index = int(str(err).split(":", 1)[0].split()[-1]) - 1  # "issue N: ..."
        raise


def _resolve(items: list[Mapping[str, Any]]) -> list[list[tuple[str, int]]]:
    keys: dict[str, int] = {}
    numbers = {item["number"]: i for i, item in enumerate(items) if item.get("number") is not None}
    for i, item in enumerate(items):
        key = item.get("key")
        if key is not None:
            if key in keys:
                raise _invalid(f"issue {i + 1}", "key", f"key {key!r} is already used by issue {keys[key] + 1}")
            keys[key] = i
    edges: list[list[tuple[str, int]]] = []
    for i, item in enumerate(items):
        mine = []
        for ref in item.get("depends_on") or []:
            if isinstance(ref, str):
                if ref not in keys:
                    raise _invalid(f"issue {i + 1}", "depends_on",
                                   f"depends on {ref!r}, which no issue of this batch has as its key")
                mine.append(("batch", keys[ref]))
            elif ref in numbers:
                mine.append(("batch", numbers[ref]))
            else:
                mine.append(("number", ref))
        if ("batch", i) in mine:
            raise _invalid(f"issue {i + 1}", "depends_on", "depends on itself")
        edges.append(mine)
    # a cycle: depth-first, the path kept to name it
    state = [0] * len(items)  # 0 new, 1 on the path, 2 done

    def name(i: int) -> str:
        item = items[i]
        return item.get("key") or (f"#{item['number']}" if item.get("number") else f"issue {i + 1}")

    def visit(i: int, path: list[int]) -> None:
        state[i] = 1
        for kind, j in edges[i]:
            if kind != "batch":
                continue
            if state[j] == 1:
                cycle = path[path.index(j):] + [i, j] if j in path else [i, j]
                raise _invalid(f"issue {j + 1}", "depends_on", "dependencies form a cycle ("
                               + " -> ".join(name(k) for k in cycle) + ")")
            if state[j] == 0:
                visit(j, path + [i])
        state[i] = 2

    for i in range(len(items)):
        if state[i] == 0:
            visit(i, [])
    return edges
