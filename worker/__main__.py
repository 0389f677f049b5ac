"""`python -m worker`: one worker process (what `tapefit worker` runs)."""

from worker.main import main

main()
