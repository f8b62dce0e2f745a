"""waitress answers what it refuses itself in the API's error shape, {"error": "..."}.

waitress rejects some requests before the Flask app sees them: a body over --max_request_mb (413, as soon as
the headers announce it), malformed HTTP (400), oversized headers (431), unknown transfer encodings (501).
Its own answers are plain text; a channel class with another error task makes them JSON like every other error.
"""

from __future__ import annotations

import json

from waitress.channel import HTTPChannel
from waitress.task import ErrorTask
from waitress.utilities import RequestEntityTooLarge


class _JsonErrorTask(ErrorTask):
    def execute(self) -> None:
        error = self.request.error
        if isinstance(error, RequestEntityTooLarge):
            limit_mb = self.channel.server.adj.max_request_body_size >> 20
            message = f"Request body too large: the limit is {limit_mb} MB (--max_request_mb)"
        else:
            message = f"{error.reason}: {error.body}"
        body = json.dumps({"error": message}).encode()
        self.status = f"{error.code} {error.reason}"
        self.response_headers.append(("Content-Type", "application/json"))
        self.set_close_on_finish()
        self.content_length = len(body)
        self.write(body)


class JsonErrorChannel(HTTPChannel):
    error_task_class = _JsonErrorTask
