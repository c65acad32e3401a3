"""TCP transport: `TcpNetwork` (the sending side) and `RaftServer` (the serving side).

    net = TcpNetwork(ssl=client_ctx, rpc_timeout=config.rpc_timeout)
    raft = await Raft.create(1, config, net, log_store, state_machine)
    server = await RaftServer.start(raft, "127.0.0.1", 7001, ssl=server_ctx)
    ...                                   # initialize with Node("127.0.0.1:7001") etc.
    await raft.shutdown(); await server.close()

A Raft needs no peer address until it has a membership, so the natural order
is: create the Raft, start its server (port 0 picks a free port, read it back
from `server.port`), then initialize the cluster with the addresses.

Wire format, version 2. Every frame is

    length   4 bytes, big-endian: the number of bytes that follow it
    version  1 byte: WIRE_VERSION
    body     msgpack (binary type on, nothing pickled)

and a body is one of

    [request_id, message]          a request (client -> server) or its reply
    [request_id, None]             the reply of a handler that returns nothing
    [request_id, None, reason]     the server's handler raised: `reason` is its text

where `message` is what `raftcore.codec.encode_message` makes of an RPC
message, and `request_id` is an integer the client chose. Version 2 added
the identity field to every message (a request's cluster id, a response's
storage incarnation); a node answers a request of another cluster with an
error frame only. Requests carry
AppendEntries, Vote, InstallSnapshot or TransferLeader; replies carry the
matching response type (TransferLeader has none: `[request_id, None]`).

Services. An application may serve its own requests on the same port and
frames (`raftcore kv` serves its clients this way): `RaftServer.start(...,
services={type: handler})`. A message `[type, ...]` whose type is an integer
>= SERVICE_TYPE_MIN (raftcore's own RPCs use types below it) is handed, as
the decoded msgpack list, to `await handler(message)` in a task of its own;
whatever msgpack-able value it returns is the reply (`[request_id, value]`),
and an exception it raises is answered with an error frame. A service type
without a handler closes the connection like any unknown message.

Connections. A client keeps one connection per peer for replication
(AppendEntries carrying entries), a second one for control (heartbeats --
AppendEntries without entries --, Vote, TransferLeader), and opens a third,
on first use, for snapshot chunks (InstallSnapshot). Bytes on one connection
arrive in the order they were written, so a heartbeat written behind a
frame of megabytes of entries, or a snapshot chunk, would wait for all of
it: on a connection of its own it is never queued behind one, and a leader
sending large appends is not deposed for missing heartbeats. A heartbeat
overtaking an append is harmless: it only claims the entries the follower
has already acknowledged. Each connection has its own back-off.

Pipelining. A client sends every RPC on its connection as soon as it is
made (an AppendEntries from the runtime's `append_entries_nowait` fast path is
written before the call returns), each under a fresh request id; replies are
matched to waiting calls by id, so any number of requests are in flight at
once and the server may answer them in any order. Both sides cut frames out
of the bytes as they arrive, in the protocol's data_received (_FrameReader),
with no reader task to wake: a reply settles its call at once (the runtime's
fast path passes a callback, not a future), and the server steps the node for
each request in arrival order (an AppendEntries the node can take without
awaiting is answered at once, one that waits for the log flush from the
flush's completion; anything else runs in a task of its own, started in
arrival order) and keeps reading while a request waits (for a flush, a vote
save, ...), up to _MAX_HANDLING_PER_CONN requests in hand per connection,
past which it stops reading that peer until there is room. A frame is built
and parsed per message -- an AppendEntries carries its whole batch of
entries in one frame, encoded by one msgpack call.

Failures. A connection that fails, or a connect that fails, makes the peer
"backing off": the next attempt is allowed after 200 ms, doubling up to 1 s
while attempts keep failing, and reset once a reply arrives. The node's
Config caps both at its heartbeat interval (TcpNetwork.configure, called by
Raft.create): a peer that comes back is reconnected by the second heartbeat
after, well within election_timeout_min, so a restarted follower is not left
to time out and campaign. Until then an RPC
to the peer raises NetworkError at once instead of waiting. An RPC without a
reply within `rpc_timeout` raises raftcore.errors.Timeout; its reply, should
it come later, is dropped. The client never cancels anything on the server: a
handler that has started runs to its end even if the caller gave up or the
connection closed (its reply is then dropped).

Limits. Frames larger than `max_frame_size` are refused on both sides. A frame
that is too large, truncated, of an unknown version, not msgpack, or not a
well-formed message of the expected kind closes that one connection, with the
reason logged at WARNING on the logger "raftcore.network.tcp"; the server
keeps serving every other connection. A request frame of valid msgpack that
Python cannot hold (a map keyed by a list, as a tuple key arrives) is the
sender's bad value, not a broken stream: it is answered with an error frame
and the connection goes on. Nothing a peer sends can raise out of the server.

Cluster hello. A client that knows its node's cluster id (from the requests
it sends: every request carries it) opens each connection, after the
shared-secret handshake if any, with

    client -> server   ["raftcore-hello", 1, cluster_id]
    server -> client   ["raftcore-hello", 1, its cluster_id or None]

and sends nothing more if the server belongs to another cluster: the connect
fails (NetworkError, back-off, a WARNING), and the server closes the
connection with a WARNING too. A server without a cluster id yet answers
None and the connection goes on (it adopts the id from the first request).
Every request still carries the id and is checked by the node; the hello
only turns a peer of another cluster away before any request is sent.

TLS: pass an `ssl.SSLContext` to each side (`ssl.PROTOCOL_TLS_SERVER` /
`ssl.PROTOCOL_TLS_CLIENT`); for mutual TLS give the server context
`verify_mode = ssl.CERT_REQUIRED` and a CA, and the client context a
certificate chain.

Shared secret. Without TLS (or with it), a cluster can keep out every process
that does not hold its secret: give all nodes the same secret, on both sides.

    import secrets
    secret = secrets.token_bytes(32)      # made once, shared out of band (a file, an env var)
    net = TcpNetwork(secret=secret, rpc_timeout=config.rpc_timeout)
    raft = await Raft.create(1, config, net, log_store, state_machine)
    server = await RaftServer.start(raft, "127.0.0.1", 7001, secret=secret)

Every connection to such a server then opens with a challenge-response of
three ordinary frames, before any request is read:

    server -> client   ["raftcore-auth", 1, "challenge", server_nonce]
    client -> server   ["raftcore-auth", 1, "answer", client_nonce, client_proof]
    server -> client   ["raftcore-auth", 1, "confirm", server_proof]

Nonces are 32 fresh random bytes per connection; client_proof is
HMAC-SHA256(secret, client label + server_nonce + client_nonce) and
server_proof the same with the server label, the labels naming the direction,
the handshake version and the wire version. The secret never crosses the
wire; a proof is never valid in the other direction, and, the server's nonce
being new on every connection, a recorded answer is worthless on another one.
A peer that sends anything else, a wrong proof, or nothing within
`auth_timeout` is disconnected with the reason logged at WARNING, and none of
its frames reaches the node; the server sends nothing but its challenge
before the peer has proved itself. The client checks the server's proof
before sending any request (mutual), and a failed handshake is a failed
connect (NetworkError, back-off). Proofs are compared with
hmac.compare_digest. What this does not do: encrypt, or protect an
established connection from someone who can alter traffic on the path --
combine it with TLS for that (the handshake then runs inside TLS).
"""
from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import ipaddress
import logging
import re
import secrets
import ssl as _ssl
import struct
from typing import Any, Awaitable, Callable, Mapping, Optional

import msgpack

from raftcore.codec import decode_message, encode_message
from raftcore.core import ReplyCallback, takes_reply
from raftcore.errors import CodecError, ConfigError, NetworkError, Timeout
from raftcore.messages import (AppendEntriesRequest, AppendEntriesResponse,
                               InstallSnapshotRequest, InstallSnapshotResponse,
                               TransferLeaderRequest, VoteRequest, VoteResponse)
from raftcore.network.base import Network, NetworkClient

__all__ = ["TcpNetwork", "TcpClient", "RaftServer", "WIRE_VERSION", "DEFAULT_MAX_FRAME_SIZE",
           "SERVICE_TYPE_MIN", "parse_address"]

