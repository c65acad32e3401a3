"""Snapshots and log compaction: building by policy and trigger, purging,
streaming to lagging followers and learners, installing over a conflicting
log, restarting from a snapshot plus the log tail."""
from __future__ import annotations

import asyncio
import logging
import random

import pytest

from async_runner import async_test
from raftcore import Config, Node, Raft, ServerState
from raftcore.commands import InstallSnapshot, Purge, SaveVote, SendSnapshot
from raftcore.config import SnapshotPolicy
from raftcore.engine import Engine
from raftcore.errors import NotAllowed, Timeout
from raftcore.membership import Membership
from raftcore.messages import AppendEntriesResponse as AEResp
from raftcore.messages import InstallSnapshotRequest, InstallSnapshotResponse, SnapshotMeta
from raftcore.network import LocalRouter
from raftcore.network.base import Network, NetworkClient
from raftcore.storage import MemLogStore, MemStateMachine
from raftcore.types import ENTRY_NORMAL, Entry, LogId, Vote

import engine_harness as h     # tests/engine_harness.py, on the path through conftest.py
from log_watch import LogWatch  # tests/log_watch.py, on the path through conftest.py

GUARD = 5.0


def config(seed: int, **kw) -> Config:
    kw.setdefault("snapshot_policy", SnapshotPolicy.logs_since_last(200))
    kw.setdefault("max_in_snapshot_log_to_keep", 10)
    kw.setdefault("snapshot_max_chunk_size", 512)
    return Config(heartbeat_interval=0.02, election_timeout_min=0.15, election_timeout_max=0.3,
                  seed=seed, **kw)


def run(fn):
    return async_test(45)(fn)


class Nodes:
    def __init__(self, **cfg):
        self.router = LocalRouter()
        self.rafts: dict[int, Raft] = {}
        self.stores: dict[int, tuple] = {}
        self.cfg = cfg

    async def start(self, i, log_store=None, sm=None, network=None):
        log_store = log_store or MemLogStore()
        sm = sm or MemStateMachine()
        r = await Raft.create(i, config(i, **self.cfg), network or self.router.network(i),
                              log_store, sm)
        self.router.add(i, r)
        self.rafts[i] = r
        self.stores[i] = (log_store, sm)
        return r

    async def cluster(self, ids=(1, 2, 3)):
        for i in ids:
            if i not in self.rafts:
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
async def test_a_snapshot_asked_of_a_node_that_applied_nothing_is_refused_without_an_error_log():
    nodes = Nodes(snapshot_policy=SnapshotPolicy.never())
    try:
        fresh = await nodes.start(1)
        with LogWatch("raftcore", logging.INFO) as watch:
            with pytest.raises(NotAllowed, match="nothing is applied yet"):
                await fresh.trigger.snapshot()
        assert not [r for r in watch.records if r.levelno >= logging.WARNING], watch.messages()
        assert any("no snapshot built" in m for m in watch.messages()), watch.messages()
        assert fresh.metrics.snapshot is None
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
    assert [type(c) for c in cmds] == [SaveVote, InstallSnapshot, Purge]
    # The whole log (from index 1) goes, right before the install.
    assert cmds[1] == InstallSnapshot(meta, 1) and cmds[2] == Purge(LogId(3, 5))
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
    assert [type(c) for c in cmds] == [InstallSnapshot, Purge]
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
    assert e.take_commands() == []
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


# ------------------------------------------- one snapshot stream per follower

def _leader_streaming_to_3():
    """Leader 1 of {1, 2, 3} whose log is purged up to 20, and node 3, whose
    log is empty: 3's answer to the first probe makes the leader stream the
    snapshot to it. Returns (leader, follower 3, the probe)."""
    membership = h.members({1, 2, 3})
    leader = h.restored(1, membership, terms=[1] * 20, committed=20)
    f3 = h.make_engine(3)
    _, cmds = h.elect(leader, [2])
    probe = h.only(h.sends(cmds)[3])
    leader.snapshot_built(SnapshotMeta(1, 20, membership, "s20"))
    assert leader.purged_log_id == LogId(1, 20)
    leader.take_commands()
    _, _, cmds = h.deliver_append(leader, f3, probe)
    assert [c for c in cmds if isinstance(c, SendSnapshot)] == [SendSnapshot(3)]
    return leader, f3, probe


