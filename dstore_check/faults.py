"""Faults injected into a running cluster, one at a time, each healed before it returns.

- ``kill``: SIGKILL a node (the leader, or another), wait for the others to agree on a
  leader, start it again;
- ``stop``: SIGSTOP a node for longer than a lease, then SIGCONT;
- ``peer-partition``: black-hole the ``FaultProxy`` in front of a node's peer address
  (its node id) for a while: followers cannot reach it if it leads;
- ``db-partition``: black-hole the database connection of one node (the leader or a
  follower) or of every node for longer than a lease;
- ``db-latency``: add 50-100 ms each way on every node's database connection for a while;
- ``emulator-restart``: stop the emulator and start it again on the same port, then
  create the database again. The emulator keeps its data in memory: what was stored is
  gone, and the history records the restart so that the checks are scoped to it;
- ``restart``: SIGTERM a node (the leader, or another) and start it again once it has
  exited: one step of a rolling restart;
- ``answer-loss``: a node's database requests arrive and are acted on, but the answers
  are held for longer than a lease (commits land; their callers do not hear it in time);
- ``asym-partition``: frames to a node's peer address arrive, nothing comes back (a
  leader gets its followers' puts and commits them; its acks do not reach them);
- ``slow-peer``: a node's peer link gets more latency than a put's deadline;
- ``client-reset``: the proxies between some producers and the nodes close every
  connection, mid-request or not, and refuse new ones for a moment;
- ``overlap``: two faults at once, a node's (kill, stop or restart) and a link's (any of
  the proxy faults), the second starting while the first holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import aiohttp

from dstore_batch.storage.spanner import parse_database_path
from dstore_batch.testing.cluster import LocalCluster, NodeProcess
from dstore_batch.testing.emulator import Emulator
from dstore_batch.testing.faultproxy import FaultProxy, Mode
from dstore_batch.types import Timestamp

from .history import EmulatorRestart, FaultEvent, OpHistory

__all__ = ["FAULT_KINDS", "CommandFaults", "Faults", "Rig"]

FAULT_KINDS: tuple[str, ...] = ("kill", "stop", "peer-partition", "db-partition",
                                "db-latency", "emulator-restart", "restart", "answer-loss",
                                "asym-partition", "slow-peer", "client-reset", "overlap")
NODE_FAULTS = ("kill", "stop", "restart")
# The emulator-restart's cut: the old emulator's clock read before the stop, plus the
# host's time to its exit, plus this for the ~1 us its clock gains per request served
# meanwhile (thousands of requests).
CUT_MARGIN_NS = 10_000_000
CLOCK_READ_S = 5.0
UNKNOWN_AHEAD_NS = 1_000_000_000  # when the clock could not be read
LINK_FAULTS = ("peer-partition", "db-partition", "db-latency", "answer-loss",
               "asym-partition", "slow-peer", "client-reset")


@dataclass
class Rig:
    """The cluster under test and the handles the faults act on. ``db_proxies[i]`` and
    ``peer_proxies[i]`` belong to ``cluster.nodes[i]``."""

    cluster: LocalCluster
    emulator: Emulator
    database: str  # projects/P/instances/I/databases/D
    db_proxies: list[FaultProxy]
    peer_proxies: list[FaultProxy]
    lease_s: float
    put_timeout_s: float = 5.0  # the nodes' --put-timeout-ms
    # In front of each node's HTTP port, for the producers that go through them.
    client_proxies: list[FaultProxy] = field(default_factory=list)

    def database_clock(self) -> Timestamp:
        """The emulator's clock now."""
        return self.emulator.clock(self.database)

    def create_database(self) -> None:
        """The database again, with its tables, on a (restarted) emulator."""
        project, instance, name = parse_database_path(self.database)
        self.emulator.create_database(name, project=project, instance=instance)