log = logging.getLogger("raftcore.network.tcp")

#: The version byte of every frame this module writes and the only one it reads.
WIRE_VERSION = 2
#: Largest frame (version byte + body) accepted or sent. It must exceed the
#: largest AppendEntries a node sends: Config.max_payload_bytes (4 MiB by
#: default) of byte payloads plus per-entry overhead, or one oversized entry
#: that travels alone.
DEFAULT_MAX_FRAME_SIZE = 32 * 1024 * 1024
#: Message types from this one up belong to services (RaftServer.start's
#: `services`); raftcore's RPC messages use types below it.
SERVICE_TYPE_MIN = 64
#: Reconnect back-off: first delay after a failure, and its cap.
BACKOFF_INITIAL = 0.2
BACKOFF_MAX = 1.0

_HEADER = struct.Struct(">IB")
_HEADER_SIZE = _HEADER.size
_pack_header = _HEADER.pack
_unpack_header = _HEADER.unpack
_unpack_header_from = _HEADER.unpack_from
# A writer whose transport buffers more than this waits for it to drain.
_WRITE_HIGH_WATER = 4 * 1024 * 1024
# Frames up to this size are sent as one joined buffer, larger ones as two.
_JOIN_BELOW = 64 * 1024
# StreamReader buffer limit: big enough that a usual frame is read without
# pausing and resuming the transport many times.
_READ_LIMIT = 1024 * 1024
# A server connection with this many requests being handled stops reading
# until some finish (the Raft in-flight window keeps a sane peer far below).
_MAX_HANDLING_PER_CONN = 1024
# Longest handler error text sent back to the caller.
_MAX_REASON = 2000
#: Seconds a server gives a new connection to complete the shared-secret
#: handshake (RaftServer.start's auth_timeout default).
AUTH_TIMEOUT = 10.0

# Shared-secret authentication (see the module docstring).
AUTH_MAGIC = "raftcore-auth"
_AUTH_VERSION = 1
_AUTH_NONCE = 32                  # bytes of a nonce; a proof (SHA-256) has as many
_AUTH_CLIENT_LABEL = b"raftcore-auth/%d wire/%d client->server proof\x00" % (
    _AUTH_VERSION, WIRE_VERSION)
_AUTH_SERVER_LABEL = b"raftcore-auth/%d wire/%d server->client proof\x00" % (
    _AUTH_VERSION, WIRE_VERSION)
# Largest frame read during the handshake: a peer that has not proved itself
# cannot make the server buffer more than this.
_AUTH_MAX_FRAME = 256

# Cluster hello (see the module docstring).
HELLO_MAGIC = "raftcore-hello"
_HELLO_VERSION = 1
_MAX_CLUSTER_ID = 64


class AuthError(Exception):
    """A handshake that failed; the text says why."""


class _AuthClosed(AuthError):
    """The peer closed the connection during the handshake."""


def check_secret(secret: Any) -> Optional[bytes]:
    """The cluster secret as bytes (None: no secret); ConfigError if it is
    not usable. For other programs that speak this protocol (raftcore kv's
    client, for one) as for the transport itself."""
    if secret is None:
        return None
    if isinstance(secret, str):
        secret = secret.encode("utf-8")
    elif isinstance(secret, (bytes, bytearray, memoryview)):
        secret = bytes(secret)
    else:
        raise ConfigError(f"secret must be bytes (or str) or None, got {type(secret).__name__}")
    if not secret:
        raise ConfigError("secret must not be empty (make one with secrets.token_bytes(32))")
    return secret


def _auth_proof(secret: bytes, label: bytes, server_nonce: bytes, client_nonce: bytes) -> bytes:
    return hmac.new(secret, label + server_nonce + client_nonce, hashlib.sha256).digest()


def _auth_frame(step: str, *fields: bytes) -> bytes:
    body = msgpack.packb([AUTH_MAGIC, _AUTH_VERSION, step, *fields], use_bin_type=True)
    return _pack_header(len(body) + 1, WIRE_VERSION) + body


async def _read_auth(reader: asyncio.StreamReader, step: str, nfields: int) -> list:
    """Reads handshake frame `step` and returns its `nfields` fields (nonces
    and proofs, each _AUTH_NONCE bytes); AuthError if anything else comes."""
    try:
        header = await reader.readexactly(_HEADER_SIZE)
        size, version = _unpack_header(header)
        if version != WIRE_VERSION:
            raise AuthError(f"expected the handshake {step}, got a frame of wire version "
                             f"{version}")
        if not 1 <= size <= _AUTH_MAX_FRAME:
            raise AuthError(f"expected the handshake {step}, got a frame of {size} bytes "
                             "(a peer without the secret?)")
        body = await reader.readexactly(size - 1)
    except asyncio.IncompleteReadError:
        raise _AuthClosed(f"the connection closed before the handshake {step}") from None
    try:
        obj = _unpackb(body)
    except Exception:
        obj = None
    if type(obj) is not list or len(obj) < 3 or obj[0] != AUTH_MAGIC:
        raise AuthError(f"expected the handshake {step}, got another frame (a peer without "
                         "the secret?)")
    if type(obj[1]) is not int or obj[1] != _AUTH_VERSION:
        raise AuthError(f"handshake version {obj[1]!r}, this node speaks {_AUTH_VERSION}")
    fields = obj[3:]
    if (obj[2] != step or len(fields) != nfields
            or any(type(f) is not bytes or len(f) != _AUTH_NONCE for f in fields)):
        raise AuthError(f"expected the handshake {step}, got a malformed handshake frame")
    return fields


async def client_handshake(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                            secret: bytes) -> None:
    """The client's side of the handshake: answers the server's challenge,
    then checks the server's proof. Raises AuthError."""
    try:
        server_nonce, = await _read_auth(reader, "challenge", 1)
    except _AuthClosed:
        raise AuthError("the server closed the connection before sending its challenge") \
            from None
    client_nonce = secrets.token_bytes(_AUTH_NONCE)
    writer.write(_auth_frame("answer", client_nonce, _auth_proof(
        secret, _AUTH_CLIENT_LABEL, server_nonce, client_nonce)))
    try:
        proof, = await _read_auth(reader, "confirm", 1)
    except _AuthClosed:
        raise AuthError("the server refused our proof and closed the connection: it holds "
                         "a different secret (its log says why)") from None
    expected = _auth_proof(secret, _AUTH_SERVER_LABEL, server_nonce, client_nonce)
    if not hmac.compare_digest(proof, expected):
        raise AuthError("the server's proof does not match: it holds a different secret")


def _hello_frame(cluster_id: Optional[str]) -> bytes:
    body = msgpack.packb([HELLO_MAGIC, _HELLO_VERSION, cluster_id], use_bin_type=True)
    return _pack_header(len(body) + 1, WIRE_VERSION) + body


def _hello_cluster_id(obj: Any) -> Any:
    """The cluster id of a well-formed hello (None or a string); raises
    ValueError for anything else."""
    if type(obj) is not list or len(obj) != 3 or obj[0] != HELLO_MAGIC:
        raise ValueError("not a cluster hello")
    cid = obj[2]
    if obj[1] != _HELLO_VERSION or not (
            cid is None or (type(cid) is str and 0 < len(cid) <= _MAX_CLUSTER_ID)):
        raise ValueError(f"malformed cluster hello {obj!r:.200}")
    return cid


async def client_hello(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                       cluster_id: str) -> Optional[str]:
    """Sends this node's cluster id and returns the server's (None if it has
    none yet). Raises AuthError if the answer is not a hello."""
    writer.write(_hello_frame(cluster_id))
    try:
        size, version = _unpack_header(await reader.readexactly(_HEADER_SIZE))
        if version != WIRE_VERSION or not 1 <= size <= _AUTH_MAX_FRAME:
            raise AuthError(f"expected the cluster hello, got a frame of wire version "
                            f"{version} and {size} bytes")
        body = await reader.readexactly(size - 1)
    except asyncio.IncompleteReadError:
        raise AuthError("the server closed the connection instead of answering the "
                        "cluster hello") from None
    try:
        return _hello_cluster_id(_unpackb(body))
    except Exception as exc:
        raise AuthError(f"expected the cluster hello: {exc}") from None


