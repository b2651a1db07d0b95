"""Built-in probes."""
