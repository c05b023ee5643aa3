"""Issue files: YAML and JSON lists import whole; a malformed one names its line and imports nothing."""

from __future__ import annotations

import json

import pytest

from parallel_autopilot.issues import issuefile
from parallel_autopilot.errors import Conflict, MalformedIssueFile


def import_file(store, path):
    """What ``issues.import`` does: check the whole file, then add it in one transaction."""
    return store.add_many(issuefile.load(path))


YAML = """\
# the first batch
- title: Fix the parser
  body: |
    It chokes on tabs.
    Two lines of body.
  priority: high
  script: make fix-parser
- title: "  Write the docs  "
  max_attempts: 5
- title: Pinned number
  number: 40
  priority: urgent
"""


def test_yaml_list_imports_every_field(tmp_path, store):
    path = tmp_path / "issues.yaml"
    path.write_text(YAML)

    added = import_file(store, path)

    assert [(i.number, i.title, i.priority, i.max_attempts) for i in added] == [
        (1, "Fix the parser", "high", 3), (2, "Write the docs", "medium", 5), (40, "Pinned number", "urgent", 3)]
    assert added[0].body == "It chokes on tabs.\nTwo lines of body.\n"
    assert added[0].script == "make fix-parser"
    assert all(i.status == "ready" for i in store.list())


@pytest.mark.parametrize("indent", ["  ", "\t"])
def test_json_list_imports_whatever_its_indentation(tmp_path, store, indent):
    data = [{"title": "From JSON", "priority": "low", "body": "tab\there, slash \\/ here"},
            {"title": "Second", "max_attempts": 2}]
    path = tmp_path / "issues.json"
    path.write_text(json.dumps(data, indent=indent).replace("\\\\/", "\\/"))

    added = import_file(store, path)

    assert [(i.title, i.priority, i.max_attempts) for i in added] == [("From JSON", "low", 3), ("Second", "medium", 2)]
    assert added[0].body == "tab\there, slash / here"


@pytest.mark.parametrize("name, text", [
    ("wrapped.yaml", "issues:\n  - title: a\n  - title: b\n"),
    ("wrapped.json", '{"issues": [{"title": "a"}, {"title": "b"}]}'),
    ("flow.yaml", "[{title: a}, {title: b}]"),
    ("no-suffix", '[{"title": "a"},\n {"title": "b"}]'),
])
def test_other_shapes_of_a_list(tmp_path, store, name, text):
    path = tmp_path / name
    path.write_text(text)
    assert [i.title for i in import_file(store, path)] == ["a", "b"]


@pytest.mark.parametrize("text", ["", "\n# nothing yet\n", "[]"])
def test_an_empty_file_imports_nothing(tmp_path, store, text):
    path = tmp_path / "empty.yaml"
    path.write_text(text)
    assert import_file(store, path) == []


MALFORMED = [
    # (file name, text, line at fault, words the message must hold)
    ("syntax.yaml", "- title: a\n  priority: high\n   body: x\n", 3, "not valid YAML"),
    ("unclosed.yaml", "- title: a\n- title: [b\n- title: c\n", 3, "starts on line 2"),
    ("no-title.yaml", "- title: a\n- title: b\n- body: only a body\n  priority: low\n", 3, "'title' is required"),
    ("empty-title.yaml", "- title: a\n- body: x\n  title: '   '\n", 3, "'title' is required"),
    ("priority.yaml", "- title: a\n- title: b\n  body: fine\n  priority: whenever\n", 4, "priority 'whenever'"),
    ("unknown.yaml", "- title: a\n- title: b\n  priority: low\n  labels: [x]\n", 4, "unknown field(s) labels"),
    ("attempts.yaml", "- title: a\n  max_attempts: 0\n- title: b\n", 2, "'max_attempts' must be"),
    ("number.yaml", "- title: a\n  number: seven\n", 2, "'number' must be"),
    ("scalar-item.yaml", "- title: a\n- just a sentence\n", 2, "expected a mapping"),
    ("duplicate.yaml", "- title: a\n  number: 9\n- title: b\n  number: 9\n", 4, "number 9 is already used by issue 1"),
    ("mapping.yaml", "title: not in a list\npriority: high\n", 1, "expected a list of issues"),
    ("scalar.yaml", "just words\n", 1, "expected a list of issues"),
    ("bad.json", '[\n  {"title": "a"},\n  {"title": "b",}\n]\n', 3, "not valid JSON"),
    ("priority.json", '[\n\t{"title": "a"},\n\t{\n\t\t"title": "b",\n\t\t"priority": "p1"\n\t}\n]\n', 5, "priority 'p1'"),
    ("no-title.json", '[{"title": "a"},\n {"body": "b"}]', 2, "'title' is required"),
]