def _unpackb(body: bytes) -> Any:
    return msgpack.unpackb(body, raw=False, strict_map_key=False)


def parse_address(addr: str) -> tuple[str, int]:
    """(host, port) of "host:port" or "[ipv6]:port"; ValueError naming the
    bad part if malformed (the host must be an IP address or a DNS name)."""
    if not isinstance(addr, str):
        raise ValueError(f"a node address must be a string 'host:port', got {addr!r}")
    host, sep, port_s = addr.rpartition(":")
    if not sep or not host:
        raise ValueError(f"node address {addr!r} is not of the form 'host:port'")
    if not (port_s.isascii() and port_s.isdigit()):
        raise ValueError(f"node address {addr!r}: port {port_s!r} is not a number "
                         "(expected 'host:port')")
    port = int(port_s)
    if not 0 < port < 65536:
        raise ValueError(f"node address {addr!r}: port {port} is out of range")
    bracketed = host.startswith("[") and host.endswith("]")
    if bracketed:
        host = host[1:-1]
    _check_host(host, addr, bracketed)
    return host, port


_HOST_LABEL = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")


def _check_host(host: str, addr: str, ipv6_only: bool) -> None:
    # Refused here rather than by a resolver later ("Name or service not
    # known"), which would not say which part of the address is wrong.
    try:
        ipaddress.ip_address(host)
        return
    except ValueError:
        pass
    labels = (host[:-1] if host.endswith(".") else host).split(".")
    if ipv6_only or len(host) > 253 or not all(_HOST_LABEL.fullmatch(x) for x in labels):
        odd = "".join(sorted({c for c in host if not (c.isascii() and c.isalnum())
                              and c not in ".-_"}))
        raise ValueError(f"node address {addr!r}: host {host!r} is not an IP address or a "
                         "host name" + (f" (it contains {odd!r})" if odd else ""))


def _check_ssl(ssl: Any) -> None:
    if ssl is not None and not isinstance(ssl, _ssl.SSLContext):
        raise ConfigError(f"ssl must be an ssl.SSLContext or None, got {type(ssl).__name__}")


def _check_positive(name: str, v: Any, integer: bool = False) -> None:
    kinds = (int,) if integer else (int, float)
    if not isinstance(v, kinds) or isinstance(v, bool) or v <= 0:
        raise ConfigError(f"{name} must be a positive {'integer' if integer else 'number'}, "
                          f"got {v!r}")


# ===================================================================== client

class TcpNetwork(Network):
    """The Network of one node over TCP: `client(target, node)` reaches
    Node("host:port").

    ssl: an ssl.SSLContext (client side) to speak TLS, None for plaintext.
    rpc_timeout: seconds an RPC waits for its reply before raising Timeout
        (pass the node's Config.rpc_timeout); the attribute may be changed
        later and applies to the calls made after.
    max_frame_size: largest frame sent or accepted, in bytes.
    connect_timeout: seconds a connect (and TLS handshake) may take, and
        again the shared-secret handshake; defaults to rpc_timeout.
    secret: the cluster's shared secret (bytes; a str is UTF-8 encoded), or
        None. With it every connection proves to the server, and the server
        to it, that both hold the secret before any RPC is sent (see
        "Shared secret" in the module docstring); the peers' RaftServers
        must be started with the same secret.
    reconnect_backoff_max: longest wait before connecting again to a peer
        that failed; None: BACKOFF_MAX, lowered by configure() to the
        node's heartbeat interval. Must be below election_timeout_min.
    """

    def __init__(self, ssl: Optional[_ssl.SSLContext] = None, *, rpc_timeout: float = 1.0,
                 max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
                 connect_timeout: Optional[float] = None,
                 secret: Optional[bytes] = None,
                 reconnect_backoff_max: Optional[float] = None) -> None:
        self.secret = check_secret(secret)
        _check_ssl(ssl)
        _check_positive("rpc_timeout", rpc_timeout)
        _check_positive("max_frame_size", max_frame_size, integer=True)
        if connect_timeout is None:
            connect_timeout = rpc_timeout
        _check_positive("connect_timeout", connect_timeout)
        self.ssl = ssl
        self.rpc_timeout = rpc_timeout
        self.max_frame_size = max_frame_size
        self.connect_timeout = connect_timeout
        if reconnect_backoff_max is not None:
            _check_positive("reconnect_backoff_max", reconnect_backoff_max)
        self._backoff_given = reconnect_backoff_max is not None
        #: Reconnect back-off cap, read by each connection at each failure.
        self.backoff_max = reconnect_backoff_max if self._backoff_given else BACKOFF_MAX
        #: The cluster id of the requests this network sends (learned from
        #: them), announced in the hello of every new connection.
        self.cluster_id: Optional[str] = None

    def configure(self, config: Any) -> None:
        """Fits the reconnect back-off to a node's Config (Raft.create calls
        this): capped at its heartbeat interval, the lowest of every node
        sharing this network; an explicit reconnect_backoff_max must be
        below election_timeout_min."""
        if self._backoff_given:
            if self.backoff_max >= config.election_timeout_min:
                raise ConfigError(
                    f"TcpNetwork reconnect_backoff_max ({self.backoff_max}) must be below "
                    f"election_timeout_min ({config.election_timeout_min}): a peer that comes "
                    "back would wait that long for a heartbeat and start an election")
            return
        self.backoff_max = min(self.backoff_max, config.heartbeat_interval)

    def client(self, target: int, node: Any) -> "NetworkClient":
        addr = getattr(node, "addr", None)
        try:
            host, port = parse_address(addr)
        except ValueError as exc:
            # The runtime creates clients while executing engine commands:
            # raising here would stop the node. Every RPC fails instead.
            log.warning("no usable address for node %s (%s); its RPCs will fail", target, exc)
            return _Unreachable(target, str(exc))
        return TcpClient(self, target, host, port)


class TcpClient(NetworkClient):
    """Sends one node's RPCs to one peer over TCP.

    AppendEntries with entries go over one pipelined connection, the
    `_repl` channel; heartbeats, votes and TransferLeader over another,
    `_ctl`, so that they never wait behind a large append; snapshot chunks
    over a third, `_snap`, made on first use. A channel connects when first
    used. A chunk with no answer within rpc_timeout drops the snapshot
    connection: the stream it belonged to is over, and the next one starts
    on a fresh connection instead of behind the stalled one's unsent bytes.
    """

    __slots__ = ("target", "addr", "_net", "_host", "_port", "_repl", "_ctl", "_snap")

    def __init__(self, net: TcpNetwork, target: int, host: str, port: int) -> None:
        self.target = target
        self.addr = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self._net = net
        self._host = host
        self._port = port
        self._repl = _Channel(net, target, host, port, self.addr)
        self._ctl = _Channel(net, target, host, port, self.addr, "control ")
        self._snap: Optional[_Channel] = None

    # Plain functions returning the call's coroutine: one frame less per RPC.
    def append_entries(self, req: AppendEntriesRequest):
        if not req.entries:
            return self._ctl.call(req, AppendEntriesResponse)
        return self._repl.call(req, AppendEntriesResponse)

    def append_entries_nowait(self, req: AppendEntriesRequest, reply: Any = None):
        """The runtime's fast path: when connected, the request is written
        now (not one task switch later) and the reply's future is returned,
        or with `reply` a ReplyCallback: reply(response, error) is then
        called as the reply frame is read; None when not connected (the
        runtime then calls append_entries, which connects)."""
        if not req.entries:
            return self._ctl.call_nowait(req, AppendEntriesResponse, reply)
        return self._repl.call_nowait(req, AppendEntriesResponse, reply)

    def vote(self, req: VoteRequest):
        return self._ctl.call(req, VoteResponse)

    def transfer_leader(self, req: TransferLeaderRequest):
        return self._ctl.call(req, _NONE)

    def install_snapshot(self, req: InstallSnapshotRequest):
        snap = self._snap
        if snap is None:
            snap = self._snap = _Channel(self._net, self.target, self._host, self._port,
                                         self.addr, "snapshot ", drop_on_timeout=True)
        return snap.call(req, InstallSnapshotResponse)

    async def close(self) -> None:
        await self._repl.close()
        await self._ctl.close()
        if self._snap is not None:
            await self._snap.close()

    def __repr__(self) -> str:
        return f"TcpClient(node {self.target} at {self.addr})"


