"""The `dstore-batch` command: the only place that reads argv and DSTORE_* variables.

Every flag ``--some-flag`` can also be set as ``DSTORE_SOME_FLAG``; the flag wins.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Sequence
from dataclasses import MISSING
from typing import Any

from .config import Config, config_from_settings, settings
from .observability.logs import setup_logging
from .runtime import run, tune_gc
from .storage.ddl import render_ddl

__all__ = ["main"]

log = logging.getLogger("dstore_batch")


def _dest(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


def _flag(p: argparse.ArgumentParser, flag: str, default: Any = None, **kw: Any) -> None:
    """A flag that is also a ``DSTORE_*`` variable (the flag wins)."""
    env = "DSTORE_" + _dest(flag).upper()
    help_text = kw.pop("help", "")
    p.add_argument(flag, default=os.environ.get(env, default),
                   help=f"{help_text} [env {env}; default {default}]", **kw)


# `serve`'s flags are made from Config's fields (their ``Setting`` metadata): one place
# states a setting's flag, variable, unit, default and help.
_SETTINGS = {s.flag: (path, s, default) for path, s, default in settings()}


def _setting_flags(p: argparse.ArgumentParser, *flags: str) -> None:
    """The flags of these ``Config`` settings, as their ``Setting``s describe them."""
    for flag in flags:
        _, s, default = _SETTINGS[flag]
        shown = None if default is MISSING else s.to_flag(default)
        if s.also_env:
            # The Spanner client's own variable is honoured too: what gcloud's docs set.
            shown = os.environ.get(s.also_env, shown)
        _flag(p, flag, shown, type=s.type, help=s.help_text())


# The commands of the runtime package; any other comes from an installed tool (the
# `dstore_batch.commands` entry point group: `bench` and `check` in this repository).
BUILT_IN = ("ddl", "init-db", "demo", "serve", "put", "delete", "get", "list", "watch",
            "leader")
TOOLS_GROUP = "dstore_batch.commands"


def _add_tool_commands(sub: Any) -> None:
    """Each installed tool adds its subcommand (its entry point is a function of the
    subparsers that adds one and sets ``func``): the runtime names no tool."""
    from importlib.metadata import entry_points

    for ep in sorted(entry_points(group=TOOLS_GROUP), key=lambda e: e.name):
        try:
            register = ep.load()
        except ModuleNotFoundError:
            continue  # installed without its tools (the image): the runtime's commands only
        register(sub)


def _parser(with_tools: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dstore-batch",
        description="A Spanner-backed, append-only key/value store for a Kubernetes Deployment.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("ddl", help="print the Spanner DDL for the lock and log tables")
    _setting_flags(p, "--lock-table", "--log-table", "--retention-days")
    p.set_defaults(func=_ddl)

    p = sub.add_parser("init-db", help="create the tables if missing (and, on the "
                       "emulator, the instance and database)")
    _setting_flags(p, "--database", "--lock-table", "--log-table", "--emulator-host",
                   "--retention-days")
    p.set_defaults(func=_init_db_command)

    p = sub.add_parser("demo", help="a three-node cluster on this machine, a workload and "
                       "a failover")
    p.add_argument("--backend", choices=("sqlite", "spanner"), default="sqlite",
                   help="embedded SQLite (default) or a Spanner emulator the demo starts")
    p.add_argument("--data-dir", help="folder for the database and node logs (default: temp)")
    p.add_argument("--seconds", type=float, default=12.0, help="workload duration")
    p.add_argument("--keep", action="store_true", help="leave the cluster running at the end")
    add_emulator_bin_flag(p)
    p.set_defaults(func=_demo)

    p = sub.add_parser("serve", help="run one node")
    add_serve_flags(p)
    p.set_defaults(func=_serve_command)

    p = sub.add_parser("put", help="put one value through the HTTP API (prints JSON)")
    _client_flags(p)
    p.add_argument("key")
    p.add_argument("value")
    p.add_argument("--no-append", action="store_true", help="overwrite the key's '-' row")
    p.add_argument("--row-id", help="a row id of your own: re-running stores it once")
    p.add_argument("--if-latest", help="only if the key's newest row has this id")
    p.add_argument("--if-absent", action="store_true", help="only if the key has no live row")
    p.set_defaults(func=_client_command)

    p = sub.add_parser("delete", help="append a tombstone to a key (prints JSON)")
    _client_flags(p)
    p.add_argument("key")
    p.add_argument("--if-latest", help="only if the key's newest row has this id")
    p.add_argument("--row-id", help="a row id of your own: re-running stores it once")
    p.set_defaults(func=_client_command)

    p = sub.add_parser("get", help="read a key's history (prints JSON)")
    _client_flags(p)
    p.add_argument("key")
    p.add_argument("--limit", default=None,
                   help="N, all or oldest: rows with tombstones (default: the live value)")
    p.add_argument("--max-staleness-ms", type=int, help="a bounded-staleness read")
    p.set_defaults(func=_client_command)

    p = sub.add_parser("list", help="list keys with their newest live values (prints JSON "
                       "lines, one key a line; pages through every key under the prefix)")
    _client_flags(p)
    p.add_argument("--prefix", default="", help="only keys that start with this")
    p.add_argument("--after", help="start after this key")
    p.add_argument("--limit", type=int, help="at most this many keys in all (default: every "
                   "key)")
    p.add_argument("--page-size", type=int, default=1000, help="keys per request (1-10000)")
    p.add_argument("--max-staleness-ms", type=int, help="a bounded-staleness read")
    p.set_defaults(func=_client_command)

    p = sub.add_parser("watch", help="follow the log: one JSON object a line per event "
                       "(resumes on another node by itself)")
    _client_flags(p)
    p.add_argument("--key", help="only this key")
    p.add_argument("--prefix", help="only keys with this prefix (default: every key)")
    p.add_argument("--since", help="replay from after this commit timestamp (RFC 3339)")
    p.add_argument("--max-events", type=int, help="stop after this many put/delete events")
    p.add_argument("--seconds", type=float, help="stop after this long")
    p.set_defaults(func=_watch_command)

    p = sub.add_parser("leader", help="ask the nodes who leads (prints JSON)")
    _client_flags(p)
    p.set_defaults(func=_client_command)

    if with_tools:
        _add_tool_commands(sub)
    return parser


def add_emulator_bin_flag(p: argparse.ArgumentParser) -> None:
    _flag(p, "--emulator-bin", help="emulator_main to start (default: PATH, then the Cloud "
          "SDK root)")


def _client_flags(p: argparse.ArgumentParser) -> None:
    _flag(p, "--nodes", "127.0.0.1:8080", help="comma list of node host:port or URLs")
    _flag(p, "--api-token", help="bearer token, when the API requires one")
    _flag(p, "--timeout-ms", 30000, type=int, help="deadline of the call")


def _client_command(args: argparse.Namespace) -> int:
    import json

    from .client import SyncClient
    from .errors import DstoreError

    nodes = [n.strip() for n in str(args.nodes).split(",") if n.strip()]
    timeout = int(args.timeout_ms) / 1000
    staleness = getattr(args, "max_staleness_ms", None)
    staleness_s = None if staleness is None else staleness / 1000
    try:
        with SyncClient(nodes, token=args.api_token or None, timeout_s=timeout) as client:
            if args.command == "put":
                r = client.put(args.key, args.value, no_append=args.no_append,
                               id=args.row_id, if_latest=args.if_latest,
                               if_absent=args.if_absent)
                out: object = {"id": r.id, "timestamp": str(r.timestamp)}
            elif args.command == "delete":
                r = client.delete(args.key, if_latest=args.if_latest, id=args.row_id)
                out = {"id": r.id, "timestamp": str(r.timestamp)}
            elif args.command == "get":
                limit = args.limit
                if limit is not None and limit.isdigit():
                    limit = int(limit)
                items = client.get(args.key, limit, max_staleness=staleness_s)
                body: dict[str, object] = {"key": args.key, "items": [
                    {"id": i.id, "value": None if i.deleted else i.value,
                     "timestamp": str(i.timestamp), "deleted": i.deleted} for i in items],
                    "read_timestamp": str(items.read_timestamp)}
                if items.deleted is not None:
                    body["deleted"] = {"id": items.deleted.id,
                                       "timestamp": str(items.deleted.timestamp)}
                out = body
            elif args.command == "list":
                _list_all(client, args, staleness_s)
                return 0
            else:
                out = client.leader()
    except DstoreError as exc:
        print(json.dumps(exc.to_dict()))
        return 1
    print(json.dumps(out))
    return 0


def _watch_command(args: argparse.Namespace) -> int:
    import json

    from .client import Client
    from .errors import DstoreError
    from .types import Timestamp

    if args.key is not None and args.prefix is not None:
        raise ValueError("watch takes --key or --prefix, not both")
    since = Timestamp.parse(args.since) if args.since else None
    nodes = [n.strip() for n in str(args.nodes).split(",") if n.strip()]

    async def follow() -> None:
        seen = 0
        async with Client(nodes, token=args.api_token or None) as client:
            async for event in client.watch(args.key, args.prefix, since):
                out: dict[str, object] = {"event": event.kind,
                                          "timestamp": str(event.timestamp)}
                if event.kind in ("put", "delete"):
                    out.update(key=event.key, id=event.id,
                               value=event.value if event.kind == "put" else None)
                    seen += 1
                out["resume"] = str(event.resume)
                print(json.dumps(out), flush=True)
                if args.max_events is not None and seen >= args.max_events:
                    return

    async def bounded() -> None:
        if args.seconds is None:
            await follow()
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(args.seconds):
                await follow()

    try:
        run(bounded())
    except KeyboardInterrupt:
        return 0
    except DstoreError as exc:
        print(json.dumps(exc.to_dict()))
        return 1
    return 0


def _list_all(client: Any, args: argparse.Namespace, staleness_s: float | None) -> None:
    """Print every key under the prefix, one JSON object a line, page by page."""
    import json

    after = args.after
    left = args.limit
    while left is None or left > 0:
        size = args.page_size if left is None else min(args.page_size, left)
        page = client.list(args.prefix, size, after, max_staleness=staleness_s)
        for i in page.items:
            print(json.dumps({"key": i.key, "id": i.id, "value": i.value,
                              "timestamp": str(i.timestamp)}))
        if left is not None:
            left -= len(page.items)
        if page.next is None:
            return
        after = page.next


def add_serve_flags(p: argparse.ArgumentParser) -> None:
    """`serve`'s flags (each also a ``DSTORE_*`` variable): one a ``Config`` setting,
    and the process's own (``--init-db``, ``--log-level``, ``--log-format``)."""
    _setting_flags(p, *_SETTINGS)
    _flag(p, "--init-db", "false", help="create missing tables first (true/false)")
    _flag(p, "--log-level", "info", help="debug, info, warning")
    _flag(p, "--log-format", "text", choices=("text", "json"), help="text or json lines")


