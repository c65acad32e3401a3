"""`raftcore kv` as real processes on 127.0.0.1: a 3-node cluster with
FileLogStores in tmp_path, kill -9 of the leader, of a follower and of the
whole cluster under a stream of writes from `raftcore.kv.Client`, and the
exactly-once guarantee of retried writes.

Nodes run as `python -m raftcore.cli kv ...` with this process's environment
(so a PYTHONPATH pointing at an installed copy reaches them too), on ports
found free by binding port 0. Every wait is a poll of a condition with a
deadline (GUARD), which only turns a hang into a failure; nothing waits for a
fixed time, and nothing asserts on timing. Processes are killed in a finally
block (KvCluster's __exit__) whatever happens.

How "applied exactly once" shows: each writer keeps a counter key advanced
by compare-and-set (n -> n+1) and sets a fresh key per step; a retried write
answered by a second application would come back as a failed cas or as a
set whose previous value is not None. Every node also counts the commands it
applied to its map (`applied_commands`, deduplicated retries not counted),
which must equal the number of writes the clients had acknowledged, on every
node, after every kill and restart.
"""
from __future__ import annotations

import argparse
import asyncio
import pathlib
import re
import shlex
import signal
import struct
import subprocess
import sys

import msgpack
import pytest

from raftcore import kv
from raftcore.errors import ConfigError, StorageError
from raftcore.kv import Client, KvError, KvStateMachine, connection
from raftcore.messages import SnapshotMeta
from raftcore.network import RaftServer
from raftcore.network.base import RaftNode
from raftcore.network.tcp import WIRE_VERSION
from raftcore.types import ENTRY_NORMAL, Entry, LogId

from async_runner import run_guarded
from kv_harness import (GUARD, HOST, PHASE, TEST_GUARD, KvCluster, WriteStream, all_up,
                        free_ports, kv_test, node_cmd, serving, status_of, statuses, until,
                        wait_converged, wait_leader)
import test_tcp_auth

#: The self-signed certificate fixture of the transport's TLS tests.
tls_contexts = test_tcp_auth.tls_contexts

# ============================================================ the package

#: What `raftcore.kv` offered as one module, and still offers as a package.
KV_PUBLIC_NAMES = [
    "KV_WRITE", "KV_GET", "KV_STATUS", "OK", "REDIRECT", "UNAVAILABLE", "ERROR", "READ_INDEX",
    "LEASE", "STALE", "SESSION_CMD", "KV_SNAPSHOT_FORMAT", "write_request", "KvError",
    "KvStateMachine", "KvService", "Client", "build_parser", "parse_args", "main", "run_node"]


def test_the_package_exports_every_public_name_of_the_module_it_replaced():
    missing = [name for name in KV_PUBLIC_NAMES + kv.__all__ if not hasattr(kv, name)]
    assert missing == []


# =============================================================== arguments

@pytest.mark.parametrize("args, message", [
    (["--id", "4", "--dir", "d", "--peers", "1=127.0.0.1:7001,2=127.0.0.1:7002"],
     "--id 4 is not one of the nodes in --peers"),
    (["--id", "1", "--dir", "d", "--peers", "1=127.0.0.1"], "not of the form 'host:port'"),
    (["--id", "1", "--dir", "d", "--peers", "1:127.0.0.1:7001"], "is not ID=HOST:PORT"),
    (["--id", "1", "--dir", "d", "--peers", "1=127.0.0.1:7001,1=127.0.0.1:7002"],
     "node 1 is listed twice"),
    (["--id", "1", "--dir", "d", "--peers", "1=127.0.0.1:99999"], "out of range"),
    (["--id", "1", "--dir", "d", "--init", "--listen", "127.0.0.1:7001"], "--init needs --peers"),
    (["--id", "1", "--dir", "d"], "give --listen HOST:PORT, or --peers"),
    (["--id", "x", "--dir", "d", "--listen", "127.0.0.1:7001"], "expected an integer"),
    (["--id", "1", "--listen", "127.0.0.1:7001"], "--dir"),
    (["--id", "1", "--dir", "d", "--listen", "127.0.0.1:7001", "--secret-file", "/nonexistent"],
     "--secret-file: cannot read /nonexistent"),
    (["--id", "1", "--dir", "d", "--listen", "127.0.0.1:7001", "--election-timeout", "0.3,0.2"],
     "election_timeout_min (0.3) must be below election_timeout_max"),
    (["--id", "1", "--dir", "d", "--listen", "127.0.0.1:7001", "--election-timeout", "150,300"],
     "Config.election_timeout_min is in seconds; 150.0 s is over the 50 s limit "
     "(milliseconds? 150.0 ms is 0.15)"),
    (["--id", "1", "--dir", "d", "--listen", "127.0.0.1:7001", "--heartbeat", "nan"],
     "Config.heartbeat_interval must be a finite number, got nan"),
])
def test_bad_arguments_are_usage_errors(args, message, capsys):
    assert kv.main(args) == 2
    assert message in capsys.readouterr().err


