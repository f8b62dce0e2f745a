"""Functional tests: the server in a container of the project's image (see conftest.py)."""
