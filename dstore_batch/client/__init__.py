"""Producers outside the group: `Client` (asyncio) and `SyncClient`, over HTTP."""

from .client import Client
from .sync import SyncClient

__all__ = ["Client", "SyncClient"]
