"""The two Docker Compose programs, for tests that run each: v2 (``docker compose``, what Docker
ships today; the suite's default) and v1 (``docker-compose``, kept honest while it is supported)."""

from __future__ import annotations

import pytest

from parallel_autopilot.containers import compose

INSTALLED = compose.installed()
V2_INSTALLED = "v2" in INSTALLED
V1_INSTALLED = "v1" in INSTALLED

#: ``@pytest.mark.parametrize("program", BOTH)``: the compose argv, v2 then v1
BOTH = [pytest.param(list(compose.V2), id="v2",
                     marks=pytest.mark.skipif(not V2_INSTALLED, reason="Compose v2 not installed")),
        pytest.param(list(compose.V1), id="v1",
                     marks=pytest.mark.skipif(not V1_INSTALLED, reason="docker-compose (v1) not installed"))]
