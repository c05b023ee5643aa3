"""Agent kinds: what is run for an issue, with which arguments and environment.

- ``script``: the issue's own ``script`` with ``bash -c`` (``sh -c`` where bash
  is missing), in the worktree. The embedded default; works offline. An issue
  without a script fails with a clear error.
- ``codex`` (Codex CLI 0.171): ``codex exec --dangerously-bypass-approvals-and-sandbox
  --skip-git-repo-check --ephemeral --json -o <last message file> -C <workspace> <prompt>``.
  The container IS the sandbox: codex's own (bwrap) cannot start under
  cap_drop ALL + no-new-privileges, and with it every command fails while codex
  still exits 0. ``--full-auto`` no longer exists (exit 2). Stdin is /dev/null:
  a piped stdin is read as more prompt. JSONL events go to the attempt log
  (usage and rate limits are read from them: :mod:`.usage`). A custom endpoint
  is a ``config.toml`` written into ``$CODEX_HOME`` (the tmpfs HOME) at boot.
- ``claude`` (Claude Code 2.1): ``claude -p <prompt> --dangerously-skip-permissions
  --output-format stream-json --verbose`` (print mode; no permission prompt
  nobody could answer). As root, Claude Code refuses that flag unless
  ``IS_SANDBOX`` is exactly ``1`` (``yes`` is refused), so it is FORCED to 1
  for uid 0. A custom endpoint is ``ANTHROPIC_BASE_URL`` with
  ``CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1`` (else it calls the vendor anyway).
- ``command``: ``AUTOPILOT_AGENT_COMMAND`` split with :mod:`shlex` FIRST, then
  each word formatted with ``{number} {title} {body} {priority} {workspace}``:
  a title with spaces or quotes stays one argument, and no shell ever sees it.

The prompt names the branch ``autopilot/issue-<N>`` and forbids pushing to the
base branch (the original told agents to push to main).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from ..errors import InvalidInput
from ..issues import Issue

# Inherited from a git hook or a test, these would point the agent's git elsewhere.
_GIT_LOCATION = ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_COMMON_DIR", "GIT_PREFIX")

#: Fields a ``command`` template may use.
FIELDS = ("number", "title", "body", "priority", "workspace")

PROMPT = """\
You are {agent}, an autonomous coding agent. Resolve issue #{number} of the repository in \
the current directory ({workspace}).

Title: {title}
Priority: {priority}

{body}

