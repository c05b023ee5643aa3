"""tasks/edge.py: invoke's parser changes act on OUR tasks only; fab and inv load one way."""

from __future__ import annotations

import invoke
import pytest
from invoke.parser import Argument, Parser, ParserContext
from invoke.exceptions import ParseError

from parallel_autopilot.tasks import edge, ns as ours


@invoke.task
def other(c, name, n=1):
    """An unrelated task: invoke's own decorator, another package."""


other.body.__module__ = "someone_else.tasks"  # defined here, but stands for a foreign module


def _parse(collection: invoke.Collection, argv: list[str]):
    initial = ParserContext(args=[Argument(names=("help", "h"), optional=True)])
    try:
        result = Parser(initial=initial, contexts=collection.to_contexts()).parse_argv(argv)
    except (ParseError, ValueError) as err:  # plain invoke lets a bad int out as ValueError
        return (err.__class__.__name__, str(err))
    return [(ctx.name, {a.name: a.value for a in ctx.args.values()}) for ctx in result]


@pytest.mark.parametrize("argv", [["other", "--help"], ["other", "x", "--n", "3"], ["other", "x", "-n", "2"],
                                  ["other", "x", "-n", "two"]])
def test_an_unrelated_collection_parses_as_plain_invoke_does(argv, monkeypatch):
    theirs = invoke.Collection("theirs", other)
    patched = _parse(theirs, argv)
    monkeypatch.setattr(invoke.Collection, "to_contexts", edge._plain_to_contexts)
    monkeypatch.setattr(invoke.parser.parser.ParseMachine, "handle", edge._plain_handle)
    assert patched == _parse(theirs, argv)


def test_our_tasks_still_take_long_letter_flags_and_help_first():
    contexts = {ctx.name: ctx for ctx in ours.to_contexts()}
    assert "--n" in contexts["agents.start"].flags
    parsed = _parse(ours, ["issues.show", "--help"])
    assert parsed[0][1]["help"] == "issues.show"  # help, not a bad issue number
    kind, message = _parse(ours, ["logs.tail", "--lines", "many"])
    assert kind == "ParseError" and message.startswith("--lines 'many' is not an int")  # one line, no traceback


def test_fab_and_inv_load_the_same_settings(git_repo, monkeypatch):
    import fabric

    monkeypatch.chdir(git_repo)
    (git_repo / "invoke.yaml").write_text("autopilot:\n  max_agents: 3\n")
    plain = invoke.Config(project_location=str(git_repo))
    plain.load_project()
    inv = edge.settings(invoke.Context(config=plain))
    fab_config = fabric.Config(overrides={"autopilot": {"stop_grace_seconds": 7}})
    fab = edge.settings(invoke.Context(config=fab_config))
    assert inv.max_agents == fab.max_agents == 3  # the repository's file, under both
    assert fab.stop_grace_seconds == 7  # fab's own layer goes over it
    outside = git_repo.parent / "not-a-repo"
    outside.mkdir()
    monkeypatch.chdir(outside)
    assert edge.settings(invoke.Context(config=fab_config), anywhere=True).repo == outside.resolve()
    assert edge.fleet_of(invoke.Context(config=plain), repo=str(git_repo)).settings.repo == git_repo.resolve()
