"""tests/integration/test_grpc.py again, against the server's container (see conftest.py)."""

from tests.integration.test_grpc import *  # noqa: F403 - its tests and fixtures, collected here too
