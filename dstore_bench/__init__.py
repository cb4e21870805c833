"""`dstore-batch bench`: direct, funnel, per-put, low-load, client modes side by side."""
