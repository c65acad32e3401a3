"""Deterministic simulation of a raftcore cluster under faults.

Runs the real engine and runtime — the same Raft, RaftCore and Engine users
run — on a virtual-time event loop (virtual_loop), with a simulated network
(latency, loss, duplication, reordering, partitions, paused nodes) and a
simulated disk that loses what was written but not flushed when its node
crashes. Every random choice flows from one seed, so `raftcore sim --seed S`
replays a run exactly.

While the cluster runs, clients write, compare-and-set and read
(linearizable reads) with timeouts; each operation goes into a history that
raftcore.testing.lincheck checks at the end (a key it cannot decide within
its budget, --lin-budget, makes the seed undecided: reported with its
reproduce command, and a failure unless --allow-undecided). Invariants are
checked continuously:

- election safety: at most one leader per term;
- state machine safety / log matching / committed entries never change: no
  two applications of one index differ, across nodes and restarts;
- leader completeness: a leader of a term later than every term any node
  had reached when an entry was first applied holds that entry (a leader of
  an older term, elected by nodes that had not heard of the newer one, need
  not: it can commit nothing);
- no refused write commits: a write answered ForwardToLeader (it did not
  take effect) never shows up as a committed entry (write payloads are
  unique);
- per node: purged <= snapshot <= applied <= committed <= last log index;
  term never decreases and a vote in a term never changes, across restarts;
  commit and applied never decrease within one incarnation.

At the end every fault heals; within a bounded virtual time there must be one
leader, converged members, and a write and a read that succeed (liveness).

One fault, "wipe", is an operator's bad day: a node loses its disk and is
restarted under its old id on empty storage (a new storage incarnation). It
must not vote or count toward commit; the next "wipe" fault replaces it the
way an operator would (removes it, adds it back, promotes it again). Only
once the replaced node runs and both it and the leader see the membership
record its new incarnation does a "wipe" fault wipe another node, so at most
one member is wiped or stale at a time. The checker
forgets the wiped node's vote history (its new storage voted in no term).

Most faults are random. One, "figure8", is a script: it drives the cluster
through Figure 8 of the Raft paper (see Simulation.figure8), the one schedule
under which counting an older term's entries toward commit loses a committed
entry; random faults almost never line it up.
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import dataclasses
import random
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Optional

from raftcore.config import Config, SnapshotPolicy
from raftcore.errors import ForwardToLeader, NetworkError, NoSpace, OutcomeUnknown, RaftError
from raftcore.member_changes import ChangeMembers
from raftcore.model import Node, ReadPolicy
from raftcore.network.local import LocalRouter
from raftcore.raft import Raft
from raftcore.engine import LEADER
from raftcore.storage.base import LogState, LogStore, StoreIdentity
from raftcore.storage.mem import MemStateMachine
from raftcore.testing import lincheck
from raftcore.testing.faulty_engine import engine_with_bugs
from raftcore.testing.virtual_loop import VirtualTimeLoop, inline_executor
from raftcore.types import ENTRY_BLANK

#: Fault kinds the simulator injects (all of them, with the default settings).
FAULT_KINDS = ("isolate", "partition", "one_way", "ring", "drop", "duplicate", "crash",
               "crash_leader", "crash_new_leader", "lose_blanks", "power_loss",
               "pause", "elect", "snapshot", "purge", "transfer", "add_learner", "promote",
               "remove_voter", "figure8", "disk_full", "wipe")

#: Known-bad behaviours a test can switch on to show the checks catch them.
BUGS = ("commit_prev_term", "double_vote", "unconfirmed_reads", "ack_before_flush")


class Violation(AssertionError):
    """A safety or liveness check failed."""


class _GaveUp(Exception):
    """A scripted fault could not bring about the state its next step needs."""


@dataclass
class SimSettings:
    nodes: int = 5
    spares: int = 2               # extra nodes that membership faults may add
    duration: float = 12.0        # virtual seconds of faults and load
    clients: int = 4
    keys: int = 4
    op_timeout: float = 1.0
    fault_interval: float = 0.4   # mean virtual seconds between faults
    heal_within: float = 20.0     # liveness: virtual seconds allowed after healing
    bugs: tuple = ()
    fault_kinds: tuple = FAULT_KINDS
    #: AppendEntries batch sizes to pick from (1 makes every entry its own
    #: message: more partial replication, more Figure 8 situations).
    payload_entries: tuple = (1, 4, 16)
    #: The linearizability check's search budget per key (lincheck.check).
    lin_budget: int = lincheck.DEFAULT_BUDGET


@dataclass
class SimResult:
    seed: int
    ok: bool
    violation: str = ""
    trace: list = field(default_factory=list)
    faults: collections.Counter = field(default_factory=collections.Counter)
    ops: int = 0
    virtual_seconds: float = 0.0
    lin_unknown: int = 0          # keys whose linearizability was not decided
    undecided: str = ""           # the checker's report on them (no violation found)


# --------------------------------------------------------------------- disk

class SimDisk(LogStore):
    """A log store whose writes become durable only after a simulated fsync.

    `durable` survives crash(); what was appended, truncated or purged since
    the last flush is lost. Flushes complete after a random latency, in order;
    with the "ack_before_flush" bug, on_flushed fires before the data is
    durable (what an implementation that acks before fsync does)."""

    def __init__(self, rng: random.Random, durable: Optional[dict] = None,
                 ack_before_flush: bool = False) -> None:
        self.rng = rng
        self.durable = durable if durable is not None else {
            "vote": None, "entries": [], "purged": None, "committed": None,
            "identity": StoreIdentity(None, "%016x" % rng.getrandbits(64))}
        self.entries = list(self.durable["entries"])
        self.purged = self.durable["purged"]
        self.vote = self.durable["vote"]
        self.pending: list = []       # ops not yet durable
        self.waiting: list = []       # on_flushed callbacks of pending appends
        self.flush_scheduled = False
        self.crashed = False
        self.ack_before_flush = ack_before_flush
        # A full disk holds flushes (retried) and refuses vote saves.
        self.full = False
        self.space_reported = False
        self.space_listener = None

    def set_space_listener(self, listener):
        self.space_listener = listener

    def fill(self) -> None:
        self.full = True

    def free(self) -> None:
        self.full = False

    def _base(self) -> int:
        return self.purged.index if self.purged is not None else 0

    async def read_vote(self):
        return self.vote

    async def save_vote(self, vote):
        await asyncio.sleep(self.rng.uniform(0.0002, 0.002))
        if self.full:
            raise NoSpace("simulated full disk: the vote cannot be saved")
        if not self.crashed:
            self.vote = vote
            self.durable["vote"] = vote

    async def get_log_state(self):
        last = self.entries[-1].log_id if self.entries else self.purged
        return LogState(self.purged, last)

    async def read_identity(self):
        return self.durable["identity"]

    async def save_cluster_id(self, cluster_id):
        await asyncio.sleep(self.rng.uniform(0.0002, 0.002))
        if not self.crashed:
            self.durable["identity"] = dataclasses.replace(self.durable["identity"],
                                                           cluster_id=cluster_id)

    async def read_entries(self, first, last):
        base = self._base()
        return self.entries[first - base - 1:last - base]

    def append(self, entries, on_flushed):
        if self.crashed:
            return
        self.entries.extend(entries)
        self.pending.append(("append", list(entries)))
        if self.ack_before_flush:
            on_flushed(None)
        else:
            self.waiting.append(on_flushed)
        self._schedule_flush()

    def truncate_after(self, index):
        if self.crashed:
            return
        del self.entries[max(0, index - self._base()):]
        self.pending.append(("truncate", index))
        self._schedule_flush()

    def purge(self, upto):
        if self.crashed or upto.index <= self._base():
            return
        del self.entries[:upto.index - self._base()]
        self.purged = upto
        self.pending.append(("purge", upto))
        self._schedule_flush()

    async def save_committed(self, committed):
        self.durable["committed"] = committed

    async def read_committed(self):
        return self.durable["committed"]

    def _schedule_flush(self):
        if not self.flush_scheduled:
            self.flush_scheduled = True
            # Mostly quick, sometimes a slow disk.
            delay = self.rng.uniform(0.0001, 0.003)
            if self.rng.random() < 0.05 or self.ack_before_flush:
                # A slow disk; a store that acks early typically syncs lazily.
                delay = self.rng.uniform(0.01, 0.05 if not self.ack_before_flush else 0.2)
            asyncio.get_running_loop().call_later(delay, self._flush)

    def _flush(self):
        self.flush_scheduled = False
        if self.crashed:
            return
        if self.full:
            if not self.space_reported and self.space_listener is not None:
                self.space_reported = True
                self.space_listener(NoSpace("simulated full disk"))
            self._schedule_flush()      # retried until space is freed
            return
        d = self.durable
        for op in self.pending:
            if op[0] == "append":
                d["entries"].extend(op[1])
            elif op[0] == "truncate":
                base = d["purged"].index if d["purged"] is not None else 0
                del d["entries"][max(0, op[1] - base):]
            else:
                base = d["purged"].index if d["purged"] is not None else 0
                if op[1].index > base:
                    del d["entries"][:op[1].index - base]
                    d["purged"] = op[1]
        self.pending = []
        callbacks, self.waiting = self.waiting, []
        if self.space_reported:
            self.space_reported = False
            self.space_listener(None)
        for cb in callbacks:
            cb(None)

    def crash(self) -> dict:
        """Loses everything not yet flushed; returns the durable state."""
        self.crashed = True
        self.pending = []
        self.waiting = []
        return self.durable


def _carries_blank(req: Any) -> bool:
    entries = getattr(req, "entries", None)
    return bool(entries) and any(e.kind == ENTRY_BLANK for e in entries)


class SimStateMachine(MemStateMachine):
    """MemStateMachine that reports every applied entry to the checker."""

    def __init__(self, node_id: int, checker: "Checker") -> None:
        super().__init__()
        self.node_id = node_id
        self.checker = checker

    def apply(self, entries):
        for e in entries:
            self.checker.applied(self.node_id, e)
        return super().apply(entries)

    def durable_snapshot(self):
        # A simulated crash keeps the current snapshot (restarted()), as a
        # snapshot store on disk would: the log may be purged behind it.
        snap = self._snapshot
        return snap.meta if snap is not None else None

    def restarted(self) -> "SimStateMachine":
        sm = SimStateMachine(self.node_id, self.checker)
        if self._snapshot is not None:
            sm._load(self._snapshot.meta, self._snapshot.data)
        return sm


# ------------------------------------------------------------------ network

class SimNetwork(LocalRouter):
    """LocalRouter with per-message random latency (hence reordering),
    duplication, paused nodes and message filters; every delivery goes
    through a task.

    A filter is a predicate f(src, dst, handler_name, request); a request
    it returns true for is lost. Scripted faults use them to lose exactly
    the messages a schedule needs lost."""

    def __init__(self, rng: random.Random) -> None:
        super().__init__()
        self._rng = rng
        self.dup_rate = 0.0
        self.blank_loss = 0.0     # chance to lose a request carrying a new term's blank entry
        self.paused: dict[int, asyncio.Event] = {}
        self.filters: list = []

    def _deliver_nowait(self, src, dst, req):
        return None           # always the asynchronous path: latency applies

    async def _hop(self, a: int, b: int) -> None:
        await asyncio.sleep(self._rng.uniform(0.0002, 0.004))
        for n in (a, b):
            ev = self.paused.get(n)
            if ev is not None:
                await ev.wait()

    async def _deliver(self, src, dst, handler_name, req):
        await self._hop(src, dst)
        target = self._nodes.get(dst)
        if (target is None or not self._passes(src, dst)
                or (self.blank_loss and _carries_blank(req)
                    and self._rng.random() < self.blank_loss)
                or any(f(src, dst, handler_name, req) for f in self.filters)):
            self.dropped += 1
            raise NetworkError(f"message {src}->{dst} lost")
        if self.dup_rate and self._rng.random() < self.dup_rate:
            asyncio.ensure_future(self._duplicate(target, handler_name, req))
        resp = await getattr(target, handler_name)(req)
        await self._hop(dst, src)
        if not self._passes(dst, src):
            self.dropped += 1
            raise NetworkError(f"response {dst}->{src} lost")
        self.delivered += 1
        return resp

    async def _duplicate(self, target, handler_name, req):
        await asyncio.sleep(self._rng.uniform(0.0, 0.02))
        try:
            await getattr(target, handler_name)(req)
        except RaftError:
            pass


# ------------------------------------------------------------------ checker

class Checker:
    """Safety invariants, checked as the simulation runs."""

    def __init__(self, trace: list, rafts: dict) -> None:
        self.trace = trace
        self.rafts = rafts                           # node -> its current Raft
        self.committed: dict[int, tuple] = {}        # index -> (term, kind, payload)
        # index -> a term no earlier than the one its entry was committed in
        self.committed_by: dict[int, int] = {}
        self.committed_payloads: dict[str, int] = {}  # repr(payload) -> index
        self.refused: dict[str, Any] = {}            # repr(payload) -> client
        self.leaders: dict[int, int] = {}            # term -> leader id
        self.votes: dict[int, dict] = {}             # node -> {term: voted for}
        self.max_term: dict[int, int] = {}
        self.incarnation: dict[int, tuple] = {}      # node -> (committed, applied)
        self.first: Optional[str] = None             # the first violation seen
        self.on_violation = None                     # called once, at the first

    def fail(self, msg: str) -> None:
        # A violation may surface inside the runtime (which then stops the
        # node): remember the first one, it is the one to report.
        if self.first is None:
            self.first = msg
            if self.on_violation is not None:
                self.on_violation()
        raise Violation(msg)

    def applied(self, node: int, e) -> None:
        rec = (e.term, e.kind, repr(e.payload))
        prev = self.committed.setdefault(e.index, rec)
        if prev is rec:
            self.committed_by[e.index] = self._highest_term()
            self.committed_payloads[rec[2]] = e.index
            if rec[2] in self.refused:
                self._refused_but_committed(self.refused[rec[2]], rec[2], e.index)
        elif prev != rec:
            self.fail(f"state machine safety: node {node} applied {rec} at index {e.index}, "
                      f"another node applied {prev}")

    def _highest_term(self) -> int:
        # The leader that committed an entry saved its term before it was
        # elected, so some node (up, or down with its last engine kept) is
        # at that term or later now.
        return max(r._core.engine.vote.term for r in self.rafts.values())

    def write_refused(self, client: Any, cmd: Any) -> None:
        """A client was told its write `cmd` did not take effect."""
        payload = repr(cmd)
        self.refused[payload] = client
        index = self.committed_payloads.get(payload)
        if index is not None:
            self._refused_but_committed(client, payload, index)

    def _refused_but_committed(self, client: Any, payload: str, index: int) -> None:
        self.fail(f"refused write committed: client {client} was told {payload} did not "
                  f"take effect (ForwardToLeader), yet it is committed at index {index}")

    def new_incarnation(self, node: int) -> None:
        self.incarnation[node] = (0, 0)

    def storage_lost(self, node: int) -> None:
        """The node restarts on new storage: it cast no vote there yet."""
        self.votes.pop(node, None)
        self.max_term.pop(node, None)

    def observe(self, node: int, raft: Raft, disk: SimDisk) -> None:
        core = raft._core
        if core._fatal is not None:
            self.fail(f"node {node} stopped on an internal error: {core._fatal}")
        e = core.engine
        # Votes as on disk: the engine's runs ahead while a save is under
        # way, and nothing acts on it until the save returns.
        vote = disk.durable["vote"]
        term, voted = (vote.term, vote.node_id) if vote is not None else (0, None)
        if term < self.max_term.get(node, 0):
            self.fail(f"node {node}: term went back from {self.max_term[node]} to {term}")
        self.max_term[node] = term
        if voted is not None:
            seen = self.votes.setdefault(node, {}).setdefault(term, voted)
            if seen != voted:
                self.fail(f"node {node} voted for {seen} and then {voted} in term {term}")
        if e.state == LEADER:
            prev = self.leaders.setdefault(term, node)
            if prev != node:
                self.fail(f"election safety: nodes {prev} and {node} both lead term {term}")
            if prev == node and not getattr(raft, "_sim_checked_term", None) == term:
                raft._sim_checked_term = term
                self._leader_complete(node, e)
        applied = core.last_applied.index if core.last_applied else 0
        purged = core.purged.index if core.purged else 0
        snap = core.snapshot.index if core.snapshot else 0
        last = e.last_log_index
        if not (snap <= applied <= e.committed <= last):
            self.fail(f"node {node}: expected purged {purged} <= snapshot {snap} <= applied "
                      f"{applied} <= committed {e.committed} <= last log {last}")
        if purged and snap < purged:
            self.fail(f"node {node}: purged {purged} beyond its snapshot {snap}")
        c0, a0 = self.incarnation.get(node, (0, 0))
        if e.committed < c0 or applied < a0:
            self.fail(f"node {node}: commit/applied went back ({c0}, {a0}) -> "
                      f"({e.committed}, {applied}) without a restart")
        self.incarnation[node] = (e.committed, applied)

    def _leader_complete(self, node: int, e) -> None:
        committed_by = self.committed_by
        for index, (term, _, _) in self.committed.items():
            if index <= e.log.purged_index or committed_by[index] >= e.vote.term:
                continue
            if index > e.last_log_index or e.log.term_of(index) != term:
                self.fail(f"leader completeness: node {node} leads term {e.vote.term} without "
                          f"committed entry {index} (term {term})")


# --------------------------------------------------------------- simulation

class Simulation:
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
        self.history = lincheck.History()
        self.faults: collections.Counter = collections.Counter()
        self.stop = False
        self.ops = 0
        self.voter_ids = set(range(1, settings.nodes + 1))
        self.all_ids = list(range(1, settings.nodes + settings.spares + 1))
        self.started: set[int] = set()
        self.crash_next_leader: Optional[float] = None
        self.known_leader: dict[int, int] = {}      # node -> term it was seen leading
        self.held: set[int] = set()                 # crashed nodes a script keeps down
        self.wiped: Optional[int] = None            # the member that lost its disk, if any
        self.replacement: Optional[str] = None      # its replacement: "running", "done"
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
        sm = sm or SimStateMachine(i, self.checker)
        raft = await Raft.create(i, self.config(i, **config), self.net.network(i), disk, sm,
                                 executor=inline_executor,
                                 engine_type=engine_with_bugs(self.s.bugs))
        self.rafts[i], self.disks[i], self.sms[i] = raft, disk, sm
        self.net.add(i, raft)
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
        clients = [asyncio.ensure_future(self.client(c)) for c in range(self.s.clients)]
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

    async def client(self, cid: int) -> None:
        rng = random.Random(self.rng.random())
        counter = 0
        while not self.stop:
            live = self.live()
            if not live:
                await asyncio.sleep(0.05)      # every node is down
                continue
            node = self.leader_guess() or rng.choice(live)
            key = f"k{rng.randrange(self.s.keys)}"
            r = rng.random()
            counter += 1
            if r < 0.5:
                value = f"c{cid}-{counter}"
                await self.write(cid, node, "set", key, (value,), ["set", key, value])
            elif r < 0.7:
                expected = rng.choice([None, f"c{rng.randrange(self.s.clients)}-{counter - 1}"])
                cur = node.state_machine.get(key)
                if rng.random() < 0.5:
                    expected = cur
                new = f"c{cid}-{counter}"
                await self.write(cid, node, "cas", key, (expected, new),
                                 ["cas", key, expected, new])
            else:
                await self.read(cid, node, key, rng)
            await asyncio.sleep(rng.uniform(0.0, 0.01))

    async def write(self, cid, node, kind, key, args, cmd) -> None:
        loop = asyncio.get_running_loop()
        tok = self.history.invoke(cid, kind, key, args, now=loop.time())
        self.ops += 1
        try:
            resp = await asyncio.wait_for(node.client_write(cmd), self.s.op_timeout)
        except ForwardToLeader:
            self.history.fail(tok)          # never proposed, or its entry was replaced
            self.checker.write_refused(cid, cmd)
        except (asyncio.TimeoutError, OutcomeUnknown, RaftError):
            self.history.indeterminate(tok)     # may take effect, even later
        else:
            self.history.complete(tok, resp.data, now=loop.time())

    async def read(self, cid, node, key, rng) -> None:
        loop = asyncio.get_running_loop()
        tok = self.history.invoke(cid, "read", key, (), now=loop.time())
        self.ops += 1
        policy = ReadPolicy.LEASE_READ if rng.random() < 0.5 else ReadPolicy.READ_INDEX
        try:
            await asyncio.wait_for(node.ensure_linearizable(policy), self.s.op_timeout)
        except (asyncio.TimeoutError, RaftError):
            self.history.fail(tok)          # a read that did not happen changes nothing
            return
        self.history.complete(tok, node.state_machine.get(key), now=loop.time())

    # ---------------------------------------------------------- faults

    async def inject_faults(self) -> None:
        rng = random.Random(self.rng.random())
        while True:
            await asyncio.sleep(rng.expovariate(1.0 / self.s.fault_interval))
            kind = rng.choice(self.s.fault_kinds)
            try:
                did = await self.fault(kind, rng)
            except (RaftError, asyncio.TimeoutError) as exc:
                self.log(f"fault {kind} refused: {exc}")
                continue
            if did:
                self.faults[kind] += 1

    async def fault(self, kind: str, rng: random.Random) -> bool:
        net = self.net
        ids = sorted(i for i in self.started)
        live = [i for i in ids if i not in self.down]
        if kind == "isolate":
            n = rng.choice(ids)
            net.isolate(n)
            self.log(f"isolate {n}")
            self.later(rng.uniform(0.2, 2.0), lambda: (net.restore(n), self.log(f"restore {n}")))
        elif kind == "partition":
            side = set(rng.sample(ids, rng.randrange(1, len(ids))))
            for a in side:
                for b in ids:
                    if b not in side:
                        net.cut(a, b)
                        net.cut(b, a)
            self.log(f"partition {sorted(side)} | {sorted(set(ids) - side)}")
            self.later(rng.uniform(0.3, 2.0), self.heal_links)
        elif kind == "one_way":
            a, b = rng.sample(ids, 2)
            net.cut(a, b)
            self.log(f"cut {a}->{b}")
            self.later(rng.uniform(0.2, 2.0), lambda: (net.uncut(a, b), self.log(f"uncut {a}->{b}")))
        elif kind == "ring":
            order = ids[:]
            rng.shuffle(order)
            ring = {(order[k], order[(k + 1) % len(order)]) for k in range(len(order))}
            ring |= {(b, a) for a, b in ring}
            for a in ids:
                for b in ids:
                    if a != b and (a, b) not in ring:
                        net.cut(a, b)
            self.log(f"ring {order}")
            self.later(rng.uniform(0.3, 2.0), self.heal_links)
        elif kind == "drop":
            rate = rng.uniform(0.05, 0.4)
            net.set_drop_rate(rate)
            self.log(f"drop {rate:.2f}")
            self.later(rng.uniform(0.3, 2.0), lambda: (net.set_drop_rate(0.0), self.log("drop 0")))
        elif kind == "duplicate":
            net.dup_rate = rng.uniform(0.05, 0.3)
            self.log(f"duplicate {net.dup_rate:.2f}")
            self.later(rng.uniform(0.3, 2.0), lambda: setattr(net, "dup_rate", 0.0))
        elif kind == "crash":
            if not live:
                return False
            n = rng.choice(live)
            await self.crash(n)
            self.later(rng.uniform(0.1, 2.0), lambda: asyncio.ensure_future(self.restart(n)))
        elif kind == "crash_leader":
            leader = self.leader_guess()
            if leader is None:
                return False
            n = leader.id
            await self.crash(n)
            self.later(rng.uniform(0.05, 1.0), lambda: asyncio.ensure_future(self.restart(n)))
        elif kind == "lose_blanks":
            # New leaders' first entries get lost while older entries get
            # through: old-term entries reach a majority before the new
            # term's do (the situation Figure 8 of the Raft paper is about).
            net.blank_loss = rng.uniform(0.5, 1.0)
            self.log(f"lose blanks {net.blank_loss:.2f}")
            self.later(rng.uniform(0.3, 2.0), lambda: setattr(net, "blank_loss", 0.0))
        elif kind == "crash_new_leader":
            # The next node to win an election crashes within a few ms, often
            # before its first entry of the new term reaches anyone: logs
            # then diverge the way Figure 8 of the Raft paper draws them.
            self.crash_next_leader = rng.uniform(0.0, 0.003)
            self.log("crash the next new leader")
        elif kind == "power_loss":
            # Several nodes lose power at once: unflushed writes are gone on
            # all of them.
            if len(live) < 2:
                return False
            victims = rng.sample(live, rng.randrange(2, len(live) + 1))
            for n in victims:
                await self.crash(n)
            self.log(f"power loss {victims}")
            for n in victims:
                self.later(rng.uniform(0.05, 1.0),
                           lambda n=n: asyncio.ensure_future(self.restart(n)))
        elif kind == "pause":
            if not live:
                return False
            n = rng.choice(live)
            if n in net.paused:
                return False
            net.paused[n] = asyncio.Event()
            self.rafts[n].runtime_config.tick(False)
            self.log(f"pause {n}")
            self.later(rng.uniform(0.1, 1.0), lambda: self.resume(n))
        elif kind == "disk_full":
            if not live:
                return False
            n = rng.choice(live)
            disk = self.disks[n]
            disk.fill()
            self.log(f"disk full {n}")
            self.later(rng.uniform(0.2, 2.0), lambda: (disk.free(), self.log(f"disk freed {n}")))
        elif kind == "wipe":
            return await self.wipe(rng)
        elif kind == "figure8":
            await self.figure8(rng)
            return False        # counted as it started: a run may end in the middle of it
        elif kind in ("elect", "snapshot", "purge", "transfer"):
            if not live:
                return False
            n = rng.choice(live)
            r = self.rafts[n]
            if kind == "elect":
                r.trigger.elect()
            elif kind == "snapshot":
                fut = r.trigger.snapshot()
                fut.add_done_callback(lambda f: f.cancelled() or f.exception())
            elif kind == "purge":
                r.trigger.purge_log(r.metrics.last_applied_index)
            else:
                leader = self.leader_guess()
                if leader is None:
                    return False
                to = rng.choice(sorted(leader.metrics.membership.voter_ids))
                leader.trigger.transfer_leader(to)
                n = f"{leader.id}->{to}"
            self.log(f"{kind} {n}")
        else:
            return await self.membership_fault(kind, rng)
        return True

    async def membership_fault(self, kind: str, rng: random.Random) -> bool:
        leader = self.leader_guess()
        if leader is None:
            return False
        m = leader.metrics.membership
        if kind == "add_learner":
            spare = [i for i in self.all_ids if i not in m.nodes and i not in self.down]
            if not spare:
                return False
            n = rng.choice(spare)
            if n not in self.started:
                await self.start_node(n)
            self.log(f"add_learner {n}")
            self.background(leader.add_learner(n, Node(f"sim-{n}"), blocking=False))
        elif kind == "promote":
            if not m.learner_ids:
                return False
            n = rng.choice(sorted(m.learner_ids))
            self.log(f"promote {n}")
            self.background(leader.change_membership(ChangeMembers.add_voter_ids({n})))
        else:
            if len(m.voter_ids) <= 3:
                return False
            n = rng.choice(sorted(m.voter_ids))
            retain = rng.random() < 0.5
            self.log(f"remove_voter {n} (retain={retain}, leader {leader.id})")
            self.background(leader.change_membership(ChangeMembers.remove_voters({n}),
                                                     retain=retain))
        return True

    async def wipe(self, rng: random.Random) -> bool:
        """Restarts a live member on empty storage under its old id, or, if
        one was wiped before, replaces that one first."""
        leader = self.leader_guess()
        if leader is None:
            return False
        if self.wiped is not None and not self.replaced(leader, self.wiped):
            n = self.wiped
            if self.replacement is None:
                self.replacement = "running"
                self.log(f"replace wiped {n}")
                self.background(self.replace_wiped(leader, n))
            return False        # counted when it wiped
        self.wiped, self.replacement = None, None
        # Only a member whose incarnation the membership records: before
        # that, a wiped node cannot be told from a new one (the README says so).
        members = leader.metrics.membership.nodes
        live = [i for i in sorted(members) if i not in self.down and i in self.rafts
                and members[i].incarnation is not None]
        if not live:
            return False
        n = rng.choice(live)
        await self.crash(n)
        self.checker.storage_lost(n)
        self.down.discard(n)
        await self.start_node(n)
        self.wiped = n
        self.log(f"wipe {n}: restarted on empty storage")
        return True

    async def replace_wiped(self, leader: Raft, n: int) -> None:
        """What an operator does for a node that lost its disk: remove it
        from the membership, add it back and, if it voted, promote it."""
        try:
            m = leader.metrics.membership
            was_voter = n in m.voter_ids
            if was_voter:
                await leader.change_membership(ChangeMembers.remove_voters({n}))
            elif n in m.nodes:
                await leader.change_membership(ChangeMembers.remove_nodes({n}))
            await leader.add_learner(n, Node(f"sim-{n}"), blocking=False)
            if was_voter:
                await leader.change_membership(ChangeMembers.add_voter_ids({n}))
            self.replacement = "done"
            self.log(f"replaced wiped {n}")
        finally:
            if self.replacement == "running":
                self.replacement = None     # failed: the next "wipe" fault retries

    def replaced(self, leader: Raft, n: int) -> bool:
        """True once the replacement of wiped node n took effect: n runs and
        the leader's membership and n's own record n's current incarnation.
        Before that n may not vote (its log still says it is stale), so
        wiping another member could leave no quorum."""
        if n in self.down:
            return False
        incarnation = self.rafts[n]._core.engine.incarnation
        return (self.rafts[n]._core.engine.recorded_incarnation(n) == incarnation
                and leader._core.engine.recorded_incarnation(n) == incarnation)

    # ------------------------------------------------------ Figure 8

    async def figure8(self, rng: random.Random) -> None:
        """Figure 8 of the Raft paper, played by the real nodes.

        (a) Leader A of term t1 is cut off and appends entries X that no
            other node gets (the script writes one); A crashes.
        (b) E, the most up-to-date of the rest, is elected in a later term
            t2 by nodes that lack X, appends its blank entry at X's first
            index and crashes before any of its appends leaves (they are
            lost): E alone holds a conflicting entry of a newer term.
        (c) A restarts and is elected in t3 > t2 (E is down). X reaches a
            majority, but every request carrying an entry of t3 is lost (A
            now sends one entry per request, so X travels apart from them).
            X is on a majority, no entry of t3 is; A crashes.
        (d) E restarts and is elected in t4: its last entry (term t2) is
            newer than X's, so the nodes holding X vote for it. E replaces
            X everywhere with its own entries.

        All legal as long as X was never committed: a leader commits only by
        counting entries of its own term. A leader that counts older terms'
        entries (the "commit_prev_term" bug) commits and applies X in (c),
        and the checker finds E leading without it in (d).

        It starts by healing every other fault and waiting for a settled
        cluster (a leader that all voters, three or more, follow); without
        one it does nothing more. Once it starts it counts itself in
        self.faults (a run may end in the middle of it). Automatic elections
        are off while it runs and it triggers each election, so the scripted
        node wins every term. A step whose state does not come within a
        bounded virtual time ends the script (logged); everything heals
        either way."""
        self.crash_next_leader = None
        await self.heal_all()
        try:
            await self._until(lambda: self._settled_leader() is not None, 3.0,
                              "settled leader with all voters up")
        except _GaveUp as exc:
            self.log(f"figure8 not started: {exc}")
            return
        self.faults["figure8"] += 1
        tag = f"figure8-{self.faults['figure8']}"      # its client in the history
        leader = self._settled_leader()
        a = leader.id
        voters = sorted(leader._core.engine.membership.voter_ids)
        others = [v for v in voters if v != a]
        majority = len(voters) // 2 + 1
        for r in self.live():
            r.runtime_config.elect(False)
        own: list = []

        def lose(f):
            own.append(f)
            self.net.filters.append(f)
            return f

        def unlose(f):
            own.remove(f)
            self.net.filters.remove(f)

        self.log(f"figure8: leader {a} of term {leader._core.engine.vote.term}, voters {voters}")
        try:
            # (a) A alone gets new entries.
            cut_a = lose(lambda src, dst, handler, req: a in (src, dst))
            await self._until(lambda: all(self._durable_last(o) == self._last(o) for o in others),
                              1.0, "flush on the others")
            top = max(self._last(o)[1] for o in others)
            key = f"k{rng.randrange(self.s.keys)}"
            asyncio.ensure_future(self.write(tag, self.rafts[a], "set", key, (tag,),
                                             ["set", key, tag]))
            await self._until(lambda: self._durable_last(a)[1] > top, 1.0,
                              f"entries beyond {top} flushed on {a}")
            self.log(f"figure8: {a} alone holds {top + 1}..{self._durable_last(a)[1]}")
            self.held.add(a)
            await self.crash(a)

            # (b) E leads a newer term; its entries stay with it.
            best = max(self._durable_last(o) for o in others)
            e = rng.choice([o for o in others if self._durable_last(o) == best])
            cut_e = lose(lambda src, dst, handler, req: src == e and handler != "vote")
            t2 = await self._elect(e)
            k = self.rafts[e]._core.engine.term_start_index
            await self._until(lambda: self._durable_term_at(e, k) == t2, 1.0,
                              f"blank entry {k} flushed on {e}")
            self.log(f"figure8: {e} leads term {t2}; only it holds entry {k} of term {t2}")
            self.held.add(e)
            await self.crash(e)

            # (c) A leads again; its old entries reach a majority, none of its term's do.
            unlose(cut_a)
            unlose(cut_e)
            lose(lambda src, dst, handler, req: src == a and handler == "append_entries"
                 and any(x.term == req.term for x in req.entries))
            self.held.discard(a)
            await self.restart(a, max_payload_entries=1, enable_elect=False)
            t3 = await self._elect(a)
            x_last = self.rafts[a]._core.engine.term_start_index - 1
            x_term = self._durable_term_at(a, x_last)
            await self._until(lambda: sum(self._durable_term_at(v, x_last) == x_term
                                          for v in voters if v != e) >= majority,
                              2.0, f"entry {x_last} on a majority")
            await asyncio.sleep(0.1)    # acks come back; heartbeats go out
            if sum(self._durable_last(v)[0] == t3 for v in voters if v != e) >= majority:
                raise _GaveUp(f"an entry of term {t3} reached a majority")
            self.log(f"figure8: {a} leads term {t3}; entries up to {x_last} (term {x_term}) "
                     f"are on a majority, no entry of term {t3} is")
            self.held.add(a)
            await self.crash(a)

            # (d) E leads again and replaces A's old entries from k on.
            self.held.discard(e)
            await self.restart(e, enable_elect=False)
            t4 = await self._elect(e)
            self.log(f"figure8: {e} leads term {t4}, its entries replace those from {k} on")
            ee = self.rafts[e]._core.engine
            await self._until(lambda: ee.committed >= ee.term_start_index, 2.0,
                              f"commit of term {t4} on {e}")
            self.log("figure8: done")
        except _GaveUp as exc:
            self.log(f"figure8: gave up: {exc}")
        finally:
            for f in list(own):
                unlose(f)
            held, self.held = sorted(self.held), set()
            for r in self.live():
                r.runtime_config.elect(True)
            for n in held:
                await self.restart(n)

    def _settled_leader(self) -> Optional[Raft]:
        """The leader, if every voter (three at least, not joint) is up and
        follows it, and it has committed an entry of its term."""
        leader = self.leader_guess()
        if leader is None:
            return None
        e = leader._core.engine
        m = e.membership
        if m.is_joint or len(m.voter_ids) < 3 or e.committed < e.term_start_index:
            return None
        for v in m.voter_ids:
            if v in self.down or v not in self.rafts:
                return None
            ev = self.rafts[v]._core.engine
            if ev.vote.term != e.vote.term or ev.leader_id != leader.id:
                return None
        return leader

    async def _elect(self, n: int, within: float = 3.0) -> int:
        """Triggers elections on n until it leads; returns its term."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while loop.time() < deadline:
            r = self.rafts[n]
            r.trigger.elect()
            retry = loop.time() + 0.1
            while loop.time() < retry:
                if r._core.engine.state == LEADER:
                    return r._core.engine.vote.term
                await asyncio.sleep(0.001)
        raise _GaveUp(f"node {n} was not elected within {within}s")

    async def _until(self, cond, within: float, what: str) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while not cond():
            if loop.time() >= deadline:
                raise _GaveUp(f"no {what} within {within}s")
            await asyncio.sleep(0.001)

    def _last(self, n: int) -> tuple:
        e = self.rafts[n]._core.engine
        return (e.last_log_term, e.last_log_index)

    def _durable_last(self, n: int) -> tuple:
        """(term, index) of the last entry on node n's disk."""
        d = self.disks[n].durable
        if d["entries"]:
            return (d["entries"][-1].term, d["entries"][-1].index)
        return (d["purged"].term, d["purged"].index) if d["purged"] is not None else (0, 0)

    def _durable_term_at(self, n: int, index: int) -> Optional[int]:
        """Term of the entry at `index` on node n's disk (None: not there)."""
        d = self.disks[n].durable
        k = index - (d["purged"].index if d["purged"] is not None else 0) - 1
        return d["entries"][k].term if 0 <= k < len(d["entries"]) else None

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

    async def final_write_and_read(self, leader: Raft) -> bool:
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
            raise Violation(f"liveness: no leader could write and read within "
                            f"{self.s.heal_within}s of healing")
        members = sorted(leader.metrics.membership.nodes)
        target = leader.metrics.last_applied_index
        for i in members:
            try:
                await self.rafts[i].wait(self.s.heal_within).applied_index_at_least(target)
            except RaftError as exc:
                raise Violation(f"liveness: member {i} did not catch up to {target}: {exc}")
        self.log(f"liveness ok: leader {leader.id}, members {members} at {target}")


