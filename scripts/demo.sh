#!/usr/bin/env bash
# The main job on its embedded default: set up this machine when needed (package, Docker
# Engine, Compose v2, daemon, offline image), then run the demo: a sample repository,
# 12 sample issues with scripts, 3 agents in real containers, until the queue is drained.
# Arguments go to the demo task, e.g. `bash scripts/demo.sh --n 5 --dir /tmp/my-demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh --no-test
python="${PYTHON:-python3}"
[ -x .venv/bin/python ] && python=.venv/bin/python
exec "$python" -m parallel_autopilot demo "$@"
