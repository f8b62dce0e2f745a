"""Models, configuration, storage and OpenVINO execution; free of Celery, Flask and gRPC."""
