"""Metrics and logs, defined in one place."""
