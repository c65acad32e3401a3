"""TCP transport: TcpNetwork + RaftServer on 127.0.0.1.

Every test body is a coroutine run on a fresh uvloop loop by a plain sync
test function (`tcp_test`), which also fails the test if anything reached the
loop's exception handler (a task that crashed, a callback that raised).
Tests synchronize on conditions only -- raft.wait(...), futures resolved by
fake handlers or by log records, connections observed closed -- and the
timeouts they give are failure guards, never a way to wait. Servers listen on
port 0 and the tests read the port back.
"""
from __future__ import annotations

import asyncio
import datetime
import ipaddress
import logging
import ssl
import struct
import types
from typing import Optional

import msgpack
import pytest

from log_watch import LogWatch
from async_runner import async_test
from raftcore import Config, Node, Raft, ServerState
from raftcore.codec import encode_message
from raftcore.errors import (ConfigError, Fatal, ForwardToLeader, NetworkError, OutcomeUnknown,
                             Timeout)
from raftcore.config import SnapshotPolicy
from raftcore.membership import Membership
from raftcore.messages import (AppendEntriesRequest, AppendEntriesResponse,
                               InstallSnapshotRequest, InstallSnapshotResponse, SnapshotMeta,
                               TransferLeaderRequest, VoteRequest, VoteResponse)
from raftcore.network import RaftServer, TcpNetwork
from raftcore.network.base import RaftNode
from raftcore.network.channel import Channel
import raftcore.network.framing as framing_module
import raftcore.network.server as server_module
import raftcore.network.tcp as tcp_module
from raftcore.network.tcp import WIRE_VERSION, parse_address
from raftcore.storage import MemLogStore, MemStateMachine
from raftcore.types import ENTRY_NORMAL, Entry

HOST = "127.0.0.1"
#: Failure guard for conditions that should hold within a few elections.
GUARD = 10.0
#: Whole-test guard: a hang fails the test instead of the suite.
TEST_GUARD = 60.0
LEADER = ServerState.LEADER


def make_config(seed: int, **kw) -> Config:
    # Election timeouts well above the heartbeat, so that a loaded machine
    # does not see spurious elections.
    return Config(heartbeat_interval=0.03, election_timeout_min=0.3,
                  election_timeout_max=0.6, seed=seed, **kw)


def tcp_test(fn):
    """Runs an async test body on a fresh uvloop loop, with a whole-test guard;
    fails if the loop's exception handler was called."""
    return async_test(TEST_GUARD, loop_errors_fail=True)(fn)


# ----------------------------------------------------------------- helpers

def ae(term: int, prev: int = 0) -> AppendEntriesRequest:
    """A heartbeat-shaped AppendEntries; fakes echo term and prev_log_index."""
    return AppendEntriesRequest(term, 1, 0, prev, [], 0)


def frame(body: bytes, version: int = WIRE_VERSION) -> bytes:
    return struct.pack(">IB", len(body) + 1, version) + body


def request_body(rid: int, msg) -> bytes:
    return msgpack.packb([rid, encode_message(msg)], use_bin_type=True)


def nowait_future(client, req) -> Optional[asyncio.Future]:
    """client.append_entries_nowait(req, reply) with reply settling a future:
    the future, or None if the fast path declined."""
    fut = asyncio.get_running_loop().create_future()

    def reply(resp, exc):
        assert not fut.done(), "reply called twice"
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(resp)
    taken = client.append_entries_nowait(req, reply)
    assert type(taken) is bool
    return fut if taken else None


class FakeRaft(RaftNode):
    """Answers RPCs under the test's control. A request whose term has a gate
    waits for it; `arrived`/`finished`/`cancelled` record terms in order."""

    def __init__(self) -> None:
        self.gates: dict[int, asyncio.Future] = {}
        self.fail: dict[int, BaseException] = {}
        self.arrived: list[int] = []
        self.finished: list[int] = []
        self.cancelled: list[int] = []
        self._waiters: list[tuple] = []

    def gate(self, term: int) -> asyncio.Future:
        self.gates[term] = asyncio.get_running_loop().create_future()
        return self.gates[term]

    def _changed(self) -> None:
        for w in list(self._waiters):
            pred, fut = w
            if pred() and not fut.done():
                fut.set_result(None)
                self._waiters.remove(w)

    async def until(self, pred, what: str) -> None:
        if pred():
            return
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append((pred, fut))
        try:
            await asyncio.wait_for(fut, GUARD)
        except asyncio.TimeoutError:
            raise AssertionError(f"fake raft: no {what}; arrived {self.arrived}, "
                                 f"finished {self.finished}") from None

    async def append_entries(self, req):
        self.arrived.append(req.term)
        self._changed()
        try:
            gate = self.gates.get(req.term)
            if gate is not None:
                await gate
        except asyncio.CancelledError:
            self.cancelled.append(req.term)
            raise
        if req.term in self.fail:
            raise self.fail[req.term]
        self.finished.append(req.term)
        self._changed()
        return AppendEntriesResponse(req.term, True, req.prev_log_index)

    async def vote(self, req):
        return VoteResponse(req.term, True, 99)

    async def install_snapshot(self, req):
        self.arrived.append(req.term)
        self._changed()
        gate = self.gates.get(req.term)
        if gate is not None:
            await gate
        self.finished.append(req.term)
        self._changed()
        return InstallSnapshotResponse(req.term)

    async def transfer_leader(self, req) -> None:
        self.arrived.append(req.term)
        self.finished.append(req.term)
        self._changed()


class fake_server:
    """async with fake_server(**kw) as (server, fake, node): a RaftServer of a FakeRaft."""

    def __init__(self, **kw) -> None:
        self.kw = kw

    async def __aenter__(self):
        self.fake = FakeRaft()
        self.server = await RaftServer.start(self.fake, HOST, 0, **self.kw)
        return self.server, self.fake, Node(f"{HOST}:{self.server.port}")

    async def __aexit__(self, *exc) -> None:
        # Open every gate so that no handler is left waiting; close() waits
        # for handlers (it never cancels them).
        for g in self.fake.gates.values():
            if not g.done():
                g.set_result(None)
        await self.server.close()


