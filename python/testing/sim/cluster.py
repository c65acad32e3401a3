"""Simulation: the cluster under test, its nodes' lives (start, crash,
restart, heal) and the end-of-run liveness check. Clients, faults and the
Figure 8 script are mixins in their own modules."""
from __future__ import annotations

import asyncio
import collections
import random
from typing import Any, Optional

from raftcore.config import Config, SnapshotPolicy
from raftcore.errors import ForwardToLeader, RaftError
from raftcore.engine import LEADER
from raftcore.model import Node
from raftcore.raft import Raft
from raftcore.testing import lincheck
from raftcore.testing.lincheck.lock import LockHistory
from raftcore.testing.faulty_engine import engine_with_bugs
from raftcore.testing.sim.checker import Checker
from raftcore.testing.sim.disk import SimDisk
from raftcore.testing.sim.embedded import EmbedWorkload, SimReplicatedStateMachine
from raftcore.testing.sim.faults import FaultInjection
from raftcore.testing.sim.figure8 import Figure8
from raftcore.testing.sim.network import SimNetwork
from raftcore.testing.sim.settings import SimSettings, Violation
from raftcore.testing.sim.state_machine import SimStateMachine
from raftcore.testing.sim.workload import ClientWorkload
from raftcore.testing.virtual_loop import inline_executor


