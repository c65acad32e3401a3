"""TCP transport: `TcpNetwork` (the sending side) and `RaftServer` (the serving side).

    net = TcpNetwork(ssl=client_ctx, rpc_timeout=config.rpc_timeout)
    raft = await Raft.create(1, config, net, log_store, state_machine)
    server = await RaftServer.start(raft, "127.0.0.1", 7001, ssl=server_ctx)
    ...                                   # initialize with Node("127.0.0.1:7001") etc.
    await raft.shutdown(); await server.close()

A Raft needs no peer address until it has a membership, so the natural order
is: create the Raft, start its server (port 0 picks a free port, read it back
from `server.port`), then initialize the cluster with the addresses.

Modules (each usable on its own; only client and server know Raft's messages):

    raftcore.network.framing   wire constants, FrameConnection (an asyncio
                               Protocol cutting frames), open_frame_connection
    raftcore.network.auth      shared-secret handshake and cluster hello
    raftcore.network.channel   Channel: pipelined request/reply connection
                               with reconnection and back-off
    raftcore.network.client    TcpNetwork, TcpClient, parse_address
    raftcore.network.server    RaftServer

This module is their documentation and re-exports their public names.

Wire format, version 3. Every frame is

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
error frame only. Version 3 sends a normal entry as the bytes its leader
encoded when it admitted the command (codec.ENCODED_NORMAL), so the bytes a
follower logs are the leader's. Requests carry
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
of the bytes as they arrive, in the protocol's data_received (FrameConnection),
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

from raftcore.network.auth import (AUTH_MAGIC, AUTH_TIMEOUT, HELLO_MAGIC, AuthError,
                                   check_secret, client_handshake, client_hello)
from raftcore.network.channel import BACKOFF_INITIAL, BACKOFF_MAX
from raftcore.network.client import TcpClient, TcpNetwork, parse_address
from raftcore.network.framing import DEFAULT_MAX_FRAME_SIZE, SERVICE_TYPE_MIN, WIRE_VERSION
from raftcore.network.server import RaftServer

__all__ = ["TcpNetwork", "TcpClient", "RaftServer", "WIRE_VERSION", "DEFAULT_MAX_FRAME_SIZE",
           "SERVICE_TYPE_MIN", "parse_address", "AUTH_MAGIC", "AUTH_TIMEOUT", "HELLO_MAGIC",
           "AuthError", "check_secret", "client_handshake", "client_hello", "BACKOFF_INITIAL",
           "BACKOFF_MAX"]
