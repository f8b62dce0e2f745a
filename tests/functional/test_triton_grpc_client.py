"""tests/integration/test_triton_grpc_client.py again, against the server's container (see conftest.py)."""

from tests.integration.test_triton_grpc_client import *  # noqa: F403 - its tests and fixtures, collected here too
