"""Commands that cannot travel are refused at the door (client_write), to
their caller alone, before they enter the log: a value msgpack cannot
encode, one that does not decode back (a map keyed by a tuple), one over
Config.max_command_bytes. Every node applies what the encoding decodes to.

The clusters write through FileLogStore (which encodes every entry) and over
TcpNetwork (which encodes every AppendEntries): before the door check, such a
command stopped the leader's store or stalled replication for good. The same
holds for a Node whose data goes into a membership entry.

Also here: a heartbeat and a vote answered while a large append is held by a
peer that reads no more of it (they travel on a connection of their own); a
request frame Python cannot hold answered with an error on a connection that
goes on; and `raftcore kv` processes refusing such values, and values over
--max-command-bytes, to that request alone and at once.
"""
from __future__ import annotations

import asyncio
import contextlib
import datetime
import struct

import msgpack
import pytest

from async_runner import run_guarded
from raftcore import Config, Node, ServerState, kv
from raftcore.codec import decode_message, encode_message
from raftcore.errors import ConfigError, InvalidCommand, NetworkError
from raftcore.messages import (AppendEntriesRequest, AppendEntriesResponse, VoteRequest,
                               VoteResponse)
from raftcore.kv import KvError
from raftcore.member_changes import ChangeMembers
from raftcore.network import TcpNetwork
from raftcore.network.tcp import WIRE_VERSION
from raftcore.storage.file import FileLogStore
from raftcore.types import ENTRY_NORMAL, Entry
from cluster_harness import (TEST_GUARD, Cluster, RecordingRouter, converge, members,
                             stable_leader, write_retry)
from test_tcp import nowait_future
from test_tcp import (GUARD, HOST, TcpCluster, assert_same_everywhere, fake_server, frame,
                      request_body, tcp_test, write_many)
from test_tcp import stable_leader as tcp_stable_leader
from kv_harness import KvCluster, kv_test, serving, wait_converged

BAD_COMMANDS = {
    "a datetime.date": (["set", "when", datetime.date(2024, 1, 1)], "datetime.date"),
    "a map keyed by a tuple": (["set", "m", {(1, 2): 3}], "unhashable type: 'list'"),
    "an int above 64 bits": (["set", "n", 2**70], "out of range"),
    "a lone surrogate": (["set", "s", "\ud800"], "surrogates not allowed"),
}


class file_cluster:
    """async with file_cluster(tmp_path, 3, seed) as c: nodes on FileLogStores."""

    def __init__(self, tmp_path, n: int, seed: int, **cfg) -> None:
        self.tmp, self.n = tmp_path, n
        self.cluster = Cluster(RecordingRouter(seed=seed), seed, cfg)
        self.stores: list[FileLogStore] = []

    async def __aenter__(self) -> Cluster:
        c = self.cluster
        try:
            for i in range(1, self.n + 1):
                self.stores.append(await FileLogStore.open(self.tmp / f"n{i}"))
                await c.add_node(i, log_store=self.stores[-1])
            await c[1].initialize(members(range(1, self.n + 1)))
        except BaseException:
            await self.__aexit__()
            raise
        return c

    async def __aexit__(self, *exc) -> None:
        try:
            await self.cluster.shutdown()
        finally:
            for s in self.stores:
                await s.close()


def run(body, *args) -> None:
    """Runs an async test body on a fresh uvloop loop, with a whole-test guard."""
    run_guarded(body(*args), TEST_GUARD)


@contextlib.asynccontextmanager
async def leading(tmp_path, seed: int, **cfg):
    """A 3-node FileLogStore cluster that has committed a write, and its leader."""
    async with file_cluster(tmp_path, 3, seed, **cfg) as c:
        await converge(c.all())
        yield c, await stable_leader(c.all())


@pytest.mark.parametrize("name", sorted(BAD_COMMANDS))
def test_a_command_that_cannot_travel_is_refused_and_the_cluster_goes_on(tmp_path, name):
    run(_refused_and_goes_on, tmp_path, *BAD_COMMANDS[name])


