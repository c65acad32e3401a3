"""`raftcore kv`: a replicated key-value node program, and its client.

One process runs one node::

    raftcore kv --id 1 --dir ./n1 --peers 1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003 --init

with a durable FileLogStore in DIR/log, snapshots in DIR/snapshots, the TCP
transport, and a `KvStateMachine`. `--init` (on one node, the first time)
forms the cluster from --peers; on a node that already has a log it only
logs that and goes on, so a restart may keep the flag. Ctrl-C or SIGTERM
shuts the node down cleanly (exit status 0).

Client protocol. Clients talk to a node on its Raft port, in the frames of
`raftcore.network.tcp` (length, version byte, msgpack `[request_id,
message]`): the node's RaftServer hands message types from
SERVICE_TYPE_MIN up to the KvService here. Requests:

    [KV_WRITE, client_id, seq, acked_below, cmd]   cmd: ["set", key, value] |
                                                   ["delete", key] |
                                                   ["cas", key, expected, new]
    [KV_GET, key, mode]                            mode: READ_INDEX | LEASE | STALE
    [KV_STATUS]

and every reply is a list whose first item is a status:

    [OK, result, log_index]       a write: set -> previous value, delete ->
                                  removed value, cas -> [ok, current]
    [OK, value, present]          a get
    [OK, {status fields}]         a status
    [REDIRECT, leader_id, addr]   not the leader (id and addr None if unknown)
    [UNAVAILABLE, reason]         try again, here or elsewhere (no quorum, shutting down)
    [ERROR, reason]               a bad request; retrying will not help

Exactly-once writes. A write goes into the log as ["session", client_id,
seq, acked_below, cmd]. Each `Client` has a fresh random client id and
numbers its writes 1, 2, 3, ...; `acked_below` says that the client has its
answer for every seq below it (the Raft dissertation's 6.3). The state
machine keeps, per client, the responses of the seqs not yet acknowledged: a
write whose seq it has seen already is not applied again, and its original
response is returned; one below the acknowledged mark is refused (its
answer was already delivered, or the client gave up on it). Sessions are part
of the snapshots, so a node restored from a snapshot deduplicates the same
way. Sessions are kept for the `max_sessions` most recently active clients
(default 100,000); a client silent longer than that loses its session, and a
retry of its old write could then apply twice.

A write whose outcome a node cannot tell (it lost leadership, or shut down,
while the write was in flight) is answered UNAVAILABLE or REDIRECT, and the
client sends it again under the same seq: whether or not the first copy was
committed, it is applied once.

Reads. A get is linearizable by default: the leader confirms its leadership
with a quorum (ensure_linearizable, READ_INDEX), then reads its state
machine. `lease=True` uses the leader lease instead; `stale=True` reads
whatever node the request reaches, without asking anyone.

Durability. DIR/log is a FileLogStore (nothing is acknowledged before it is
fsynced on a majority); DIR/snapshots/snapshot holds the newest snapshot,
replaced atomically (written, fsynced, renamed) before the log is purged up
to it. A restart loads the snapshot and replays the log after it.

Shared secret. With --secret-file, peers and clients must pass the
transport's shared-secret handshake (see raftcore.network.tcp) before any
request is read; give the client the same secret (Client(secret=...)).

Modules: protocol (message types, statuses, request checks), state
(KvStateMachine: sessions, snapshot files), service (KvService and the node
program, run_node), connection (the client's framing and pipelined
connection), client (Client), cli (the command line, main), backup
(snapshot save and restore: KV_SNAPSHOT_BEGIN / KV_SNAPSHOT_READ, see its
docstring). Everything a user needs is importable from raftcore.kv itself.
"""
from raftcore.kv.protocol import (ERROR, KV_GET, KV_STATUS, KV_WRITE, LEASE, OK, READ_INDEX,
                                  REDIRECT, SESSION_CMD, STALE, UNAVAILABLE, KvError,
                                  write_request)
from raftcore.kv.state import KV_SNAPSHOT_FORMAT, KvStateMachine
from raftcore.kv.service import KvService, run_node
from raftcore.kv.client import Client
from raftcore.kv.cli import build_parser, main, parse_args

__all__ = ["Client", "KvError", "KvStateMachine", "KvService", "main", "KV_WRITE", "KV_GET",
           "KV_STATUS", "write_request"]
