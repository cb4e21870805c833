"""Logging setup: plain text, or one JSON object per line (``--log-format json``)."""

from __future__ import annotations

import json
import logging
import sys
import time

__all__ = ["setup_logging"]


class _NodeFilter(logging.Filter):
    """Stamp every record with the node id, so lines from many pods can be told apart."""

    def __init__(self, node: str) -> None:
        super().__init__()
        self.node = node

    def filter(self, record: logging.LogRecord) -> bool:
        record.node = self.node
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, node, message (and exception)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "node": getattr(record, "node", None),
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def setup_logging(level: str = "info", fmt: str = "text", node: str | None = None) -> None:
    """Configure the root logger once, for the CLI."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        node_part = "[%(node)s] " if node else ""
        handler.setFormatter(
            logging.Formatter(f"%(asctime)s %(levelname)s {node_part}%(name)s: %(message)s")
        )
    if node:
        handler.addFilter(_NodeFilter(node))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
