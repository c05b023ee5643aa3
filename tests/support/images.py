"""The image tags this test session built (conftest checks at the end that none is left)."""

BUILT_TEST_IMAGES: set[str] = set()
