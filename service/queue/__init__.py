"""The job queue: the API's side of jobs, the worker's lease-fenced writes, the sweep of lost
workers, live workers, a job's history and its event stream."""
