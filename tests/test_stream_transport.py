"""Cluster tests over StreamNetwork (stream_transport.py), a transport
written from raftcore.network.base's contract alone: election, replication,
restart, snapshot install and membership change work over it as over
LocalRouter and TCP."""
from __future__ import annotations

from raftcore import Node, Raft, ServerState
from raftcore.config import SnapshotPolicy
from raftcore.member_changes import ChangeMembers
from raftcore.storage import MemLogStore, MemStateMachine

from cluster_harness import GUARD, cluster_test, make_config, wait_any_leader, write_retry
from stream_transport import StreamNetwork, StreamServer


class StreamCluster:
    """Nodes each served by a StreamServer, found through one directory."""

    def __init__(self, seed: int, **cfg) -> None:
        self.seed = seed
        self.cfg = cfg
        self.directory: dict[str, int] = {}
        self.nodes: dict[int, Raft] = {}
        self.servers: dict[int, StreamServer] = {}
        self.stores: dict[int, tuple] = {}

    async def start(self, node_id: int) -> Raft:
        """Starts node `node_id`, on its earlier stores if it ran before."""
        log_store, sm = self.stores.setdefault(node_id, (MemLogStore(), MemStateMachine()))
        config = make_config(self.seed * 100 + node_id + 10 * len(self.servers), **self.cfg)
        raft = await Raft.create(node_id, config, StreamNetwork(self.directory, config.rpc_timeout),
                                 log_store, sm)
        server = await StreamServer(raft).start()
        self.nodes[node_id], self.servers[node_id] = raft, server
        self.directory[f"n{node_id}"] = server.port
        return raft

    async def stop(self, node_id: int) -> None:
        self.directory.pop(f"n{node_id}", None)
        raft = self.nodes.pop(node_id)
        await raft.shutdown()
        await self.servers.pop(node_id).close()

    async def __aenter__(self) -> "StreamCluster":
        return self

    async def __aexit__(self, *exc) -> None:
        for i in list(self.nodes):
            await self.stop(i)

    async def three(self) -> Raft:
        for i in (1, 2, 3):
            await self.start(i)
        await self.nodes[1].initialize({i: Node(f"n{i}") for i in (1, 2, 3)})
        return await wait_any_leader(list(self.nodes.values()))


async def write(c: StreamCluster, first: int, count: int) -> int:
    """Sets k<first>..k<first+count-1> through whichever node leads (a set
    may be retried: on a loaded machine leadership can move); returns the
    index of the last one."""
    last = 0
    for i in range(first, first + count):
        last = (await write_retry(list(c.nodes.values()), ["set", f"k{i}", i])).index
    return last


async def all_applied(nodes, index: int) -> None:
    for r in nodes:
        await r.wait(GUARD).applied_index_at_least(index, "the writes applied")


@cluster_test
async def test_a_leader_is_elected_and_another_once_it_stops():
    async with StreamCluster(1) as c:
        leader = await c.three()
        term = leader.metrics.current_term
        await c.stop(leader.id)
        successor = await wait_any_leader(list(c.nodes.values()))
        assert successor.id != leader.id and successor.metrics.current_term > term


@cluster_test
async def test_writes_replicate_to_every_node():
    async with StreamCluster(2) as c:
        await c.three()
        last = await write(c, 0, 200)
        await all_applied(c.nodes.values(), last)
        assert all(r.state_machine.data["k199"] == 199 for r in c.nodes.values())


@cluster_test
async def test_a_restarted_follower_catches_up_on_its_stores():
    async with StreamCluster(3) as c:
        leader = await c.three()
        await write(c, 0, 20)
        follower = next(i for i in c.nodes if i != leader.id)
        await c.stop(follower)
        last = await write(c, 20, 30)
        restarted = await c.start(follower)
        await all_applied([restarted], last)
        assert restarted.state_machine.data == leader.state_machine.data


@cluster_test
async def test_a_follower_behind_the_purged_log_gets_the_snapshot():
    async with StreamCluster(4, snapshot_policy=SnapshotPolicy.logs_since_last(50),
                             max_in_snapshot_log_to_keep=5) as c:
        leader = await c.three()
        follower = next(i for i in c.nodes if i != leader.id)
        await c.stop(follower)
        last = await write(c, 0, 200)
        await leader.wait(GUARD).metrics(lambda m: m.purged is not None and m.purged.index > 0,
                                         "the leader purged what the follower lacks")
        restarted = await c.start(follower)
        m = await restarted.wait(GUARD).applied_index_at_least(last, "caught up")
        assert m.snapshot is not None
        assert restarted.state_machine.data == leader.state_machine.data


@cluster_test
async def test_a_node_joins_as_learner_becomes_voter_and_another_leaves():
    async with StreamCluster(5) as c:
        leader = await c.three()
        last = await write(c, 0, 10)
        await c.start(4)
        await leader.add_learner(4, Node("n4"))
        await all_applied([c.nodes[4]], last)
        leaving = next(i for i in (1, 2, 3) if i != leader.id)
        await leader.change_membership(ChangeMembers.add_voter_ids({4}))
        await leader.change_membership(ChangeMembers.remove_voters({leaving}))
        voters = leader.metrics.membership.voter_ids
        assert 4 in voters and leaving not in voters
        last = await write(c, 10, 10)
        await all_applied([c.nodes[4]], last)
        assert c.nodes[4].metrics.state in (ServerState.FOLLOWER, ServerState.LEADER)