def run_seed(seed: int, settings: Optional[SimSettings] = None) -> SimResult:
    """Runs one seed; never raises for a violation (the result says)."""
    settings = settings or SimSettings()
    sim = Simulation(seed, settings)
    loop = VirtualTimeLoop()
    asyncio.set_event_loop(loop)
    result = SimResult(seed=seed, ok=True)
    try:
        try:
            loop.run_until_complete(sim.run())
        except Violation as v:
            result.ok, result.violation = False, str(v)
        if sim.checker.first is not None:
            result.ok, result.violation = False, sim.checker.first
        if result.ok:
            lin = lincheck.check(sim.history, budget=settings.lin_budget)
            if lin.ok is False:
                result.ok = False
                result.violation = f"not linearizable:\n{lin.explanation}"
            elif lin.ok is None:
                result.undecided = lin.explanation
            result.lin_unknown = len(lin.unknown)
    finally:
        tasks = [t for t in asyncio.all_tasks(loop) if not t.done()]
        for t in tasks:
            t.cancel()
        if tasks:
            loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        asyncio.set_event_loop(None)
        loop.close()
    result.trace = sim.trace
    result.faults = sim.faults
    result.ops = sim.ops
    result.virtual_seconds = getattr(sim, "virtual_seconds", 0.0)
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="raftcore sim",
                                description="Deterministic simulation with fault injection")
    p.add_argument("--seeds", type=int, default=100, help="how many seeds to run")
    p.add_argument("--seed", type=int, default=None, help="run only this seed, with its trace")
    p.add_argument("--first", type=int, default=1, help="first seed")
    p.add_argument("--nodes", type=int, default=5)
    p.add_argument("--duration", type=float, default=12.0,
                   help="virtual seconds of faults and load (a run stops at its first violation)")
    p.add_argument("--bug", action="append", default=[], choices=BUGS,
                   help="switch on a known-bad behaviour (to see it caught)")
    p.add_argument("--faults", default=None,
                   help="comma-separated fault kinds to inject (default: all): "
                        f"{', '.join(FAULT_KINDS)}; figure8 plays Figure 8 of the "
                        "Raft paper step by step (what commit_prev_term gets wrong)")
    p.add_argument("--fault-interval", type=float, default=0.4,
                   help="mean virtual seconds between faults")
    p.add_argument("--log", default="ERROR",
                   help="level of raftcore's own log records to print (default ERROR)")
    p.add_argument("--lin-budget", type=int, default=lincheck.DEFAULT_BUDGET, metavar="STEPS",
                   help="search budget of the linearizability check, in search steps per "
                        f"key (default {lincheck.DEFAULT_BUDGET:,}); a key it cannot decide "
                        "within it makes its seed undecided")
    p.add_argument("--allow-undecided", action="store_true",
                   help="exit 0 even if the linearizability of some seed stays undecided "
                        "(they are still reported)")
    args = p.parse_args(argv)
    import logging
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("raftcore").setLevel(args.log.upper())
    if args.nodes < 1:
        p.error("--nodes must be at least 1")
    if args.lin_budget < 1:
        p.error("--lin-budget must be a positive number of search steps")
    kinds = FAULT_KINDS
    if args.faults:
        kinds = tuple(k.strip() for k in args.faults.split(",") if k.strip())
        unknown = sorted(set(kinds) - set(FAULT_KINDS))
        if unknown:
            p.error(f"unknown fault kinds {unknown}; choose from {', '.join(FAULT_KINDS)}")
    settings = SimSettings(nodes=args.nodes, duration=args.duration, bugs=tuple(args.bug),
                           fault_kinds=kinds, fault_interval=args.fault_interval,
                           spares=2 if args.nodes > 1 else 0, lin_budget=args.lin_budget)
    seeds = [args.seed] if args.seed is not None else range(args.first, args.first + args.seeds)
    faults: collections.Counter = collections.Counter()
    ops = failed = undecided = undecided_keys = 0
    t0 = time.perf_counter()
    for seed in seeds:
        r = run_seed(seed, settings)
        faults.update(r.faults)
        ops += r.ops
        if not r.ok:
            failed += 1
            print(f"seed {seed}: VIOLATION: {r.violation}")
            print(f"  reproduce: {_reproduce_command(seed, args, kinds)}")
            print("  last events:")
            for line in r.trace[-40:]:
                print("   ", line)
        elif r.lin_unknown:
            undecided += 1
            undecided_keys += r.lin_unknown
            print(f"seed {seed}: UNDECIDED: {r.undecided}")
            print(f"  reproduce: {_reproduce_command(seed, args, kinds)} "
                  f"(or try a larger --lin-budget)")
        elif args.seed is not None:
            for line in r.trace:
                print("   ", line)
    dt = time.perf_counter() - t0
    print(f"seeds run: {len(seeds)}, violations: {failed}, undecided: {undecided} seeds "
          f"({undecided_keys} keys), operations checked: {ops}, {dt:.1f}s")
    print("faults injected: " + ", ".join(f"{k} {faults[k]}" for k in FAULT_KINDS))
    return 1 if failed or (undecided and not args.allow_undecided) else 0


def _reproduce_command(seed: int, args: argparse.Namespace, kinds: tuple) -> str:
    """The command that replays `seed` with the settings of this run."""
    cmd = (f"raftcore sim --seed {seed} --nodes {args.nodes} --duration {args.duration}"
           + "".join(f" --bug {b}" for b in args.bug))
    if args.faults:
        cmd += f" --faults {','.join(kinds)}"
    cmd += f" --fault-interval {args.fault_interval}"
    if args.lin_budget != lincheck.DEFAULT_BUDGET:
        cmd += f" --lin-budget {args.lin_budget}"
    return cmd


if __name__ == "__main__":
    sys.exit(main())