class _Unreachable(NetworkClient):
    """The client of a peer whose address cannot be used: every RPC fails."""

    def __init__(self, target: int, reason: str) -> None:
        self._msg = f"node {target} cannot be reached: {reason}"

    async def append_entries(self, req):
        raise NetworkError(self._msg)

    async def vote(self, req):
        raise NetworkError(self._msg)

    async def install_snapshot(self, req):
        raise NetworkError(self._msg)

    async def transfer_leader(self, req):
        raise NetworkError(self._msg)


_NONE = type(None)


class _FrameReader(asyncio.StreamReader):
    """The reader of a connection, client or server side. Until start() it
    is a plain StreamReader (the shared-secret handshake reads from it).
    From then on it cuts frames out of the bytes as they arrive -- in the
    protocol's data_received -- and hands each body to on_frame at once: no
    task wakes per frame. on_frame returns a reason to close the connection,
    or None; on_end(reason, warn) is called once when the connection ends or
    a frame is malformed (reason None: closed cleanly by the peer). hold()
    stops handing frames over and pauses reading (backpressure) until
    release(). Relies on StreamReader's _buffer, _eof, _exception and
    _transport (what came before start, and the transport to pause)."""

    def __init__(self, limit: int, max_frame: int, kind: str) -> None:
        super().__init__(limit=limit)
        self._max_frame = max_frame
        self._kind = kind               # "reply " or "": names frames in reasons
        self._on_frame: Optional[Callable[[bytes], Optional[str]]] = None
        self._on_end: Optional[Callable[[Optional[str], bool], None]] = None
        self._rest = bytearray()        # bytes not handed over yet
        self._stopped = False
        self._held = False
        self._peer_done = False         # the peer closed (seen once what came is handed over)
        self._taking = False            # in _take: an on_frame that calls back in returns

    def start(self, on_frame: Callable[[bytes], Optional[str]],
              on_end: Callable[[Optional[str], bool], None]) -> None:
        self._on_frame, self._on_end = on_frame, on_end
        self._rest += self._buffer
        self._buffer.clear()
        if self._exception is not None:
            self._end(f"connection error: {self._exception}", False)
            return
        self._peer_done = self._eof
        self._take()

    def stop(self) -> None:
        """No more frames are handed over (the connection is closed)."""
        self._stopped = True

    def hold(self) -> None:
        if not self._held:
            self._held = True
            if self._transport is not None:
                self._transport.pause_reading()

    def release(self) -> None:
        if self._held:
            self._held = False
            if self._transport is not None and not self._stopped:
                self._transport.resume_reading()
            self._take()

    def feed_data(self, data: bytes) -> None:
        if self._on_frame is None:
            super().feed_data(data)
        elif not self._stopped:
            self._rest += data
            self._take()

    def feed_eof(self) -> None:
        if self._on_frame is None:
            super().feed_eof()
        else:
            self._peer_done = True
            self._take()

    def set_exception(self, exc: BaseException) -> None:
        if self._on_frame is None:
            super().set_exception(exc)
        else:
            self._end(f"connection error: {exc}", False)

    def _take(self) -> None:
        """Hands over every complete frame (unless held or stopped)."""
        if self._taking:
            return      # the loop below goes on with what is there
        self._taking = True
        rest, kind = self._rest, self._kind
        pos, end = 0, len(rest)
        try:
            while end - pos >= _HEADER_SIZE and not self._stopped and not self._held:
                size, version = _unpack_header_from(rest, pos)
                if version != WIRE_VERSION:
                    return self._end(f"{kind}frame of unknown wire version {version} (this "
                                     f"node speaks {WIRE_VERSION})", True)
                if size > self._max_frame:
                    return self._end(f"{kind}frame of {size} bytes exceeds max_frame_size "
                                     f"{self._max_frame}", True)
                if size < 1:
                    return self._end(f"empty {kind}frame", True)
                stop = pos + _HEADER_SIZE + size - 1
                if stop > end:
                    break
                body = bytes(rest[pos + _HEADER_SIZE:stop])
                pos = stop
                reason = self._on_frame(body)
                if reason is not None:
                    return self._end(reason, True)
        finally:
            del rest[:pos]
            self._taking = False
        if self._peer_done and not self._held:
            self._ended_by_peer()

    def _ended_by_peer(self) -> None:
        rest, kind = len(self._rest), self._kind
        if not rest:
            self._end(None, False)
        elif rest < _HEADER_SIZE:
            self._end(f"truncated {kind}frame header ({rest} of {_HEADER_SIZE} bytes before "
                      "the connection closed)", True)
        else:
            size = _unpack_header_from(self._rest, 0)[0]
            self._end(f"truncated {kind}frame ({rest - _HEADER_SIZE} of {size - 1} body bytes "
                      "before the connection closed)", True)

    def _end(self, reason: Optional[str], warn: bool) -> None:
        if self._stopped:
            return
        self._stopped = True
        self._rest = bytearray()
        self._on_end(reason, warn)