def test_the_command_exits_2_on_a_bad_argument(tmp_path):
    r = subprocess.run(node_cmd("--id", "9", "--dir", str(tmp_path), "--peers",
                                "1=127.0.0.1:7001"),
                       capture_output=True, text=True, cwd=tmp_path, timeout=GUARD)
    assert r.returncode == 2, r
    assert "--id 9 is not one of the nodes in --peers" in r.stderr


@pytest.mark.parametrize("text, message", [
    # ';' for ',': the whole rest is taken for node 1's host and named.
    ("1=h:7101;2=h:7102", "node 1: node address 'h:7101;2=h:7102': host 'h:7101;2=h' "
                          "is not an IP address or a host name (it contains ':;='); separate "
                          "the nodes with ','"),
    ("1=127.0.0.1:7001,2=127.0.0.1:7001",
     "nodes 1 and 2 have the same address 127.0.0.1:7001"),
    ("1=Node-A:7001,2=node-a:7001", "nodes 1 and 2 have the same address node-a:7001"),
    ("1=127.0.0.1:70o1", "node 1: node address '127.0.0.1:70o1': port '70o1' is not "
                         "a number"),
    ("1=127.0.0.1:0", "node 1: node address '127.0.0.1:0': port 0 is out of range"),
    ("1=127.0.0.1:7001,2127.0.0.1:7002", "'2127.0.0.1:7002' is not ID=HOST:PORT "
                                         "(no '='"),
    ("x=127.0.0.1:7001", "'x=127.0.0.1:7001' is not ID=HOST:PORT: the id 'x' is not "
                         "an integer >= 0"),
    ("1=my host:7001", "host 'my host' is not an IP address or a host name (it contains ' ')"),
    ("1=[h]:7001", "host 'h' is not an IP address"),
    (",", "no ID=HOST:PORT given"),
])
def test_peers_flag_errors_name_the_bad_part(text, message):
    with pytest.raises(argparse.ArgumentTypeError) as err:
        kv.cli._parse_peers(text)
    assert message in str(err.value)


def test_peers_flag_accepts_names_and_addresses():
    assert kv.cli._parse_peers(" 1=127.0.0.1:7001, 2=[::1]:7001,3=node-3.example:7001,"
                               "4=db_4:7001,5=localhost.:7001,") == {
        1: "127.0.0.1:7001", 2: "[::1]:7001", 3: "node-3.example:7001", 4: "db_4:7001",
        5: "localhost.:7001"}


def test_the_command_names_the_bad_part_of_peers_and_exits_2(tmp_path):
    r = subprocess.run(node_cmd("--id", "1", "--dir", str(tmp_path / "n1"), "--peers",
                                "1=127.0.0.1:7101;2=127.0.0.1:7102", "--init"),
                       capture_output=True, text=True, cwd=tmp_path, timeout=GUARD)
    assert r.returncode == 2, r
    assert "argument --peers: node 1: node address '127.0.0.1:7101;2=127.0.0.1:7102'" \
        in r.stderr, r.stderr
    assert "separate the nodes with ','" in r.stderr
    assert not (tmp_path / "n1").exists()      # refused before anything was created


