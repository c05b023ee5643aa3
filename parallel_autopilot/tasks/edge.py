"""What every task shares: settings from the context, errors as one line, output.

A task body raises domain errors (``AutopilotError``); :func:`task` turns them
into ``invoke.Exit(message, code)``, so the user sees one line and a non-zero
exit code, never a traceback, for every expected failure.

Output: a task prints through :func:`echo`, :func:`table`, :func:`print_table` or
:func:`emit_json`, never ``print``. Titles, errors, check output, logs and file names
are written by agents, which are hostile: the first three show every terminal control
character visibly (:func:`parallel_autopilot.printable.printable`), JSON escapes them itself.
"""

from __future__ import annotations

import contextlib
import functools
import json
import sys
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import invoke
from invoke.exceptions import ParseError
from invoke.parser.parser import ParseMachine

from .. import config
from ..errors import EXIT_INTERRUPTED, AutopilotError, GitError, MissingDependency
from ..fleet import Fleet
from ..printable import printable


def task(*args: Any, **kwargs: Any) -> Callable:
    """``invoke.task`` whose body's AutopilotError becomes a one-line exit."""

    def decorate(body: Callable) -> invoke.Task:
        @functools.wraps(body)
        def run(c, *a, **kw):
            try:
                return body(c, *a, **kw)
            except AutopilotError as err:
                raise invoke.Exit(error_line(err), code=err.exit_code) from None
            except KeyboardInterrupt:
                raise invoke.Exit("interrupted", code=EXIT_INTERRUPTED) from None

        return invoke.task(*args, **kwargs)(run)

    if len(args) == 1 and callable(args[0]) and not kwargs:
        body, args = args[0], ()
        return decorate(body)
    return decorate


def error_line(err: AutopilotError) -> str:
    """``error: <the error's line>``, what invoke prints on stderr for an expected failure (printable)."""
    return f"error: {printable(err)}"


def echo(text: object = "", *, file=None, flush: bool = False) -> None:
    """``print(text)`` with every terminal control character shown visibly: how a task prints.

    What a task prints may hold agent-written text (a title, an error, a check's output, a log
    line); ordinary text is printed unchanged.
    """
    print(printable(text), file=file, flush=flush)


@contextlib.contextmanager
def require_extra(extra: str, what: str | None = None):
    """An ImportError inside becomes MissingDependency naming the pip command of ``extra``."""
    try:
        yield
    except ImportError as err:
        raise MissingDependency(
            f"{what or extra} needs the Python package {err.name or err}, which is not installed: "
            f"run `{sys.executable} -m pip install 'parallel-autopilot[{extra}]'` "
            f"(in a checkout: `pip install -e '.[{extra}]'`, or `bash scripts/bootstrap.sh`)") from None


def settings(c, *, anywhere: bool = False, **overrides) -> config.Settings:
    """The Settings for this invocation (see :mod:`parallel_autopilot.config`).

    ``fab`` reads no invoke file itself, so its Config is a layer over the
    files ``inv`` reads: both see the same values. ``anywhere``: outside a git
    repository the current directory stands for it (the laptop side of the
    ``remote.*`` tasks, which needs only the ``remote_*`` keys).
    """
    if anywhere:
        try:
            overrides["repo"] = str(config.git_toplevel(Path.cwd()))
        except GitError:
            overrides["repo"] = str(Path.cwd())
    if _from_fab(c):
        return config.load(None, layers=[c.config], **overrides)
    return config.load(c.config, **overrides)


def _from_fab(c) -> bool:
    fabric = sys.modules.get("fabric")  # only `fab` (or tasks/remote.py) imported it
    return fabric is not None and isinstance(c.config, fabric.Config)


def fleet_of(c, **overrides) -> Fleet:
    """The one Fleet of this invocation: what every task that acts on the agents uses.

    A caller that made its Fleet already (a program running the tasks in-process, a
    test over a fake daemon) hands it over on the context, as ``create_app(fleet=)``
    takes one: ``invoke.Context(config=invoke.Config(overrides={"fleet": the_fleet}))``.
    """
    given = c.config.get("fleet")
    if isinstance(given, Fleet) and not overrides:
        return given
    return Fleet.open(settings(c, **overrides))


def _cells(row: Sequence[Any]) -> list[str]:
    return ["" if v is None else printable(v) for v in row]


def table(rows: Iterable[Sequence[Any]], headers: Sequence[str]) -> str:
    """A plain aligned text table; its cells :func:`printable` (they may be agent-written)."""
    body = [_cells(row) for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in body]) for i, h in enumerate(headers)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([line(headers), line(["-" * w for w in widths]), *map(line, body)])