async def _refused_and_goes_on(tmp_path, cmd, why: str) -> None:
    async with leading(tmp_path, seed=11) as (c, leader):
        last = leader.metrics.last_log_index
        with pytest.raises(InvalidCommand, match="msgpack") as err:
            await leader.client_write(cmd)
        assert why in str(err.value)
        # Refused before the log: nothing appended, no node stopped, and the
        # next writes commit everywhere.
        assert leader.metrics.last_log_index == last
        await write_retry(c.all(), ["set", "after", 1])
        index = await converge(c.all())
        for r in c.all():
            assert r.metrics.state != ServerState.SHUTDOWN
            assert r.metrics.last_applied_index == index
            assert r.state_machine.data["after"] == 1
            assert cmd[1] not in r.state_machine.data


def test_one_bad_command_refuses_its_whole_batch_and_nothing_else(tmp_path):
    run(_bad_batch, tmp_path)


async def _bad_batch(tmp_path) -> None:
    async with leading(tmp_path, seed=12) as (c, leader):
        last = leader.metrics.last_log_index
        alone = asyncio.ensure_future(leader.client_write(["set", "alone", 1]))
        with pytest.raises(InvalidCommand, match=r"command 1 of the batch.*datetime\.date"):
            await leader.client_write_many([["set", "a", 1],
                                            ["set", "b", datetime.date(2024, 1, 1)]])
        assert (await alone).index == last + 1
        assert leader.metrics.last_log_index == last + 1
        assert "a" not in leader.state_machine.data


def test_every_node_applies_the_decoded_command_the_leader_included(tmp_path):
    run(_decoded_everywhere, tmp_path)


async def _decoded_everywhere(tmp_path) -> None:
    async with leading(tmp_path, seed=13) as (c, leader):
        await leader.client_write(("set", "t", (1, (2, 3))))
        await converge(c.all())
        for r in c.all():
            value = r.state_machine.data["t"]
            assert value == [1, [2, 3]] and type(value) is list, (r.id, value)


def test_a_command_over_max_command_bytes_is_refused(tmp_path):
    run(_too_large, tmp_path)


async def _too_large(tmp_path) -> None:
    async with leading(tmp_path, seed=14) as (c, leader):
        cap = leader.config.max_command_bytes
        assert cap == Config().max_command_bytes == 1536 * 1024
        last = leader.metrics.last_log_index
        with pytest.raises(InvalidCommand, match="max_command_bytes"):
            await leader.client_write(b"x" * cap)             # + its header: over
        with pytest.raises(InvalidCommand, match="max_command_bytes"):
            await leader.client_write(["set", "big", "x" * cap])
        with pytest.raises(InvalidCommand, match="command 1 of the batch.*max_command_bytes"):
            await leader.client_write_many([b"small", b"x" * (20 * 1024 * 1024)])
        assert leader.metrics.last_log_index == last
        # Bytes of cap - 5 encode to exactly cap (msgpack's bin 32 header is 5 bytes).
        resp = await leader.client_write(b"y" * (cap - 5))
        assert resp.index == last + 1


def test_a_node_whose_data_cannot_go_into_the_log_is_refused(tmp_path):
    run(_bad_node, tmp_path)


async def _bad_node(tmp_path) -> None:
    async with leading(tmp_path, seed=15) as (c, leader):
        last, before = leader.metrics.last_log_index, leader.metrics.membership
        with pytest.raises(InvalidCommand, match=r"node 4: .*datetime\.date"):
            await leader.add_learner(4, Node("n4", datetime.date(2024, 1, 1)), blocking=False)
        with pytest.raises(InvalidCommand, match=r"node 5: .*unhashable type: 'list'"):
            await leader.change_membership(ChangeMembers.add_voters({5: Node("n5", {(1, 2): 1})}))
        with pytest.raises(InvalidCommand, match=r"node 6: .*addr must be a str"):
            await leader.add_learner(6, Node(6), blocking=False)
        assert leader.metrics.last_log_index == last
        assert leader.metrics.membership == before
        # The membership path itself goes on.
        await leader.add_learner(4, Node("n4", {"zone": "a"}), blocking=False)
        index = await converge(c.all())
        for r in c.all():
            assert r.metrics.last_applied_index == index
            assert r.metrics.membership.nodes[4].data == {"zone": "a"}
        fresh = await c.add_node(9)
        with pytest.raises(InvalidCommand, match=r"node 9: .*set"):
            await fresh.initialize({9: Node("n9", {1, 2})})


