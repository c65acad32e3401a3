"""Shared-secret authentication of TcpNetwork / RaftServer connections.

A server started with `secret=` hands nothing to its node before the peer
has answered a fresh challenge with an HMAC of the secret; the client checks
the server's own proof before sending anything. These tests drive the
handshake with real clients and with raw sockets playing the attacker, and
use a stub node that records every call, so "never handled" is checked, not
assumed.

Every test body is a coroutine run on a fresh uvloop loop, failing the test
if anything reached the loop's exception handler. Waiting is on conditions
(a handler called, a log record, a connection closed); the timeouts given
are failure guards, except where a timeout is the behaviour under test.
"""
from __future__ import annotations

import asyncio
import datetime
import hashlib
import hmac
import ipaddress
import ssl
import struct

import msgpack
import pytest

from log_watch import LogWatch
from async_runner import async_test, run_guarded
from test_tcp import nowait_future
from raftcore import Config, Node, Raft
from raftcore.codec import encode_message
from raftcore.errors import ConfigError, ForwardToLeader, NetworkError, OutcomeUnknown
from raftcore.messages import (AppendEntriesRequest, AppendEntriesResponse,
                               InstallSnapshotRequest, InstallSnapshotResponse, SnapshotMeta,
                               TransferLeaderRequest, VoteRequest, VoteResponse)
from raftcore.network import RaftServer, TcpNetwork
from raftcore.network.base import RaftNode
from raftcore.network.tcp import WIRE_VERSION
from raftcore.storage import MemLogStore, MemStateMachine

HOST = "127.0.0.1"
GUARD = 10.0            # failure guard for a condition that should hold promptly
TEST_GUARD = 60.0       # whole-test guard
SECRET = b"correct horse battery staple, 32b"


def auth_test(fn):
    """Runs an async test body on a fresh uvloop loop with a whole-test guard;
    fails if the loop's exception handler was called."""
    return async_test(TEST_GUARD, loop_errors_fail=True)(fn)


# ------------------------------------------------------------------ helpers