def test_pre_vote_and_check_quorum_are_on_unless_turned_off():
    base = ["--id", "1", "--dir", "d", "--listen", "127.0.0.1:7001"]
    config = kv.parse_args(base).config
    assert config.enable_pre_vote and config.check_quorum
    config = kv.parse_args(base + ["--no-pre-vote", "--no-check-quorum"]).config
    assert not config.enable_pre_vote and not config.check_quorum


# ========================================================== state machine

def session_entry(index: int, cid, seq: int, acked: int, cmd: list) -> Entry:
    return Entry(1, index, ENTRY_NORMAL, ["session", cid, seq, acked, cmd])


def test_state_machine_applies_a_session_write_once_and_replays_its_response():
    sm = KvStateMachine()
    e1 = session_entry(1, "a", 1, 1, ["cas", "x", None, 1])
    dup = session_entry(2, "a", 1, 1, ["cas", "x", None, 1])
    e3 = session_entry(3, "a", 2, 2, ["set", "y", "v"])
    stale = session_entry(4, "a", 1, 1, ["set", "y", "again"])
    bad = session_entry(5, "a", 3, 3, ["incr", "x"])
    assert sm.apply([e1, dup, e3, stale, bad]) == [
        ["ok", [True, 1]], ["ok", [True, 1]], ["ok", None],
        ["stale", "write 1 of client 'a' is older than what the client acknowledged (2); it "
                  "was not applied again"],
        ["error", "unknown write operation 'incr'; use set, delete or cas"]]
    assert sm.data == {"x": 1, "y": "v"}
    assert sm.applied_commands == 2
    # Only the responses not yet acknowledged are kept.
    assert sm.sessions["a"].floor == 3 and set(sm.sessions["a"].responses) == {3}


def test_state_machine_keeps_sessions_of_the_most_recent_clients():
    sm = KvStateMachine(max_sessions=2)
    sm.apply([session_entry(i, cid, 1, 1, ["set", cid, 1])
              for i, cid in enumerate(["a", "b", "a", "c"], 1)])
    assert list(sm.sessions) == ["a", "c"]


def test_snapshot_carries_sessions_and_survives_in_its_file(tmp_path):
    async def body():
        sm = await KvStateMachine.open(tmp_path)
        sm.apply([session_entry(1, "a", 1, 1, ["set", "k", b"\x00bytes"]),
                  session_entry(2, 7, 1, 1, ["cas", 5, None, [1, 2]])])
        loop = asyncio.get_running_loop()
        snap = await sm.build_snapshot(lambda fn, *a: loop.run_in_executor(None, fn, *a))
        # A node restarted from the file, and a follower sent the snapshot,
        # both deduplicate a retry of a write in it.
        restarted = await KvStateMachine.open(tmp_path)
        follower = KvStateMachine(tmp_path / "follower")
        await follower.install_snapshot(snap.meta, snap.data)
        reloaded = KvStateMachine(tmp_path / "follower")
        for other in (restarted, follower, reloaded):
            assert other.data == {"k": b"\x00bytes", 5: [1, 2]}
            assert other.last_applied == sm.last_applied
            assert other.applied_commands == 2
            assert other.apply([session_entry(3, 7, 1, 1, ["cas", 5, None, [1, 2]])]) == \
                [["ok", [True, [1, 2]]]]
            assert other.applied_commands == 2
    run_guarded(body(), TEST_GUARD)


