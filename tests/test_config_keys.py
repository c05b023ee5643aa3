"""Every key of the defaults table is checked once, in config.load, naming key and source."""

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