def config_from_args(args: argparse.Namespace) -> Config:
    """The ``Config`` that `serve`'s flags (``add_serve_flags``) describe."""
    if not args.id or not args.database:
        raise SystemExit(
            "serve needs --id HOST:PORT and --database (or DSTORE_ID, DSTORE_DATABASE)"
        )
    values: dict[tuple[str, ...], object] = {}
    for path, s, default in _SETTINGS.values():
        value = s.to_field(getattr(args, _dest(s.flag)))
        if value is None or (default is None and value == 0):
            continue  # not given (or 0 for an optional one: off): the field's default
        values[path] = value
    return config_from_settings(values)


async def _serve(config: Config) -> None:
    from .server.node import Store

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with Store(config) as store:
        host, port = config.listen_host_port
        log.info("node %s serving on %s:%d (database %s)", config.node_id, host, port,
                 config.database)
        await stop.wait()
        log.info("node %s stopping (leader: %s)", store.node_id, store.is_leader)
    log.info("node %s stopped", config.node_id)


def _init_db(database: str, lock_table: str, log_table: str,
             emulator_host: str | None, retention_days: int | None = None) -> list[str]:
    from .storage import backend_scheme

    if backend_scheme(database):
        return []  # only Spanner needs this: the other backends make their own tables
    from .storage.admin import init_database

    return init_database(database, lock_table=lock_table, log_table=log_table,
                         emulator_host=emulator_host, retention_days=retention_days)


