"""Cluster and storage identity through the library API (Raft, LocalRouter,
MemLogStore, FileLogStore): the cluster id made at initialize, adopted on
first contact and checked on every request; storage incarnations recorded in
the membership, and a node restarted on empty storage under its old id.

Tests synchronize only through raft.wait(...) conditions; their timeouts are
failure guards.
"""
from __future__ import annotations

import asyncio
import functools
import logging

import pytest

from raftcore import ChangeMembers, Node, Raft, ServerState
from raftcore.errors import ClusterMismatch, NetworkError
from raftcore.messages import AppendEntriesRequest, VoteRequest
from raftcore.network import LocalRouter
from raftcore.storage import FileLogStore, MemLogStore, MemStateMachine

import cluster_harness
from cluster_harness import make_config, stable_leader

GUARD = 10.0
TEST_GUARD = 60.0


#: The harness's runner with a longer whole-test guard: these tests restart
#: nodes on files and wait for several membership changes.
cluster_test = functools.partial(cluster_harness.cluster_test, guard=TEST_GUARD)


class Warnings:
    """Collects WARNING records of raftcore's loggers."""

    def __init__(self) -> None:
        self.records: list[logging.LogRecord] = []
        self.handler = logging.Handler(logging.WARNING)
        self.handler.emit = self.records.append

    def __enter__(self) -> "Warnings":
        logger = logging.getLogger("raftcore")
        self._level = logger.level
        logger.setLevel(logging.INFO)
        logger.addHandler(self.handler)
        return self

    def __exit__(self, *exc) -> None:
        logger = logging.getLogger("raftcore")
        logger.removeHandler(self.handler)
        logger.setLevel(self._level)

    def matching(self, text: str) -> list[str]:
        return [r.getMessage() for r in self.records if text in r.getMessage()]


class Nodes:
    def __init__(self, router: LocalRouter) -> None:
        self.router = router
        self.rafts: dict[int, Raft] = {}

    async def start(self, node_id: int, store=None, **kw) -> Raft:
        raft = await Raft.create(node_id, make_config(node_id), self.router.network(node_id),
                                 store if store is not None else MemLogStore(),
                                 MemStateMachine(), **kw)
        self.router.add(node_id, raft)
        self.rafts[node_id] = raft
        return raft

    async def stop(self, node_id: int) -> None:
        self.router.remove(node_id)
        raft = self.rafts.pop(node_id)
        await raft.shutdown()
        await raft.log_store.close()

    async def close(self) -> None:
        for node_id in list(self.rafts):
            await self.stop(node_id)


def members(*ids: int) -> dict:
    return {i: Node(f"n{i}") for i in ids}


def all_recorded(ids):
    """A wait predicate: the membership records an incarnation for every one of ids."""
    def pred(m) -> bool:
        return m.membership is not None and all(
            m.membership.nodes[i].incarnation is not None for i in ids)
    return pred


async def three_nodes(nodes: Nodes) -> Raft:
    for i in (1, 2, 3):
        await nodes.start(i)
    await nodes.rafts[1].initialize(members(1, 2, 3))
    leader = await stable_leader(list(nodes.rafts.values()))
    for r in nodes.rafts.values():
        await r.wait(GUARD).metrics(all_recorded((1, 2, 3)), "every incarnation recorded")
    return leader


@cluster_test
async def test_initializing_node_makes_the_cluster_id_and_the_others_adopt_it_on_first_contact():
    nodes = Nodes(LocalRouter(seed=1))
    try:
        for i in (1, 2, 3):
            assert (await nodes.start(i)).metrics.cluster_id is None
        await nodes.rafts[1].initialize(members(1, 2, 3))
        cid = nodes.rafts[1].metrics.cluster_id
        assert cid is not None
        for r in nodes.rafts.values():
            await r.wait(GUARD).metrics(lambda m: m.cluster_id == cid, "the cluster id adopted")
            assert (await r.log_store.read_identity()).cluster_id == cid   # durably
        # Each member's storage incarnation ends up in the membership.
        for r in nodes.rafts.values():
            m = await r.wait(GUARD).metrics(all_recorded((1, 2, 3)), "incarnations recorded")
            for i in (1, 2, 3):
                assert m.membership.nodes[i].incarnation == \
                    nodes.rafts[i].metrics.incarnation
    finally:
        await nodes.close()


