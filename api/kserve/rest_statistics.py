"""REST routes of Triton's statistics extension to the v2 protocol: `GET /v2/models[/{m}[/versions/{v}]]/stats`
answers the data plane's statistics document (api.dataplane.statistics) as it is."""

from __future__ import annotations

from flask import Blueprint, Response

from api.dataplane import DataPlane
from api.kserve.request_fields import model_version
from api.metrics import ServingMetrics, Tracker
from api.rest_http import json_response, tracked

INTERFACE = "v2-rest"


def statistics_blueprint(dataplane: DataPlane, metrics: ServingMetrics) -> Blueprint:
    """The app registers the `segment` converter these routes use (api.rest_models.Segment)."""
    routes = Blueprint("kserve_statistics", __name__)

    @routes.get("/v2/models/stats")
    @routes.get("/v2/models/<segment:name>/stats")
    @routes.get("/v2/models/<segment:name>/versions/<segment:version>/stats")
    @tracked(metrics, "ModelStatistics", INTERFACE)
    def model_statistics(tracker: Tracker, name: str | None, version: str | None) -> Response:
        number = model_version(version)
        document = dataplane.statistics.model_statistics(name, number)
        tracker.done(number)
        return json_response(document)

    return routes