class RecordingRaft(RaftNode):
    """A stub node: answers every RPC and records (kind, term) of each call,
    so a test can tell whether anything reached it."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []
        self._waiters: list[tuple[int, asyncio.Future]] = []

    def _record(self, kind: str, term: int) -> None:
        self.calls.append((kind, term))
        for w in list(self._waiters):
            if len(self.calls) >= w[0] and not w[1].done():
                w[1].set_result(None)
                self._waiters.remove(w)

    async def until_calls(self, n: int) -> None:
        if len(self.calls) >= n:
            return
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append((n, fut))
        try:
            await asyncio.wait_for(fut, GUARD)
        except asyncio.TimeoutError:
            raise AssertionError(f"expected {n} calls, got {self.calls}") from None

    async def append_entries(self, req):
        self._record("append_entries", req.term)
        return AppendEntriesResponse(req.term, True, req.prev_log_index)

    def append_entries_nowait(self, req, reply):
        self._record("append_entries_nowait", req.term)
        reply(AppendEntriesResponse(req.term, True, req.prev_log_index), None)
        return True

    async def vote(self, req):
        self._record("vote", req.term)
        return VoteResponse(req.term, True, 99)

    async def install_snapshot(self, req):
        self._record("install_snapshot", req.term)
        return InstallSnapshotResponse(req.term)

    async def transfer_leader(self, req) -> None:
        self._record("transfer_leader", req.term)


class stub_server:
    """async with stub_server(secret=...) as (server, raft, node)."""

    def __init__(self, **kw) -> None:
        self.kw = kw

    async def __aenter__(self):
        self.raft = RecordingRaft()
        self.server = await RaftServer.start(self.raft, HOST, 0, **self.kw)
        return self.server, self.raft, Node(f"{HOST}:{self.server.port}")

    async def __aexit__(self, *exc) -> None:
        await self.server.close()


def frame(obj) -> bytes:
    body = msgpack.packb(obj, use_bin_type=True)
    return struct.pack(">IB", len(body) + 1, WIRE_VERSION) + body


def request(rid: int, msg) -> bytes:
    return frame([rid, encode_message(msg)])


async def read_frame(reader: asyncio.StreamReader):
    size, version = struct.unpack(">IB", await asyncio.wait_for(reader.readexactly(5), GUARD))
    assert version == WIRE_VERSION
    return msgpack.unpackb(await asyncio.wait_for(reader.readexactly(size - 1), GUARD),
                           raw=False)


async def read_to_eof(reader: asyncio.StreamReader) -> bytes:
    """Everything until the peer closes (the guard fails a peer that never does)."""
    return await asyncio.wait_for(reader.read(), GUARD)


def vote(term: int) -> VoteRequest:
    return VoteRequest(term, 1, 0, 0)


def ae(term: int) -> AppendEntriesRequest:
    return AppendEntriesRequest(term, 1, 0, 0, [], 0)


def snapshot_chunk(term: int) -> InstallSnapshotRequest:
    return InstallSnapshotRequest(term, 1, SnapshotMeta(1, 5, None, "s-1"), 0, b"chunk", True)


async def close_writer(writer: asyncio.StreamWriter) -> None:
    writer.close()
    try:
        await writer.wait_closed()
    except (ConnectionError, OSError):
        pass


# ---------------------------------------------------------- working secrets

@auth_test
async def test_every_rpc_kind_works_with_the_shared_secret_on_both_connections():
    with LogWatch() as logs:
        async with stub_server(secret=SECRET) as (server, raft, node):
            client = TcpNetwork(secret=SECRET, rpc_timeout=GUARD).client(1, node)
            try:
                assert (await client.vote(vote(3))).term == 3
                assert (await client.append_entries(ae(4))).matched == 0
                # The fast path is open once the connection is authenticated.
                pending = nowait_future(client, ae(5))
                assert pending is not None and (await pending).term == 5
                assert await client.transfer_leader(TransferLeaderRequest(6, 1, 0)) is None
                # InstallSnapshot opens the second (snapshot) connection: it
                # authenticates too.
                assert (await client.install_snapshot(snapshot_chunk(7))).term == 7
                assert server.connections == 2
                assert [c[1] for c in raft.calls] == [3, 4, 5, 6, 7]
            finally:
                await client.close()
        assert not logs.records, logs.messages()


@auth_test
async def test_a_str_secret_is_its_utf8_bytes():
    async with stub_server(secret=SECRET.decode()) as (server, raft, node):
        client = TcpNetwork(secret=SECRET, rpc_timeout=GUARD).client(1, node)
        try:
            assert (await client.vote(vote(2))).granted
        finally:
            await client.close()
    assert raft.calls == [("vote", 2)]


@pytest.mark.parametrize("bad", [b"", "", 42, ["x"]])
def test_a_bad_secret_is_a_config_error(bad):
    with pytest.raises(ConfigError, match="secret"):
        TcpNetwork(secret=bad)

    async def start():
        await RaftServer.start(RecordingRaft(), HOST, 0, secret=bad)
    with pytest.raises(ConfigError, match="secret"):
        run_guarded(start(), TEST_GUARD)


async def wait_for_leader(rafts: list) -> Raft:
    """The node every given node names as its leader in one term."""
    r0 = rafts[0]
    while True:
        m = await r0.wait(GUARD).metrics(lambda m: m.current_leader is not None, "a leader")
        lid, term = m.current_leader, m.current_term
        try:
            await asyncio.gather(*(r.wait(GUARD).metrics(
                lambda m: m.current_leader == lid and m.current_term == term,
                f"following {lid} in term {term}") for r in rafts))
            return next(r for r in rafts if r.id == lid)
        except Exception:
            if r0.metrics.current_term == term:   # no newer election: a real failure
                raise


async def write(rafts: list, cmd):
    leader = await wait_for_leader(rafts)
    while True:
        try:
            return await leader.client_write(cmd)
        except (ForwardToLeader, OutcomeUnknown):      # a set is safe to repeat
            leader = await wait_for_leader(rafts)


class SecretCluster:
    """Three Raft nodes on MemLogStore over TCP, node i with secrets[i] on
    both its sides; servers on ephemeral ports."""

    def __init__(self, secrets: dict) -> None:
        self.secrets = secrets
        self.rafts: dict = {}
        self.servers: dict = {}

    async def __aenter__(self) -> "SecretCluster":
        for i, secret in self.secrets.items():
            config = Config(heartbeat_interval=0.03, election_timeout_min=0.3,
                            election_timeout_max=0.6, seed=40 + i)
            net = TcpNetwork(secret=secret, rpc_timeout=config.rpc_timeout)
            self.rafts[i] = await Raft.create(i, config, net, MemLogStore(), MemStateMachine())
            self.servers[i] = await RaftServer.start(self.rafts[i], HOST, 0, secret=secret)
        await self.rafts[1].initialize(
            {i: Node(f"{HOST}:{s.port}") for i, s in self.servers.items()})
        return self

    async def __aexit__(self, *exc) -> None:
        for r in self.rafts.values():
            await r.shutdown()
        for s in self.servers.values():
            await s.close()

    async def write_and_check(self, ids: list, n: int) -> None:
        """n writes through the leader among `ids`; all of `ids` apply them."""
        nodes = [self.rafts[i] for i in ids]
        last = None
        for k in range(n):
            last = await write(nodes, ["set", f"k{k}", k])
        await asyncio.gather(*(r.wait(GUARD).applied_index_at_least(last.log_id.index)
                               for r in nodes))
        for r in nodes:
            assert r.state_machine.data == {f"k{k}": k for k in range(n)}, r.id


@auth_test
async def test_a_cluster_sharing_a_secret_replicates_to_every_node():
    with LogWatch() as logs:
        async with SecretCluster({1: SECRET, 2: SECRET, 3: SECRET}) as c:
            # Every node applies every write: the leader's connections to
            # both followers authenticated.
            await c.write_and_check([1, 2, 3], 30)
        assert not [m for m in logs.messages() if "authentication" in m], logs.messages()


@auth_test
async def test_a_node_with_another_secret_is_shut_out_of_the_cluster():
    """Nodes 1 and 2 share the secret; node 3 has another one. 1 and 2 form
    the quorum and commit; every connection between them and node 3 is
    refused in both directions, so node 3 never receives a single entry."""
    with LogWatch() as logs:
        async with SecretCluster({1: SECRET, 2: SECRET, 3: b"another cluster's secret"}) as c:
            await c.write_and_check([1, 2], 30)
            # The leader tried node 3 and was refused, by node 3's server
            # (wrong proof) and then by its own client (a refused handshake).
            await logs.wait("authentication failed: the peer's proof does not match")
            await logs.wait("the server refused our proof")
            m3 = c.rafts[3].metrics
            assert m3.last_log_index in (0, None), m3
            assert not c.rafts[3].state_machine.data


# ------------------------------------------------------- refused connections

@auth_test
async def test_a_client_without_the_secret_gets_no_request_handled():
    with LogWatch() as logs:
        async with stub_server(secret=SECRET) as (server, raft, node):
            client = TcpNetwork(rpc_timeout=GUARD).client(1, node)
            try:
                with pytest.raises(NetworkError):
                    await client.vote(vote(3))
            finally:
                await client.close()
            # The server refused the request frame as a handshake answer, or
            # the client, taking the challenge for a malformed reply, closed
            # first: either way the connection closed unauthenticated.
            await logs.wait("closing the connection from")
            await logs.wait("authentication failed")
            assert raft.calls == []


@auth_test
async def test_raw_requests_ignoring_the_challenge_are_never_handled():
    """An attacker that skips the handshake and pipelines requests of every
    kind, small and large, gets the challenge and a closed connection."""
    with LogWatch() as logs:
        async with stub_server(secret=SECRET) as (server, raft, node):
            for payload in (request(1, vote(5)),
                            request(1, ae(5)) + request(2, snapshot_chunk(5)),
                            request(1, AppendEntriesRequest(5, 1, 0, 0, [], 0)) * 50,
                            struct.pack(">IB", 30_000_000, WIRE_VERSION) + b"\0" * 100):
                reader, writer = await asyncio.open_connection(HOST, server.port)
                writer.write(payload)
                got = await read_to_eof(reader)
                await close_writer(writer)
                # All it received is the challenge frame.
                size = struct.unpack(">I", got[:4])[0]
                assert len(got) == 4 + size
                assert msgpack.unpackb(got[5:])[:3] == ["raftcore-auth", 1, "challenge"]
            assert raft.calls == []
            assert sum("authentication failed" in m for m in logs.messages()) == 4
            assert server.connections == 0


@auth_test
async def test_a_client_with_a_wrong_secret_gets_no_request_handled():
    with LogWatch() as logs:
        async with stub_server(secret=SECRET) as (server, raft, node):
            client = TcpNetwork(secret=b"not the secret", rpc_timeout=GUARD).client(1, node)
            try:
                with pytest.raises(NetworkError, match="authentication failed"):
                    await client.vote(vote(3))
                with pytest.raises(NetworkError):
                    await client.install_snapshot(snapshot_chunk(4))
            finally:
                await client.close()
            await logs.wait("the peer's proof does not match this node's secret")
            assert raft.calls == []


@auth_test
async def test_a_replayed_handshake_is_refused():
    """A man in the middle records everything a genuine client sends (its
    handshake answer and a Vote request) and replays it on a connection of
    its own: the server's new challenge makes the recorded answer worthless."""
    with LogWatch() as logs:
        async with stub_server(secret=SECRET) as (server, raft, node):
            recorded = bytearray()

            async def relay(src, dst, record: bool):
                try:
                    while data := await src.read(65536):
                        if record:
                            recorded.extend(data)
                        dst.write(data)
                finally:
                    dst.close()

            async def proxy_conn(c_reader, c_writer):
                s_reader, s_writer = await asyncio.open_connection(HOST, server.port)
                await asyncio.gather(relay(c_reader, s_writer, True),
                                     relay(s_reader, c_writer, False),
                                     return_exceptions=True)
            proxy = await asyncio.start_server(proxy_conn, HOST, 0)
            port = proxy.sockets[0].getsockname()[1]
            client = TcpNetwork(secret=SECRET, rpc_timeout=GUARD).client(1, Node(f"{HOST}:{port}"))
            try:
                assert (await client.vote(vote(7))).term == 7
            finally:
                await client.close()
            proxy.close()
            await proxy.wait_closed()
            assert raft.calls == [("vote", 7)]
            # The recording holds the answer and the request.
            assert recorded.startswith(b"\0\0\0") and len(recorded) > 80

            reader, writer = await asyncio.open_connection(HOST, server.port)
            challenge = await read_frame(reader)
            assert challenge[:3] == ["raftcore-auth", 1, "challenge"]
            writer.write(bytes(recorded))
            assert await read_to_eof(reader) == b""      # no confirm, no reply
            await close_writer(writer)
            await logs.wait("the peer's proof does not match this node's secret")
            assert raft.calls == [("vote", 7)]


