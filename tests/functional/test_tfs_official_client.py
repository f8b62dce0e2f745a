"""tests/integration/test_tfs_official_client.py again, against the server's container (see conftest.py)."""

from tests.integration.test_tfs_official_client import *  # noqa: F403 - its tests and fixtures, collected here too