def _heartbeat_to_3(leader, f3, now, answered=True):
    """One heartbeat round; node 3 answers it if `answered`. Returns the
    leader's commands."""
    leader.trigger_heartbeat(now)
    cmds = leader.take_commands()
    req = h.only(h.sends(cmds)[3])
    if answered:
        cmds += h.deliver_append(leader, f3, req, now)[2]
    else:
        leader.handle_append_failure(3, req, now)
        cmds += leader.take_commands()
    return cmds


def _snapshot_sends(cmds):
    return [c for c in cmds if isinstance(c, SendSnapshot)]


@h.isolated
def test_heartbeats_refused_while_a_snapshot_is_in_flight_start_no_second_stream():
    leader, f3, probe = _leader_streaming_to_3()
    # A request sent before the snapshot started gets lost: still one stream.
    leader.handle_append_failure(3, probe, 0.1)
    for i in range(5):
        # Node 3 refuses each heartbeat (it lacks the purged entries).
        cmds = _heartbeat_to_3(leader, f3, 0.2 + i)
        assert _snapshot_sends(cmds) == [], cmds
    assert leader.progress_of(3).state == 2     # SNAPSHOT, until the stream reports


@h.isolated
def test_a_heartbeat_accepted_while_a_snapshot_is_in_flight_records_the_match_only():
    leader, _, _ = _leader_streaming_to_3()
    leader.trigger_heartbeat(1.0)
    req = h.only(h.sends(leader.take_commands())[3])
    assert req.prev_log_index == 20 and req.entries == []
    leader.handle_append_response(3, req, AEResp(req.term, True, 20), 1.0)
    # Nothing else goes to node 3 until the stream reports.
    assert h.sends(leader.take_commands()).get(3) is None
    p = leader.progress_of(3)
    assert p.matched == 20 and p.state == 2


@h.isolated
def test_a_failed_snapshot_stream_is_followed_by_one_new_stream_once_the_follower_answers():
    leader, f3, _ = _leader_streaming_to_3()
    leader.handle_snapshot_failure(3, 1.0)
    assert _snapshot_sends(leader.take_commands()) == []
    # Unreachable follower: heartbeats, and no stream to a node that is down.
    for i in range(3):
        assert _snapshot_sends(_heartbeat_to_3(leader, f3, 2.0 + i, answered=False)) == []
    # It answers (refusing the heartbeat): exactly one new stream.
    assert _snapshot_sends(_heartbeat_to_3(leader, f3, 6.0)) == [SendSnapshot(3)]
    assert _snapshot_sends(_heartbeat_to_3(leader, f3, 7.0)) == []
    # The stream succeeds: replication goes on from the log after the snapshot.
    term = leader.vote.term
    meta = SnapshotMeta(1, 20, h.members({1, 2, 3}), "s20")
    f3.handle_install_snapshot(InstallSnapshotRequest(term, 1, meta, 0, b"", True), 8.0)
    f3.take_commands()
    leader.handle_snapshot_response(3, InstallSnapshotRequest(term, 1, meta, 0, b"", True),
                                    InstallSnapshotResponse(term), 8.0)
    sent = h.only(h.sends(leader.take_commands())[3])
    assert sent.prev_log_index == 20 and [e.index for e in sent.entries] == [21]
    assert leader.progress_of(3).matched == 20


class StallingNetwork(Network):
    """Node 1's network: the LocalRouter's, except that while `stalling`
    each snapshot chunk to node 3 waits at a gate (its future is put in
    `held`) until the test fails it, as a transport fails a chunk stuck on a
    stalled connection. Counts streams (a chunk at offset 0 starts one; a
    failed chunk or an answered last one ends it) and node 3's answers to
    AppendEntries."""

    def __init__(self, router: LocalRouter) -> None:
        self.inner = router.network(1)
        self.stalling = False
        self.held: asyncio.Queue = asyncio.Queue()
        self.streams_started = 0
        self.streams_open = 0
        self.most_open = 0
        self.answers_from_3 = 0
        self._answer_waiters: list = []
        #: The next chunk is not delivered but answered with a higher term.
        self.answer_higher_term = False

    def client(self, target, node):
        c = self.inner.client(target, node)
        return StallingClient(self, c) if target == 3 else c

    async def answers(self, n: int) -> None:
        """Waits until node 3 has answered n more AppendEntries."""
        fut = asyncio.get_running_loop().create_future()
        self._answer_waiters.append((self.answers_from_3 + n, fut))
        await asyncio.wait_for(fut, GUARD)

    def answered(self) -> None:
        self.answers_from_3 += 1
        for w in [w for w in self._answer_waiters if w[0] <= self.answers_from_3]:
            self._answer_waiters.remove(w)
            w[1].set_result(None)

    async def chunk(self, inner, req):
        if req.offset == 0:
            self.streams_started += 1
            self.streams_open += 1
            self.most_open = max(self.most_open, self.streams_open)
        try:
            if self.stalling:
                gate = asyncio.get_running_loop().create_future()
                self.held.put_nowait(gate)
                await gate
            if self.answer_higher_term:
                self.answer_higher_term = False
                self.streams_open -= 1
                return InstallSnapshotResponse(req.term + 1)
            resp = await inner.install_snapshot(req)
        except BaseException:
            self.streams_open -= 1
            raise
        if req.done:
            self.streams_open -= 1
        return resp


