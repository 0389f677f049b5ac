"""What an operator's tools read: Prometheus metrics (`metrics`, the HTTP middleware in
`http`) and the log format (`logs`, which the worker uses too: it imports nothing else)."""
