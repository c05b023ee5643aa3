#!/usr/bin/env bash
# The test command: installs what the tests need when it is missing (Python packages,
# Docker Engine, Compose v2 and v1, sshd, Chromium, shellcheck, PostgreSQL, the agent CLIs), starts
# dockerd, runs pytest (tests/packaging builds the wheel and runs it from a fresh venv).
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -m "not docker" -x`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh --ssh --browser --lint --postgres
python="${PYTHON:-python3}"
[ -x .venv/bin/python ] && python=.venv/bin/python
set +e
"$python" -m pytest -ra "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
  echo "pytest collected no tests: that is a failure here" >&2
  exit 1
fi
exit "$status"