@cluster_test
async def test_node_refuses_requests_of_another_cluster_and_answers_nothing_else():
    nodes = Nodes(LocalRouter(seed=2))
    try:
        leader = await three_nodes(nodes)
        follower = nodes.rafts[2 if leader.id != 2 else 3]
        before = follower.metrics
        with Warnings() as w:
            with pytest.raises(ClusterMismatch, match="another|refuses"):
                await follower.append_entries(AppendEntriesRequest(
                    before.current_term + 5, 9, 0, 0, [], 0, 0, "other-cluster"))
            with pytest.raises(ClusterMismatch):
                await follower.vote(VoteRequest(before.current_term + 5, 9, 99, 99, False,
                                                False, "other-cluster"))
            assert w.matching("of cluster other-cluster")
        after = follower.metrics
        assert after.current_term == before.current_term and after.vote == before.vote
    finally:
        await nodes.close()


@cluster_test
async def test_nodes_of_two_clusters_refuse_each_other():
    # Node 4 is initialized as a cluster of its own with node 2: its vote
    # requests reach node 2, which belongs to the cluster of 1, 2, 3.
    nodes = Nodes(LocalRouter(seed=3))
    try:
        leader = await three_nodes(nodes)
        term = nodes.rafts[2].metrics.current_term
        with Warnings() as w:
            intruder = await nodes.start(4)
            await intruder.initialize(members(2, 4))
            cid = intruder.metrics.cluster_id
            await intruder.wait(GUARD).metrics(lambda m: m.current_term >= 3,
                                               "node 4 campaigning")
            assert w.matching(f"refuses a request from node 4 of cluster {cid}")
        assert intruder.metrics.state != ServerState.LEADER
        assert nodes.rafts[2].metrics.current_term == term
        resp = await leader.client_write(["set", "k", "v"])
        assert resp.index > 0
    finally:
        await nodes.close()


@cluster_test
async def test_node_refuses_to_start_on_storage_of_another_cluster():
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        nodes = Nodes(LocalRouter(seed=4))
        try:
            r = await nodes.start(1, FileLogStore(d))
            await r.initialize(members(1))
            cid = r.metrics.cluster_id
            await nodes.stop(1)
            store = FileLogStore(d)
            with pytest.raises(ClusterMismatch, match=f"belongs to cluster {cid}"):
                await nodes.start(1, store, cluster_id="another")
            await store.close()
            r = await nodes.start(1, FileLogStore(d), cluster_id=cid)
            assert r.metrics.cluster_id == cid
            await r.wait(GUARD).state(ServerState.LEADER)
        finally:
            await nodes.close()


@cluster_test
async def test_node_restarted_on_empty_storage_does_not_count_until_removed_and_added_back():
    nodes = Nodes(LocalRouter(seed=5))
    try:
        leader = await three_nodes(nodes)
        w_id, o_id = [i for i in (1, 2, 3) if i != leader.id]     # wiped, other follower
        before = await leader.client_write(["set", "a", 1])
        await nodes.rafts[w_id].wait(GUARD).applied_index_at_least(before.index)
        old = nodes.rafts[w_id].metrics.incarnation

        with Warnings() as w:
            await nodes.stop(w_id)
            wiped = await nodes.start(w_id)          # empty storage, same id
            assert wiped.metrics.incarnation != old
            m = await wiped.wait(GUARD).metrics(lambda m: m.identity_stale,
                                                "the wiped node to see it was replaced")
            assert m.membership.nodes[w_id].incarnation == old
            await leader.wait(GUARD).metrics(lambda m: m.stale_members == {w_id},
                                             "the leader to report the wiped node")
            assert w.matching(f"node {w_id} answers from other storage")
            assert w.matching(f"node {w_id} runs on storage incarnation")

        # Its acknowledgements do not count: with the other follower cut
        # off, a write reaches the wiped node but does not commit.
        nodes.router.isolate(o_id)
        last = leader.metrics.last_log_index
        write = asyncio.ensure_future(leader.client_write(["set", "b", 2]))
        await leader.wait(GUARD).log_index_at_least(last + 1)
        # The leader has processed the wiped node's acknowledgement of it.
        await leader.wait(GUARD).metrics(
            lambda m: (m.replication or {}).get(w_id, 0) > last, "the wiped node's ack")
        assert not write.done()
        assert leader.metrics.committed <= last
        assert wiped.metrics.state != ServerState.LEADER
        nodes.router.restore(o_id)
        await asyncio.wait_for(write, GUARD)

        # Removed and added back, it counts again.
        await leader.change_membership(ChangeMembers.remove_voters({w_id}))
        await leader.add_learner(w_id, Node(f"n{w_id}"), timeout=GUARD)
        await leader.change_membership(ChangeMembers.add_voter_ids({w_id}))
        await leader.wait(GUARD).metrics(all_recorded((1, 2, 3)), "the node recorded again")
        m = await wiped.wait(GUARD).metrics(lambda m: not m.identity_stale, "the node accepted")
        assert m.membership.nodes[w_id].incarnation == wiped.metrics.incarnation
        assert leader.metrics.stale_members == frozenset()
        nodes.router.isolate(o_id)
        resp = await asyncio.wait_for(leader.client_write(["set", "c", 3]), GUARD)
        assert resp.index > 0
    finally:
        await nodes.close()


