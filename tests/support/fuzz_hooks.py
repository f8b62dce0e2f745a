"""schemathesis hooks for tests/integration/test_fuzz_rest.py, loaded by the CLI through SCHEMATHESIS_HOOKS."""

from __future__ import annotations

from typing import Any

import schemathesis
from hypothesis import strategies as st

# Served by the session server; resnet is left out (600 KB inputs, slow inferences on two shared cores).
MODELS = ["digits", "versioned", "multi", "mapped", "types", "onnx_add"]
TIMEOUT_HEADER = "X-Request-Timeout"
MIN_DEADLINE_S = 1.0  # far above what any example model needs, unless the machine stalls
UNLOAD_PATH = "/v2/repository/models/{name}/unload"


@schemathesis.hook
def flatmap_path_parameters(context: schemathesis.HookContext, path_parameters: dict[str, Any]) -> Any:
    """Half the model names are real models, so predict bodies reach validation rather than NOT_FOUND."""
    if "name" not in (path_parameters or {}):
        return st.just(path_parameters)
    names = st.one_of(st.just(path_parameters["name"]), st.sampled_from(MODELS))
    return names.map(lambda name: {**path_parameters, "name": name})


@schemathesis.hook
def filter_failure(
    context: schemathesis.HookContext, failure: Any, case: schemathesis.Case, response: schemathesis.Response
) -> bool:
    """A valid but tiny deadline (the coverage phase sends 5e-324 s) rightly ends in 504 DEADLINE_EXCEEDED, the
    one 5xx a client can ask for: accepted only when the request's own deadline (X-Request-Timeout, or a KServe
    v2 body's `timeout` parameter in µs) was that short. The KServe v2 repository's unload answers 501 by design
    (models are unloaded by editing config.json)."""
    deadline = (case.headers or {}).get(TIMEOUT_HEADER)
    parameters = case.body.get("parameters") if isinstance(case.body, dict) else None
    timeout_us = parameters.get("timeout") if isinstance(parameters, dict) else None
    try:
        too_short = deadline is not None and float(deadline) < MIN_DEADLINE_S
    except ValueError:
        too_short = False
    if isinstance(timeout_us, int | float) and 0 < timeout_us < MIN_DEADLINE_S * 1e6:
        too_short = True
    unload = case.operation.path == UNLOAD_PATH and response.status_code == 501
    return not (response.status_code == 504 and too_short) and not unload and not _only_an_unknown_header(case)


def _only_an_unknown_header(case: schemathesis.Case) -> bool:
    """A negative case whose one fault is a header the operation does not document: HTTP servers accept
    headers they do not know (RFC 9110, 5.1), so serving it is right (the coverage phase sends one beside
    each operation's documented headers, e.g. OVMS-Priority)."""
    data = getattr(getattr(case.meta, "phase", None), "data", None)
    location = getattr(data, "parameter_location", None)
    description = getattr(data, "description", None) or ""
    return location is not None and location.name.lower() == "header" and "unexpected properties" in description