def test_restarted_holds_only_the_snapshot_with_its_sessions(tmp_path):
    async def body():
        sm = KvStateMachine(tmp_path, max_sessions=3)
        sm.apply([session_entry(1, "a", 1, 1, ["set", "k", 1])])
        loop = asyncio.get_running_loop()
        await sm.build_snapshot(lambda fn, *a: loop.run_in_executor(None, fn, *a))
        sm.apply([session_entry(2, "a", 2, 2, ["set", "k", 2])])
        again = sm.restarted()
        assert type(again) is KvStateMachine
        assert (again.path, again.max_sessions) == (None, 3)
        assert again.data == {"k": 1} and again.last_applied == LogId(1, 1)
        assert again.apply([session_entry(2, "a", 1, 1, ["set", "k", 3])]) == [["ok", None]]
        assert again.data == {"k": 1} and again.deduplicated == 1
    run_guarded(body(), GUARD)


def test_a_damaged_snapshot_file_refuses_to_load(tmp_path):
    sm = KvStateMachine(tmp_path)
    meta = SnapshotMeta(1, 1, None, "s1")
    sm._save_file(meta, msgpack.packb({"format": 1, "items": [], "sessions": [],
                                       "applied_commands": 0, "deduplicated": 0}))
    assert KvStateMachine(tmp_path).last_applied is not None
    path = tmp_path / "snapshot"
    blob = bytearray(path.read_bytes())
    blob[-1] ^= 0xFF
    path.write_bytes(bytes(blob))
    with pytest.raises(StorageError, match="damaged"):
        KvStateMachine(tmp_path)
    # A temporary file of a write that never completed is ignored and removed.
    (tmp_path / "snapshot").unlink()
    (tmp_path / "snapshot.tmp").write_bytes(b"half a snapshot")
    assert KvStateMachine(tmp_path).last_applied is None
    assert not (tmp_path / "snapshot.tmp").exists()


def test_a_failed_snapshot_write_leaves_no_temporary_file(tmp_path):
    async def body():
        sm = KvStateMachine(tmp_path)
        sm.apply([session_entry(1, "a", 1, 1, ["set", "k", 1])])
        # A directory in the file's place: the rename over it fails.
        (tmp_path / "snapshot").mkdir()
        loop = asyncio.get_running_loop()
        with pytest.raises(StorageError, match="writing the snapshot .*snapshot failed"):
            await sm.build_snapshot(lambda fn, *a: loop.run_in_executor(None, fn, *a))
        assert not (tmp_path / "snapshot.tmp").exists()
        assert sm.durable_snapshot() is None
    run_guarded(body(), GUARD)


# ====================================================== the server's hook

class NoRaft(RaftNode):
    """A node for a RaftServer that serves only services."""
    id = 0

    async def append_entries(self, req):
        raise AssertionError("not a raft message")

    async def vote(self, req):
        raise AssertionError("not a raft message")


def test_raft_server_hands_service_messages_to_their_handlers():
    async def echo(msg):
        return ["echo", msg[1:]]

    async def fail(msg):
        raise ValueError("no such thing")

    def frame(obj) -> bytes:
        body = msgpack.packb(obj, use_bin_type=True)
        return struct.pack(">IB", len(body) + 1, WIRE_VERSION) + body

    async def read_reply(reader):
        size, _version = struct.unpack(">IB", await reader.readexactly(5))
        return msgpack.unpackb(await reader.readexactly(size - 1), raw=False)

    async def body():
        with pytest.raises(ConfigError, match="service message types must be integers >= 64"):
            await RaftServer.start(NoRaft(), HOST, 0, services={5: echo})
        server = await RaftServer.start(NoRaft(), HOST, 0, services={70: echo, 71: fail})
        try:
            reader, writer = await asyncio.open_connection(HOST, server.port)
            writer.write(frame([1, [70, "a", b"b"]]) + frame([2, [71]]))
            replies = {}
            for _ in range(2):
                r = await read_reply(reader)
                replies[r[0]] = r
            assert replies == {1: [1, ["echo", ["a", b"b"]]],
                               2: [2, None, "ValueError: no such thing"]}
            # A service type nobody serves closes the connection.
            writer.write(frame([3, [72]]))
            assert await reader.read() == b""
            writer.close()
        finally:
            await server.close()
    run_guarded(body(), TEST_GUARD)


# ================================================ the client's connection

