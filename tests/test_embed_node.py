"""raftcore.start and replicated classes, three nodes over TCP in one
process: commands from any node (a follower forwards them), queries after a
read barrier, exactly-once retries, refusals at the call, snapshots that
survive a restart, the ready objects and the leader-only runner."""
from __future__ import annotations

import asyncio

import pytest

import raftcore
from async_runner import async_test
from kv_harness import free_ports
from raftcore.embed import ReplCounter, ReplDict, ReplLock, ReplQueue
from raftcore.embed.node import service_config
from raftcore.errors import ConfigError, InvalidCommand
from test_tcp import certs  # noqa: F401  (the fixture: a CA and certificates)

GUARD = 60.0
#: Failure guard of a polled condition (never a way to wait).
WAIT = 20.0
FAST = dict(heartbeat_interval=0.05, election_timeout_min=0.3, election_timeout_max=0.6)


class Account:
    """A replicated class of the kind an application writes."""

    def __init__(self) -> None:
        self.balance = 0
        self.history: list = []

    @raftcore.command
    def deposit(self, amount: int) -> int:
        if amount <= 0:
            raise ValueError("deposit a positive amount")
        self.balance += amount
        self.history.append(amount)
        return self.balance

    @raftcore.query
    def get(self) -> int:
        return self.balance

    def helper(self) -> None:
        """Neither a command nor a query."""


def peers_of(n: int = 3) -> dict:
    return {i: f"127.0.0.1:{p}" for i, p in zip(range(1, n + 1), free_ports(n))}


async def start_all(peers: dict, make, tmp_path=None, **kw) -> dict:
    nodes = {}
    for i in peers:
        nodes[i] = await raftcore.start(
            i, peers, state=make(), dir=None if tmp_path is None else tmp_path / f"n{i}",
            config=service_config(**FAST), **kw)
    return nodes


async def stop_all(nodes: dict) -> None:
    for n in nodes.values():
        await n.stop()


async def leader_of(nodes: dict) -> int:
    first = next(iter(nodes.values()))
    return await first.wait_leader(WAIT)


async def leader_alone(nodes: dict, timeout: float = 1.0):
    """Stops every node but the leader (taken out of `nodes`) and returns
    the leader with its call timeout set: its entries can no longer
    commit."""
    leader = await leader_of(nodes)
    for i in [i for i in nodes if i != leader]:
        await nodes.pop(i).stop()
    node = nodes[leader]
    node.timeout = timeout
    return node


@async_test(GUARD)
async def test_a_command_called_on_any_node_is_applied_on_every_node():
    nodes = await start_all(peers_of(), Account)
    try:
        leader = await leader_of(nodes)
        total = 0
        for i, node in nodes.items():
            total += i
            assert await node.state.deposit(i) == total
        for node in nodes.values():
            assert await node.state.get() == total      # linearizable, follower included
        idx = nodes[leader].metrics.last_applied_index
        for node in nodes.values():
            await node.raft.wait(WAIT).applied_index_at_least(idx)
            assert node.state_machine.objects["state"].history == [1, 2, 3]
            assert await node.state.stale.get() == total
            assert await node.state.lease.get() == total
    finally:
        await stop_all(nodes)


@async_test(GUARD)
async def test_bad_calls_are_refused_at_the_call_with_a_clear_error():
    nodes = await start_all(peers_of(), Account)
    try:
        await leader_of(nodes)
        node = nodes[3]
        with pytest.raises(InvalidCommand, match="msgpack"):
            await node.state.deposit(object())
        with pytest.raises(AttributeError, match="not a @command or @query"):
            node.state.helper
        with pytest.raises(InvalidCommand, match="not a @command"):
            await node.call("state", "get")
        with pytest.raises(raftcore.CommandFailed, match="ValueError: deposit a positive"):
            await node.state.deposit(-1)
        with pytest.raises(ConfigError, match="read must be"):
            await node.query("state", "get", read="fast")
        assert await node.state.get() == 0
    finally:
        await stop_all(nodes)


@async_test(GUARD)
async def test_start_refuses_bad_arguments_naming_them():
    with pytest.raises(ConfigError, match="peers"):
        await raftcore.start(1, {}, state=Account())
    with pytest.raises(ConfigError, match="not in peers"):
        await raftcore.start(4, {1: "127.0.0.1:1"}, state=Account())
    with pytest.raises(ConfigError, match="no method marked"):
        await raftcore.start(1, {1: "127.0.0.1:1"}, state=object())