@auth_test
async def test_the_client_checks_the_servers_proof():
    """Mutual: a fake server without the secret cannot make a client send it
    requests, whether it makes up a proof or reflects the client's own."""
    for strategy in ("made_up", "reflected", "no_confirm"):
        seen: list[bytes] = []
        done = asyncio.get_running_loop().create_future()

        async def fake_server(reader, writer):
            try:
                nonce = b"\x01" * 32
                writer.write(frame(["raftcore-auth", 1, "challenge", nonce]))
                answer = await read_frame(reader)
                assert answer[:3] == ["raftcore-auth", 1, "answer"]
                if strategy == "made_up":
                    writer.write(frame(["raftcore-auth", 1, "confirm", hmac.new(
                        b"a guess", nonce + answer[3], hashlib.sha256).digest()]))
                elif strategy == "reflected":
                    writer.write(frame(["raftcore-auth", 1, "confirm", answer[4]]))
                else:
                    writer.close()
                seen.append(await read_to_eof(reader))
            finally:
                writer.close()
                if not done.done():
                    done.set_result(None)
        server = await asyncio.start_server(fake_server, HOST, 0)
        port = server.sockets[0].getsockname()[1]
        client = TcpNetwork(secret=SECRET, rpc_timeout=GUARD).client(1, Node(f"{HOST}:{port}"))
        try:
            with pytest.raises(NetworkError, match="authentication failed"):
                await client.vote(vote(3))
            await asyncio.wait_for(done, GUARD)
        finally:
            await client.close()
            server.close()
            await server.wait_closed()
        # After its answer, the client sent nothing: no request left it.
        assert seen == [b""], (strategy, seen)