def rich_table(rows: Iterable[Sequence[Any]], headers: Sequence[str], title: str | None = None):
    """The same table as a ``rich`` Table, for a terminal (bold headers, no box).

    The cells are :func:`printable` ``Text``, never console markup: a title ``[link=...]`` or
    ``[blink]`` is shown as written.
    """
    from rich.table import Table
    from rich.text import Text

    grid = Table(*headers, box=None, header_style="bold", pad_edge=False, title=title, title_justify="left")
    for row in rows:
        grid.add_row(*(Text(cell) for cell in _cells(row)))
    return grid


def print_table(rows: Iterable[Sequence[Any]], headers: Sequence[str]) -> None:
    """``rich`` on a terminal; the plain :func:`table` for pipes and scripts (stable text)."""
    rows = list(rows)
    if sys.stdout.isatty():
        from rich.console import Console

        Console().print(rich_table(rows, headers))
    else:
        echo(table(rows, headers))


def emit_json(data: Any) -> None:
    """Print ``data`` as JSON for scripts (stable key order, no colours)."""
    json.dump(data, sys.stdout, indent=2, sort_keys=True, default=str)
    sys.stdout.write("\n")


def _alias_letter_flags(contexts):
    """Give every one-letter flag ``-n`` the long spelling ``--n`` as well."""
    for ctx in contexts:
        for flag in list(ctx.flags.keys()):
            if len(flag) == 2 and flag.startswith("-") and "-" + flag not in ctx.flags:
                ctx.flags.alias("-" + flag, to=flag)  # an alias: listed once in --help
    return contexts


def _ours(t: invoke.Task) -> bool:
    """A task of this package (a mirrored remote task's body lives in tasks/remote.py)."""
    return getattr(t.body, "__module__", "").startswith("parallel_autopilot.")


class Namespace(invoke.Collection):
    """The Collection of our task modules (one-letter flags take ``--n`` too; see below)."""


# invoke gives a parameter ``n`` only ``-n``; the design writes ``agents.start
# --n 5``. `inv` and `fab` load tasks.py's `ns` with Collection.from_module,
# which copies it into a PLAIN Collection, so a subclass override never runs
# there and the step has to sit on invoke's Collection itself. It is scoped:
# only the contexts of OUR tasks (by their body's module) get the alias and the
# marker the parser patch below looks for; any other collection in the process
# parses exactly as plain invoke does (tests/tasks/test_tasks_edge.py).
_plain_to_contexts = invoke.Collection.to_contexts
_MARK = "_parallel_autopilot"


def _to_contexts_with_long_letter_flags(self, ignore_unknown_help=None):
    contexts = _plain_to_contexts(self, ignore_unknown_help=ignore_unknown_help)
    mine = [ctx for ctx in contexts if _ours(self[ctx.name])]
    for ctx in mine:
        setattr(ctx, _MARK, True)
    _alias_letter_flags(mine)
    return contexts


invoke.Collection.to_contexts = _to_contexts_with_long_letter_flags


# `issues.show --help` must show help, not be refused as a bad number: invoke's parser
# gives a token to a task's missing positional argument BEFORE it looks for the core
# --help/-h, so `issues.add --help` added an issue titled "--help". Help goes first
# here (a value right after a flag that takes one, `--title --help`, stays a value).
# invoke's Parser takes no parser class, so this too sits on its ParseMachine; it acts
# only while the parser is in one of OUR tasks' contexts (marked above).
_plain_handle = ParseMachine.handle


def _handle_help_first(self, token):
    if not getattr(self.context, _MARK, False):
        return _plain_handle(self, token)
    if (token in ("--help", "-h") and self.current_state != "unknown" and self.context is not None
            and not self.waiting_for_flag_value and token not in self.context.flags
            and self.initial is not None and token in self.initial.flags):
        self.initial.flags[token].value = self.context.name
        self.context.positional_args[:] = []  # help needs none: no "did not receive" error
        return None
    try:
        return _plain_handle(self, token)
    except ValueError:
        # invoke casts to the default's type (`--watch 0.3` where the default is 0) and
        # would end in a traceback; a ParseError is the one line invoke prints for bad input
        flag = getattr(self, "flag", None)
        name = flag.name.replace("_", "-") if flag is not None else "this option"
        kind = getattr(getattr(flag, "kind", None), "__name__", "value")
        raise ParseError(f"--{name} {token!r} is not {'an' if kind == 'int' else 'a'} {kind}: "
                         f"give e.g. --{name} 3") from None


ParseMachine.handle = _handle_help_first
