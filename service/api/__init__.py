"""The HTTP layer: thin routes over service.jobs and service.inference."""
