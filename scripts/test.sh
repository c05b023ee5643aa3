#!/usr/bin/env bash
# The test command: installs what the tests need when it is missing (Python packages,
# Docker Engine + docker-compose, sshd, Chromium, shellcheck, PostgreSQL), starts dockerd, runs pytest.
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
