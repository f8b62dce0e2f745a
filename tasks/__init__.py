"""The Celery side: app and configuration, messages, routing, the predict task, worker bootstrap."""
