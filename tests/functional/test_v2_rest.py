"""tests/integration/test_v2_rest.py again, against the server's container (see conftest.py)."""

from tests.integration.test_v2_rest import *  # noqa: F403 - its tests and fixtures, collected here too
