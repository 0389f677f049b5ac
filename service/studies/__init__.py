"""Studies: hyperparameter searches whose trials are ordinary jobs on the queue.

- `schemas`: what `POST /studies` accepts and what the API shows;
- `space`: the search space as dotted paths into the job spec, checked against `JobSpec`;
- `search`: Optuna's samplers and pruners on a study rebuilt from our rows at each decision;
- `driver`: who asks for the next trials and queues them (the API and the idle workers);
- `pruning`: the worker's side, asked after each epoch whether to stop the trial;
- `studies`: create, read, list, cancel; `events`: the study's live stream.

The database is the truth: a study survives restarts of the API and the workers.
"""