def test_max_command_bytes_is_validated():
    with pytest.raises(ConfigError, match="max_command_bytes"):
        Config(max_command_bytes=0)
    with pytest.raises(ConfigError, match="max_command_bytes"):
        Config(max_command_bytes=1.5)
    assert Config(max_command_bytes=100).max_command_bytes == 100


@tcp_test
async def test_over_tcp_a_refused_command_leaves_replication_going():
    async with TcpCluster() as c:
        await c.start(3, seed=21, max_command_bytes=64 * 1024)
        nodes = c.all()
        leader = await tcp_stable_leader(nodes)
        for cmd, _ in BAD_COMMANDS.values():
            with pytest.raises(InvalidCommand):
                await leader.client_write(cmd)
        with pytest.raises(InvalidCommand, match="max_command_bytes"):
            await leader.client_write(["set", "big", b"x" * (64 * 1024)])
        top = await write_many(nodes, clients=4, per_client=20, tag="after")
        await assert_same_everywhere(nodes, top)


# ------------------------------------------------- heartbeats and large frames

#: A frame above this many bytes is held: its peer reads no more of that
#: connection once its header has come, as a link busy with it would.
HOLD_ABOVE = 1024 * 1024


class HoldingPeer:
    """A peer that answers AppendEntries and Vote requests at once, except
    that a connection bringing a frame over HOLD_ABOVE bytes is read no
    further from that frame on (`holding` is set): whatever was written
    behind it on that connection stays unread."""

    def __init__(self) -> None:
        self.holding = asyncio.Event()
        self.answered: list[str] = []
        self.transports: list[asyncio.Transport] = []

    def protocol(self) -> asyncio.Protocol:
        return _HoldingConnection(self)

    def close(self) -> None:
        for t in self.transports:
            t.abort()


class _HoldingConnection(asyncio.Protocol):
    def __init__(self, peer: HoldingPeer) -> None:
        self.peer = peer
        self.buf = bytearray()

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.peer.transports.append(transport)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while len(self.buf) >= 5:
            size, _ = struct.unpack_from(">IB", self.buf)
            if size > HOLD_ABOVE:
                self.transport.pause_reading()
                self.peer.holding.set()
                return
            if len(self.buf) < 4 + size:
                return
            rid, msg = msgpack.unpackb(bytes(self.buf[5:4 + size]), raw=False)
            del self.buf[:4 + size]
            self.answer(rid, decode_message(msg))

    def answer(self, rid: int, req) -> None:
        if type(req) is VoteRequest:
            resp = VoteResponse(req.term, True, 2)
            self.peer.answered.append("vote")
        else:
            resp = AppendEntriesResponse(req.term, True, req.prev_log_index, 0, 0)
            self.peer.answered.append("heartbeat" if not req.entries else "append")
        body = msgpack.packb([rid, encode_message(resp)], use_bin_type=True)
        self.transport.write(struct.pack(">IB", len(body) + 1, WIRE_VERSION) + body)


@tcp_test
async def test_a_heartbeat_and_a_vote_are_answered_while_a_large_append_is_held():
    peer = HoldingPeer()
    server = await asyncio.get_running_loop().create_server(peer.protocol, HOST, 0)
    port = server.sockets[0].getsockname()[1]
    client = TcpNetwork(rpc_timeout=GUARD).client(2, Node(f"{HOST}:{port}"))
    try:
        # 20 MB: more than the socket buffers take, so most of it waits in
        # the sender, as it does on a slow link.
        big = AppendEntriesRequest(1, 1, 0, 0, [Entry(1, 1, ENTRY_NORMAL, b"x" * 20_000_000)], 0)
        append = asyncio.ensure_future(client.append_entries(big))
        await asyncio.wait_for(peer.holding.wait(), GUARD)
        # The guard only turns a heartbeat stuck behind the frame into a failure.
        heartbeat = await asyncio.wait_for(
            client.append_entries(AppendEntriesRequest(1, 1, 0, 0, [], 0)), GUARD)
        vote = await asyncio.wait_for(client.vote(VoteRequest(2, 1, 0, 0)), GUARD)
        assert heartbeat.success and vote.granted
        assert peer.answered == ["heartbeat", "vote"]
        # The runtime's fast path takes the same connection.
        fast = nowait_future(client, AppendEntriesRequest(2, 1, 0, 0, [], 0))
        assert fast is not None and (await asyncio.wait_for(fast, GUARD)).success
        assert not append.done()
    finally:
        await client.close()
        peer.close()
        server.close()
        await server.wait_closed()
    with pytest.raises(NetworkError):
        await append