How to work:
- The branch autopilot/issue-{number} is checked out for you. Stay on it: do not switch, \
create or delete branches.
- Do NOT push, and never commit to or push {base} (or main). When you exit, everything you \
changed is committed on autopilot/issue-{number} for you and reviewed before it is merged.
- Make the change the issue asks for and run the project's tests if it has any.
- Exit with status 0 when the issue is resolved; exit non-zero if you could not resolve it.
"""


def branch_name(number: int) -> str:
    """The branch an issue is worked on: ``autopilot/issue-<N>``."""
    return f"autopilot/issue-{number}"


#: Appended when the previous attempt failed its check or was rejected by the merge queue.
FEEDBACK = """
The previous attempt failed this check: {feedback}
Fix what it reports; the same check runs again when you exit.
"""


def prompt(issue: Issue, agent: str, workspace: str | os.PathLike, base: str) -> str:
    """The instructions given to the ``codex`` and ``claude`` kinds (and in ``AUTOPILOT_PROMPT``)."""
    text = PROMPT.format(agent=agent, number=issue.number, workspace=workspace, title=issue.title,
                         priority=issue.priority, body=issue.body.strip() or "(no description)",
                         base=base)
    if (issue.feedback or "").strip():
        text += FEEDBACK.format(feedback=issue.feedback.strip())
    return text


def check_template(template: str) -> list[str]:
    """Split a ``command`` template and check its fields; InvalidInput names the problem."""
    try:
        words = shlex.split(template)
    except ValueError as err:
        raise InvalidInput(f"AUTOPILOT_AGENT_COMMAND cannot be split ({err}): balance its quotes") from None
    if not words:
        raise InvalidInput("AUTOPILOT_AGENT_COMMAND is empty: give a program and its arguments")
    sample = dict.fromkeys(FIELDS, "x")
    for word in words:
        try:
            word.format(**sample)
        except (KeyError, IndexError, ValueError) as err:
            raise InvalidInput(
                f"AUTOPILOT_AGENT_COMMAND word {word!r} is not a valid template ({err!r}): "
                f"use only {{{'}, {'.join(FIELDS)}}} and double other braces") from None
    return words


#: what the runtime hands the model CLIs (from RuntimeSettings; all optional)
@dataclass(frozen=True)
class ModelConfig:
    openai_base_url: str | None = None
    anthropic_base_url: str | None = None
    model: str | None = None
    retries: int | None = None


def codex_config(config: ModelConfig) -> str | None:
    """``$CODEX_HOME/config.toml`` for a custom endpoint (None: leave the user's config alone)."""
    if not config.openai_base_url:
        return None
    lines = [f"model = {_toml(config.model or 'gpt-5-codex')}", 'model_provider = "local"', "",
             "[model_providers.local]", 'name = "local"', f"base_url = {_toml(config.openai_base_url)}",
             'env_key = "OPENAI_API_KEY"', 'wire_api = "responses"']
    if config.retries is not None:
        lines += [f"request_max_retries = {int(config.retries)}", f"stream_max_retries = {int(config.retries)}"]
    # without these it looks up the vendor's hosts even with a local provider
    lines += ["", "[analytics]", "enabled = false", "", "[features]", "plugins = false", ""]
    return "\n".join(lines)


def _toml(value: str) -> str:
    return json.dumps(str(value))  # a JSON string is a valid TOML basic string


def prepare_home(kind: str, home: str | os.PathLike | None, config: ModelConfig) -> list[str]:
    """Write the kind's CLI config into the agent's own (tmpfs) HOME; what was written."""
    if kind != "codex" or not home:
        return []
    text = codex_config(config)
    if text is None:
        return []
    path = Path(home) / ".codex" / "config.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o600)
    return [str(path)]


def executable(kind: str, template: str | None = None) -> str | None:
    """The program a kind runs (None for ``script``: it uses bash or sh)."""
    if kind == "codex":
        return "codex"
    if kind == "claude":
        return "claude"
    if kind == "command":
        program = check_template(template or "")[0]
        return None if "{" in program else program  # known only per issue (e.g. {workspace}/run)
    return None


def check(kind: str, template: str | None = None, path: str | None = None) -> None:
    """Refuse at boot a kind whose program is missing (instead of failing every issue)."""
    program = executable(kind, template)
    if program and not shutil.which(program, path=path):
        hint = {"codex": "build the image with `inv build --cli codex` (or all)",
                "claude": "build the image with `inv build --cli claude` (or all)"}.get(kind, "install it in the image")
        raise InvalidInput(f"agent kind {kind!r} needs {program!r}, which is not on PATH: {hint}")


def command(kind: str, issue: Issue, *, agent: str, workspace: str | os.PathLike, base: str,
            template: str | None = None, last_message: str | os.PathLike | None = None,
            model: str | None = None, sessions: bool = False) -> list[str]:
    """The argv that works on ``issue``; InvalidInput when the issue cannot be run this way."""
    if kind == "script":
        if not (issue.script or "").strip():
            raise InvalidInput(f"issue #{issue.number} has no script: give it one "
                               "(issues.add --script ...) or run agents of kind codex, claude or command")
        shell = shutil.which("bash") or "sh"
        return [shell, "-c", issue.script]
    if kind == "codex":
        # --ephemeral: no session files piling up in the agent's tmpfs HOME (and a quarter less CPU);
        # ``sessions``: keep the session log, whose token_count events are the only usage codex
        # reports while a turn runs (a budget is metered from it; the runtime removes it after)
        argv = ["codex", "exec", "--dangerously-bypass-approvals-and-sandbox", "--skip-git-repo-check",
                *([] if sessions else ["--ephemeral"]), "--json", "--color", "never", "-C", str(workspace)]
        if last_message:
            argv += ["-o", str(last_message)]
        if model:
            argv += ["-m", model]
        return [*argv, prompt(issue, agent, workspace, base)]
    if kind == "claude":
        argv = ["claude", "-p", prompt(issue, agent, workspace, base), "--dangerously-skip-permissions",
                "--output-format", "stream-json", "--verbose", "--no-session-persistence"]
        return argv + (["--model", model] if model else [])
    if kind == "command":
        values = {"number": str(issue.number), "title": issue.title, "body": issue.body,
                  "priority": issue.priority, "workspace": str(workspace)}
        return [word.format(**values) for word in check_template(template or "")]
    raise InvalidInput(f"unknown agent kind {kind!r}: use script, codex, claude or command")


def environment(base: Mapping[str, str], issue: Issue, *, agent: str, workspace: str | os.PathLike,
                kind: str, config: ModelConfig | None = None, uid: int | None = None,
                base_branch: str = "main") -> dict[str, str]:
    """The agent subprocess's environment: ours plus the issue's fields and the agent's identity.

    The git identity variables make any commit the agent makes itself carry the
    agent's name, like the commit the runtime makes. ``AUTOPILOT_PROMPT`` is the
    prompt a model kind gets (feedback of the previous attempt included), so a
    script or command agent sees the same instructions; ``ISSUE_FEEDBACK`` is
    that feedback alone (empty on a first attempt).
    """
    env = {k: v for k, v in base.items() if k not in _GIT_LOCATION}
    env.update({
        "ISSUE_NUMBER": str(issue.number),
        "ISSUE_TITLE": issue.title,
        "ISSUE_BODY": issue.body,
        "ISSUE_PRIORITY": issue.priority,
        "ISSUE_BRANCH": branch_name(issue.number),
        "ISSUE_FEEDBACK": issue.feedback or "",
        "AUTOPILOT_PROMPT": prompt(issue, agent, workspace, base_branch),
        "AUTOPILOT_AGENT_ID": agent,
        "AUTOPILOT_WORKSPACE": str(workspace),
        "GIT_AUTHOR_NAME": agent,
        "GIT_COMMITTER_NAME": agent,
        "GIT_AUTHOR_EMAIL": identity_email(agent),
        "GIT_COMMITTER_EMAIL": identity_email(agent),
    })
    # the queue is the runtime's business, not the agent's
    env.pop("AUTOPILOT_DB", None)
    config = config or ModelConfig()
    uid = (os.geteuid() if hasattr(os, "geteuid") else None) if uid is None else uid
    if kind == "codex" and env.get("HOME"):
        env["CODEX_HOME"] = str(Path(env["HOME"]) / ".codex")  # the writable copy, with our config.toml
    if kind == "claude":
        if uid == 0:
            env["IS_SANDBOX"] = "1"  # exactly 1: an inherited IS_SANDBOX=yes is refused by Claude Code
        if config.anthropic_base_url:
            env["ANTHROPIC_BASE_URL"] = config.anthropic_base_url
            env["CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC"] = "1"
        if config.retries is not None:
            env["CLAUDE_CODE_MAX_RETRIES"] = str(int(config.retries))
    return env


def identity_email(agent: str) -> str:
    """``agent-001@parallel-autopilot.invalid`` (``.invalid`` never resolves: RFC 2606)."""
    return f"{agent}@parallel-autopilot.invalid"


def copy_credentials(source: str | os.PathLike, home: str | os.PathLike | None) -> list[str]:
    """Copy read-only credentials into the writable HOME; return what was copied.

    Every entry ``X`` of ``source`` (``/run/credentials/codex``, ``.../ssh``,
    ``.../gitconfig``...) becomes ``$HOME/.X``: agent CLIs write into their
    config directories (token refresh, sessions), and the mounts stay read-only.
    Empty placeholders (a credential the host does not have) are skipped.
    """
    source = Path(source)
    if not home or not source.is_dir():
        return []
    home = Path(home)
    copied = []
    for entry in sorted(source.iterdir()):
        if _empty(entry):
            continue
        target = home / (entry.name if entry.name.startswith(".") else "." + entry.name)
        try:
            if entry.is_dir():
                shutil.copytree(entry, target, symlinks=True, dirs_exist_ok=True)
                _writable(target)
            else:
                shutil.copy2(entry, target)
                target.chmod(stat.S_IMODE(target.stat().st_mode) | stat.S_IWUSR)
        except OSError:
            continue  # one unreadable credential must not stop the agent; the CLI will say what it lacks
        copied.append(entry.name)
    return copied


def _empty(entry: Path) -> bool:
    try:
        if entry.is_dir():
            return not any(entry.iterdir())
        return entry.stat().st_size == 0
    except OSError:
        return True


def _writable(root: Path) -> None:
    for path in [root, *root.rglob("*")]:
        if path.is_symlink():
            continue
        mode = stat.S_IMODE(path.stat().st_mode)
        path.chmod(mode | stat.S_IWUSR | (stat.S_IXUSR if path.is_dir() else 0))