class _Driver:
    """Injects faults and records each in ``history.faults``: ``inject`` acts (the
    subclass's handler for the kind), heals, and waits for the group to agree on a
    leader again."""

    def __init__(self, history: OpHistory, say: Callable[[str], None]) -> None:
        self.history = history
        self.say = say

    def _handler(self, kind: str) -> Callable[[FaultEvent], Awaitable[None]]:
        raise NotImplementedError

    async def leaders(self) -> dict[str, str | None]:
        """Each reachable node's answer to /v1/leader (None: no answer, or none named)."""
        raise NotImplementedError

    async def wait_for_leader(self, timeout: float, exclude: str | None = None) -> float | None:
        """Seconds until every live node names one leader (None: not within timeout)."""
        raise NotImplementedError

    async def heal_all(self) -> None:
        """Undo whatever may be left of a fault."""

    async def inject(self, kind: str, agree_s: float = 30.0) -> FaultEvent:
        """Inject ``kind``, heal it, wait (up to ``agree_s``) for the group to agree on a
        leader again."""
        handler = self._handler(kind)
        event = FaultEvent(kind, "", "", time.monotonic(), time.time())
        self.history.faults.append(event)
        try:
            await handler(event)
        except Exception as exc:  # a fault that could not be injected is reported, not fatal
            event.error = f"{type(exc).__name__}: {exc}"
            self.say(f"    fault {kind} failed: {event.error}")
            await self.heal_all()
        finally:
            event.end, event.end_wall = time.monotonic(), time.time()
        event.recovered_s = await self.wait_for_leader(agree_s)
        if event.recovered_s is not None:
            self.say(f"<<< {kind} healed; leader agreed after {event.recovered_s:.2f}s")
        else:
            answers = await self.leaders()
            event.error_after = f"no agreed leader {agree_s:.0f} s after healing: {answers}"
            self.say(f"<<< {kind} healed; leader agreed NOT within {agree_s:.0f}s; /v1/leader "
                     f"answers {answers}")
        return event


class CommandFaults(_Driver):
    """The operator's own fault (``check --against ... --fault-cmd``): a shell command,
    run to its end each time (it may delete a pod, say); the group is then watched
    through the nodes' /v1/leader until they agree again."""

    def __init__(self, urls: Sequence[str], history: OpHistory, command: str,
                 say: Callable[[str], None], http: aiohttp.ClientSession,
                 timeout_s: float = 300.0) -> None:
        super().__init__(history, say)
        self.urls = list(urls)
        self.command = command
        self.http = http
        self.timeout_s = timeout_s

    def _handler(self, kind: str) -> Callable[[FaultEvent], Awaitable[None]]:
        return self._run

    async def _run(self, event: FaultEvent) -> None:
        event.target, event.detail = "group", self.command
        event.start, event.start_wall = time.monotonic(), time.time()
        self.say(f">>> cmd: {self.command}")
        proc = await asyncio.create_subprocess_shell(
            self.command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), self.timeout_s)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise RuntimeError(f"the fault command ran past {self.timeout_s:.0f} s") from None
        text = out.decode(errors="replace").strip()
        if proc.returncode:
            raise RuntimeError(f"the fault command exited {proc.returncode}: {text[-500:]}")
        if text:
            self.say(f"    {text.splitlines()[-1][:200]}")

    async def leaders(self) -> dict[str, str | None]:
        async def ask(url: str) -> str | None:
            try:
                async with self.http.get(url + "/v1/leader",
                                         timeout=aiohttp.ClientTimeout(total=2.0)) as resp:
                    return str((await resp.json()).get("leader") or "") or None
            except (aiohttp.ClientError, OSError, TimeoutError, ValueError):
                return None

        answers = await asyncio.gather(*(ask(u) for u in self.urls))
        return dict(zip(self.urls, answers, strict=True))

    async def wait_for_leader(self, timeout: float, exclude: str | None = None) -> float | None:
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            named = set((await self.leaders()).values())
            if len(named) == 1 and None not in named and exclude not in named:
                return time.monotonic() - started
            await asyncio.sleep(0.1)
        return None