@async_test(GUARD)
async def test_a_retried_call_is_applied_once():
    """The same (client id, seq) reaching the log twice (a retry after a
    lost reply) is applied once and answered with the first answer."""
    nodes = await start_all(peers_of(), Account)
    try:
        leader = nodes[await leader_of(nodes)]
        from raftcore.embed.forwarding import propose
        first = await propose(leader.raft, "c1", 1, 1, "state", "deposit", [5])
        again = await propose(leader.raft, "c1", 1, 1, "state", "deposit", [5])
        # [DONE, (OK, 5)]: the answer kept for a retry is a tuple.
        assert first == again == [0, (0, 5)]
        assert await leader.state.get() == 5
        # Acknowledged below 2: seq 1 is no longer answered, nor applied.
        await propose(leader.raft, "c1", 2, 2, "state", "deposit", [1])
        stale = await propose(leader.raft, "c1", 1, 2, "state", "deposit", [5])
        assert stale[1][0] == 2 and await leader.state.get() == 6
    finally:
        await stop_all(nodes)


@async_test(GUARD)
async def test_state_survives_a_restart_from_its_snapshot_and_log(tmp_path):
    peers = peers_of()
    nodes = await start_all(peers, Account, tmp_path)
    try:
        await leader_of(nodes)
        for k in range(30):
            await nodes[1 + k % 3].state.deposit(1)
        snap = await nodes[2].raft.trigger.snapshot()
        assert nodes[2].state_machine.durable_snapshot() == snap.meta
        await nodes[2].state.deposit(10)
    finally:
        await stop_all(nodes)
    nodes = await start_all(peers, Account, tmp_path)
    try:
        await leader_of(nodes)
        assert await nodes[2].state.get() == 40
        assert nodes[2].state_machine.objects["state"].history[-1] == 10
    finally:
        await stop_all(nodes)


@async_test(GUARD)
async def test_ready_objects_work_from_any_node():
    nodes = await start_all(peers_of(), lambda: {
        "d": ReplDict(), "c": ReplCounter(), "q": ReplQueue(), "l": ReplLock()})
    try:
        await leader_of(nodes)
        a, b = nodes[1].objects, nodes[3].objects
        assert await a["d"].set("k", 1) is None
        assert await b["d"].cas("k", 1, 2) == [True, 2]
        assert await b["d"].cas("k", 1, 3) == [False, 2]
        assert await a["d"].get("k") == 2 and await b["d"].delete("k") == 2
        assert [await n.objects["c"].add(2) for n in nodes.values()] == [2, 4, 6]
        assert await b["q"].put("job1") and await a["q"].put("job2")
        assert await b["q"].pop() == [True, "job1"]
        assert await a["q"].size() == 1
        ok, token = await a["l"].acquire("res", "alice", 30.0)
        assert ok and token > 0
        assert await b["l"].acquire("res", "bob", 30.0) == [False, "alice"]
        assert await b["l"].holder("res") == ["alice", token]
        assert not await b["l"].release("res", "alice", token - 1)
        assert await a["l"].renew("res", "alice", token, 30.0)
        assert await b["l"].release("res", "alice", token)
        ok, token2 = await b["l"].acquire("res", "bob", 30.0)
        assert ok and token2 > token
    finally:
        await stop_all(nodes)


@async_test(GUARD)
async def test_a_dead_holders_lease_expires_through_the_leaders_ticks():
    nodes = await start_all(peers_of(), lambda: {"l": ReplLock()}, tick_interval=0.05)
    try:
        await leader_of(nodes)
        locks = nodes[2].objects["l"]
        ok, token = await locks.acquire("res", "gone", 0.3)
        assert ok
        # Nobody writes; the ticks alone move the state's time past the lease.
        deadline = asyncio.get_running_loop().time() + WAIT
        while await locks.holder("res") is not None:
            assert asyncio.get_running_loop().time() < deadline, "the lease never expired"
            await nodes[2].raft.wait(WAIT).applied_index_at_least(
                nodes[2].metrics.last_applied_index + 1)
        ok, token2 = await locks.acquire("res", "next", 5.0)
        assert ok and token2 > token
    finally:
        await stop_all(nodes)


@async_test(GUARD)
async def test_on_leader_runs_on_the_leader_only_with_its_term_and_moves_with_it():
    nodes = await start_all(peers_of(), Account)
    running: dict = {}
    stopped: list = []

    def runner(node_id):
        async def work(term):
            running[node_id] = term
            try:
                await asyncio.Event().wait()
            finally:
                running.pop(node_id, None)
                stopped.append((node_id, term))
        return work
    try:
        for i, n in nodes.items():
            n.on_leader(runner(i))
        leader = await leader_of(nodes)
        await nodes[leader].raft.wait(WAIT).metrics(lambda m: leader in running, "task")
        term = running[leader]
        assert term == nodes[leader].metrics.current_term and list(running) == [leader]
        other = next(i for i in nodes if i != leader)
        nodes[leader].raft.trigger.transfer_leader(other)
        await nodes[other].raft.wait(WAIT).metrics(lambda m: other in running, "moved")
        assert running[other] > term and (leader, term) in stopped
        assert leader not in running
    finally:
        await stop_all(nodes)


