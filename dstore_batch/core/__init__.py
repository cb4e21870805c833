"""The write path of one node with no network server: items, accumulator, committer,
election, and the retry loop (`StoreCore`). Imports no aiohttp."""
