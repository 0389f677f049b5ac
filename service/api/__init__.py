"""The HTTP layer: thin routes over service.queue.jobs and service.serving.store."""