class TcpCluster:
    """Raft nodes on MemLogStore, each with a TcpNetwork and a RaftServer on
    an ephemeral port. A node needs no peer address before it has a
    membership: create the nodes, start their servers, read the ports,
    then initialize with those addresses."""

    def __init__(self) -> None:
        self.rafts: dict[int, Raft] = {}
        self.servers: dict[int, RaftServer] = {}
        self.server_ssl = None

    async def start(self, n: int, seed: int, server_ssl=None, client_ssl=None,
                    **cfg) -> "TcpCluster":
        self.server_ssl = server_ssl
        for i in range(1, n + 1):
            config = make_config(seed * 100 + i, **cfg)
            net = TcpNetwork(client_ssl, rpc_timeout=config.rpc_timeout)
            self.rafts[i] = await Raft.create(i, config, net, MemLogStore(), MemStateMachine())
            self.servers[i] = await RaftServer.start(self.rafts[i], HOST, 0, ssl=server_ssl)
        await self.rafts[1].initialize(self.members())
        return self

    def members(self) -> dict:
        return {i: Node(f"{HOST}:{s.port}") for i, s in self.servers.items()}

    def all(self) -> list:
        return [self.rafts[i] for i in sorted(self.rafts)]

    async def close(self) -> None:
        # Nodes first: their shutdown fails any handler still waiting, so the
        # servers' close (which waits for handlers) returns promptly.
        for r in self.all():
            await r.shutdown()
        for s in self.servers.values():
            await s.close()

    async def __aenter__(self) -> "TcpCluster":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()