def test_the_client_connection_pipelines_calls_and_fails_them_as_the_client_expects():
    """kv.connection over a RaftServer's services: replies matched by request
    id whatever their order, a handler's failure and a request that cannot
    be sent are KvErrors, a reply that never comes is a TimeoutError."""
    release = None

    async def held(msg):
        await release.wait()
        return ["held", msg[1]]

    async def echo(msg):
        return ["echo", msg[1]]

    async def fail(msg):
        raise ValueError("no such thing")

    async def body():
        nonlocal release
        release = asyncio.Event()
        server = await RaftServer.start(NoRaft(), HOST, 0, services={70: held, 71: echo,
                                                                      72: fail})
        conn = await connection.connect(f"{HOST}:{server.port}", GUARD, max_frame=1000)
        try:
            first = asyncio.ensure_future(conn.call([70, "a"], GUARD))
            assert await conn.call([71, "b"], GUARD) == ["echo", "b"]
            assert not first.done()
            with pytest.raises(KvError, match=r"failed to handle the request: ValueError: no "
                                              r"such thing"):
                await conn.call([72], GUARD)
            with pytest.raises(KvError, match="exceeds max_frame_size 1000"):
                await conn.call([71, b"x" * 1000], GUARD)
            with pytest.raises(KvError, match="cannot encode the request with msgpack"):
                await conn.call([71, object()], GUARD)
            with pytest.raises(asyncio.TimeoutError):
                await conn.call([70, "never released"], 0.01)
            release.set()
            assert await first == ["held", "a"]
            assert not conn.closed and conn.failure is None
        finally:
            await conn.close()
            await server.close()
        assert conn.closed
        with pytest.raises(connection.ConnectionLost, match="is closed"):
            await conn.call([71, "c"], GUARD)
    run_guarded(body(), TEST_GUARD, loop_errors_fail=True)


def test_the_client_connection_loses_its_calls_when_the_node_goes():
    async def read_then_close(reader, writer):
        await reader.readexactly(5)
        writer.close()

    async def body():
        server = await asyncio.start_server(read_then_close, HOST, 0)
        port = server.sockets[0].getsockname()[1]
        conn = await connection.connect(f"{HOST}:{port}", GUARD, max_frame=1000)
        try:
            with pytest.raises(connection.ConnectionLost, match="lost"):
                await conn.call([70], GUARD)
            assert conn.closed and conn.failure is None
        finally:
            await conn.close()
            server.close()
            await server.wait_closed()
    run_guarded(body(), TEST_GUARD, loop_errors_fail=True)


def test_the_client_connection_runs_the_shared_secret_handshake():
    async def echo(msg):
        return ["echo", msg[1]]

    async def body():
        server = await RaftServer.start(NoRaft(), HOST, 0, services={70: echo},
                                        secret=b"cluster secret")
        addr = f"{HOST}:{server.port}"
        try:
            conn = await connection.connect(addr, GUARD, secret=b"cluster secret",
                                            max_frame=1000)
            assert await conn.call([70, "a"], GUARD) == ["echo", "a"]
            await conn.close()
            with pytest.raises(KvError, match="authentication failed"):
                await connection.connect(addr, GUARD, secret=b"another", max_frame=1000)
            conn = await connection.connect(addr, GUARD, max_frame=1000)
            with pytest.raises(KvError, match="requires the cluster's shared secret"):
                await conn.call([70, "a"], GUARD)
            assert conn.closed and isinstance(conn.failure, KvError)
            with pytest.raises(KvError, match="requires the cluster's shared secret"):
                await conn.call([70, "a"], GUARD)
            await conn.close()
        finally:
            await server.close()
    run_guarded(body(), TEST_GUARD)


def test_the_client_connection_times_out_a_node_that_never_sends_the_handshake():
    async def silent(reader, writer):
        await reader.read()
        writer.close()

    async def body():
        server = await asyncio.start_server(silent, HOST, 0)
        port = server.sockets[0].getsockname()[1]
        try:
            with pytest.raises(connection.ConnectionLost, match="no shared-secret handshake"):
                await connection.connect(f"{HOST}:{port}", 0.05, secret=b"s", max_frame=1000)
        finally:
            server.close()
            await server.wait_closed()
    run_guarded(body(), TEST_GUARD)