@auth_test
async def test_a_client_with_a_secret_refuses_a_server_without_one():
    # The server never sends a challenge; the client gives up after its
    # connect_timeout (the behaviour under test) and sends no request.
    async with stub_server() as (server, raft, node):
        client = TcpNetwork(secret=SECRET, rpc_timeout=GUARD, connect_timeout=0.2).client(1, node)
        try:
            with pytest.raises(NetworkError, match="no shared-secret handshake"):
                await client.vote(vote(3))
        finally:
            await client.close()
    assert raft.calls == []


@auth_test
async def test_a_silent_connection_is_closed_after_auth_timeout():
    with LogWatch() as logs:
        async with stub_server(secret=SECRET, auth_timeout=0.2) as (server, raft, node):
            reader, writer = await asyncio.open_connection(HOST, server.port)
            assert (await read_frame(reader))[2] == "challenge"
            assert await read_to_eof(reader) == b""
            await close_writer(writer)
            await logs.wait("no handshake answer within 0.2s")
            assert raft.calls == [] and server.connections == 0


@auth_test
async def test_malformed_answers_are_refused():
    """Answers of the right shape but wrong content: a bad nonce length, a
    wrong handshake version, a wrong step, a proof for another nonce."""
    with LogWatch() as logs:
        async with stub_server(secret=SECRET) as (server, raft, node):
            async def attempt(make_answer) -> None:
                reader, writer = await asyncio.open_connection(HOST, server.port)
                challenge = await read_frame(reader)
                writer.write(make_answer(challenge[3]) + request(1, vote(9)))
                assert await read_to_eof(reader) == b""
                await close_writer(writer)

            def proof(snonce, cnonce, secret=SECRET):
                label = b"raftcore-auth/1 wire/%d client->server proof\x00" % WIRE_VERSION
                return hmac.new(secret, label + snonce + cnonce, hashlib.sha256).digest()
            cn = b"\x02" * 32
            await attempt(lambda sn: frame(["raftcore-auth", 1, "answer", cn[:16], proof(sn, cn)]))
            await attempt(lambda sn: frame(["raftcore-auth", 2, "answer", cn, proof(sn, cn)]))
            await attempt(lambda sn: frame(["raftcore-auth", 1, "confirm", cn, proof(sn, cn)]))
            await attempt(lambda sn: frame(["raftcore-auth", 1, "answer", cn,
                                            proof(b"\x00" * 32, cn)]))
            # The same construction with the right nonce is accepted: the
            # refusals above are about their defects, not the construction.
            reader, writer = await asyncio.open_connection(HOST, server.port)
            sn = (await read_frame(reader))[3]
            writer.write(frame(["raftcore-auth", 1, "answer", cn, proof(sn, cn)])
                         + request(1, vote(9)))
            assert (await read_frame(reader))[2] == "confirm"
            reply = await read_frame(reader)
            assert reply[0] == 1
            await close_writer(writer)
            assert raft.calls == [("vote", 9)]
            assert sum("authentication failed" in m for m in logs.messages()) == 4, \
                logs.messages()


