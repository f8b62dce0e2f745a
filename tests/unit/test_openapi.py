"""api/openapi.yaml is a valid OpenAPI 3 document that describes exactly the routes the Flask app has.

Documented paths and methods are matched against the app's URL map, and every route and method of the app must
be reached by some documented operation, so the document cannot drift from the code in either direction.
"""

from __future__ import annotations

from typing import Any, cast

import pytest
from openapi_spec_validator import validate
from werkzeug.routing import MapAdapter

from api.auth import OPEN_REST_PATHS
from api.rest_app import create_app
from api.rest_operations import load_openapi

SAMPLE_PARAMETERS = {"name": "digits", "version": "1", "job_id": "f00d"}
AUTOMATIC_METHODS = {"HEAD", "OPTIONS"}  # Flask answers these for every route by itself


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    return load_openapi()


@pytest.fixture(scope="module")
def adapter() -> MapAdapter:
    # Routing only: no request is handled, so the app needs no data plane, metrics or size limit.
    return create_app(cast(Any, None), cast(Any, None), 1).url_map.bind("localhost")


def operations(document: dict[str, Any]) -> list[tuple[str, str]]:
    """(HTTP method, path template) of every documented operation."""
    return [(method.upper(), path) for path, item in document["paths"].items() for method in item]


def test_the_document_is_valid_openapi(document: dict[str, Any]) -> None:
    validate(document)


def test_every_documented_operation_is_routed(document: dict[str, Any], adapter: MapAdapter) -> None:
    for method, path in operations(document):
        adapter.match(path.format(**SAMPLE_PARAMETERS), method=method)  # raises NotFound / MethodNotAllowed


def test_every_route_and_method_is_documented(document: dict[str, Any], adapter: MapAdapter) -> None:
    routed = {(rule.rule, method) for rule in adapter.map.iter_rules() for method in rule.methods - AUTOMATIC_METHODS}
    documented = {
        (adapter.match(path.format(**SAMPLE_PARAMETERS), method=method, return_rule=True)[0].rule, method)
        for method, path in operations(document)
    }
    assert documented == routed


def test_every_error_response_is_the_error_shape(document: dict[str, Any]) -> None:
    """4xx/5xx bodies are {"error": "..."} (409 adds the job's status beside it); only readiness answers 503
    with its own document."""
    error = {"$ref": "#/components/schemas/Error"}
    for method, path in operations(document):
        for status, response in document["paths"][path][method.lower()]["responses"].items():
            if status[0] not in "45" or (path, status) == ("/v1/health/ready", "503"):
                continue
            if "$ref" in response:
                response = document["components"]["responses"][response["$ref"].rsplit("/", 1)[1]]
            schema = response["content"]["application/json"]["schema"]
            assert schema == error or error in schema.get("allOf", []), (method, path, status)


def test_every_operation_that_needs_a_token_documents_the_tenant_limits(document: dict[str, Any]) -> None:
    """With --auth_token_file every call but the open ones counts against its tenant's limits (api.quotas)."""
    for method, path in operations(document):
        responses = document["paths"][path][method.lower()]["responses"]
        assert ("429" in responses) == (path not in OPEN_REST_PATHS), (method, path)