class Faults(_Driver):
    """Injects faults on ``rig`` (a cluster the checker started)."""

    def __init__(self, rig: Rig, history: OpHistory, rng: random.Random,
                 say: Callable[[str], None]) -> None:
        super().__init__(history, say)
        self.rig = rig
        self.rng = rng
        self.emulator_down = False

    # -- helpers --------------------------------------------------------------------------

    @property
    def nodes(self) -> list[NodeProcess]:
        return self.rig.cluster.nodes

    async def leaders(self) -> dict[str, str | None]:
        return await asyncio.to_thread(self.rig.cluster.leaders)

    async def leader(self) -> NodeProcess | None:
        named = {a for a in (await self.leaders()).values() if a}
        if len(named) != 1:
            return None
        return self.rig.cluster.node(named.pop())

    async def pick(self, leader_share: float) -> tuple[NodeProcess, str]:
        """The leader (with probability ``leader_share``, when there is one) or another
        node; and which it was."""
        leader = await self.leader()
        if leader is not None and self.rng.random() < leader_share:
            return leader, "leader"
        others = [n for n in self.nodes if n is not leader] or self.nodes
        return self.rng.choice(others), "follower" if leader is not None else "node"

    def index(self, node: NodeProcess) -> int:
        return self.nodes.index(node)

    async def wait_for_leader(self, timeout: float, exclude: str | None = None) -> float | None:
        started = time.monotonic()
        try:
            await asyncio.to_thread(self.rig.cluster.wait_for_leader, timeout, exclude)
        except (TimeoutError, RuntimeError):
            return None
        return time.monotonic() - started

    # -- injection --------------------------------------------------------------------------

    def _handler(self, kind: str) -> Callable[[FaultEvent], Awaitable[None]]:
        if kind == "overlap":
            return self._overlap
        return {
            "kill": self._kill, "stop": self._stop, "peer-partition": self._peer_partition,
            "db-partition": self._db_partition, "db-latency": self._db_latency,
            "emulator-restart": self._emulator_restart, "restart": self._restart,
            "answer-loss": self._answer_loss, "asym-partition": self._asym_partition,
            "slow-peer": self._slow_peer, "client-reset": self._client_reset,
        }[kind]

    async def _overlap(self, event: FaultEvent) -> None:
        """A node fault and a link fault at once (in either order), each healed as
        alone; the event spans both."""
        kinds = [self.rng.choice(NODE_FAULTS), self.rng.choice(LINK_FAULTS)]
        self.rng.shuffle(kinds)
        parts = [FaultEvent(k, "", "", time.monotonic(), time.time()) for k in kinds]
        lag = self.rng.uniform(0.3, 1.5)

        async def second() -> None:
            await asyncio.sleep(lag)
            await self._handler(kinds[1])(parts[1])

        self.say(f">>> overlap: {kinds[0]}, and {kinds[1]} {lag:.1f}s later")
        try:
            await asyncio.gather(self._handler(kinds[0])(parts[0]), second())
        finally:
            event.target = "+".join(p.target for p in parts)
            event.detail = "; with ".join(f"{p.kind}: {p.detail}" for p in parts)
            event.start = min(p.start for p in parts)
            event.start_wall = min(p.start_wall for p in parts)

    def _begin(self, event: FaultEvent, target: str, detail: str) -> None:
        event.target, event.detail = target, detail
        event.start, event.start_wall = time.monotonic(), time.time()
        self.say(f">>> {event.kind}: {detail}")

    async def _kill(self, event: FaultEvent) -> None:
        victim, role = await self.pick(0.6)
        self._begin(event, victim.node_id, f"SIGKILL the {role} {victim.node_id}")
        victim.signal(signal.SIGKILL)
        await asyncio.to_thread(victim.wait, 5)
        try:
            if role == "leader":
                took = await self.wait_for_leader(10 * self.rig.lease_s, victim.node_id)
                self.say("    new leader " + (f"after {took:.2f}s" if took is not None
                                              else "not agreed within 10 leases"))
            else:
                await asyncio.sleep(0.5)
        finally:
            victim.start()
            await asyncio.to_thread(self.rig.cluster.wait_healthy, victim, 30.0)

    async def _stop(self, event: FaultEvent) -> None:
        victim, role = await self.pick(0.6)
        hold = 1.5 * self.rig.lease_s + 0.5
        self._begin(event, victim.node_id,
                    f"SIGSTOP the {role} {victim.node_id} for {hold:.1f}s")
        victim.signal(signal.SIGSTOP)
        try:
            await asyncio.sleep(hold)
        finally:
            victim.signal(signal.SIGCONT)

    async def _peer_partition(self, event: FaultEvent) -> None:
        victim, role = await self.pick(0.75)
        proxy = self.rig.peer_proxies[self.index(victim)]
        # Longer than a put's deadline: held puts end in errors, not just in latency.
        hold = max(3 * self.rig.lease_s, self.rig.put_timeout_s + 1.0)
        self._begin(event, victim.node_id,
                    f"black-hole the peer address of the {role} {victim.node_id} "
                    f"for {hold:.1f}s")
        await self._hold([proxy], hold, "blackhole")

    async def _db_partition(self, event: FaultEvent) -> None:
        hold = 1.5 * self.rig.lease_s + 0.5
        if self.rng.random() < 0.3:
            proxies, target = list(self.rig.db_proxies), "all"
            what = "every node"
        else:
            victim, role = await self.pick(0.6)
            proxies, target = [self.rig.db_proxies[self.index(victim)]], victim.node_id
            what = f"the {role} {victim.node_id}"
        self._begin(event, target, f"black-hole the database connection of {what} "
                                   f"for {hold:.1f}s")
        await self._hold(proxies, hold, "blackhole")

    async def _db_latency(self, event: FaultEvent) -> None:
        delay = round(self.rng.uniform(0.05, 0.1), 3)
        hold = max(4.0, 2 * self.rig.lease_s)
        self._begin(event, "all", f"{delay * 1000:.0f} ms each way on every node's "
                                  f"database connection for {hold:.1f}s")
        await self._hold(self.rig.db_proxies, hold, delay_s=delay)

    async def _restart(self, event: FaultEvent) -> None:
        victim, role = await self.pick(0.6)
        self._begin(event, victim.node_id, f"SIGTERM the {role} {victim.node_id}, start it "
                                           "again once it has exited")
        victim.signal(signal.SIGTERM)
        try:
            if await asyncio.to_thread(victim.wait, 20) is None:
                victim.signal(signal.SIGKILL)
                await asyncio.to_thread(victim.wait, 5)
                raise RuntimeError(f"{victim.node_id} did not exit within 20 s of SIGTERM")
        finally:
            victim.start()
            await asyncio.to_thread(self.rig.cluster.wait_healthy, victim, 30.0)

    async def _hold(self, proxies: Sequence[FaultProxy], hold: float, mode: Mode = "pass",
                    delay_s: float = 0.0) -> None:
        """``proxies`` in ``mode`` (and ``delay_s``) for ``hold`` seconds, then passing."""
        try:
            for p in proxies:
                await asyncio.to_thread(p.set_mode, mode, delay_s=delay_s)
            await asyncio.sleep(hold)
        finally:
            for p in proxies:
                await asyncio.to_thread(p.set_mode, "pass", delay_s=0.0)

    async def _answer_loss(self, event: FaultEvent) -> None:
        victim, role = await self.pick(0.7)
        hold = 1.5 * self.rig.lease_s + 0.5
        self._begin(event, victim.node_id,
                    f"hold the database's answers to the {role} {victim.node_id} for "
                    f"{hold:.1f}s (its requests arrive and are acted on)")
        await self._hold([self.rig.db_proxies[self.index(victim)]], hold, "no-replies")

    async def _asym_partition(self, event: FaultEvent) -> None:
        victim, role = await self.pick(0.75)
        hold = max(3 * self.rig.lease_s, self.rig.put_timeout_s + 1.0)
        self._begin(event, victim.node_id,
                    f"frames to the peer address of the {role} {victim.node_id} arrive, "
                    f"nothing comes back, for {hold:.1f}s")
        await self._hold([self.rig.peer_proxies[self.index(victim)]], hold, "no-replies")

    async def _slow_peer(self, event: FaultEvent) -> None:
        victim, role = await self.pick(0.75)
        delay = self.rig.put_timeout_s + 0.5
        hold = max(4.0, 2 * self.rig.lease_s)
        self._begin(event, victim.node_id,
                    f"{delay:.1f}s each way on the peer address of the {role} "
                    f"{victim.node_id} (above the put deadline) for {hold:.1f}s")
        await self._hold([self.rig.peer_proxies[self.index(victim)]], hold, delay_s=delay)

    async def _client_reset(self, event: FaultEvent) -> None:
        hold = 1.0
        self._begin(event, "clients", f"reset every producer connection through the client "
                                      f"proxies, and refuse new ones for {hold:.1f}s")
        await self._hold(self.rig.client_proxies, hold, "reset")

    async def _emulator_restart(self, event: FaultEvent) -> None:
        self._begin(event, self.rig.emulator.host,
                    f"stop the emulator {self.rig.emulator.host}, start it again, re-create "
                    "the database (everything stored so far is gone)")
        begin = time.monotonic()
        self.emulator_down = True
        ahead = await self._emulator_ahead_ns()
        await asyncio.to_thread(self.rig.emulator.stop)
        # The old process has exited: nothing sent from now on can be committed to it,
        # and what it committed is at or below its clock now, which ran ahead of ours.
        end, exited = time.monotonic(), time.time_ns()
        cut = Timestamp(exited + max(ahead, 0) + CUT_MARGIN_NS)
        self.history.restarts.append(EmulatorRestart(begin, end, cut))
        # A new emulator's clock starts at this host's: one started after the cut commits
        # only above it.
        await asyncio.sleep(max(0, int(cut) - time.time_ns()) / 1e9)
        await self._start_emulator()
        self.say(f"    emulator back with an empty database after "
                 f"{time.monotonic() - begin:.2f}s (its clock had run {ahead / 1e6:.1f} ms "
                 "ahead of this host's)")

    async def _emulator_ahead_ns(self) -> int:
        """How far the emulator's clock runs ahead of this host's, at most (a strong
        read's timestamp less the host's time before it was sent)."""
        sent = time.time_ns()
        try:
            clock = await asyncio.wait_for(asyncio.to_thread(self.rig.database_clock),
                                           CLOCK_READ_S)
        except Exception as exc:  # a run without the bound would report false phantoms
            self.say(f"    could not read the emulator's clock ({exc!r}); taking it as "
                     f"{UNKNOWN_AHEAD_NS / 1e9:.0f} s ahead")
            return UNKNOWN_AHEAD_NS
        return int(clock) - sent

    async def _start_emulator(self) -> None:
        await asyncio.to_thread(self.rig.emulator.start)
        for attempt in range(10):
            try:
                await asyncio.to_thread(self.rig.create_database)
                break
            except Exception:
                if attempt == 9:
                    raise
                await asyncio.sleep(0.5)
        self.emulator_down = False

    async def heal_all(self) -> None:
        """Undo whatever may be left of a fault: proxies pass with no delay, stopped nodes
        continue, dead nodes start again, the emulator runs."""
        for p in (*self.rig.db_proxies, *self.rig.peer_proxies, *self.rig.client_proxies):
            with contextlib.suppress(Exception):
                await asyncio.to_thread(p.set_mode, "pass", delay_s=0.0)
        for node in self.nodes:
            if node.paused:
                node.signal(signal.SIGCONT)
        if self.emulator_down:
            with contextlib.suppress(Exception):
                await self._start_emulator()
        for node in self.nodes:
            if not node.alive:
                node.start()
                with contextlib.suppress(Exception):
                    await asyncio.to_thread(self.rig.cluster.wait_healthy, node, 30.0)
