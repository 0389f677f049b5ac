"""`tapefit bench`: the training, service and serving figures, measured in one run."""
