"""Snapshots and log compaction: building by policy and trigger, purging,
streaming to lagging followers and learners, installing over a conflicting
log, restarting from a snapshot plus the log tail."""
from __future__ import annotations

import asyncio
import functools
import random

import uvloop

from raftcore import Config, Node, Raft, ServerState
from raftcore.config import SnapshotPolicy
from raftcore.engine import Engine
from raftcore.membership import Membership
from raftcore.messages import InstallSnapshotRequest, InstallSnapshotResponse, SnapshotMeta
from raftcore.network import LocalRouter
from raftcore.storage import MemLogStore, MemStateMachine
from raftcore.types import ENTRY_NORMAL, Entry, LogId, Vote

GUARD = 5.0


def config(seed: int, **kw) -> Config:
    kw.setdefault("snapshot_policy", SnapshotPolicy.logs_since_last(200))
    kw.setdefault("max_in_snapshot_log_to_keep", 10)
    kw.setdefault("snapshot_max_chunk_size", 512)
    return Config(heartbeat_interval=0.02, election_timeout_min=0.15, election_timeout_max=0.3,
                  seed=seed, **kw)


def run(fn):
    @functools.wraps(fn)
    def wrapper():
        uvloop.run(asyncio.wait_for(fn(), 45))
    return wrapper


class Nodes:
    def __init__(self, **cfg):
        self.router = LocalRouter()
        self.rafts: dict[int, Raft] = {}
        self.stores: dict[int, tuple] = {}
        self.cfg = cfg

    async def start(self, i, log_store=None, sm=None):
        log_store = log_store or MemLogStore()
        sm = sm or MemStateMachine()
        r = await Raft.create(i, config(i, **self.cfg), self.router.network(i), log_store, sm)
        self.router.add(i, r)
        self.rafts[i] = r
        self.stores[i] = (log_store, sm)
        return r

    async def cluster(self, ids=(1, 2, 3)):
        for i in ids:
            await self.start(i)
        await self.rafts[ids[0]].initialize({i: Node(f"n{i}") for i in ids})
        await self.rafts[ids[0]].wait(GUARD).state(ServerState.LEADER)
        return self.rafts[ids[0]]

    async def close(self):
        for r in self.rafts.values():
            await r.shutdown()


async def write_many(leader, n, prefix="k"):
    resp = None
    for i in range(0, n, 50):
        resp = await leader.client_write_many(
            [["set", f"{prefix}{j % 37}", j] for j in range(i, min(n, i + 50))])
    return resp[-1].index


@run
async def test_policy_builds_snapshots_and_purges_keeping_max_in_snapshot_log_to_keep():
    nodes = Nodes()
    try:
        leader = await nodes.cluster()
        last = await write_many(leader, 700)
        m = await leader.wait(GUARD).metrics(
            lambda m: m.snapshot is not None and m.snapshot.index >= 600, "a snapshot at 600+")
        assert m.purged is not None
        # Never purge past the snapshot; keep max_in_snapshot_log_to_keep below it.
        assert m.purged.index <= m.snapshot.index - 10
        assert m.purged.index >= 200
        assert leader.log_store.entries(m.purged.index + 1, last)[0].index == m.purged.index + 1
    finally:
        await nodes.close()


@run
async def test_never_policy_builds_no_snapshot_and_trigger_builds_one():
    nodes = Nodes(snapshot_policy=SnapshotPolicy.never())
    try:
        leader = await nodes.cluster()
        last = await write_many(leader, 500)
        assert leader.metrics.snapshot is None and leader.metrics.purged is None
        # purge_log without a snapshot purges nothing: no entry leaves the
        # log before a snapshot holds it.
        leader.trigger.purge_log(last)
        assert leader.metrics.purged is None
        snap = await leader.trigger.snapshot()
        assert snap.meta.last_log_index == leader.metrics.last_applied_index
        m = await leader.wait(GUARD).snapshot(LogId(snap.meta.last_log_term, snap.meta.last_log_index))
        assert m.purged.index == snap.meta.last_log_index - 10
        leader.trigger.purge_log(10**9)
        assert leader.metrics.purged.index == snap.meta.last_log_index
    finally:
        await nodes.close()


@run
async def test_isolated_follower_catches_up_by_snapshot_then_from_the_log():
    nodes = Nodes()
    try:
        leader = await nodes.cluster()
        nodes.router.isolate(3)
        await write_many(leader, 800)
        await leader.wait(GUARD).metrics(lambda m: m.purged is not None and m.purged.index > 100,
                                         "the leader purged what node 3 lacks")
        nodes.router.restore(3)
        m3 = await nodes.rafts[3].wait(GUARD).applied_index_at_least(leader.metrics.last_applied_index)
        assert m3.snapshot is not None, "node 3 should have caught up through a snapshot"
        assert nodes.rafts[3].state_machine.data == leader.state_machine.data
        # Then replication continues from the log.
        last = await write_many(leader, 30, prefix="after")
        await nodes.rafts[3].wait(GUARD).applied_index_at_least(last)
        assert nodes.rafts[3].state_machine.data == leader.state_machine.data
    finally:
        await nodes.close()