def test_the_client_connection_speaks_tls_with_the_handshake_inside(tls_contexts):
    server_ctx, client_ctx = tls_contexts

    async def echo(msg):
        return ["echo", msg[1]]

    async def body():
        server = await RaftServer.start(NoRaft(), HOST, 0, server_ctx, services={70: echo},
                                        secret=b"cluster secret")
        addr = f"{HOST}:{server.port}"
        try:
            conn = await connection.connect(addr, GUARD, ssl=client_ctx,
                                            secret=b"cluster secret", max_frame=1000)
            assert await conn.call([70, "a"], GUARD) == ["echo", "a"]
            await conn.close()
            with pytest.raises(KvError, match="authentication failed"):
                await connection.connect(addr, GUARD, ssl=client_ctx, secret=b"another",
                                         max_frame=1000)
        finally:
            await server.close()
    run_guarded(body(), TEST_GUARD)


# ============================================================== processes

@kv_test
async def _basic(c: KvCluster) -> None:
    c.start_all()
    # Given one node (a follower, most likely), the client finds the others.
    client = Client(c.addrs[3], timeout=GUARD)
    try:
        await wait_leader(c)
        assert await client.set("a", 1) is None
        assert await client.set("a", 2) == 1
        assert await client.cas("a", 2, 3) == (True, 3)
        assert await client.cas("a", 2, 4) == (False, 3)
        assert await client.cas("new", None, "n") == (True, "n")
        assert await client.set(b"bin", {"v": [1, 2]}) is None
        assert await client.set(5, "five") is None
        assert await client.delete("gone") is None
        assert await client.set("gone", 1) is None
        assert await client.delete("gone") == 1
        assert await client.get("gone", "default") == "default"
        assert sorted(client.addresses) == sorted(c.addrs.values())
        expected = {"a": 3, "new": "n", b"bin": {"v": [1, 2]}, 5: "five"}
        for k, v in expected.items():
            assert await client.get(k) == v
            assert await client.get(k, lease=True) == v
        # A linearizable get sent to any node is answered (followers redirect).
        for addr in c.addrs.values():
            assert await client.get("a", node=addr) == 3
        with pytest.raises(KvError, match="a key must be"):
            await client.set(1.5, "x")
        await wait_converged(c, expected, applied_commands=10)
        # A second process on a running node's directory refuses to start.
        r = subprocess.run(node_cmd("--id", "1", "--dir", str(c.tmp / "n1"), "--listen",
                                    f"{HOST}:{free_ports(1)[0]}"),
                           capture_output=True, text=True, cwd=c.tmp, timeout=GUARD)
        assert r.returncode == 1 and "the directory is in use" in r.stderr, r

        # SIGTERM: a clean exit; a restart (with --init again on node 1,
        # which it ignores) finds everything.
        for i in c.ids:
            assert c.terminate(i) == 0, c.logs()
        c.start_all(init=True)
        await wait_leader(c)
        assert "already initialized; --init ignored" in c.log_text(1)
        for k, v in expected.items():
            assert await client.get(k) == v
        assert await client.set("a", 4) == 3
        expected["a"] = 4
        await wait_converged(c, expected, applied_commands=11)
    finally:
        await client.close()


def test_a_cluster_replicates_serves_and_restarts(tmp_path):
    with KvCluster(tmp_path) as c:
        _basic(c)