@cluster_test
async def test_tcp_hello_turns_away_a_peer_of_another_cluster_before_any_request():
    from log_watch import LogWatch
    from raftcore.errors import NetworkError
    from raftcore.messages import VoteResponse
    from raftcore.network import RaftServer, TcpNetwork

    raft = await Raft.create(1, make_config(1), TcpNetwork(rpc_timeout=2.0), MemLogStore(),
                             MemStateMachine())
    server = await RaftServer.start(raft, "127.0.0.1", 0)
    node = Node(f"127.0.0.1:{server.port}")
    try:
        await raft.initialize({1: node})
        cid = raft.metrics.cluster_id
        stranger = TcpNetwork(rpc_timeout=2.0)
        client = stranger.client(1, node)
        with LogWatch() as w:
            with pytest.raises(NetworkError, match=f"belongs to cluster {cid}, this node to "
                                                   "cluster other"):
                await client.vote(VoteRequest(1, 9, 0, 0, False, False, "other"))
            await w.wait("the peer belongs to cluster other, this node to cluster")
        await client.close()
        # A peer of this cluster gets through the hello, and its request is answered.
        friend = TcpNetwork(rpc_timeout=2.0).client(1, node)
        try:
            resp = await friend.vote(VoteRequest(0, 9, 0, 0, False, False, cid))
            assert type(resp) is VoteResponse and not resp.granted
        finally:
            await friend.close()
    finally:
        await raft.shutdown()
        await server.close()


class HeldEntries(LocalRouter):
    """Loses every AppendEntries that carries entries while `held`; `sent`
    is set once one was lost."""

    def __init__(self, seed: int) -> None:
        super().__init__(seed)
        self.held = True
        self.sent = asyncio.Event()

    async def deliver(self, src, dst, handler_name, req):
        if self.held and handler_name == "append_entries" and req.entries:
            self.dropped += 1
            self.sent.set()
            raise NetworkError(f"entries {src}->{dst} held back")
        return await super().deliver(src, dst, handler_name, req)

    def deliver_nowait(self, src, dst, req, reply) -> bool:
        if self.held and req.entries:
            return False                 # deliver() loses it
        return super().deliver_nowait(src, dst, req, reply)


@cluster_test
async def test_a_first_leader_leads_on_until_its_entries_reach_a_follower():
    # With check_quorum, a leader that hears no quorum steps down. The first
    # one must not: the others' logs are empty, and their votes count only
    # for an untouched initializer (engine_identity), which it is no more.
    router = HeldEntries(seed=5)
    nodes = Nodes(router)
    try:
        for i in (1, 2, 3):
            raft = await Raft.create(i, make_config(i, check_quorum=True), router.network(i),
                                     MemLogStore(), MemStateMachine())
            router.add(i, raft)
            nodes.rafts[i] = raft
        first = nodes.rafts[1]
        await first.initialize(members(1, 2, 3))
        await first.wait(GUARD).metrics(lambda m: m.state == ServerState.LEADER, "a leader")
        await asyncio.wait_for(router.sent.wait(), GUARD)   # its own entries are durable
        await cluster_harness.stays(first, lambda m: m.state == ServerState.LEADER,
                                    3 * cluster_harness.ELECTION_MAX, "the first leader leads on")
        assert all(nodes.rafts[i].metrics.last_log_index == 0 for i in (2, 3))

        router.held = False
        leader = await stable_leader(list(nodes.rafts.values()))
        assert leader is first
        await leader.client_write(b"x")
        for r in nodes.rafts.values():
            await r.wait(GUARD).applied_index_at_least(leader.metrics.last_applied_index)
    finally:
        await nodes.close()