@async_test(GUARD)
async def test_a_call_whose_outcome_stays_unknown_raises_outcome_unknown():
    """The leader alone: its entry can neither commit nor be known dropped."""
    nodes = await start_all(peers_of(), Account)
    try:
        node = await leader_alone(nodes)
        with pytest.raises(raftcore.errors.OutcomeUnknown, match="at most once"):
            await node.state.deposit(1)
    finally:
        await stop_all(nodes)


@async_test(GUARD)
async def test_a_call_that_surely_did_not_apply_raises_timeout():
    """No leader at all: nothing was sent anywhere."""
    peers = peers_of()
    node = await raftcore.start(3, peers, state=Account(), timeout=0.5,
                                config=service_config(**FAST))
    try:
        with pytest.raises(raftcore.Timeout, match="was not applied"):
            await node.state.deposit(1)
    finally:
        await node.stop()


@async_test(GUARD)
async def test_a_lagging_node_is_caught_up_by_a_snapshot_of_the_objects(tmp_path):
    from raftcore.config import SnapshotPolicy
    peers = peers_of()
    config = service_config(**FAST, snapshot_policy=SnapshotPolicy.logs_since_last(20),
                            max_in_snapshot_log_to_keep=0)

    async def node(i):
        return await raftcore.start(i, peers, state=Account(), dir=tmp_path / f"n{i}",
                                    config=config)
    nodes = {i: await node(i) for i in peers}
    try:
        leader = await leader_of(nodes)
        lagging = next(i for i in nodes if i != leader)
        await nodes.pop(lagging).stop()
        for _ in range(60):
            await nodes[leader].state.deposit(1)
        await nodes[leader].raft.wait(WAIT).metrics(
            lambda m: m.purged is not None and m.purged.index > 30, "the log purged")
        nodes[lagging] = await node(lagging)
        m = nodes[leader].metrics
        back = nodes[lagging]
        await back.raft.wait(WAIT).applied_index_at_least(m.last_applied_index)
        assert back.metrics.snapshot is not None          # installed, not replayed
        assert back.state_machine.objects["state"].balance == 60
        assert await back.state.stale.get() == 60
    finally:
        await stop_all(nodes)


def test_a_cluster_under_tls_and_a_shared_secret_forwards_calls(certs):
    from test_tcp import client_context, server_context

    @async_test(GUARD)
    async def body():
        nodes = await start_all(peers_of(), Account, secret=b"s" * 32,
                                ssl=(server_context(certs, require_client_cert=True),
                                     client_context(certs, with_cert=True)))
        try:
            leader = await leader_of(nodes)
            follower = next(i for i in nodes if i != leader)
            assert await nodes[follower].state.deposit(7) == 7
            assert await nodes[follower].state.get() == 7
        finally:
            await stop_all(nodes)
    body()


@async_test(GUARD)
async def test_malformed_forwarded_calls_and_entries_are_refused_and_the_node_goes_on():
    from raftcore.embed.forwarding import EMBED_CALL, REFUSED, propose
    from raftcore.kv.connection import connect
    nodes = await start_all(peers_of(), Account)
    try:
        leader = nodes[await leader_of(nodes)]
        conn = await connect(leader.raft.metrics.membership.nodes[leader.id].addr, WAIT,
                             max_frame=1 << 20)
        try:
            for bad in ([EMBED_CALL, [1], 1, 0, "state", "deposit", [1]],
                        [EMBED_CALL, "c", 1, 5, "state", "deposit", [1]],
                        [EMBED_CALL, "c", 1, 0, "state", "deposit", "1"],
                        [EMBED_CALL, "c"]):
                reply = await conn.call(bad, WAIT)
                assert reply[0] == REFUSED, (bad, reply)
        finally:
            await conn.close()
        # Entries that reach the log malformed are answered, not raised.
        assert (await propose(leader.raft, [1], 1, 0, "state", "deposit", [1]))[1][0] == 1
        assert (await propose(leader.raft, "c", 1, 0, "nope", "deposit", [1]))[1][0] == 1
        assert (await propose(leader.raft, "c", 2, 0, "state", "get", []))[1][0] == 1
        assert (await leader.raft.client_write(["rc", "short"])).data[0] == 1
        assert await nodes[1].state.deposit(2) == 2
    finally:
        await stop_all(nodes)


@async_test(GUARD)
async def test_status_is_the_nodes_metrics_as_plain_data_on_every_node():
    import json
    nodes = await start_all(peers_of(), Account)
    try:
        leader = await leader_of(nodes)
        await nodes[leader].state.deposit(3)
        target = nodes[leader].raft.metrics.last_applied_index
        for i, node in nodes.items():
            await node.raft.wait(WAIT).applied_index_at_least(target)
            st = node.status()
            assert st == node.raft.metrics.to_dict()
            assert json.loads(json.dumps(st)) == st
            assert st["id"] == i and st["state"] in ("LEADER", "FOLLOWER", "CANDIDATE")
            assert st["last_applied"]["index"] >= target
            assert st["membership"]["configs"] == [[1, 2, 3]]
    finally:
        await stop_all(nodes)