@pytest.mark.parametrize("name, text, line, words", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_a_malformed_file_names_its_line_and_imports_nothing(tmp_path, store, name, text, line, words):
    path = tmp_path / name
    path.write_text(text)

    with pytest.raises(MalformedIssueFile) as err:
        import_file(store, path)

    message = str(err.value)
    assert message.startswith(f"{path}:{line}: "), message
    assert words in message and message.endswith("nothing imported")
    assert "\n" not in message
    assert store.counts() == dict.fromkeys(store.counts(), 0)


def test_a_number_taken_in_the_database_imports_nothing(tmp_path, store):
    store.add("already here", number=3)
    path = tmp_path / "issues.yaml"
    path.write_text("- title: a\n- title: b\n  number: 3\n")
    with pytest.raises(Conflict, match="#3 already exists"):
        import_file(store, path)
    assert [i.title for i in store.list()] == ["already here"]


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(MalformedIssueFile, match="no such file"):
        issuefile.load(tmp_path / "nope.yaml")
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"- title: \xff\xfe\n")
    with pytest.raises(MalformedIssueFile, match="UTF-8"):
        issuefile.load(binary)


def test_the_stores_validation_lives_here_and_needs_no_yaml(tmp_path):
    """issues/__init__.py runs in the containers on the standard library: importing it (and so this
    module, which owns the validation) loads no yaml until a file is read."""
    import subprocess
    import sys

    from parallel_autopilot import issues

    assert issues.validate_fields is issuefile.validate_fields
    with pytest.raises(Exception, match="priority 'whenever' is not one of"):
        issues.IssueStore(tmp_path / "q.db").add("x", priority="whenever")
    probe = ("import sys, parallel_autopilot.issues as i; assert 'yaml' not in sys.modules, 'yaml at import'; "
             "import parallel_autopilot.issues.issuefile as f, pathlib; p = pathlib.Path(sys.argv[1]); "
             "p.write_text('- title: a\\n'); assert f.load(p)[0]['title'] == 'a'; assert 'yaml' in sys.modules")
    subprocess.run([sys.executable, "-c", probe, str(tmp_path / "one.yaml")], check=True)


def test_keys_and_dependencies_resolve_within_the_file(tmp_path, store):
    path = tmp_path / "backlog.yaml"
    existing = store.add("already there")
    path.write_text(f"- title: endpoint\n  depends_on: [model, {existing.number}]\n  paths: ['src/api/*.py']\n"
                    "- title: model\n  key: model\n")
    added = import_file(store, path)
    assert [(i.title, i.depends_on, i.paths) for i in added] == [
        ("endpoint", [added[1].number, existing.number], ["src/api/*.py"]), ("model", [], [])]


@pytest.mark.parametrize("text,line,words", [
    ("- title: a\n  key: a\n  depends_on: [b]\n- title: b\n  key: b\n  depends_on: [a]\n", 3, "cycle (a -> b -> a)"),
    ("- title: a\n  key: a\n- title: b\n  key: a\n", 4, "key 'a' is already used by issue 1"),
    ("- title: a\n  depends_on: [nobody]\n", 2, "depends on 'nobody'"),
    ("- title: a\n  paths: src/x.py\n", 2, "'paths' must be a list"),
])
def test_a_bad_order_names_its_line_and_imports_nothing(tmp_path, store, text, line, words):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(MalformedIssueFile) as err:
        issuefile.load(path)
    assert str(err.value).startswith(f"{path}:{line}: ") and words in str(err.value)
    assert "nothing imported" in str(err.value) and "\n" not in str(err.value)