class Simulation(ClientWorkload, EmbedWorkload, FaultInjection, Figure8):
    def __init__(self, seed: int, settings: SimSettings) -> None:
        self.seed = seed
        self.s = settings
        self.rng = random.Random(seed)
        self.trace: list = []
        self.rafts: dict[int, Raft] = {}
        self.checker = Checker(self.trace, self.rafts)
        self.net = SimNetwork(random.Random(self.rng.random()))
        self.disks: dict[int, SimDisk] = {}
        self.sms: dict[int, SimStateMachine] = {}
        self.down: set[int] = set()
        self.history = LockHistory() if settings.workload == "lock" else lincheck.History()
        # The embedding layer's workloads: node -> its EmbeddedNode, the
        # service answering its forwarded calls, its incarnations so far.
        self.embedded: dict[int, Any] = {}
        self.services: dict[int, Any] = {}
        self.incarnations: dict[int, int] = {}
        self.faults: collections.Counter = collections.Counter()
        self.stop = False
        self.ops = 0
        #: Why no leader came back after healing, when the engine intends it
        #: (voters_without_entries); "" otherwise.
        self.stalled = ""
        self.voter_ids = set(range(1, settings.nodes + 1))
        self.all_ids = list(range(1, settings.nodes + settings.spares + 1))
        self.started: set[int] = set()
        self.crash_next_leader: Optional[float] = None
        self.known_leader: dict[int, int] = {}      # node -> term it was seen leading
        self.held: set[int] = set()                 # crashed nodes a script keeps down
        self.wiped: Optional[int] = None            # the member that lost its disk, if any
        self.replacement: Optional[str] = None      # its replacement: "running", "done"
        # It was a voter when wiped: its replacement promotes it back, even
        # when a failed first attempt had removed it already (seed 15001144).
        self.wiped_voter = False
        self.final_attempts = 0

    def log(self, msg: str) -> None:
        self.trace.append(f"{asyncio.get_running_loop().time():9.4f}  {msg}")

    def config(self, node_id: int, **overrides: Any) -> Config:
        settings = dict(heartbeat_interval=0.05, election_timeout_min=0.15,
                        election_timeout_max=0.3, seed=self.rng.randrange(2**32),
                        snapshot_policy=SnapshotPolicy.logs_since_last(60),
                        max_in_snapshot_log_to_keep=self.rng.choice([0, 5, 20]),
                        snapshot_max_chunk_size=256,
                        max_payload_entries=self.rng.choice(self.s.payload_entries),
                        enable_pre_vote=self.rng.random() < 0.5, rpc_timeout=0.5)
        settings.update(overrides)
        return Config(**settings)

    async def start_node(self, i: int, durable: Optional[dict] = None,
                         sm: Optional[SimStateMachine] = None, **config: Any) -> Raft:
        """Starts node i (on its durable state, after a crash); `config`
        overrides some of the Config it would get."""
        disk = SimDisk(random.Random(self.rng.random()), durable,
                       ack_before_flush="ack_before_flush" in self.s.bugs)
        if sm is None:
            sm = (SimStateMachine(i, self.checker) if self.s.workload == "kv"
                  else SimReplicatedStateMachine(i, self.checker, self.s.workload))
        raft = await Raft.create(i, self.config(i, **config), self.net.network(i), disk, sm,
                                 executor=inline_executor,
                                 engine_type=engine_with_bugs(self.s.bugs))
        self.rafts[i], self.disks[i], self.sms[i] = raft, disk, sm
        self.net.add(i, raft)
        if self.s.workload != "kv":
            self.embed_node(i, raft, disk, sm)
        self.checker.new_incarnation(i)
        self.started.add(i)
        return raft

    # ---------------------------------------------------------- the run

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for i in sorted(self.voter_ids):
            await self.start_node(i)
        await self.rafts[1].initialize({i: Node(f"sim-{i}") for i in sorted(self.voter_ids)},
                                       cluster_id=f"sim-{self.seed}")
        watcher = asyncio.ensure_future(self.watch())
        client = self.client if self.s.workload == "kv" else self.embed_client
        clients = [asyncio.ensure_future(client(c)) for c in range(self.s.clients)]
        faults = asyncio.ensure_future(self.inject_faults())
        # Faults and load last `duration`, or until the first violation:
        # what follows one is its fallout, and a cluster whose safety broke
        # may keep its nodes busy for nothing.
        over = loop.create_future()

        def end() -> None:
            if not over.done():
                over.set_result(None)

        self.checker.on_violation = end
        timer = loop.call_later(self.s.duration, end)
        try:
            await over
            timer.cancel()
            self.stop = True
            faults.cancel()
            await asyncio.gather(faults, return_exceptions=True)
            # A fault that failed on its own (a bug of the simulator) ended
            # the injection: the run would go on quietly with fewer faults.
            if not faults.cancelled() and faults.exception() is not None:
                raise faults.exception()
            self.raise_first_violation()
            await asyncio.gather(*clients)
            await self.heal_all()
            await self.check_liveness()
            self.raise_first_violation()
            self.check_watcher(watcher)
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
            for i, r in list(self.rafts.items()):
                if i not in self.down:
                    await r.shutdown()
        self.virtual_seconds = loop.time()

    def raise_first_violation(self) -> None:
        if self.checker.first is not None:
            raise Violation(self.checker.first)

    def check_watcher(self, watcher: asyncio.Future) -> None:
        if watcher.done() and watcher.exception() is not None:
            raise watcher.exception()

    async def watch(self) -> None:
        while True:
            for i, r in list(self.rafts.items()):
                if i not in self.down:
                    self.checker.observe(i, r, self.disks[i])
                    e = r._core.engine
                    if e.state == LEADER and self.known_leader.get(i) != e.vote.term:
                        self.known_leader[i] = e.vote.term
                        if self.crash_next_leader is not None and not self.stop:
                            delay, self.crash_next_leader = self.crash_next_leader, None
                            self.later(delay, lambda i=i: asyncio.ensure_future(
                                self.crash_and_restart(i)))
            await asyncio.sleep(0.001)

    # -------------------------------------------------------- clients

    def live(self) -> list[Raft]:
        return [self.rafts[i] for i in sorted(self.rafts) if i not in self.down]

    def leader_guess(self) -> Optional[Raft]:
        for r in self.live():
            if r._core.engine.state == LEADER:
                return r
        return None

    def background(self, coro) -> None:
        async def guarded():
            try:
                await asyncio.wait_for(coro, 3.0)
            except (RaftError, asyncio.TimeoutError) as exc:
                self.log(f"membership change ended: {type(exc).__name__}: {exc}")
        asyncio.ensure_future(guarded())

    def later(self, delay: float, fn) -> None:
        asyncio.get_running_loop().call_later(delay, fn)

    def heal_links(self) -> None:
        self.net._cut.clear()
        self.log("heal links")

    def resume(self, n: int) -> None:
        ev = self.net.paused.pop(n, None)
        if ev is not None:
            ev.set()
        if n in self.rafts and n not in self.down:
            self.rafts[n].runtime_config.tick(True)
        self.log(f"resume {n}")

    async def crash(self, n: int) -> None:
        self.down.add(n)
        self.net.remove(n)
        self.disks[n].crash()
        await self.rafts[n].shutdown()
        self.log(f"crash {n}")

    async def crash_and_restart(self, n: int) -> None:
        if n in self.down:
            return
        await self.crash(n)
        self.later(self.rng.uniform(0.05, 0.5), lambda: asyncio.ensure_future(self.restart(n)))

    async def restart(self, n: int, **config: Any) -> None:
        if n not in self.down or n in self.held:
            return      # up already, or a script keeps it down
        self.down.discard(n)
        durable = self.disks[n].durable
        await self.start_node(n, durable, self.sms[n].restarted(), **config)
        self.log(f"restart {n}")

    async def heal_all(self) -> None:
        self.net.heal()
        self.net.dup_rate = 0.0
        self.net.blank_loss = 0.0
        self.net.filters.clear()
        for n in list(self.net.paused):
            self.resume(n)
        for disk in self.disks.values():
            disk.free()
        for n in sorted(self.down):
            await self.restart(n)
        self.log("healed everything")

    # -------------------------------------------------------- liveness

    def script_write(self, tag: str, i: int, key: str) -> Any:
        """A write of a scripted fault (figure8) through node i."""
        if self.s.workload != "kv":
            return self.embed_script_write(tag, i, key)
        return self.write(tag, self.rafts[i], "set", key, (tag,), ["set", key, tag])

    async def final_write_and_read(self, leader: Raft) -> bool:
        if self.s.workload != "kv":
            return await self.embed_final_write_and_read(leader)
        loop = asyncio.get_running_loop()
        self.final_attempts += 1
        value = f"done-{self.final_attempts}"      # unique, as every write's payload
        tok = self.history.invoke("final", "set", "final", (value,), now=loop.time())
        try:
            resp = await asyncio.wait_for(leader.client_write(["set", "final", value]), 1.0)
        except ForwardToLeader:
            self.history.fail(tok)
            self.checker.write_refused("final", ["set", "final", value])
            return False
        except (RaftError, asyncio.TimeoutError):
            self.history.indeterminate(tok)
            return False
        self.history.complete(tok, resp.data, now=loop.time())
        try:
            await asyncio.wait_for(leader.ensure_linearizable(), 1.0)
        except (RaftError, asyncio.TimeoutError):
            return False
        return True

    def describe_nodes(self) -> str:
        """Each node's role, term, leader, indexes and what keeps it from
        voting, for a liveness violation's message."""
        parts = []
        for i, r in sorted(self.rafts.items()):
            m = r.metrics
            voters = sorted(m.membership.voter_ids) if m.membership is not None else None
            parts.append(f"node {i}: {m.state.name} term {m.current_term} leader "
                         f"{m.current_leader} log {m.last_log_index} committed {m.committed} "
                         f"voters {voters} identity_stale {m.identity_stale} "
                         f"disk_full {m.disk_full}")
        return "; ".join(parts)

    def voters_without_entries(self) -> Optional[str]:
        """Why no leader can be elected, if it is the engine's rule for empty
        logs (engine_identity.may_vote_on_empty_log) and lost disks: in the
        membership of the node with the longest log, some voter set has no
        majority of voters that hold an entry and know of no lost disk of
        theirs. Voters without entries may have lost their disks; only a
        leader's entries let them vote again. A voter that knows it lost its
        disk (identity_stale) votes no more until it is replaced, which
        needs a leader. None otherwise."""
        newest = max(self.rafts.values(), key=lambda r: r.metrics.last_log_index)
        m = newest._core.engine.membership
        if m is None:
            return None
        stale = {i for i, r in self.rafts.items() if r.metrics.identity_stale}
        able = {i for i, r in self.rafts.items() if not r._core.engine.log_empty} - stale
        for voters in m.configs:
            if len(voters & able) <= len(voters) // 2:
                lost = sorted(voters & stale)
                return (f"voters {sorted(voters - able - stale)} of {sorted(voters)} hold no "
                        f"entry" + (f" and {lost} lost their disks" if lost else "")
                        + ", so they vote for no candidate")
        return None

    async def check_liveness(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.s.heal_within
        leader = None
        while loop.time() < deadline:
            self.raise_first_violation()
            leader = self.leader_guess()
            if leader is not None and await self.final_write_and_read(leader):
                break
            await asyncio.sleep(0.05)
        else:
            stalled = self.voters_without_entries()
            if stalled is not None:
                self.log(f"no leader after healing, as designed: {stalled}")
                self.stalled = stalled
                return
            raise Violation(f"liveness: no leader could write and read within "
                            f"{self.s.heal_within}s of healing; {self.describe_nodes()}")
        members = sorted(leader.metrics.membership.nodes)
        target = leader.metrics.last_applied_index
        for i in members:
            try:
                await self.rafts[i].wait(self.s.heal_within).applied_index_at_least(target)
            except RaftError as exc:
                raise Violation(f"liveness: member {i} did not catch up to {target}: {exc}")
        self.log(f"liveness ok: leader {leader.id}, members {members} at {target}")