@tcp_test
async def test_a_request_python_cannot_hold_is_answered_with_an_error_on_a_live_connection():
    async with fake_server() as (server, fake, node):
        reader, writer = await asyncio.open_connection(HOST, server.port)
        try:
            # An AppendEntries whose payload is a map keyed by a list: valid
            # msgpack, but no Python dict can hold it.
            msg = encode_message(AppendEntriesRequest(1, 1, 0, 0, [Entry(1, 1, ENTRY_NORMAL)], 0))
            entries = next(f for f in msg if type(f) is list)   # [term, index, kind, payload]
            entries[3] = {"k": 1}
            body = msgpack.packb([7, msg], use_bin_type=True).replace(b"\xa1k", b"\x91\x01")
            writer.write(frame(body) + frame(request_body(8, AppendEntriesRequest(2, 1, 0, 0,
                                                                                   [], 0))))
            replies = [await read_reply(reader), await read_reply(reader)]
            assert replies[0][0] == 7 and replies[0][1] is None
            assert "cannot be decoded (unhashable type: 'list')" in replies[0][2]
            assert replies[1][0] == 8 and decode_message(replies[1][1]).success
            assert fake.arrived == [2] and server.connections == 1
        finally:
            writer.close()


async def read_reply(reader: asyncio.StreamReader) -> list:
    size, _ = struct.unpack(">IB", await asyncio.wait_for(reader.readexactly(5), GUARD))
    return msgpack.unpackb(await reader.readexactly(size - 1), raw=False)


# ------------------------------------------------------------ raftcore kv

def test_kv_refuses_a_value_the_node_cannot_hold_or_take_to_that_request_alone(tmp_path):
    with KvCluster(tmp_path, extra=["--max-command-bytes", "65536"]) as c:
        _kv_refusals(c)


@kv_test
async def _kv_refusals(c: KvCluster) -> None:
    async with serving(c) as (client, lid):
        assert await client.set("a", 1) is None
        retries, closed = client.retries, c.log_text(lid).count("closing the connection")
        # Encodes on the client, but its tuple key arrives as a list, which
        # no node can hold: the request is answered with an error at once.
        with pytest.raises(KvError, match=r"cannot be decoded \(unhashable type: 'list'\)"):
            await client.set("m", {(1, 2): 3})
        with pytest.raises(KvError, match="max_command_bytes"):
            await client.set("big", b"x" * 65536)
        with pytest.raises(KvError, match="datetime.date"):
            await client.set("when", datetime.date(2024, 1, 1))
        assert client.retries == retries
        # The same connection goes on serving this client.
        assert await client.set("a", 2) == 1
        assert await client.set("fits", b"y" * 60_000) is None
        assert c.log_text(lid).count("closing the connection") == closed, c.logs()
        await wait_converged(c, {"a": 2, "fits": b"y" * 60_000}, applied_commands=3)


def test_kv_max_command_bytes_must_be_positive():
    with pytest.raises(SystemExit):
        kv.parse_args(["--id", "1", "--dir", "d", "--listen", "127.0.0.1:1",
                       "--max-command-bytes", "0"])
    args = kv.parse_args(["--id", "1", "--dir", "d", "--listen", "127.0.0.1:1",
                          "--max-command-bytes", "4096"])
    assert args.config.max_command_bytes == 4096


def test_bench_measures_a_payload_above_the_default_command_cap(capsys):
    from raftcore import cli

    assert cli.main(["bench", "--clients", "1", "--ops", "4", "--payload", "2000000",
                     "--no-floor", "--no-progress", "--json"]) == 0
    assert '"clients": 1' in capsys.readouterr().out