@run
async def test_learner_added_after_compaction_gets_the_snapshot_and_its_membership():
    nodes = Nodes()
    try:
        leader = await nodes.cluster()
        await write_many(leader, 600)
        await leader.wait(GUARD).metrics(lambda m: m.purged is not None, "purged")
        await nodes.start(4)
        await leader.add_learner(4, Node("n4"))
        m4 = await nodes.rafts[4].wait(GUARD).applied_index_at_least(
            leader.metrics.last_applied_index)
        assert m4.snapshot is not None
        assert nodes.rafts[4].state_machine.data == leader.state_machine.data
        assert m4.membership == leader.metrics.membership
        assert m4.state == ServerState.LEARNER
    finally:
        await nodes.close()


@run
async def test_restart_from_snapshot_and_log_tail_recovers_state_and_membership():
    nodes = Nodes()
    try:
        leader = await nodes.cluster()
        await write_many(leader, 450)
        await nodes.rafts[2].wait(GUARD).metrics(lambda m: m.snapshot is not None, "snapshot on 2")
        last = await write_many(leader, 25, prefix="tail")
        await nodes.rafts[2].wait(GUARD).applied_index_at_least(last)
        await nodes.rafts[2].shutdown()
        log_store, sm = nodes.stores[2]
        restarted = await nodes.start(2, log_store, sm.restarted())
        rm = restarted.metrics
        assert rm.snapshot is not None and rm.purged is not None
        assert rm.membership == leader.metrics.membership
        # The tail above the snapshot is re-applied from the log.
        await restarted.wait(GUARD).applied_index_at_least(last)
        assert restarted.state_machine.data == leader.state_machine.data
    finally:
        await nodes.close()


def _engine(node_id):
    return Engine(node_id, heartbeat_interval=0.05, election_timeout_min=0.15,
                  election_timeout_max=0.3, max_payload_entries=100, max_payload_bytes=1 << 20,
                  max_inflight=8, rng=random.Random(node_id).random)


M3 = Membership([{1, 2, 3}], {i: Node(f"n{i}") for i in (1, 2, 3)})


def test_installing_a_snapshot_over_a_conflicting_log_deletes_the_whole_log():
    e = _engine(2)
    e.restore(Vote(2, 1, True), None, [Entry(0, 1, 2, M3), Entry(1, 2, ENTRY_NORMAL, "a"),
                                       Entry(2, 3, ENTRY_NORMAL, "stale")], committed=2)
    e.take_commands()
    meta = SnapshotMeta(3, 5, M3, "s")
    resp = e.handle_install_snapshot(InstallSnapshotRequest(3, 1, meta, 0, b"d", True), 1.0)
    assert resp == InstallSnapshotResponse(3)
    cmds = e.take_commands()
    kinds = [c[0] for c in cmds]
    assert kinds == ["save_vote", "install_snapshot", "purge"]
    # The whole log (from index 1) goes, right before the install.
    assert cmds[1] == ("install_snapshot", meta, 1) and cmds[2] == ("purge", LogId(3, 5))
    assert e.last_log_index == 5 and e.committed == 5 and e.applying == 5
    assert e.purged_log_id == LogId(3, 5) and e.snapshot_log_id == LogId(3, 5)


def test_installing_a_snapshot_keeps_the_log_after_a_matching_last_entry():
    e = _engine(2)
    entries = [Entry(0, 1, 2, M3)] + [Entry(1, i, ENTRY_NORMAL, i) for i in range(2, 9)]
    e.restore(Vote(1, 1, True), None, entries, committed=2)
    e.take_commands()
    meta = SnapshotMeta(1, 5, M3, "s")
    e.handle_install_snapshot(InstallSnapshotRequest(1, 1, meta, 0, b"d", True), 1.0)
    cmds = e.take_commands()
    assert [c[0] for c in cmds] == ["install_snapshot", "purge"]
    # Entries 6..8 follow an entry matching the snapshot's last: they stay.
    assert e.last_log_index == 8 and e.purged_log_id == LogId(1, 5)
    assert e.entries(6, 8) == entries[5:8]
    assert e.membership == M3


def test_a_snapshot_older_than_the_commit_point_is_ignored():
    e = _engine(2)
    entries = [Entry(0, 1, 2, M3)] + [Entry(1, i, ENTRY_NORMAL, i) for i in range(2, 9)]
    e.restore(Vote(1, 1, True), None, entries, committed=8)
    e.take_commands()
    meta = SnapshotMeta(1, 5, M3, "s")
    e.handle_install_snapshot(InstallSnapshotRequest(1, 1, meta, 0, b"d", True), 1.0)
    assert [c[0] for c in e.take_commands()] == []
    assert e.purged_log_id is None and e.last_log_index == 8


def test_chunks_before_the_last_one_only_reset_the_election_timer():
    e = _engine(2)
    e.restore(Vote(1, 1, True), None, [Entry(0, 1, 2, M3)], committed=1)
    e.take_commands()
    meta = SnapshotMeta(1, 50, M3, "s")
    e.handle_install_snapshot(InstallSnapshotRequest(1, 1, meta, 0, b"d", False), 10.0)
    assert e.take_commands() == []
    assert e.election_deadline >= 10.15
    assert e.last_log_index == 1
