"""The inferq worker: a Celery worker whose model queues are drained by a micro-batching runner."""