class StallingClient(NetworkClient):
    def __init__(self, net: StallingNetwork, inner) -> None:
        self.net = net
        self.inner = inner

    def append_entries_nowait(self, req, reply):
        def answered(resp, exc):
            if exc is None:
                self.net.answered()
            reply(resp, exc)
        return self.inner.append_entries_nowait(req, answered)

    async def append_entries(self, req):
        resp = await self.inner.append_entries(req)
        self.net.answered()
        return resp

    async def vote(self, req):
        return await self.inner.vote(req)

    async def transfer_leader(self, req):
        return await self.inner.transfer_leader(req)

    async def install_snapshot(self, req):
        return await self.net.chunk(self.inner, req)


async def purged_past_node_3(nodes: Nodes, net) -> Raft:
    """Starts the cluster with node 1 sending through `net`, cuts node 3 off
    and writes until the leader purged entries node 3 lacks (so its next
    contact with node 3 needs a snapshot); returns the leader."""
    await nodes.start(1, network=net)
    leader = await nodes.cluster()
    nodes.router.isolate(3)
    await write_many(leader, 800)
    await leader.wait(GUARD).metrics(
        lambda m: m.purged is not None and m.purged.index > 100,
        "the leader purged what node 3 lacks")
    return leader


@run
async def test_a_stalled_snapshot_stream_is_the_only_one_until_cancelled_then_one_more():
    # (Pre-vote: node 3, cut off, then leaves the term and the leader alone.)
    nodes = Nodes(enable_pre_vote=True)
    net = StallingNetwork(nodes.router)
    try:
        with LogWatch("raftcore.node", logging.INFO) as logs:
            leader = await purged_past_node_3(nodes, net)
            net.stalling = True
            nodes.router.restore(3)
            stalled = await asyncio.wait_for(net.held.get(), GUARD)
            # Node 3 refuses heartbeat after heartbeat (it lacks the purged
            # entries) while the stream sits stalled: no second stream.
            await net.answers(10)
            assert net.streams_started == 1
            assert not [r for r in logs.records if "sent snapshot" in r.getMessage()]
            # The transport gives up on the stalled chunk: the stream ends
            # as failed, and the next one (not stalled) brings node 3 up.
            net.stalling = False
            stalled.set_exception(Timeout("no reply within rpc_timeout (stalled)"))
            await logs.wait("the snapshot stream to 3 failed")
            await nodes.rafts[3].wait(GUARD).applied_index_at_least(
                leader.metrics.last_applied_index)
            await logs.wait("sent snapshot")
        assert net.streams_started == 2 and net.most_open == 1
        messages = logs.messages()
        assert len([m for m in messages if "sending snapshot" in m]) == 2
        sent = [i for i, m in enumerate(messages) if "sent snapshot" in m]
        installed = [i for i, m in enumerate(messages) if "node 3 installed snapshot" in m]
        # Logged once, for the snapshot node 3 took, after it took it.
        assert len(sent) == 1 and len(installed) == 1 and installed[0] < sent[0], messages
        assert nodes.rafts[3].state_machine.data == leader.state_machine.data
    finally:
        await nodes.close()


@run
async def test_a_snapshot_answered_with_a_higher_term_is_not_logged_as_sent():
    nodes = Nodes(enable_pre_vote=True)
    net = StallingNetwork(nodes.router)
    try:
        with LogWatch("raftcore.node", logging.INFO) as logs:
            await purged_past_node_3(nodes, net)
            net.answer_higher_term = True
            nodes.router.restore(3)
            await logs.wait("node 1 stepped down")
        messages = logs.messages()
        stepped_down = next(i for i, m in enumerate(messages) if "node 1 stepped down" in m)
        assert any("node 1 sending snapshot" in m for m in messages[:stepped_down]), messages
        assert not any("sent snapshot" in m for m in messages[:stepped_down]), messages
    finally:
        await nodes.close()
