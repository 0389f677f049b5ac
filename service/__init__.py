"""tapefit's API: accepts training jobs, serves their progress, metrics and predictions."""
