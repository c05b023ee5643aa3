"""Every key of the defaults table is checked once, in config.load, naming key and source."""

import os
import subprocess
import sys

import pytest

from parallel_autopilot import config
from parallel_autopilot.defaults import TABLE
from parallel_autopilot.errors import InvalidInput

# key -> (a wrong-typed value, an out-of-range/invalid value or None)
ROWS = {k: ([1, 2] if kind != "list" else 5,
            (-5 if kind in ("int", "float") and chk else ("nope!" if isinstance(chk, (tuple, str)) and kind == "str" else None)))
        for k, (d, kind, chk) in TABLE.items()}


def test_every_key_has_a_row():
    assert set(ROWS) == set(TABLE)


@pytest.mark.parametrize("key", sorted(k for k in TABLE if k != "repo"))
def test_wrong_type_and_range_name_key_and_argument(key, tmp_path):
    wrong, bad = ROWS[key]
    with pytest.raises(InvalidInput, match=f"setting {key} from argument {key}:") as err:
        config.load(config={}, repo=str(tmp_path), **{key: wrong})
    assert "\n" not in str(err.value)
    if bad is not None:
        with pytest.raises(InvalidInput, match=f"setting {key} from argument {key}:"):
            config.load(config={}, repo=str(tmp_path), **{key: bad})


def test_env_var_string_is_coerced_and_named(tmp_path, monkeypatch):
    monkeypatch.setenv("INVOKE_AUTOPILOT_LEASE_SECONDS", "60")
    assert config.load(repo=str(tmp_path)).lease_seconds == 60
    monkeypatch.setenv("INVOKE_AUTOPILOT_MEMORY", "lots")  # a None-default key: invoke passes the string
    with pytest.raises(InvalidInput, match="memory from environment variable INVOKE_AUTOPILOT_MEMORY"):
        config.load(repo=str(tmp_path))


def test_file_and_unknown_key_name_the_file(tmp_path):
    (tmp_path / "invoke.yaml").write_text("autopilot:\n  max_attempts: 0\n")
    with pytest.raises(InvalidInput, match=f"max_attempts from {tmp_path / 'invoke.yaml'}"):
        config.load(repo=str(tmp_path))
    (tmp_path / "invoke.yaml").write_text("autopilot:\n  bogus: 1\n")
    with pytest.raises(InvalidInput, match=f"unknown setting bogus from {tmp_path / 'invoke.yaml'}"):
        config.load(repo=str(tmp_path))


@pytest.mark.parametrize("key", sorted(k for k, (default, kind, _) in TABLE.items()
                                       if kind in ("int", "float") and default is not None))
def test_a_number_key_from_the_environment_that_is_no_number_is_one_line(key, tmp_path, monkeypatch):
    # invoke casts a variable to the type of the value it already holds: with a number
    # installed, int("soon") would be invoke's traceback before config.load checks anything
    monkeypatch.setenv(f"INVOKE_AUTOPILOT_{key.upper()}", "soon")
    with pytest.raises(InvalidInput, match=f"{key} from environment variable INVOKE_AUTOPILOT_{key.upper()}"):
        config.load(repo=str(tmp_path))


def test_the_program_says_a_bad_environment_number_in_one_line(tmp_path):
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    env = {**os.environ, "INVOKE_AUTOPILOT_LEASE_SECONDS": "soon"}
    proc = subprocess.run([sys.executable, "-m", "parallel_autopilot", "issues.list"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "INVOKE_AUTOPILOT_LEASE_SECONDS" in proc.stderr


# the per-agent limits: checked here once, platform.limits takes the typed values as they are
LIMIT_REFUSALS = [("profile", "huge", "is not one of auto, light, full"),
                  ("cpus", "0", "must be above 0"), ("cpus", -1, "must be above 0"), ("cpus", 0.0, "must be above 0"),
                  ("cpus", "abc", "is not a number"),
                  ("memory", "12x", "is not a memory size"), ("memory", "-1g", "is not a memory size"),
                  ("memory", "0", "is not a memory size"), ("memory", "0m", "is not a memory size"),
                  ("memory", "g", "is not a memory size"), ("memory", "2t", "is not a memory size"),
                  ("memory", "1gib", "is not a memory size"),
                  ("pids_limit", 0, "must be at least 1"), ("pids_limit", -5, "must be at least 1"),
                  ("pids_limit", "many", "is not a number"), ("pids_limit", 2.5, "is not a whole number"),
                  ("max_agents", 0, "must be at least 1"), ("max_agents", "abc", "is not a number")]


@pytest.mark.parametrize("key, bad, problem", LIMIT_REFUSALS)
def test_a_bad_limit_is_refused_at_load_in_one_line(key, bad, problem, tmp_path):
    with pytest.raises(InvalidInput) as err:
        config.load(config={}, repo=str(tmp_path), **{key: bad})
    assert str(err.value).startswith(f"setting {key} from argument {key}: ") and problem in str(err.value)
    assert "\n" not in str(err.value)


def test_a_bad_limit_from_a_file_names_the_file(tmp_path):
    (tmp_path / "invoke.yaml").write_text("autopilot:\n  memory: 2t\n")
    with pytest.raises(InvalidInput, match=f"setting memory from {tmp_path / 'invoke.yaml'}: '2t' is not a memory"):
        config.load(repo=str(tmp_path))


@pytest.mark.parametrize("memory, size", [("12g", "12g"), ("512M", "512m"), ("1.5g", "1536m"), ("1gb", "1g"),
                                          ("65536k", "64m"), ("1073741824", "1g")])
def test_every_memory_load_accepts_is_one_the_limits_take(memory, size, tmp_path):
    from parallel_autopilot import platform
    from parallel_autopilot.platform import GIB, Platform

    settings = config.load(config={}, repo=str(tmp_path), memory=memory, cpus="1.5", pids_limit="64",
                           max_agents="3", profile="FULL")
    host = Platform(os="linux", arch="x86_64", cpus=4, memory_total=64 * GIB, memory_available=60 * GIB)
    assert (settings.cpus, settings.pids_limit, settings.max_agents, settings.profile) == (1.5, 64, 3, "full")
    assert platform.limits(settings, host) == platform.Limits(memory=size, cpus=1.5, pids=64, max_agents=3,
                                                              profile="full")


def test_env_file_is_checked_as_a_path_at_load_and_for_existence_at_use(tmp_path):
    # its existence is a fact of the moment a container starts (the GUI loads once and runs
    # for hours; `issues list` never reads it), so containers/provision.py checks it there
    assert config.load(config={}, repo=str(tmp_path), env_file="missing.env").env_file == "missing.env"
    with pytest.raises(InvalidInput, match="setting env_file from argument env_file: 5 is not a path"):
        config.load(config={}, repo=str(tmp_path), env_file=5)