@kv_test
async def _retried(c: KvCluster) -> None:
    async with serving(c) as (client, _):
        cas = kv.write_request("retrying-client", 1, ["cas", "x", None, "first"], 1)
        first = await client._request(cas)
        again = await client._request(cas)
        assert first[1] == again[1] == [True, "first"]
        assert again[2] > first[2]            # a second log entry, not applied again
        assert (await client.status())["deduplicated"] == 1
        put = kv.write_request("retrying-client", 2, ["set", "y", 1], 1)
        assert (await client._request(put))[1] is None
        assert (await client._request(put))[1] is None
        # Acknowledging 2 (acked_below 3) drops both answers: a late copy of
        # write 1 is refused, not applied.
        assert (await client._request(
            kv.write_request("retrying-client", 3, ["set", "z", 1], 3)))[1] is None
        with pytest.raises(KvError, match="older than what the client acknowledged"):
            await client._request(kv.write_request("retrying-client", 1,
                                                   ["cas", "x", None, "first"], 1))
        await wait_converged(c, {"x": "first", "y": 1, "z": 1}, applied_commands=3)


def test_a_retried_write_is_applied_once(tmp_path):
    with KvCluster(tmp_path) as c:
        _retried(c)


@kv_test
async def _crash(c: KvCluster, victim: str) -> None:
    c.start_all()
    client = Client(c.addrs[2], timeout=GUARD, attempt_timeout=2.0)
    stream = None
    try:
        leader = await wait_leader(c)
        stream = WriteStream(client)
        await stream.acked_at_least(PHASE, c, "before the crash")
        if victim == "leader":
            victims = [leader]
        elif victim == "follower":
            victims = [min(i for i in c.ids if i != leader)]
        else:
            victims = list(c.ids)
            # Every node has a snapshot file, so the restarts load one.
            await until(lambda: _all_have_snapshots(c), "a snapshot on every node", c)
        for i in victims:
            c.kill(i)
        if victim == "follower":
            # The others purge their logs past the last entry the follower
            # can have: it must be caught up by a snapshot.
            live = await until(lambda: all_up(c, list(c.procs)), "the live nodes", c)
            last = max(s["last_log_index"] for s in live.values())
            await until(lambda: _purged_past(c, last),
                        f"the live nodes to purge past index {last} (the follower's log)", c)
        if victim != "all":
            await stream.acked_at_least(stream.acked + PHASE, c, f"with the {victim} down")
        for i in victims:
            c.start(i)
        await stream.acked_at_least(stream.acked + PHASE, c, f"after the {victim} restarted")
        await stream.stop()
        if victim != "follower":
            # The writes in flight at the kill were lost with their
            # connections and sent again.
            assert client.retries > 0
        await wait_converged(c, stream.expected(), applied_commands=stream.acked)
        if victim == "follower":
            assert "installed snapshot" in c.log_text(victims[0]), c.logs()
        if victim == "all":
            for i in c.ids:
                assert "loaded snapshot" in c.log_text(i), c.logs()
    finally:
        if stream is not None and not stream._stopping:
            stream._stopping = True
            for t in stream._tasks:
                t.cancel()
        await client.close()


async def _all_have_snapshots(c: KvCluster) -> bool:
    st = await statuses(c)
    return all(s is not None and s["snapshot"] for s in st.values())


async def _purged_past(c: KvCluster, index: int) -> bool:
    st = await statuses(c)
    return all(s is not None and s["purged"] > index for s in st.values())


@pytest.mark.parametrize("victim", ["leader", "follower", "all"])
def test_kill_9_under_writes_loses_no_acknowledged_write_and_applies_each_once(tmp_path, victim):
    with KvCluster(tmp_path) as c:
        _crash(c, victim)


