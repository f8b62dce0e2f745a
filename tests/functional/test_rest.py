"""tests/integration/test_rest.py again, against the server's container (see conftest.py)."""

from tests.integration.test_rest import *  # noqa: F403 - its tests and fixtures, collected here too
