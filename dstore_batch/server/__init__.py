"""What `dstore-batch serve` runs: the core, the peer link and the aiohttp server."""
