"""The `tapefit` command: serve and supervise workers, and the HTTP client and console that
talk to a running server (no database, no ORM)."""