# --------------------------------------------------------- with TLS as well

@pytest.fixture(scope="module")
def tls_contexts(tmp_path_factory):
    """(server context, client context) with a self-signed certificate for 127.0.0.1."""
    x509 = pytest.importorskip("cryptography.x509")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    d = tmp_path_factory.mktemp("authcerts")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, HOST)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(
                ipaddress.ip_address(HOST))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    (d / "c.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (d / "k.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                serialization.PrivateFormat.PKCS8,
                                                serialization.NoEncryption()))
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(d / "c.pem", d / "k.pem")
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.load_verify_locations(d / "c.pem")
    return server, client


def test_the_handshake_runs_inside_tls(tls_contexts):
    server_ctx, client_ctx = tls_contexts

    @auth_test
    async def body():
        async with stub_server(ssl=server_ctx, secret=SECRET) as (server, raft, node):
            good = TcpNetwork(client_ctx, secret=SECRET, rpc_timeout=GUARD).client(1, node)
            bad = TcpNetwork(client_ctx, secret=b"wrong", rpc_timeout=GUARD).client(1, node)
            try:
                assert (await good.vote(vote(4))).term == 4
                with pytest.raises(NetworkError, match="authentication failed"):
                    await bad.vote(vote(5))
            finally:
                await good.close()
                await bad.close()
            assert raft.calls == [("vote", 4)]
    body()