def _days(value: Any) -> int | None:
    """``--retention-days`` of `ddl` and `init-db`, checked by its setting's bounds."""
    days = int(value) if value not in (None, "") else None
    _SETTINGS["--retention-days"][1].check("--retention-days", days)
    return days


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # A node (`serve`) never loads the tools: only other commands and --help do.
    parser = _parser(with_tools=not (argv and argv[0] in BUILT_IN))
    args = parser.parse_args(argv)
    setup_logging(getattr(args, "log_level", "info"), getattr(args, "log_format", "text"),
                  getattr(args, "id", None))
    try:
        tune_gc()
        code: int = args.func(args)
        return code
    except ValueError as exc:  # bad flag values: say which, without a traceback
        parser.exit(2, f"dstore-batch: error: {exc}\n")


def _ddl(args: argparse.Namespace) -> int:
    sys.stdout.write(render_ddl(args.lock_table, args.log_table,
                                retention_days=_days(args.retention_days)))
    return 0


def _init_db_command(args: argparse.Namespace) -> int:
    if not args.database:
        raise SystemExit("init-db needs --database projects/P/instances/I/databases/D")
    created = _init_db(args.database, args.lock_table, args.log_table,
                       args.emulator_host or None, _days(args.retention_days))
    print("created: " + (", ".join(created) if created else "nothing (tables exist)"))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(backend=args.backend, data_dir=args.data_dir, keep=args.keep,
                    seconds=args.seconds, emulator_bin=args.emulator_bin)


def _serve_command(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    if str(args.init_db).lower() in ("1", "true", "yes"):
        _init_db(config.database, config.lock_table, config.log_table,
                 config.emulator_host, config.retention_days)
    run(_serve(config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