class _Conn:
    """One open client connection: its streams and the calls awaiting a
    reply on it, by request id."""

    __slots__ = ("reader", "writer", "transport", "pending", "closed")

    def __init__(self, reader: _FrameReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader        # hands replies over as they arrive: no reader task
        self.writer = writer
        self.transport = writer.transport
        self.pending: dict[int, asyncio.Future] = {}
        self.closed = False


class _Channel:
    """A pipelined request/reply stream to one peer, over one connection at a
    time, reconnecting with back-off after failures."""

    def __init__(self, net: TcpNetwork, target: int, host: str, port: int, addr: str,
                 kind: str = "", drop_on_timeout: bool = False) -> None:
        self._loop = asyncio.get_running_loop()
        self._kind = kind            # "" or "snapshot ": names the connection in messages
        self._drop_on_timeout = drop_on_timeout   # a call timing out drops the connection
        self._target = target
        self._host = host
        self._port = port
        self._addr = addr
        self._net = net              # rpc_timeout is read from it at each call
        self._ssl = net.ssl
        self._connect_timeout = net.connect_timeout
        self._max_frame = net.max_frame_size
        self._packer = msgpack.Packer(use_bin_type=True)
        self._conn: Optional[_Conn] = None
        self._connecting: Optional[asyncio.Task] = None
        self._next_id = 0
        self._queued = 0             # calls waiting to send (for a connection or a drain)
        self._backoff = 0.0          # current back-off delay; 0: the peer is healthy
        self._retry_at = 0.0         # loop time of the next allowed connect attempt
        self._last_error = ""
        self._closed = False

    def _who(self) -> str:
        return f"node {self._target} at {self._addr}" + (
            f" ({self._kind}connection)" if self._kind else "")

    # ------------------------------------------------------------- calls

    async def call(self, msg: Any, expect: type) -> Any:
        conn = self._conn
        if conn is None or conn.transport.get_write_buffer_size() > _WRITE_HIGH_WATER:
            cid = getattr(msg, "cluster_id", None)
            if cid is not None:
                self._net.cluster_id = cid      # for the hello of the connection to come
            # Wait for a connection or for the send buffer to drain; while a
            # caller waits here call_nowait declines, so requests go out in
            # the order they were made.
            self._queued += 1
            try:
                conn = await self._ready()
            finally:
                self._queued -= 1
        rid, fut, timer = self._send(conn, msg)
        return await self._reply(conn, rid, fut, timer, msg, expect)

    async def _ready(self) -> _Conn:
        conn = self._conn
        if conn is None:
            return await self._connect()
        try:
            # Bounded: a peer that stopped reading must not hold the call
            # past rpc_timeout (the runtime relies on every RPC ending).
            await asyncio.wait_for(conn.writer.drain(), self._net.rpc_timeout)
        except asyncio.TimeoutError:
            reason = (f"no room to send to {self._who()} within rpc_timeout "
                      f"{self._net.rpc_timeout}s: the connection is stalled")
            if self._drop_on_timeout:
                self._drop(conn, reason)
            raise Timeout(reason) from None
        except (ConnectionError, OSError) as exc:
            raise NetworkError(f"connection to {self._who()} failed: {exc}") from None
        return conn

    def call_nowait(self, msg: Any, expect: type, reply: Any = None) -> Any:
        """Sends `msg` right away when connected (and not backed up) and
        returns the reply's future; None otherwise (use call). The caller
        reads the reply from a done callback (no task per request) or, if
        it passes `reply`, gets a ReplyCallback instead and reply(value,
        error) is called as the reply frame is read. A reply of another type
        than `expect` closes the connection, and the caller must treat it
        as a failed request."""
        conn = self._conn
        if (conn is None or self._queued
                or conn.transport.get_write_buffer_size() > _WRITE_HIGH_WATER):
            return None
        if reply is not None:
            slot = ReplyCallback(None)
            rid, _, timer = self._send(conn, msg, slot)
            slot.reply = functools.partial(self._called_back, conn, rid, timer, msg, expect, reply)
            return slot
        rid, fut, timer = self._send(conn, msg)
        fut.add_done_callback(functools.partial(self._replied, conn, rid, timer, msg, expect))
        return fut

    def _called_back(self, conn: _Conn, rid: int, timer: Any, msg: Any, expect: type,
                     reply: Any, value: Any, exc: Optional[BaseException]) -> None:
        timer.cancel()
        if exc is None and type(value) is not expect:
            reason = f"replied to a {type(msg).__name__} with a {type(value).__name__}"
            exc = NetworkError(f"{self._who()} {reason}")
            self._protocol_error(conn, reason)
        try:
            reply(value, exc)
        except Exception:   # the caller's bug: never into the reading of replies
            log.error("the reply callback of request %s to %s raised", rid, self._who(),
                      exc_info=True)

    def _replied(self, conn: _Conn, rid: int, timer: Any, msg: Any, expect: type,
                 fut: asyncio.Future) -> None:
        timer.cancel()
        if fut.cancelled():
            conn.pending.pop(rid, None)     # a late reply is then dropped
        elif fut.exception() is None and \
                type(fut.result()) is not expect:
            self._protocol_error(conn, f"replied to a {type(msg).__name__} with a "
                                       f"{type(fut.result()).__name__}")

    def _send(self, conn: _Conn, msg: Any, slot: Any = None) -> tuple:
        """Frames and writes one request; (request id, reply future -- `slot`
        if given --, timeout handle)."""
        self._next_id = rid = self._next_id + 1
        try:
            body = self._packer.pack([rid, encode_message(msg)])
        except (TypeError, ValueError, OverflowError) as exc:
            raise CodecError(f"cannot encode {type(msg).__name__} for {self._who()}: {exc}; "
                             "entry payloads must be msgpack-able values") from None
        size = len(body) + 1
        if size > self._max_frame:
            log.warning("%s is %d bytes, over max_frame_size %d: not sent to %s; lower "
                        "Config.max_payload_bytes/max_payload_entries or raise max_frame_size",
                        type(msg).__name__, size, self._max_frame, self._who())
            raise NetworkError(f"{type(msg).__name__} of {size} bytes exceeds max_frame_size "
                               f"{self._max_frame}; not sent to {self._who()}")
        if conn.closed:
            raise NetworkError(f"connection to {self._who()} was lost; retrying with back-off")
        if size <= _JOIN_BELOW:
            # One buffer, one send: copying a small body is cheaper than a
            # second write (uvloop sends each write at once).
            conn.writer.write(_pack_header(size, WIRE_VERSION) + body)
        else:
            conn.writer.writelines((_pack_header(size, WIRE_VERSION), body))
        # Registered once written: a write that raised leaves no orphan
        # behind (the reply cannot be read before this returns).
        loop = self._loop
        fut = loop.create_future() if slot is None else slot
        conn.pending[rid] = fut
        return rid, fut, loop.call_later(self._net.rpc_timeout, self._expire, conn, rid)

    async def _reply(self, conn: _Conn, rid: int, fut: asyncio.Future, timer: Any, msg: Any,
                     expect: type) -> Any:
        try:
            resp = await fut
        except BaseException:
            conn.pending.pop(rid, None)
            raise
        finally:
            timer.cancel()
        if type(resp) is not expect:
            reason = f"replied to a {type(msg).__name__} with a {type(resp).__name__}"
            self._protocol_error(conn, reason)
            raise NetworkError(f"{self._who()} {reason}")
        return resp

    def _expire(self, conn: _Conn, rid: int) -> None:
        fut = conn.pending.pop(rid, None)
        if fut is not None and not fut.done():
            fut.set_exception(Timeout(
                f"no reply from {self._who()} within rpc_timeout {self._net.rpc_timeout}s; "
                "the request may or may not have been handled (a late reply is dropped)"))
            if self._drop_on_timeout:
                self._drop(conn, f"no reply within rpc_timeout {self._net.rpc_timeout}s")

    def _drop(self, conn: _Conn, reason: str) -> None:
        """Aborts `conn` now, its unsent bytes discarded, and fails the calls
        waiting on it; the next call connects afresh, with no back-off (this
        connection stalled; the peer may well take a new one)."""
        log.debug("dropping the connection to %s: %s", self._who(), reason)
        if self._conn is conn:
            self._conn = None
        conn.transport.abort()
        self._lost(conn, reason)

    # -------------------------------------------------------- connecting

    async def _connect(self) -> _Conn:
        if self._closed:
            raise NetworkError(f"the client of {self._who()} is closed")
        task = self._connecting
        if task is None:
            now = self._loop.time()
            if now < self._retry_at:
                raise NetworkError(
                    f"{self._who()} is unreachable ({self._last_error}); next connection "
                    f"attempt in {self._retry_at - now:.2f}s")
            task = self._connecting = self._loop.create_task(self._open())
            # Retrieved here too, in case every caller gave up (was cancelled).
            task.add_done_callback(_retrieve)
        # Shielded: a caller that gives up must not cancel the shared attempt.
        return await asyncio.shield(task)

    async def _open(self) -> _Conn:
        try:
            kw = {}
            if self._ssl is not None:
                kw["ssl"] = self._ssl
                kw["ssl_handshake_timeout"] = self._connect_timeout
            try:
                reader = _FrameReader(_READ_LIMIT, self._max_frame, "reply ")
                protocol = asyncio.StreamReaderProtocol(reader)
                transport, _ = await asyncio.wait_for(
                    self._loop.create_connection(lambda: protocol, self._host, self._port,
                                                 **kw),
                    self._connect_timeout)
                writer = asyncio.StreamWriter(transport, protocol, reader, self._loop)
            except asyncio.TimeoutError:
                self._failed(f"connect timed out after {self._connect_timeout}s")
                raise NetworkError(f"cannot connect to {self._who()}: {self._last_error}") \
                    from None
            except (OSError, _ssl.SSLError, EOFError) as exc:
                self._failed(f"connect failed: {exc}")
                raise NetworkError(f"cannot connect to {self._who()}: {exc}") from None
            secret = self._net.secret
            if secret is not None:
                try:
                    await asyncio.wait_for(client_handshake(reader, writer, secret),
                                           self._connect_timeout)
                except BaseException as exc:
                    writer.transport.abort()
                    if isinstance(exc, asyncio.TimeoutError):
                        reason = (f"no shared-secret handshake within {self._connect_timeout}s "
                                  "(a server started without a secret never sends one)")
                    elif isinstance(exc, AuthError):
                        reason = f"authentication failed: {exc}"
                    elif isinstance(exc, (OSError, _ssl.SSLError)):
                        reason = f"connection failed during authentication: {exc}"
                    else:
                        raise
                    if self._backoff == 0.0:
                        log.warning("cannot connect to %s: %s", self._who(), reason)
                    self._failed(reason)
                    raise NetworkError(f"cannot connect to {self._who()}: {reason}") from None
            if self._net.cluster_id is not None:
                await self._hello(reader, writer, self._net.cluster_id)
            if self._closed:
                writer.transport.abort()
                raise NetworkError(f"the client of {self._who()} is closed")
            conn = _Conn(reader, writer)
            self._conn = conn
            reader.start(functools.partial(self._reply_frame, conn),
                         functools.partial(self._reader_ended, conn))
            log.debug("connected to %s", self._who())
            return conn
        finally:
            self._connecting = None

    async def _hello(self, reader: _FrameReader, writer: asyncio.StreamWriter,
                     cluster_id: str) -> None:
        """Announces the cluster id; a server of another cluster fails the connect."""
        try:
            theirs = await asyncio.wait_for(client_hello(reader, writer, cluster_id),
                                            self._connect_timeout)
        except BaseException as exc:
            writer.transport.abort()
            if isinstance(exc, asyncio.TimeoutError):
                reason = f"no answer to the cluster hello within {self._connect_timeout}s"
            elif isinstance(exc, (AuthError, OSError, _ssl.SSLError)):
                reason = f"cluster hello failed: {exc}"
            else:
                raise
            self._failed(reason)
            raise NetworkError(f"cannot connect to {self._who()}: {reason}") from None
        if theirs is not None and theirs != cluster_id:
            writer.transport.abort()
            reason = (f"it belongs to cluster {theirs}, this node to cluster {cluster_id} "
                      "(another cluster's node at that address?)")
            if self._backoff == 0.0:
                log.warning("cannot connect to %s: %s", self._who(), reason)
            self._failed(reason)
            raise NetworkError(f"cannot connect to {self._who()}: {reason}")

    def _failed(self, reason: str) -> None:
        """Starts or extends the back-off after a failed connect or a lost connection."""
        cap = self._net.backoff_max
        if self._backoff == 0.0:
            log.info("%s unreachable: %s; retrying with back-off", self._who(), reason)
            self._backoff = min(BACKOFF_INITIAL, cap)
        else:
            log.debug("%s still unreachable: %s", self._who(), reason)
            self._backoff = min(self._backoff * 2, cap)
        self._last_error = reason
        self._retry_at = self._loop.time() + self._backoff

    # ----------------------------------------------------------- replies

    def _reply_frame(self, conn: _Conn, body: bytes) -> Optional[str]:
        """One reply frame's body: settles the call it answers. Returns a
        reason to close the connection, or None."""
        try:
            obj = _unpackb(body)
        except Exception as exc:
            return f"reply frame is not msgpack ({exc})"
        if type(obj) is not list or not 2 <= len(obj) <= 3 or type(obj[0]) is not int:
            return "reply frame is not [request_id, message]"
        pending = conn.pending
        if len(obj) == 2:
            if obj[1] is None:
                resp = None          # the reply of a handler returning nothing
            else:
                try:
                    resp = decode_message(obj[1])
                except Exception as exc:
                    return f"malformed reply message: {exc}"
            # Taken out of `pending` only now: if the reply could not be
            # read, closing the connection fails the call.
            fut = pending.pop(obj[0], None)
            if fut is not None and not fut.done():
                fut.set_result(resp)
        else:
            if obj[1] is not None or type(obj[2]) is not str:
                return "malformed error reply"
            fut = pending.pop(obj[0], None)
            if fut is not None and not fut.done():
                fut.set_exception(NetworkError(
                    f"{self._who()} failed to handle the request: {obj[2]}"))
        if fut is None:
            log.debug("dropped a late reply from %s (request %s)", self._who(), obj[0])
        if not conn.closed:     # (a reply of the wrong type has just closed it)
            self._backoff = 0.0
        return None

    def _reader_ended(self, conn: _Conn, reason: Optional[str], warn: bool) -> None:
        if warn:
            log.warning("closing the connection to %s: %s", self._who(), reason)
        self._lost(conn, reason or "closed by the peer")

    def _protocol_error(self, conn: _Conn, reason: str) -> None:
        log.warning("closing the connection to %s: %s", self._who(), reason)
        self._lost(conn, reason)

    def _lost(self, conn: _Conn, reason: str) -> None:
        """Closes `conn` and fails every call still waiting on it."""
        if conn.closed:
            return
        conn.closed = True
        conn.reader.stop()
        if self._conn is conn:
            self._conn = None
            if not self._closed:
                self._failed(f"connection lost: {reason}")
        conn.writer.close()
        if conn.pending:
            msg = (f"connection to {self._who()} lost ({reason}); the request may or may not "
                   "have been handled")
            for fut in conn.pending.values():
                if not fut.done():
                    fut.set_exception(NetworkError(msg))
            conn.pending.clear()

    # ----------------------------------------------------------- closing

    async def close(self) -> None:
        self._closed = True
        if self._connecting is not None:
            self._connecting.cancel()
            try:
                await self._connecting
            except BaseException:
                pass
        conn = self._conn
        if conn is None:
            return
        self._lost(conn, "client closed")
        await _wait_closed(conn.writer)


async def _raise(exc: BaseException) -> Any:
    raise exc


def _retrieve(task: asyncio.Task) -> None:
    if not task.cancelled():
        task.exception()


async def _wait_closed(writer: asyncio.StreamWriter) -> None:
    """Waits for a closing writer's transport to close; aborts it if the
    peer does not finish a TLS shutdown promptly."""
    try:
        await asyncio.wait_for(writer.wait_closed(), 1.0)
    except (asyncio.TimeoutError, ConnectionError, OSError, _ssl.SSLError):
        writer.transport.abort()
    except asyncio.CancelledError:
        writer.transport.abort()
        raise


# ===================================================================== server

class _ServerConn:
    """One accepted connection."""

    __slots__ = ("writer", "transport", "peer", "packer", "closed", "unstarted", "handling",
                 "room", "task", "reader", "ended", "waiter")

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.transport = writer.transport
        self.peer = writer.get_extra_info("peername")
        self.packer = msgpack.Packer(use_bin_type=True)
        self.closed = False
        self.unstarted = 0          # handler tasks created but not yet started
        self.handling = 0           # handler tasks not finished
        self.room: Optional[asyncio.Future] = None   # set when `handling` drops below the cap
        self.task: Optional[asyncio.Task] = None
        self.reader: Optional[_FrameReader] = None
        self.ended: Optional[asyncio.Future] = None  # the reader's end: a reason or None
        self.waiter: Optional[asyncio.Task] = None   # releases the held reader (backpressure)

    def reply(self, rid: int, resp: Any) -> None:
        # uvloop may have closed the transport (a reset) before the reading
        # loop saw it; a write would then raise RuntimeError.
        if self.closed or self.transport.is_closing():
            return
        body = self.packer.pack([rid, None if resp is None else encode_message(resp)])
        self.writer.write(_pack_header(len(body) + 1, WIRE_VERSION) + body)

    def reply_value(self, rid: int, value: Any) -> None:
        """Replies with a plain msgpack-able value (a service's reply)."""
        # uvloop may have closed the transport (a reset) before the reading
        # loop saw it; a write would then raise RuntimeError.
        if self.closed or self.transport.is_closing():
            return
        body = self.packer.pack([rid, value])
        self.writer.write(_pack_header(len(body) + 1, WIRE_VERSION) + body)

    def reply_error(self, rid: int, exc: BaseException) -> None:
        if self.closed or self.transport.is_closing():
            return
        reason = f"{type(exc).__name__}: {exc}"
        if len(reason) > _MAX_REASON:
            reason = reason[:_MAX_REASON] + "..."
        body = self.packer.pack([rid, None, reason])
        self.writer.write(_pack_header(len(body) + 1, WIRE_VERSION) + body)


class RaftServer:
    """Serves one node's RPCs over TCP: `await RaftServer.start(raft, host, port)`.

    Requests are handed to `raft.append_entries(req)` / `raft.vote(req)`; a
    handler that raises (say the node has shut down: Fatal) is answered with
    an error frame, which the caller raises as NetworkError. `port` is the
    port listened on (the one picked by the OS when 0 was given).
    `await close()` stops listening, closes every connection and waits for
    the handlers in progress to finish (they are never cancelled).
    """

    # Shared-secret authentication, set by start(): None serves everyone.
    _secret: Optional[bytes] = None
    _auth_timeout: float = AUTH_TIMEOUT

    def __init__(self, raft: Any, ssl: Optional[_ssl.SSLContext], max_frame_size: int,
                 services: Optional[dict] = None) -> None:
        self._raft = raft
        #: Service message type -> handler; None when the server has none.
        self._services = services or None
        self._ssl = ssl
        self._max_frame = max_frame_size
        self._server: Optional[asyncio.base_events.Server] = None
        self._port = 0
        self._conns: set[_ServerConn] = set()
        self._handlers: set[asyncio.Task] = set()
        # AppendEntries answers waiting for the node's flush, which come to
        # _answer_later (see _dispatch); close() waits for them.
        self._answers_due = 0
        self._answers_drained: Optional[asyncio.Future] = None
        self._append = raft.append_entries
        self._append_nowait = getattr(raft, "append_entries_nowait", None)
        # One written for (req) alone answers a flushed append with a future.
        self._nowait_reply = self._append_nowait is not None and \
            takes_reply(self._append_nowait)
        # Request type -> handler run in a task of its own (AppendEntries has
        # its own path, see _dispatch).
        self._handlers_by_type = {
            VoteRequest: raft.vote,
            InstallSnapshotRequest: getattr(raft, "install_snapshot", None),
            TransferLeaderRequest: getattr(raft, "transfer_leader", None),
        }
        self._closed = False

    @classmethod
    async def start(cls, raft: Any, host: str, port: int, ssl: Optional[_ssl.SSLContext] = None,
                    *, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
                    services: Optional[Mapping[int, Callable[[list], Awaitable[Any]]]] = None,
                    secret: Optional[bytes] = None, auth_timeout: float = AUTH_TIMEOUT,
                    ) -> "RaftServer":
        """Listens on host:port (port 0: any free port) and serves `raft`'s RPCs,
        and the application's own requests through `services` (message type
        >= SERVICE_TYPE_MIN -> async handler; see the module docstring)."""
        # secret: the cluster's shared secret (see TcpNetwork): a connection
        # must prove it holds it within auth_timeout seconds, or it is closed
        # before any of its frames reaches the node.
        secret = check_secret(secret)
        _check_positive("auth_timeout", auth_timeout)
        _check_ssl(ssl)
        _check_positive("max_frame_size", max_frame_size, integer=True)
        if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port < 65536:
            raise ConfigError(f"port must be an integer in [0, 65535], got {port!r}")
        if services is not None:
            services = dict(services)
            for t, handler in services.items():
                if not isinstance(t, int) or isinstance(t, bool) or t < SERVICE_TYPE_MIN:
                    raise ConfigError(f"service message types must be integers >= "
                                      f"{SERVICE_TYPE_MIN} (lower ones are raftcore's RPCs), "
                                      f"got {t!r}")
                if not callable(handler):
                    raise ConfigError(f"the handler of service message type {t} is not "
                                      f"callable: {handler!r}")
        self = cls(raft, ssl, max_frame_size, services)
        self._secret = secret
        self._auth_timeout = auth_timeout
        self._server = await asyncio.get_running_loop().create_server(
            self._protocol, host, port, ssl=ssl)
        self._port = self._server.sockets[0].getsockname()[1]
        log.info("serving node %s on %s:%s%s", getattr(raft, "id", "?"), host, self.port,
                 (" (TLS)" if ssl is not None else "")
                 + (" (shared-secret authentication)" if secret is not None else ""))
        return self

    @property
    def port(self) -> int:
        """The port listened on (of the first socket, if the host gave several)."""
        return self._port

    @property
    def connections(self) -> int:
        """How many peer connections are open now."""
        return len(self._conns)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._server.close()
        conns = list(self._conns)
        for c in conns:
            c.closed = True
            c.writer.close()
            if c.task is not None:
                c.task.cancel()
        await asyncio.gather(*(c.task for c in conns if c.task is not None),
                             return_exceptions=True)
        # Handlers in progress finish on their own (a node that shuts down
        # fails them); they are never cancelled half-way.
        if self._handlers:
            await asyncio.gather(*list(self._handlers), return_exceptions=True)
        if self._answers_due:
            self._answers_drained = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._answers_drained)
        await asyncio.gather(*(_wait_closed(c.writer) for c in conns), return_exceptions=True)
        await self._server.wait_closed()

    # ------------------------------------------------------------ serving

    def _protocol(self) -> asyncio.StreamReaderProtocol:
        """A new connection's protocol: its reader cuts frames as they arrive."""
        return asyncio.StreamReaderProtocol(
            _FrameReader(_READ_LIMIT, self._max_frame, ""), self._serve)

    async def _serve(self, reader: _FrameReader, writer: asyncio.StreamWriter) -> None:
        conn = _ServerConn(writer)
        if self._closed:
            writer.transport.abort()
            return
        conn.task = asyncio.current_task()
        self._conns.add(conn)
        conn.reader = reader
        reason = None
        try:
            if self._secret is not None:
                reason = await self._authenticate(conn, reader)
                if reason is not None:
                    return
            ended = conn.ended = asyncio.get_running_loop().create_future()
            reader.start(functools.partial(self._request_frame, conn),
                         functools.partial(self._conn_ended, conn))
            reason = await ended
        except asyncio.CancelledError:
            if not self._closed:
                raise
        except (ConnectionError, OSError, _ssl.SSLError) as exc:
            log.debug("connection from %s failed: %s", conn.peer, exc)
        finally:
            reader.stop()
            if conn.waiter is not None:
                conn.waiter.cancel()
            if reason is not None:
                log.warning("closing the connection from %s: %s", conn.peer, reason)
            conn.closed = True
            self._conns.discard(conn)
            if not self._closed:
                writer.close()

    def _conn_ended(self, conn: _ServerConn, reason: Optional[str], warn: bool) -> None:
        """The reader's end of `conn`: _serve logs `reason` (None: closed cleanly)."""
        if reason is not None and not warn:
            log.debug("connection from %s failed: %s", conn.peer, reason)
            reason = None
        if not conn.ended.done():
            conn.ended.set_result(reason)

    def _request_frame(self, conn: _ServerConn, body: bytes) -> Optional[str]:
        """One request frame's body: steps the node for it. Returns a reason
        to close the connection, or None."""
        try:
            obj = _unpackb(body)
        except TypeError as exc:
            return self._refuse_undecodable(conn, body, exc)
        except Exception as exc:
            return f"frame body is not msgpack ({exc or type(exc).__name__})"
        if type(obj) is not list or len(obj) != 2 or type(obj[0]) is not int:
            if type(obj) is list and obj and obj[0] == HELLO_MAGIC:
                return self._hello(conn, obj)
            return "frame body is not [request_id, message]"
        msg = obj[1]
        services = self._services
        try:
            if (services is not None and type(msg) is list and msg
                    and type(msg[0]) is int and msg[0] >= SERVICE_TYPE_MIN):
                handler = services.get(msg[0])
                if handler is None:
                    return f"unknown service message type {msg[0]}"
                self._spawn(conn, self._handle(conn, rid=obj[0], handler=handler, msg=msg,
                                               raw=True))
            else:
                try:
                    msg = decode_message(msg)
                except Exception as exc:
                    return f"malformed message: {exc}"
                reason = self._dispatch(conn, obj[0], msg)
                if reason is not None:
                    return reason
        except Exception as exc:  # a bug of ours: log it, drop this connection only
            log.error("serving the connection from %s failed", conn.peer, exc_info=True)
            return f"internal error: {exc!r}"
        if (conn.handling >= _MAX_HANDLING_PER_CONN
                or conn.transport.get_write_buffer_size() > _WRITE_HIGH_WATER):
            # Backpressure: no more requests from this peer until there is room.
            conn.reader.hold()
            self._spawn_waiter(conn)
        return None

    def _refuse_undecodable(self, conn: _ServerConn, body: bytes,
                            exc: TypeError) -> Optional[str]:
        """A frame of well-formed msgpack that Python cannot hold (a map
        whose key is a list or a map: `unhashable type`): the sender's bad
        value, not a broken stream. Its request gets an error answer and the
        connection goes on; a frame that is no request closes it."""
        try:
            obj = msgpack.unpackb(body, raw=False, strict_map_key=False, object_pairs_hook=list)
        except Exception:
            return f"frame body is not msgpack ({exc})"
        if type(obj) is not list or len(obj) != 2 or type(obj[0]) is not int:
            return "frame body is not [request_id, message]"
        log.info("refusing request %s from %s: it cannot be decoded (%s)", obj[0], conn.peer, exc)
        conn.reply_error(obj[0], CodecError(
            f"the request cannot be decoded ({exc}): a map key that is a tuple, list or map "
            "on the sender arrives as a list or map, which cannot be a key"))
        return None

    def _hello(self, conn: _ServerConn, obj: list) -> Optional[str]:
        """Answers a cluster hello with this node's cluster id; a reason to
        close the connection if the peer belongs to another cluster."""
        try:
            theirs = _hello_cluster_id(obj)
        except ValueError as exc:
            return str(exc)
        mine = getattr(getattr(self._raft, "metrics", None), "cluster_id", None)
        conn.writer.write(_hello_frame(mine))
        if theirs is not None and mine is not None and theirs != mine:
            return (f"the peer belongs to cluster {theirs}, this node to cluster {mine} "
                    "(a node of another cluster, or one pointed at another cluster's storage)")
        return None

    def _spawn_waiter(self, conn: _ServerConn) -> None:
        # Not one of _handlers (which close() waits for): a peer that never
        # reads would keep a drain waiting for good. _serve cancels it.
        conn.waiter = asyncio.get_running_loop().create_task(self._release_when_room(conn))

    async def _release_when_room(self, conn: _ServerConn) -> None:
        try:
            while conn.handling >= _MAX_HANDLING_PER_CONN and not conn.closed:
                conn.room = asyncio.get_running_loop().create_future()
                await conn.room
            if conn.transport.get_write_buffer_size() > _WRITE_HIGH_WATER and not conn.closed:
                await conn.writer.drain()
        except (ConnectionError, OSError, _ssl.SSLError):
            return
        conn.waiter = None
        if not conn.closed:
            conn.reader.release()

    async def _authenticate(self, conn: _ServerConn,
                            reader: asyncio.StreamReader) -> Optional[str]:
        """The server's side of the shared-secret handshake: a reason to
        close the connection, or None once the peer has proved it holds the
        secret. Nothing the peer sends before that reaches the node."""
        server_nonce = secrets.token_bytes(_AUTH_NONCE)
        conn.writer.write(_auth_frame("challenge", server_nonce))
        try:
            client_nonce, proof = await asyncio.wait_for(_read_auth(reader, "answer", 2),
                                                         self._auth_timeout)
        except asyncio.TimeoutError:
            return f"authentication failed: no handshake answer within {self._auth_timeout}s"
        except AuthError as exc:
            return f"authentication failed: {exc}"
        expected = _auth_proof(self._secret, _AUTH_CLIENT_LABEL, server_nonce, client_nonce)
        if not hmac.compare_digest(proof, expected):
            return ("authentication failed: the peer's proof does not match this node's "
                    "secret (it holds another one)")
        conn.writer.write(_auth_frame("confirm", _auth_proof(
            self._secret, _AUTH_SERVER_LABEL, server_nonce, client_nonce)))
        log.debug("connection from %s authenticated", conn.peer)
        return None

    def _dispatch(self, conn: _ServerConn, rid: int, msg: Any) -> Optional[str]:
        """Steps the node for one request: answers it now or starts its task.
        Returns a reason to close the connection, or None."""
        t = type(msg)
        if t is AppendEntriesRequest:
            nowait = self._append_nowait
            # The synchronous path only when no earlier request of this
            # connection still waits to start: requests reach the node in order.
            if nowait is not None and not conn.unstarted:
                try:
                    if self._nowait_reply:
                        r = nowait(msg, functools.partial(self._answer_later, conn, rid))
                    else:
                        r = nowait(msg)
                except Exception as exc:
                    conn.reply_error(rid, exc)
                    return None
                if r is None:
                    self._spawn(conn, self._handle(conn, rid, self._append, msg))
                elif type(r) is AppendEntriesResponse:
                    conn.reply(rid, r)
                elif type(r) is ReplyCallback or asyncio.isfuture(r):
                    # Waiting for the flush: the node calls _answer_later from
                    # the flush's completion (in the same loop iteration), or
                    # resolves a future (a node that takes no callback).
                    conn.handling += 1
                    self._answers_due += 1
                    if type(r) is not ReplyCallback:
                        r.add_done_callback(functools.partial(self._answer_from_future, conn,
                                                              rid))
                else:
                    self._spawn(conn, self._finish(conn, rid, r), started=True)
            else:
                self._spawn(conn, self._handle(conn, rid, self._append, msg))
            return None
        handler = self._handlers_by_type.get(t)
        if handler is not None:
            self._spawn(conn, self._handle(conn, rid, handler, msg))
            return None
        return (f"unexpected message {t.__name__} (a server takes AppendEntries, Vote, "
                "InstallSnapshot and TransferLeader requests)")

    def _spawn(self, conn: _ServerConn, coro: Any, started: bool = False) -> None:
        if not started:
            conn.unstarted += 1
        conn.handling += 1
        t = asyncio.get_running_loop().create_task(coro)
        self._handlers.add(t)
        t.add_done_callback(self._handlers.discard)

    async def _handle(self, conn: _ServerConn, rid: int, handler: Any, msg: Any,
                      raw: bool = False) -> None:
        # Everything before the handler's first await runs now, in the order
        # the tasks were created: the node sees requests in arrival order.
        conn.unstarted -= 1
        try:
            pending = handler(msg)
        except Exception as exc:     # a service handler that raised before awaiting
            pending = _raise(exc)
        await self._finish(conn, rid, pending, raw)

    def _answer_from_future(self, conn: _ServerConn, rid: int, fut: asyncio.Future) -> None:
        if fut.cancelled():
            self._answer_later(conn, rid, None, asyncio.CancelledError())
        else:
            exc = fut.exception()
            self._answer_later(conn, rid, None if exc else fut.result(), exc)

    def _answer_later(self, conn: _ServerConn, rid: int, resp: Any,
                      exc: Optional[BaseException]) -> None:
        """The node's answer to an AppendEntries that waited for its flush."""
        try:
            if exc is not None:
                log.debug("append of request %s from %s failed: %r", rid, conn.peer, exc)
                conn.reply_error(rid, exc)
            else:
                try:
                    conn.reply(rid, resp)
                except Exception as err:  # a node answering a non-message is our bug
                    log.error("cannot encode the reply to request %s from %s: %s", rid,
                              conn.peer, err)
                    conn.reply_error(rid, err)
        except Exception:   # never into the node's flush completion
            log.error("replying to request %s from %s failed", rid, conn.peer, exc_info=True)
        finally:
            self._answers_due -= 1
            drained = self._answers_drained
            if not self._answers_due and drained is not None and not drained.done():
                drained.set_result(None)
            self._handled(conn)

    def _handled(self, conn: _ServerConn) -> None:
        """A request of `conn` was answered: make room for the next one."""
        conn.handling -= 1
        room = conn.room
        if room is not None and conn.handling < _MAX_HANDLING_PER_CONN:
            conn.room = None
            if not room.done():
                room.set_result(None)

    async def _finish(self, conn: _ServerConn, rid: int, pending: Any, raw: bool = False) -> None:
        """Awaits a handler and sends its reply: a raftcore message, or with
        `raw` (a service's) a plain msgpack-able value."""
        try:
            try:
                resp = await pending
            except asyncio.CancelledError as exc:
                conn.reply_error(rid, exc)
                raise
            except Exception as exc:
                log.debug("handler of request %s from %s raised %r", rid, conn.peer, exc)
                conn.reply_error(rid, exc)
                return
            try:
                if raw:
                    conn.reply_value(rid, resp)
                else:
                    conn.reply(rid, resp)
            except Exception as exc:  # a handler returning a non-message is our bug
                log.error("cannot encode the reply to request %s from %s: %s", rid, conn.peer,
                          exc)
                conn.reply_error(rid, exc)
        finally:
            self._handled(conn)