async def stable_leader(nodes: list) -> Raft:
    """A leader that every node of `nodes` follows in its term."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + GUARD
    while True:
        waits = [asyncio.ensure_future(r.wait(GUARD).state(LEADER)) for r in nodes]
        done, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for t in pending:
            t.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        t = done.pop()
        t.result()                      # raises Timeout if no leader came
        leader = nodes[waits.index(t)]
        term, lid = leader.metrics.current_term, leader.id
        res = await asyncio.gather(*(
            r.wait(1.0).metrics(lambda m: m.current_leader == lid and m.current_term == term,
                                f"following {lid} in term {term}") for r in nodes),
            return_exceptions=True)
        if not any(isinstance(x, BaseException) for x in res):
            return leader
        if loop.time() > deadline:
            raise next(x for x in res if isinstance(x, BaseException))


async def write_many(nodes: list, clients: int, per_client: int, tag: str) -> int:
    """`clients` concurrent writers of `per_client` sets each, through the
    leader (found again after a ForwardToLeader); the highest index written."""
    leader = [await stable_leader(nodes)]

    async def write(cmd):
        while True:
            try:
                return await leader[0].client_write(cmd)
            except (ForwardToLeader, OutcomeUnknown):      # a set is safe to repeat
                leader[0] = await stable_leader(nodes)

    async def client(c: int) -> int:
        top = 0
        for k in range(per_client):
            top = max(top, (await write(["set", f"{tag}-{c}-{k}", k])).log_id.index)
        return top
    return max(await asyncio.gather(*(client(c) for c in range(clients))))


async def assert_same_everywhere(nodes: list, upto: int) -> None:
    await asyncio.gather(*(r.wait(GUARD).applied_index_at_least(upto) for r in nodes))
    ref = nodes[0]
    ref_log = [(e.term, e.index, e.kind, e.payload) for e in ref.log_store.entries(1, upto)]
    for r in nodes[1:]:
        log = [(e.term, e.index, e.kind, e.payload) for e in r.log_store.entries(1, upto)]
        assert log == ref_log, f"node {r.id}'s log differs from node {ref.id}'s"
    # Once the last entry is applied everywhere, the state machines agree.
    await asyncio.gather(*(r.wait(GUARD).applied_index_at_least(
        ref.metrics.last_applied_index) for r in nodes))
    for r in nodes[1:]:
        assert r.state_machine.data == ref.state_machine.data, f"node {r.id} diverged"


# ------------------------------------------------------------------ cluster

@tcp_test
async def test_three_node_cluster_over_tcp_applies_2000_writes_identically():
    async with TcpCluster() as c:
        await c.start(3, seed=1)
        nodes = c.all()
        leader = await stable_leader(nodes)
        top = await write_many(nodes, clients=40, per_client=50, tag="w")
        await assert_same_everywhere(nodes, top)
        data = leader.state_machine.data
        assert all(data[f"w-{cl}-{k}"] == k for cl in range(40) for k in range(50))
        # One connection per peer and lane (replication, control), however
        # many RPCs were in flight: at most two from each of the two others.
        for i, s in c.servers.items():
            assert s.connections <= 4, (i, s.connections)
        for r in nodes:
            if r is not leader:
                assert c.servers[r.id].connections >= 1


@tcp_test
async def test_a_follower_refuses_a_request_term_far_above_its_own_and_the_cluster_goes_on():
    """One request of an absurd term (a corrupt or hostile peer) must not
    take the cluster to terms its nodes cannot campaign in: the follower
    refuses it without adopting it, and the leader keeps leading and
    writing."""
    async with TcpCluster() as c:
        await c.start(3, seed=4)
        nodes = c.all()
        leader = await stable_leader(nodes)
        follower = next(r for r in nodes if r is not leader)
        term = leader.metrics.current_term
        client = TcpNetwork(rpc_timeout=GUARD).client(9, c.members()[follower.id])
        try:
            with pytest.raises(NetworkError, match="more than 2..32 above"):
                await client.append_entries(AppendEntriesRequest(2**62 - 1, 9, 0, 0, [], 0))
        finally:
            await client.close()
        top = await write_many(nodes, clients=4, per_client=10, tag="after")
        await assert_same_everywhere(nodes, top)
        assert all(r.metrics.current_term == term for r in nodes)
        assert (await stable_leader(nodes)) is leader


# ---------------------------------------------------------------- pipelining

@tcp_test
async def test_pipelined_requests_on_one_connection_are_matched_when_answered_out_of_order():
    async with fake_server() as (server, fake, node):
        client = TcpNetwork(rpc_timeout=GUARD).client(7, node)
        try:
            terms = [1, 2, 3, 4, 5]
            for t in terms:
                fake.gate(t)
            calls = {t: asyncio.ensure_future(client.append_entries(ae(t, prev=100 + t)))
                     for t in terms}
            # All five reach the handler while none has been answered: the
            # server keeps reading while earlier requests wait.
            await fake.until(lambda: len(fake.arrived) == 5, "five requests in flight")
            assert fake.arrived == terms
            assert server.connections == 1
            assert not any(f.done() for f in calls.values())
            # Answer in reverse order; each reply must reach its own caller
            # while the earlier requests are still pending.
            for t in reversed(terms):
                fake.gates[t].set_result(None)
                resp = await asyncio.wait_for(calls[t], GUARD)
                assert (resp.term, resp.matched) == (t, 100 + t)
                assert all(not calls[u].done() for u in terms if u < t)
            # A vote shares the connection too.
            v = await client.vote(VoteRequest(9, 1, 0, 0))
            assert (type(v), v.term, v.voter_id) == (VoteResponse, 9, 99)
            assert server.connections == 1
        finally:
            await client.close()


@tcp_test
async def test_client_fast_path_sends_at_once_when_connected():
    async with fake_server() as (server, fake, node):
        client = TcpNetwork(rpc_timeout=GUARD).client(1, node)
        try:
            # Not connected yet: the fast path declines, append_entries connects.
            assert nowait_future(client, ae(1, 1)) is None
            assert (await client.append_entries(ae(1, 1))).matched == 1
            fake.gate(2)
            pending = [nowait_future(client, ae(t, t)) for t in (2, 3)]
            assert all(p is not None for p in pending)
            await fake.until(lambda: fake.arrived == [1, 2, 3], "fast-path requests")
            fake.gates[2].set_result(None)
            assert [(await p).matched for p in pending] == [2, 3]
            assert server.connections == 1
        finally:
            await client.close()
        assert nowait_future(client, ae(4)) is None


class NowaitFakeRaft(FakeRaft):
    """A FakeRaft with the synchronous fast path a real node offers:
    `append_entries_nowait` answers at once, except for terms in `defer`
    (declined: "use append_entries") and in `later` (answered once the
    term's gate opens, as a flush would)."""

    def __init__(self) -> None:
        super().__init__()
        self.defer: set = set()
        self.later: set = set()

    def append_entries_nowait(self, req, reply):
        if req.term in self.defer:
            return False
        if req.term in self.later:
            task = asyncio.ensure_future(self.append_entries(req))
            task.add_done_callback(lambda t: reply(t.result(), None))
            return True
        self.arrived.append(req.term)
        self.finished.append(req.term)
        self._changed()
        reply(AppendEntriesResponse(req.term, True, req.prev_log_index), None)
        return True


@tcp_test
async def test_requests_reach_the_node_in_arrival_order_on_the_fast_path_too():
    fake = NowaitFakeRaft()
    server = await RaftServer.start(fake, HOST, 0)
    try:
        reader, writer = await asyncio.open_connection(HOST, server.port)
        # 1 needs the slow path (a task); 2 and 3 could be answered at once,
        # but must not overtake 1 on their way into the node.
        fake.defer.add(1)
        writer.write(b"".join(frame(request_body(t, ae(t, t))) for t in (1, 2, 3)))
        await fake.until(lambda: len(fake.arrived) == 3, "three requests")
        assert fake.arrived == [1, 2, 3]
        # 4's answer waits (say, for a flush) while 5 is answered at once:
        # replies leave out of order, each under its request id.
        fake.later.add(4)
        gate = fake.gate(4)
        writer.write(frame(request_body(4, ae(4, 40))) + frame(request_body(5, ae(5, 50))))
        await fake.until(lambda: fake.finished[-1:] == [5], "request 5 answered")
        gate.set_result(None)
        replies = []
        unpacker = msgpack.Unpacker(raw=False)
        while len(replies) < 5:
            size, version = struct.unpack(">IB", await reader.readexactly(5))
            assert version == WIRE_VERSION
            unpacker.feed(await reader.readexactly(size - 1))
            # msg is [type, term, success, matched, ...]
            replies.extend((rid, msg[1], msg[3]) for rid, msg in unpacker)
        assert sorted(replies[:3]) == [(1, 1, 1), (2, 2, 2), (3, 3, 3)]
        assert replies[3:] == [(5, 5, 50), (4, 4, 40)]
        writer.close()
    finally:
        await server.close()


@tcp_test
async def test_a_peer_with_too_many_requests_in_hand_is_read_no_further_until_there_is_room():
    """Backpressure: once a connection has _MAX_HANDLING_PER_CONN requests in
    hand, the server stops reading it; requests sent after that wait in the
    socket, and all are answered once the held ones finish."""
    fake = FakeRaft()
    server = await RaftServer.start(fake, HOST, 0)
    try:
        reader, writer = await asyncio.open_connection(HOST, server.port)
        cap = server_module._MAX_HANDLING_PER_CONN
        gate = fake.gate(1)
        # `cap` requests that wait on the gate, then 5 more of another term.
        writer.write(b"".join(frame(request_body(i, ae(1, i))) for i in range(cap)))
        writer.write(b"".join(frame(request_body(cap + i, ae(2, i))) for i in range(5)))
        await fake.until(lambda: len(fake.arrived) == cap, "the capped requests")
        # The loop runs while the other 5 sit unread (nothing to wait on
        # but a few loop iterations: the node must not see them).
        for _ in range(20):
            await asyncio.sleep(0)
        assert fake.arrived.count(2) == 0 and len(fake.arrived) == cap
        gate.set_result(None)
        await fake.until(lambda: fake.finished.count(2) == 5, "the requests held back")
        replies = set()
        unpacker = msgpack.Unpacker(raw=False)
        while len(replies) < cap + 5:
            size, _ = struct.unpack(">IB", await reader.readexactly(5))
            unpacker.feed(await reader.readexactly(size - 1))
            replies.update(rid for rid, _msg in unpacker)
        assert replies == set(range(cap + 5))
        writer.close()
    finally:
        await server.close()


async def _until(pred, what: str) -> None:
    """Waits (a few ms at a time, GUARD at most) for a condition the code
    under test offers no event for."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + GUARD
    while not pred():
        assert loop.time() < deadline, f"no {what} within {GUARD}s"
        await asyncio.sleep(0.005)


@tcp_test
async def test_close_returns_while_a_peer_that_reads_nothing_holds_back_its_connection():
    """A peer that stops reading fills the server's send buffer; the server
    stops reading it (backpressure) and waits for the buffer to drain.
    close() must not wait for that drain."""
    async def big(msg):
        return b"x" * (1 << 20)
    server = await RaftServer.start(FakeRaft(), HOST, 0, services={64: big})
    reader, writer = await asyncio.open_connection(HOST, server.port)
    try:
        writer.write(b"".join(frame(msgpack.packb([i, [64]])) for i in range(40)))
        high = framing_module.WRITE_HIGH_WATER
        await _until(lambda: any(c.transport.get_write_buffer_size() > high
                                 for c in server._conns), "a full send buffer")
        writer.write(frame(msgpack.packb([99, [64]])))      # read with the buffer full
        await _until(lambda: any(c.waiter is not None for c in server._conns),
                     "connection held back")
        await asyncio.wait_for(server.close(), GUARD)
    finally:
        writer.transport.abort()
        await server.close()


class BadNowaitRaft(FakeRaft):
    """A node whose append_entries_nowait breaks the contract: it returns
    the response instead of True/False."""

    def append_entries_nowait(self, req, reply):
        return AppendEntriesResponse(req.term, True, req.prev_log_index)


@tcp_test
async def test_a_node_whose_nowait_breaks_the_contract_gets_an_error_answer_naming_it():
    server = await RaftServer.start(BadNowaitRaft(), HOST, 0)
    client = TcpNetwork(rpc_timeout=GUARD).client(1, Node(f"{HOST}:{server.port}"))
    try:
        for t in (1, 2):
            with pytest.raises(NetworkError, match="BadNowaitRaft.append_entries_nowait "
                                                   "returned AppendEntriesResponse"):
                await client.append_entries(ae(t, 10 * t))
        assert server.connections == 1      # the connection goes on
    finally:
        await client.close()
        await server.close()


@tcp_test
async def test_snapshot_chunks_travel_on_a_connection_of_their_own():
    async with fake_server() as (server, fake, node):
        client = TcpNetwork(rpc_timeout=GUARD).client(1, node)
        try:
            assert (await client.append_entries(ae(1, 1))).matched == 1
            assert server.connections == 1
            meta = SnapshotMeta(1, 10, Membership([[1, 2]], {1: Node("a"), 2: Node("b")}), "s-1")
            gate = fake.gate(2)
            chunk = asyncio.ensure_future(client.install_snapshot(
                InstallSnapshotRequest(2, 1, meta, 0, b"\x00" * 100_000, True)))
            await fake.until(lambda: fake.arrived == [1, 2], "snapshot chunk arrived")
            assert server.connections == 2
            # Replication goes on while the chunk is being handled.
            assert (await client.append_entries(ae(3, 3))).matched == 3
            assert (await client.vote(VoteRequest(4, 1, 0, 0))).granted
            assert not chunk.done()
            gate.set_result(None)
            resp = await asyncio.wait_for(chunk, GUARD)
            assert type(resp) is InstallSnapshotResponse and resp.term == 2
            assert server.connections == 2
        finally:
            await client.close()


@tcp_test
async def test_a_call_waiting_for_room_on_a_connection_the_peer_stopped_reading_times_out():
    """A peer that accepts and reads nothing: the send buffer fills, and a
    call that waits for room ends with Timeout instead of waiting for good."""
    held = []
    server = await asyncio.start_server(lambda r, w: held.append(w), HOST, 0)
    net = TcpNetwork(rpc_timeout=0.2, connect_timeout=GUARD)
    client = net.client(1, Node(f"{HOST}:{server.sockets[0].getsockname()[1]}"))
    big = [Entry(1, 1, ENTRY_NORMAL, b"x" * (5 << 20))]
    small = AppendEntriesRequest(1, 1, 0, 0, [Entry(1, 1, ENTRY_NORMAL, b"x")], 0)
    try:
        with pytest.raises(Timeout, match="no reply"):
            # An append with entries (a heartbeat would take the control
            # connection): the replication connection is up, never answered.
            await client.append_entries(small)
        calls = [client.append_entries(AppendEntriesRequest(1, 1, 0, 0, big, 0))
                 for _ in range(6)]
        results = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), GUARD)
        assert all(isinstance(r, Timeout) for r in results), results
        assert any("no room to send" in str(r) for r in results), results
    finally:
        await client.close()
        for w in held:
            w.transport.abort()
        server.close()


@tcp_test
async def test_a_snapshot_chunk_with_no_answer_drops_its_connection_and_the_next_opens_one():
    async with fake_server() as (server, fake, node):
        net = TcpNetwork(rpc_timeout=GUARD)
        client = net.client(1, node)
        meta = SnapshotMeta(1, 10, Membership([[1, 2]], {1: Node("a"), 2: Node("b")}), "s-1")
        try:
            assert (await client.append_entries(ae(1, 1))).matched == 1
            fake.gate(2)                        # the first stream's chunk: never answered
            net.rpc_timeout = 0.05
            with pytest.raises(Timeout, match="rpc_timeout"):
                await client.install_snapshot(InstallSnapshotRequest(2, 1, meta, 0, b"d", True))
            # The stalled snapshot connection is gone; replication's stays.
            await _until(lambda: server.connections == 1, "the snapshot connection closed")
            net.rpc_timeout = GUARD
            resp = await client.install_snapshot(InstallSnapshotRequest(3, 1, meta, 0, b"d", True))
            assert resp.term == 3 and server.connections == 2
            assert (await client.append_entries(ae(4, 4))).matched == 4
        finally:
            await client.close()


@tcp_test
async def test_transfer_leader_request_is_acknowledged():
    async with fake_server() as (server, fake, node):
        client = TcpNetwork(rpc_timeout=GUARD).client(1, node)
        try:
            assert await client.transfer_leader(TransferLeaderRequest(6, 1, 10)) is None
            assert fake.finished == [6]
        finally:
            await client.close()


# ----------------------------------------------------------------- bad input

BAD_FRAMES = {
    # name: (bytes the bad client sends, then EOF?, reason expected in the log)
    "oversize": (struct.pack(">IB", 1 << 20, WIRE_VERSION) + b"x" * 100, False,
                 "exceeds max_frame_size"),
    "truncated": (struct.pack(">IB", 101, WIRE_VERSION) + b"x" * 10, True, "truncated frame"),
    "truncated header": (b"\x00\x00\x00", True, "truncated frame header"),
    "garbage body": (frame(b"\xc1\xc1\xc1\xc1"), False, "not msgpack"),
    "http request": (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", False, "unknown wire version 47"),
    "unknown version": (frame(request_body(1, VoteRequest(1, 1, 0, 0)), version=1), False,
                        "unknown wire version 1"),
    "trailing bytes": (frame(request_body(1, VoteRequest(1, 1, 0, 0)) + b"\x01"), False,
                       "not msgpack"),
    "not a request pair": (frame(msgpack.packb({"a": 1})), False, "not [request_id, message]"),
    "malformed message": (frame(msgpack.packb([1, [3, "one", 1, 0, 0]])), False,
                          "malformed message"),
    "unknown message type": (frame(msgpack.packb([1, [99, 1]])), False,
                             "unknown message type 99"),
    "out of range integer": (frame(msgpack.packb([1, [3, 2 ** 64 - 1, 1, 0, 0, False, False]])),
                             False, "malformed message"),
    "reply sent as request": (frame(request_body(1, VoteResponse(1, True, 2))), False,
                              "unexpected message VoteResponse"),
}


@pytest.mark.parametrize("case", sorted(BAD_FRAMES))
@tcp_test
async def test_bad_frame_closes_only_that_connection_and_is_logged(case):
    data, eof, reason = BAD_FRAMES[case]
    with LogWatch() as watch:
        async with fake_server(max_frame_size=4096) as (server, fake, node):
            good = TcpNetwork(rpc_timeout=GUARD).client(1, node)
            try:
                assert (await good.vote(VoteRequest(1, 1, 0, 0))).granted
                reader, writer = await asyncio.open_connection(HOST, server.port)
                # A valid request first: the connection works until the bad frame.
                writer.write(frame(request_body(5, VoteRequest(2, 1, 0, 0))))
                writer.write(data)
                if eof:
                    writer.write_eof()
                try:
                    rest = await asyncio.wait_for(reader.read(), GUARD)
                except ConnectionResetError:
                    rest = None          # closed with our bytes unread: also closed
                writer.close()
                if rest is not None:
                    # At most the reply to the valid request came before the close.
                    assert rest in (b"", frame(msgpack.packb(
                        [5, encode_message(VoteResponse(2, True, 99))], use_bin_type=True)))
                record = await watch.wait(reason)
                assert record.levelno == logging.WARNING
                assert "closing the connection from" in record.getMessage()
                # The other connection is still served, and so are new ones.
                assert (await good.vote(VoteRequest(3, 1, 0, 0))).term == 3
                fresh = TcpNetwork(rpc_timeout=GUARD).client(1, node)
                try:
                    assert (await fresh.append_entries(ae(4, 8))).matched == 8
                finally:
                    await fresh.close()
                assert [r.getMessage() for r in watch.records if r.levelno >= logging.WARNING
                        ] == [record.getMessage()]
            finally:
                await good.close()


BAD_REPLIES = {
    # name: (reply frame to request id 1, reason the client logs)
    "oversize": (struct.pack(">IB", 1 << 20, WIRE_VERSION), "max_frame_size 4096"),
    "unknown version": (frame(msgpack.packb([1, [4, 1, True, 2]]), version=9),
                        "unknown wire version 9"),
    "not msgpack": (frame(b"\xc1"), "not msgpack"),
    "malformed message": (frame(msgpack.packb([1, [4, "x"]])), "malformed reply message"),
    "wrong reply type": (frame(msgpack.packb([1, [4, 1, True, 2, None]])),
                         "replied to a AppendEntriesRequest with a VoteResponse"),
    "truncated": (struct.pack(">IB", 50, WIRE_VERSION) + b"\x92", "truncated reply frame"),
    "malformed error reply": (frame(msgpack.packb([1, None, 7])), "malformed error reply"),
}


@pytest.mark.parametrize("case", sorted(BAD_REPLIES))
@tcp_test
async def test_bad_reply_closes_the_client_connection_and_fails_the_call(case):
    reply, reason = BAD_REPLIES[case]

    async def serve(reader, writer):
        size, _ = struct.unpack(">IB", await reader.readexactly(5))
        await reader.readexactly(size - 1)
        writer.write(reply)
        if case == "truncated":
            writer.close()
        else:
            await reader.read()          # until the client closes
            writer.close()

    server = await asyncio.start_server(serve, HOST, 0)
    try:
        with LogWatch() as watch:
            client = TcpNetwork(rpc_timeout=GUARD, max_frame_size=4096).client(
                1, Node(f"{HOST}:{server.sockets[0].getsockname()[1]}"))
            try:
                with pytest.raises(NetworkError):
                    await client.append_entries(ae(1))
                record = await watch.wait(reason)
                assert "closing the connection to node 1" in record.getMessage()
                # The connection is gone: the next call backs off.
                with pytest.raises(NetworkError, match="unreachable"):
                    await client.vote(VoteRequest(1, 1, 0, 0))
            finally:
                await client.close()
    finally:
        server.close()
        await server.wait_closed()


@tcp_test
async def test_wrong_reply_type_on_the_fast_path_closes_the_connection():
    """A reply of the wrong type on the fast path closes the connection and
    reaches `reply` as a NetworkError (the runtime's failed request)."""
    async def serve(reader, writer):
        for reply in (AppendEntriesResponse(1, True, 1, 0, 0), VoteResponse(1, True, 2)):
            size, _ = struct.unpack(">IB", await reader.readexactly(5))
            rid = msgpack.unpackb(await reader.readexactly(size - 1))[0]
            writer.write(frame(msgpack.packb([rid, encode_message(reply)])))
        await reader.read()
        writer.close()

    server = await asyncio.start_server(serve, HOST, 0)
    try:
        with LogWatch() as watch:
            client = TcpNetwork(rpc_timeout=GUARD).client(
                1, Node(f"{HOST}:{server.sockets[0].getsockname()[1]}"))
            try:
                assert (await client.append_entries(ae(1, 1))).matched == 1
                fut = nowait_future(client, ae(2, 2))
                with pytest.raises(NetworkError, match="replied to a AppendEntriesRequest "
                                                       "with a VoteResponse"):
                    await fut
                record = await watch.wait("replied to a AppendEntriesRequest with a VoteResponse")
                assert "closing the connection to node 1" in record.getMessage()
                assert nowait_future(client, ae(3, 3)) is None     # not connected
            finally:
                await client.close()
    finally:
        server.close()
        await server.wait_closed()


@tcp_test
async def test_handler_error_is_raised_by_the_caller_as_network_error():
    async with fake_server() as (server, fake, node):
        client = TcpNetwork(rpc_timeout=GUARD).client(1, node)
        try:
            fake.fail[3] = Fatal("node 2 has shut down; create a new Raft to restart it")
            with pytest.raises(NetworkError, match="Fatal: node 2 has shut down"):
                await client.append_entries(ae(3))
            # The connection stays usable.
            assert (await client.append_entries(ae(4, 1))).matched == 1
            assert server.connections == 1
        finally:
            await client.close()


@tcp_test
async def test_rpc_to_a_node_that_shut_down_raises_network_error():
    raft = await Raft.create(1, make_config(5), TcpNetwork(), MemLogStore(), MemStateMachine())
    server = await RaftServer.start(raft, HOST, 0)
    client = TcpNetwork(rpc_timeout=GUARD).client(1, Node(f"{HOST}:{server.port}"))
    try:
        resp = await client.vote(VoteRequest(1, 2, 0, 0))     # a live node answers
        assert type(resp) is VoteResponse and resp.voter_id == 1
        await raft.shutdown()
        with pytest.raises(NetworkError, match="has shut down"):
            await client.vote(VoteRequest(2, 2, 0, 0))
        with pytest.raises(NetworkError, match="has shut down"):
            await client.append_entries(AppendEntriesRequest(3, 2, 0, 0, [], 0))
    finally:
        await client.close()
        await server.close()


# ----------------------------------------------------------- timeouts, close

@tcp_test
async def test_rpc_timeout_raises_drops_the_late_reply_and_never_cancels_the_handler():
    async with fake_server() as (server, fake, node):
        net = TcpNetwork(rpc_timeout=0.05)
        client = net.client(1, node)
        try:
            gate = fake.gate(1)
            fake.gates[2] = gate         # requests 1 and 2 both wait for this gate
            with pytest.raises(Timeout, match="rpc_timeout"):
                await client.append_entries(ae(1, 10))
            assert fake.arrived == [1] and not fake.finished
            net.rpc_timeout = GUARD      # from now on nothing times out
            call = asyncio.ensure_future(client.append_entries(ae(2, 20)))
            await fake.until(lambda: fake.arrived == [1, 2], "second request arrived")
            gate.set_result(None)
            # The handler of the timed-out request was not cancelled: it
            # finishes, and its late reply reaches the client right before
            # the reply to request 2, on the same connection, while request 2
            # waits. It must be dropped, not taken for request 2's.
            resp = await asyncio.wait_for(call, GUARD)
            assert (resp.term, resp.matched) == (2, 20)
            await fake.until(lambda: fake.finished == [1, 2], "both handlers finished")
            assert not fake.cancelled
            assert server.connections == 1
        finally:
            await client.close()


@tcp_test
async def test_closing_the_client_fails_its_calls_but_not_the_server_handler():
    async with fake_server() as (server, fake, node):
        client = TcpNetwork(rpc_timeout=GUARD).client(1, node)
        gate = fake.gate(5)
        call = asyncio.ensure_future(client.append_entries(ae(5)))
        await fake.until(lambda: fake.arrived == [5], "request arrived")
        await client.close()
        with pytest.raises(NetworkError):
            await call
        with pytest.raises(NetworkError, match="closed"):
            await client.vote(VoteRequest(1, 1, 0, 0))
        gate.set_result(None)
        await fake.until(lambda: fake.finished == [5], "handler finished after the close")
        assert not fake.cancelled


@tcp_test
async def test_a_request_over_max_frame_size_is_not_sent():
    async with fake_server() as (server, fake, node):
        client = TcpNetwork(rpc_timeout=GUARD, max_frame_size=1000).client(1, node)
        big = AppendEntriesRequest(1, 1, 0, 0, [Entry(1, 1, ENTRY_NORMAL, b"x" * 5000)], 0)
        try:
            with pytest.raises(NetworkError, match="exceeds max_frame_size 1000"):
                await client.append_entries(big)
            assert fake.arrived == []
            assert (await client.append_entries(ae(2, 3))).matched == 3
        finally:
            await client.close()


def test_parse_address():
    assert parse_address("127.0.0.1:7001") == ("127.0.0.1", 7001)
    assert parse_address("[::1]:7001") == ("::1", 7001)
    assert parse_address("node-1.example:80") == ("node-1.example", 80)
    assert parse_address("::1:7001") == ("::1", 7001)
    for bad in ("", "7001", ":7001", "h:", "h:x", "h:0", "h:65536", None, "h:7101;2=h:7102",
                "a b:1", "[h]:1", "-h:1", "h..x:1", "h:١٢"):
        with pytest.raises(ValueError):
            parse_address(bad)


@tcp_test
async def test_node_without_a_usable_address_fails_its_rpcs():
    net = TcpNetwork()
    for node in (None, Node(""), Node("no-port"), Node("host:99999")):
        with pytest.raises(NetworkError, match="cannot be reached"):
            await net.client(2, node).vote(VoteRequest(1, 1, 0, 0))


# ------------------------------------------------------------ peer down / up

@tcp_test
async def test_rpc_to_a_down_peer_fails_fast_while_backing_off():
    async with fake_server() as (server, fake, node):
        pass                             # the port is free again: nobody listens
    client = TcpNetwork(rpc_timeout=GUARD).client(1, node)
    try:
        with pytest.raises(NetworkError, match="cannot connect"):
            await client.vote(VoteRequest(1, 1, 0, 0))
        # Backing off: the next call raises without ever suspending (no
        # connect attempt, no waiting for a timeout).
        coro = client.vote(VoteRequest(2, 1, 0, 0))
        with pytest.raises(NetworkError, match="next connection attempt in"):
            coro.send(None)
    finally:
        await client.close()


@tcp_test
async def test_reconnect_backoff_is_capped_at_the_nodes_heartbeat():
    """However often a peer fails, the wait before the next connect stays
    within the heartbeat interval of the node using the network: a peer that
    comes back hears a heartbeat long before its election timeout."""
    config = make_config(1)
    net = TcpNetwork(rpc_timeout=GUARD)
    assert net.backoff_max == tcp_module.BACKOFF_MAX
    raft = await Raft.create(1, config, net, MemLogStore(), MemStateMachine())
    await raft.shutdown()
    assert net.backoff_max == config.heartbeat_interval < config.election_timeout_min
    async with fake_server() as (server, fake, node):
        pass                             # the port is free again: nobody listens
    client = net.client(2, node)
    channel = client._repl
    loop = asyncio.get_running_loop()
    try:
        for _ in range(8):               # uncapped, the back-off would reach 1 s
            with pytest.raises(NetworkError, match="cannot connect"):
                await channel._open()    # one connect attempt, as after each back-off
            # Backing off, for no longer than the cap.
            assert channel._retry_at > loop.time()
            assert channel._backoff <= config.heartbeat_interval
        assert channel._backoff == config.heartbeat_interval
    finally:
        await client.close()


@tcp_test
async def test_an_explicit_reconnect_backoff_must_be_below_the_election_timeout():
    config = make_config(1)
    with pytest.raises(ConfigError, match=r"reconnect_backoff_max \(0\.3\) must be below "
                                          r"election_timeout_min \(0\.3\)"):
        await Raft.create(1, config, TcpNetwork(reconnect_backoff_max=0.3), MemLogStore(),
                          MemStateMachine())
    net = TcpNetwork(reconnect_backoff_max=0.1)
    raft = await Raft.create(1, config, net, MemLogStore(), MemStateMachine())
    await raft.shutdown()
    assert net.backoff_max == 0.1           # given explicitly: kept
    with pytest.raises(ConfigError, match="reconnect_backoff_max must be a positive number"):
        TcpNetwork(reconnect_backoff_max=0)


@tcp_test
async def test_leader_reconnects_to_a_follower_whose_server_comes_back():
    async with TcpCluster() as c:
        await c.start(3, seed=2)
        nodes = c.all()
        leader = await stable_leader(nodes)
        follower = next(r for r in nodes if r is not leader)
        # The follower must not start elections while cut off.
        follower.runtime_config.elect(False)
        port = c.servers[follower.id].port
        await c.servers[follower.id].close()

        # While it is down an RPC to it fails with NetworkError, then fails
        # fast during back-off.
        probe = TcpNetwork().client(follower.id, Node(f"{HOST}:{port}"))
        try:
            with pytest.raises(NetworkError):
                await probe.vote(VoteRequest(0, 99, 0, 0))
            coro = probe.vote(VoteRequest(0, 99, 0, 0))
            with pytest.raises(NetworkError, match="unreachable"):
                coro.send(None)
        finally:
            await probe.close()

        # The other two go on committing; the follower gets none of it.
        before = follower.metrics.last_log_index
        top = await write_many([leader], clients=5, per_client=20, tag="down")
        assert follower.metrics.last_log_index == before < top
        assert leader.metrics.state == LEADER

        # Back on the same port: the leader's client reconnects by itself.
        c.servers[follower.id] = await RaftServer.start(follower, HOST, port)
        assert c.servers[follower.id].port == port
        await follower.wait(GUARD).applied_index_at_least(top)
        follower.runtime_config.elect(True)
        await assert_same_everywhere(nodes, top)


@tcp_test
async def test_lagging_follower_catches_up_by_snapshot_over_tcp():
    async with TcpCluster() as c:
        await c.start(3, seed=4, snapshot_policy=SnapshotPolicy.logs_since_last(200),
                      max_in_snapshot_log_to_keep=10, snapshot_max_chunk_size=4096)
        nodes = c.all()
        leader = await stable_leader(nodes)
        follower = next(r for r in nodes if r is not leader)
        follower.runtime_config.elect(False)
        port = c.servers[follower.id].port
        await c.servers[follower.id].close()
        await write_many([leader], clients=10, per_client=80, tag="snap")
        await leader.wait(GUARD).metrics(
            lambda m: m.purged is not None and m.purged.index > follower.metrics.last_log_index,
            "the leader purged entries the follower lacks")
        c.servers[follower.id] = await RaftServer.start(follower, HOST, port)
        m = await follower.wait(GUARD).applied_index_at_least(leader.metrics.last_applied_index)
        assert m.snapshot is not None, "the follower should have caught up by a snapshot"
        follower.runtime_config.elect(True)
        top = await write_many(nodes, clients=2, per_client=10, tag="after")
        await asyncio.gather(*(r.wait(GUARD).applied_index_at_least(top) for r in nodes))
        for r in nodes:
            assert r.state_machine.data == leader.state_machine.data, f"node {r.id} diverged"


@tcp_test
async def test_leadership_transfer_over_tcp():
    async with TcpCluster() as c:
        await c.start(3, seed=6)
        nodes = c.all()
        old = await stable_leader(nodes)
        target = next(r for r in nodes if r is not old)
        term = old.metrics.current_term
        old.trigger.transfer_leader(target.id)
        m = await target.wait(GUARD).state(LEADER)
        assert m.current_term > term
        top = await write_many(nodes, clients=2, per_client=10, tag="moved")
        await assert_same_everywhere(nodes, top)


# ---------------------------------------------------------------------- TLS

@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    """A CA, a server certificate for 127.0.0.1 and a client certificate, as PEM files."""
    x509 = pytest.importorskip("cryptography.x509")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    d = tmp_path_factory.mktemp("certs")
    now = datetime.datetime.now(datetime.timezone.utc)

    def name(cn):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def issue(subject, key, issuer, issuer_key, ca=False, san=None, usage=None):
        b = (x509.CertificateBuilder().subject_name(name(subject)).issuer_name(name(issuer))
             .public_key(key.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(now - datetime.timedelta(days=1))
             .not_valid_after(now + datetime.timedelta(days=1))
             .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if san is not None:
            b = b.add_extension(x509.SubjectAlternativeName(san), critical=False)
        if usage is not None:
            b = b.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        return b.sign(issuer_key, hashes.SHA256())

    def write(stem, cert, key):
        (d / f"{stem}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (d / f"{stem}.key").write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = issue("raftcore test CA", ca_key, "raftcore test CA", ca_key, ca=True)
    srv_key = ec.generate_private_key(ec.SECP256R1())
    srv = issue("127.0.0.1", srv_key, "raftcore test CA", ca_key,
                san=[x509.IPAddress(ipaddress.ip_address(HOST))],
                usage=ExtendedKeyUsageOID.SERVER_AUTH)
    cli_key = ec.generate_private_key(ec.SECP256R1())
    cli = issue("raftcore node", cli_key, "raftcore test CA", ca_key,
                usage=ExtendedKeyUsageOID.CLIENT_AUTH)
    write("ca", ca, ca_key)
    write("server", srv, srv_key)
    write("client", cli, cli_key)
    return d


def server_context(certs, require_client_cert: bool = False) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(certs / "server.pem", certs / "server.key")
    if require_client_cert:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(certs / "ca.pem")
    return ctx


def client_context(certs, with_cert: bool = False) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)      # verifies the chain and the host
    ctx.load_verify_locations(certs / "ca.pem")
    if with_cert:
        ctx.load_cert_chain(certs / "client.pem", certs / "client.key")
    return ctx


def test_tls_cluster_replicates_and_refuses_plaintext(certs):
    @tcp_test
    async def body():
        async with TcpCluster() as c:
            await c.start(3, seed=3, server_ssl=server_context(certs),
                          client_ssl=client_context(certs))
            nodes = c.all()
            await stable_leader(nodes)
            top = await write_many(nodes, clients=10, per_client=20, tag="tls")
            await assert_same_everywhere(nodes, top)

            node = Node(f"{HOST}:{c.servers[1].port}")
            plain = TcpNetwork(rpc_timeout=GUARD).client(1, node)
            try:
                with pytest.raises(NetworkError):
                    await plain.vote(VoteRequest(0, 99, 0, 0))
            finally:
                await plain.close()
            # A TLS client that does not trust the server's CA is refused too.
            untrusting = TcpNetwork(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT),
                                    rpc_timeout=GUARD).client(1, node)
            try:
                with pytest.raises(NetworkError, match="CERTIFICATE_VERIFY_FAILED"):
                    await untrusting.vote(VoteRequest(0, 99, 0, 0))
            finally:
                await untrusting.close()
            # The cluster goes on over TLS.
            top = await write_many(nodes, clients=2, per_client=5, tag="after")
            await assert_same_everywhere(nodes, top)
    body()


def test_tls_client_cannot_talk_to_a_plaintext_server(certs):
    @tcp_test
    async def body():
        with LogWatch() as watch:
            async with fake_server() as (server, fake, node):
                client = TcpNetwork(client_context(certs), rpc_timeout=GUARD).client(1, node)
                try:
                    with pytest.raises(NetworkError):
                        await client.vote(VoteRequest(0, 99, 0, 0))
                finally:
                    await client.close()
                # The server saw a TLS ClientHello: not a frame of its protocol.
                await watch.wait("unknown wire version")
                assert fake.arrived == []
    body()


def test_mutual_tls_requires_a_client_certificate(certs):
    @tcp_test
    async def body():
        async with fake_server(ssl=server_context(certs, require_client_cert=True)) as (
                server, fake, node):
            with_cert = TcpNetwork(client_context(certs, with_cert=True),
                                   rpc_timeout=GUARD).client(1, node)
            without = TcpNetwork(client_context(certs), rpc_timeout=GUARD).client(1, node)
            try:
                assert (await with_cert.append_entries(ae(1, 2))).matched == 2
                with pytest.raises(NetworkError):
                    await without.append_entries(ae(2, 3))
                assert fake.arrived == [1]
                assert (await with_cert.append_entries(ae(3, 4))).matched == 4
            finally:
                await with_cert.close()
                await without.close()
    body()


@tcp_test
async def test_the_channel_carries_plain_values_without_raft_messages():
    """framing and channel know no Raft: a Channel with identity encode/decode
    calls a server's service with plain msgpack values (as a kv client
    would), pipelined, and a failing service raises NetworkError."""
    async def echo(msg):
        return {"echo": msg[1:]}

    async def fail(msg):
        raise ValueError("no such key")

    server = await RaftServer.start(FakeRaft(), HOST, 0, services={70: echo, 71: fail})
    settings = types.SimpleNamespace(rpc_timeout=GUARD, connect_timeout=GUARD,
                                     max_frame_size=1 << 20, ssl=None, secret=None,
                                     cluster_id=None, backoff_max=1.0)
    plain = lambda value: value     # noqa: E731
    channel = Channel(settings, "kv", HOST, server.port, f"{HOST}:{server.port}",
                      encode=plain, decode=plain)
    try:
        replies = await asyncio.gather(*(channel.call([70, i, b"x"], None) for i in range(5)))
        assert replies == [{"echo": [i, b"x"]} for i in range(5)]
        with pytest.raises(NetworkError, match="ValueError: no such key"):
            await channel.call([71], None)
        assert (await channel.call([70], None)) == {"echo": []}
    finally:
        await channel.close()
        await server.close()
