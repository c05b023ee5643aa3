"""What the tests share that is not a fixture: fakes, helpers, servers. Fixtures live in conftest.py files."""
