"""The two Docker Compose programs, for tests that run each: v2 (``docker compose``, what Docker
ships today; the suite's default) and v1 (``docker-compose``, kept honest while it is supported)."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from parallel_autopilot.containers import compose


def _v2_installed() -> bool:
    try:
        return subprocess.run([*compose.V2, "version"], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


V2_INSTALLED = bool(shutil.which("docker")) and _v2_installed()
V1_INSTALLED = bool(shutil.which(compose.V1[0]))

#: ``@pytest.mark.parametrize("program", BOTH)``: the compose argv, v2 then v1
BOTH = [pytest.param(list(compose.V2), id="v2",
                     marks=pytest.mark.skipif(not V2_INSTALLED, reason="Compose v2 not installed")),
        pytest.param(list(compose.V1), id="v1",
                     marks=pytest.mark.skipif(not V1_INSTALLED, reason="docker-compose (v1) not installed"))]
