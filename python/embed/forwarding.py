"""Calls made on a follower, carried to the leader over the cluster's own
port (RaftServer services, see raftcore.network.tcp "Services").

Requests and replies (msgpack lists):

    [EMBED_CALL, client_id, seq, acked_below, object, method, args]
        -> [DONE, answer]        the command entry's answer (replicated.py)
        -> [REDIRECT, leader_id] not the leader (leader_id None: unknown)
        -> [UNKNOWN, reason]     its entry may or may not commit
        -> [REFUSED, reason]     refused before the log (bad arguments)
        -> [UNAVAILABLE, reason] shutting down, no quorum, ...
    [EMBED_STATUS]
        -> [DONE, status]        the node's RaftMetrics.to_dict() (node_status)
    [EMBED_READ, lease]
        -> [DONE, read_index]    a read point: the caller waits until it has
                                 applied read_index, then reads its own copy
        -> REDIRECT / UNAVAILABLE as above

The leader stamps its wall clock into every command entry it admits.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Optional, Protocol

from raftcore.errors import (Fatal, ForwardToLeader, InvalidCommand, NetworkError,
                             OutcomeUnknown, RaftError)
from raftcore.model import Node, ReadPolicy
from raftcore.network.channel import Channel
from raftcore.network.client import TcpNetwork, parse_address
from raftcore.network.framing import SERVICE_TYPE_MIN

from raftcore.embed.replicated import CLIENT_ID_TYPES, CMD

__all__ = ["EMBED_CALL", "EMBED_READ", "EMBED_STATUS", "DONE", "REDIRECT", "UNKNOWN", "REFUSED",
           "UNAVAILABLE", "LeaderService", "Forwarder", "Forwarding", "Clock", "command_entry",
           "node_status", "reply_to_error"]

#: Service types (raftcore kv uses the first few above SERVICE_TYPE_MIN).
EMBED_CALL = SERVICE_TYPE_MIN + 64
EMBED_READ = SERVICE_TYPE_MIN + 65
EMBED_STATUS = SERVICE_TYPE_MIN + 66

DONE = 0
REDIRECT = 1
UNKNOWN = 2
REFUSED = 3
UNAVAILABLE = 4


#: A wall clock: seconds since the epoch (time.time; the simulator gives its own).
Clock = Callable[[], float]


def command_entry(cid: Any, seq: int, acked: int, obj: str, method: str, args: list,
                  clock: Clock = time.time) -> list:
    """The log entry of a command, stamped with this (the leader's) clock."""
    return [CMD, cid, seq, acked, obj, method, args, clock()]


async def propose(raft: Any, cid: Any, seq: int, acked: int, obj: str, method: str,
                  args: list, clock: Clock = time.time) -> list:
    """The leader's side of a command, as a reply (see the module docstring);
    shared by local calls and forwarded ones."""
    try:
        resp = await raft.client_write(command_entry(cid, seq, acked, obj, method, args,
                                                     clock))
    except RaftError as e:
        return reply_to_error(e)
    return [DONE, resp.data]


def reply_to_error(e: RaftError) -> list:
    """The reply (see the module docstring) of a command whose client_write
    raised `e`."""
    if isinstance(e, ForwardToLeader):
        return [REDIRECT, e.leader_id]
    if isinstance(e, InvalidCommand):
        return [REFUSED, str(e)]
    if isinstance(e, (OutcomeUnknown, Fatal)):
        # Fatal: the leader stopped (shut down, or a storage failure) with
        # the write in flight: its entry may still commit on the others.
        return [UNKNOWN, str(e)]
    return [UNAVAILABLE, f"{type(e).__name__}: {e}"]


async def read_point(raft: Any, lease: bool) -> list:
    """The leader's side of a read barrier: [DONE, index] or a refusal."""
    try:
        log_id = await raft.get_read_linearizer(
            ReadPolicy.LEASE_READ if lease else ReadPolicy.READ_INDEX)
    except ForwardToLeader as e:
        return [REDIRECT, e.leader_id]
    except RaftError as e:
        return [UNAVAILABLE, f"{type(e).__name__}: {e}"]
    return [DONE, log_id.index]


def node_status(raft: Any) -> dict:
    """A node's state in plain values, JSON-ready: its RaftMetrics.to_dict()
    (the same record `raftcore kv --http` serves at /status)."""
    return raft.metrics.to_dict()


class LeaderService:
    """The handlers a node serves to the other nodes' forwarded calls:
    `handlers()` goes to RaftServer.start(services=...). `clock` stamps the
    command entries this node admits as leader."""

    def __init__(self, raft: Any, clock: Clock = time.time) -> None:
        self.raft = raft
        self.clock = clock

    def handlers(self) -> dict:
        return {EMBED_CALL: self.call, EMBED_READ: self.read, EMBED_STATUS: self.status}

    async def call(self, msg: list) -> list:
        if len(msg) != 7:
            return [REFUSED, "a call is [EMBED_CALL, client_id, seq, acked_below, object, "
                             "method, args]"]
        _, cid, seq, acked, obj, method, args = msg
        if type(cid) not in CLIENT_ID_TYPES or type(seq) is not int \
                or type(acked) is not int or not 0 <= acked <= seq or type(obj) is not str \
                or type(method) is not str or type(args) is not list:
            return [REFUSED, "client_id is a str, bytes or int, seq an int, acked_below an int "
                             "in [0, seq], object and method strs, args a list"]
        return await propose(self.raft, cid, seq, acked, obj, method, args, self.clock)

    async def status(self, msg: list) -> list:
        return [DONE, node_status(self.raft)]

    async def read(self, msg: list) -> list:
        if len(msg) != 2 or type(msg[1]) is not bool:
            return [REFUSED, "a read is [EMBED_READ, lease: bool]"]
        return await read_point(self.raft, msg[1])


class Forwarding(Protocol):
    """What EmbeddedNode forwards a follower's calls through (Forwarder over
    TCP; the simulator has its own over its simulated network)."""

    async def request(self, target: int, node: Optional[Node], msg: list) -> list:
        """The reply of node `target` to `msg`; NetworkError or Timeout when
        none came (the request may have been handled)."""
        ...

    async def close(self) -> None:
        ...


def _same(value: Any) -> Any:
    return value


class Forwarder:
    """Sends requests to the leader, one pipelined connection per node it
    has forwarded to (over the cluster's TLS / shared secret)."""

    def __init__(self, net: TcpNetwork, raft: Any) -> None:
        self._net = net
        self._raft = raft
        self._channels: dict[tuple[int, str], Channel] = {}

    async def request(self, target: int, node: Optional[Node], msg: list) -> list:
        """The reply of `target`; NetworkError or Timeout when none came
        (the request may have been handled)."""
        addr = getattr(node, "addr", None)
        key = (target, addr or "")
        ch = self._channels.get(key)
        if ch is None:
            try:
                host, port = parse_address(addr or "")
            except ValueError as exc:
                raise NetworkError(f"node {target} has no usable address: {exc}") from None
            ch = self._channels[key] = Channel(self._net, target, host, port, addr or "",
                                               "forwarding ", encode=_same, decode=_same)
        # The cluster hello of a new connection names the node's cluster.
        self._net.cluster_id = self._raft.metrics.cluster_id
        reply = await ch.call(msg, list)
        if len(reply) != 2:
            raise NetworkError(f"node {target} sent a malformed reply {reply!r:.80}")
        return reply

    async def close(self) -> None:
        for ch in self._channels.values():
            await ch.close()
        self._channels.clear()
