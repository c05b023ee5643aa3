#!/usr/bin/env bash
# The shell face of parallel-autopilot: each command is ONE task of the `parallel-autopilot`
# program (the same tasks as `inv`), with --host the same task on a workstation (`fab -H`).
# No logic of its own: ids go through as typed (the tasks read 1, 01, 001 and agent-001 alike),
# the exit code is the task's (2 here for a malformed command line).
#
# Overrides (for tests and unusual installs): PARALLEL_AUTOPILOT_PROGRAM (default: the
# `parallel-autopilot` program, else `python3 -m parallel_autopilot.program`), PARALLEL_AUTOPILOT_FAB
# (default: fab).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
NAME="$(basename "$0")"

usage() {
  cat <<EOF
usage: $NAME [--host HOST] COMMAND [ARGS]

commands:
  start N             start agents agent-001..agent-N and wait until healthy (agents.start --n N)
  stop [ID]           stop every agent, or only agent ID: 1, 01, 001 or agent-001 (agents.stop)
  status [--json]     each agent: container, health, issue, uptime (agents.status)
  logs [ID] [-f]      an agent's log, or every agent's; -f follows until Ctrl-C (logs.tail)
  cleanup [--force]   stop the agents, remove worktrees whose work is safe to drop (cleanup)
  demo [ARGS]         sample repository, 12 issues, 3 agents (demo; see: demo --help)
  issues SUB [ARGS]   the issue queue: add, import, list, show, retry, block (issues.SUB)
  test [ARGS]         the test suite (scripts/test.sh; ARGS go to pytest)
  help                this text

options:
  --host HOST         run the command on HOST over SSH (fab -H HOST; ~/.ssh/config aliases work)
EOF
}

bad_usage() {
  echo "$NAME: $1 (see: $NAME help)" >&2
  exit 2
}

host=""
while [ $# -gt 0 ]; do
  case "$1" in
    --host)
      host="${2:-}"
      [ -n "$host" ] || bad_usage "--host needs a host name"
      shift 2
      ;;
    --host=*)
      host="${1#--host=}"
      [ -n "$host" ] || bad_usage "--host needs a host name"
      shift
      ;;
    *) break ;;
  esac
done
[ $# -gt 0 ] || bad_usage "no command given"
command="$1"
shift

# task NAME [ARGS]: run one task, here or on $host; its exit code is ours
task() {
  if [ -n "$host" ]; then
    exec "${PARALLEL_AUTOPILOT_FAB:-fab}" --search-root "$ROOT" -H "$host" "$@"
  elif [ -n "${PARALLEL_AUTOPILOT_PROGRAM:-}" ]; then
    exec "$PARALLEL_AUTOPILOT_PROGRAM" "$@"
  elif command -v parallel-autopilot >/dev/null 2>&1; then
    exec parallel-autopilot "$@"
  else
    exec python3 -m parallel_autopilot.program "$@"
  fi
}

case "$command" in
  start)
    [ $# -eq 1 ] || bad_usage "start takes the number of agents: start N"
    task agents.start --n="$1"
    ;;
  stop)
    [ $# -le 1 ] || bad_usage "stop takes at most one agent id: stop [ID]"
    if [ $# -eq 1 ]; then task agents.stop --id="$1"; else task agents.stop; fi
    ;;
  status)
    json=""
    for arg in "$@"; do
      case "$arg" in
        --json) json="--json" ;;
        *) bad_usage "status takes only --json, not '$arg'" ;;
      esac
    done
    task agents.status ${json:+"$json"}
    ;;
  logs)
    id=""
    follow=""
    for arg in "$@"; do
      case "$arg" in
        -f | --follow) follow="--follow" ;;
        -*) bad_usage "logs takes [ID] [-f], not '$arg'" ;;
        *)
          [ -z "$id" ] || bad_usage "logs takes at most one agent id"
          id="$arg"
          ;;
      esac
    done
    task logs.tail ${id:+"--id=$id"} ${follow:+"$follow"}
    ;;
  cleanup)
    force=""
    for arg in "$@"; do
      case "$arg" in
        --force) force="--force" ;;
        *) bad_usage "cleanup takes only --force, not '$arg'" ;;
      esac
    done
    task cleanup ${force:+"$force"}
    ;;
  demo)
    task demo "$@"
    ;;
  issues)
    [ $# -ge 1 ] || bad_usage "issues needs a subcommand: add, import, list, show, retry or block"
    sub="$1"
    shift
    task "issues.$sub" "$@"
    ;;
  test)
    if [ -n "$host" ]; then
      # one string that remote.test splits back into the same words (shlex)
      quoted="$(printf '%q ' "$@")"
      task remote.test --args="${quoted% }"
    fi
    exec bash "$ROOT/scripts/test.sh" "$@"
    ;;
  help | -h | --help)
    usage
    ;;
  *)
    bad_usage "unknown command '$command'"
    ;;
esac
