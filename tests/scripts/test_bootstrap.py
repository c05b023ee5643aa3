"""scripts/bootstrap.sh: lint-clean, and refuses what it does not know before touching anything."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bootstrap.sh"


@pytest.mark.skipif(not shutil.which("shellcheck"), reason="shellcheck not installed (bootstrap.sh --lint)")
def test_shellcheck_clean():
    proc = subprocess.run(["shellcheck", str(SCRIPT)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout


def test_unknown_option_is_one_line_and_changes_nothing():
    proc = subprocess.run(["bash", str(SCRIPT), "--frobnicate"], capture_output=True, text=True)
    assert proc.returncode == 1
    assert proc.stderr == "bootstrap: unknown option --frobnicate (use --ssh, --browser, --lint, --postgres, --no-test)\n"
    assert proc.stdout == ""


def test_help_describes_the_options():
    proc = subprocess.run(["bash", str(SCRIPT), "--help"], capture_output=True, text=True, check=True)
    for option in ("--ssh", "--browser", "--lint", "--postgres", "--no-test"):
        assert option in proc.stdout