@kv_test
async def _follower_restart(c: KvCluster) -> None:
    async with serving(c) as (client, leader):
        term = (await status_of(c.addrs[leader]))["term"]
        follower = min(i for i in c.ids if i != leader)
        for n in range(20):
            await client.set(f"before-{n}", n)
        c.kill(follower)
        for n in range(20):
            await client.set(f"while-down-{n}", n)
        # Down long enough for the leader's reconnect back-off to grow (to
        # 1 s uncapped, past the follower's election timeout).
        gone = f"node {follower} at {c.addrs[follower]} still unreachable"
        await until(lambda: _logged(c, leader, gone, 4),
                    f"the leader to fail to reconnect to node {follower} 4 more times", c)
        target = (await status_of(c.addrs[leader]))["committed"]
        c.start(follower)                 # the same command, the same directory

        async def caught_up():
            s = await status_of(c.addrs[follower])
            return s if s is not None and s["applied"] >= target else None
        await until(caught_up, f"node {follower} to rejoin and apply up to {target}", c)
        for n in range(20):
            await client.set(f"after-{n}", n)
        st = await statuses(c)
        for i, s in st.items():
            assert (s["leader"], s["term"]) == (leader, term), (
                f"node {i} reports leader {s['leader']} in term {s['term']}, the cluster had "
                f"leader {leader} in term {term} before node {follower} restarted\n{c.logs()}")
        assert st[leader]["state"] == "LEADER"
        await wait_converged(c, {**{f"{p}-{n}": n for p in ("before", "while-down", "after")
                                    for n in range(20)}}, applied_commands=60)


async def _logged(c: KvCluster, i: int, line: str, times: int) -> bool:
    return c.log_text(i).count(line) >= times


def test_a_restarted_follower_rejoins_without_deposing_the_leader(tmp_path):
    with KvCluster(tmp_path, extra=["--log-level", "DEBUG"]) as c:
        _follower_restart(c)


@kv_test
async def _secret(c: KvCluster) -> None:
    c.start_all()
    good = Client(c.addrs[1], secret=b"cluster secret", timeout=GUARD)
    wrong = Client(c.addrs[1], secret=b"another secret", timeout=GUARD)
    without = Client(c.addrs[1], timeout=GUARD)
    try:
        assert await good.set("k", "v") is None
        assert await good.get("k") == "v"
        with pytest.raises(KvError, match="authentication failed"):
            await wrong.get("k")
        with pytest.raises(KvError, match="requires the cluster's shared secret"):
            await without.get("k")
    finally:
        for client in (good, wrong, without):
            await client.close()


def test_a_cluster_with_a_shared_secret_serves_only_clients_holding_it(tmp_path):
    (tmp_path / "secret").write_bytes(b"cluster secret\n")
    with KvCluster(tmp_path, extra=["--secret-file", str(tmp_path / "secret")]) as c:
        _secret(c)


# ================================================================ README

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"


def test_the_readme_cluster_runs_as_written(tmp_path):
    """The README's 3-process section: its three commands and its Python,
    with free ports in place of 7001-7003 (and `python -m raftcore.cli` for
    the console script, which need not be on PATH here)."""
    text = README.read_text()
    section = text[text.index("## A 3-process cluster with raftcore kv"):]
    commands = re.search(r"```sh\n(.*?)```", section, re.S).group(1).strip().splitlines()
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    ports = dict(zip(("7001", "7002", "7003"), map(str, free_ports(3))))

    def local(s: str) -> str:
        return re.sub(r"\b700[123]\b", lambda m: ports[m.group(0)], s)

    assert len(commands) == 3
    procs = []
    try:
        for i, line in enumerate(commands):
            argv = shlex.split(local(line))
            assert argv[:2] == ["raftcore", "kv"], line
            with open(tmp_path / f"node{i}.log", "wb") as out:
                procs.append(subprocess.Popen(node_cmd(*argv[2:]), stdout=out,
                                              stderr=subprocess.STDOUT, cwd=tmp_path))
        (tmp_path / "client.py").write_text(local(code))
        r = subprocess.run([sys.executable, "client.py"], capture_output=True, text=True,
                           cwd=tmp_path, timeout=GUARD * 2)
        assert r.returncode == 0, r.stderr
        assert r.stdout.splitlines() == ["None", "(True, 'hi')", "hi", "hi", "LEADER"]
        assert all((tmp_path / f"n{i}" / "log").is_dir() for i in (1, 2, 3))
        for p in procs:
            p.send_signal(signal.SIGTERM)
        assert [p.wait(GUARD) for p in procs] == [0, 0, 0]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
