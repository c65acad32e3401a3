"""The transport contract: what a Raft node sends its RPCs through
(Network, NetworkClient) and what a server hands the RPCs it receives to
(RaftNode, which raftcore.Raft is).

A transport is a Network making one NetworkClient per peer, and, on the
receiving side, something that decodes requests and calls the peer node's
RaftNode methods. Messages cross the wire as raftcore.codec's
encode_message / decode_message make them; every handler's answer goes back
to the caller that sent the request.

The AppendEntries fast path. Replication sends one AppendEntries per
follower per batch of writes, so both ends offer a synchronous variant
beside the coroutine, with one contract (`Reply`, `AppendNowait`):

    taken = append_entries_nowait(req, reply)

- False: nothing was done; the caller sends the request the ordinary way
  (`await append_entries(req)`). Declining is always allowed.
- True: the request was taken, and `reply(response, None)` or
  `reply(None, error)` will be called exactly once: possibly before
  append_entries_nowait returns (a follower that could answer at once),
  possibly later from the event loop (a reply frame arriving, a follower's
  log flush completing). It is never called when False is returned.
- Raising: the request failed before it was taken (say, it cannot be
  encoded, or a fault was injected); `reply` is not called.

`reply` must not raise and must not block; what it is given is exactly what
`await append_entries(req)` would have returned or raised. The runtime
calls the NetworkClient's fast path for every AppendEntries; a server calls
the node's for every AppendEntries it receives and awaits the node's
`append_entries` only when it declines. A transport that has no fast path
keeps the default (always False). Callers go through
`hand_over(nowait, req, reply, owner) -> bool`, which turns a raise into
reply(None, error) and refuses (logged, reply given a TypeError) a return
value other than True or False.

ReplyCallback (compiled, raftcore.network.reply) adapts `reply` to code that
settles futures: it has done(), set_result() and set_exception(), and hands
the outcome to reply synchronously, once.
"""
from __future__ import annotations

import abc
from typing import Any, Callable, Optional, Protocol

from raftcore.messages import (AppendEntriesRequest, AppendEntriesResponse, VoteRequest,
                               VoteResponse)
from raftcore.network.reply import ReplyCallback, hand_over

__all__ = ["Network", "NetworkLike", "NetworkClient", "RaftNode", "Reply", "AppendNowait", "ReplyCallback",
           "hand_over"]

#: reply(response, None) or reply(None, error): where the answer of a request
#: taken by an append_entries_nowait goes (see the module docstring).
Reply = Callable[[Optional[AppendEntriesResponse], Optional[BaseException]], None]
#: append_entries_nowait(req, reply) -> taken (see the module docstring).
AppendNowait = Callable[[AppendEntriesRequest, Reply], bool]


class NetworkClient(abc.ABC):
    """Sends one node's RPCs to one peer.

    Each method returns the peer's response, or raises (NetworkError,
    Timeout, ...) if none came. A method must finish within the node's
    Config.rpc_timeout: the runtime does not cancel it, so that a request
    handed to a peer in the same process is never cut off half-way; a
    reply promised by append_entries_nowait must come within it too.
    """

    @abc.abstractmethod
    async def append_entries(self, req: AppendEntriesRequest) -> AppendEntriesResponse:
        ...

    def append_entries_nowait(self, req: AppendEntriesRequest, reply: Reply) -> bool:
        """Sends `req` now, without awaiting, if the transport can: True and
        reply(...) is called once with the answer; False and nothing is done
        (see the module docstring). The default always declines."""
        return False

    @abc.abstractmethod
    async def vote(self, req: VoteRequest) -> VoteResponse:
        ...

    @abc.abstractmethod
    async def install_snapshot(self, req) -> Any:
        """Sends one snapshot chunk; returns the InstallSnapshotResponse."""

    async def transfer_leader(self, req) -> None:
        """Tells the peer to campaign now (leadership transfer). Networks
        that cannot carry it raise NetworkError; the transfer then times out
        and the old leader resumes."""
        from raftcore.errors import NetworkError
        raise NetworkError(f"{type(self).__name__} does not support leadership transfer")

    async def close(self) -> None:
        """Releases the connection, if any."""


class Network(abc.ABC):
    """Makes a NetworkClient for each peer of one node."""

    #: True for a transport that hands its peers the very Entry objects a
    #: node sends (an in-process router): the nodes on it keep the payloads
    #: they applied, since a node releasing one (Entry.release_payload)
    #: would make each peer that applies it later decode it again.
    shares_entries = False

    @abc.abstractmethod
    def client(self, target: int, node: Any) -> NetworkClient:
        """A client sending to `target`, reachable at `node` (a Node)."""

    def configure(self, config: Any) -> None:
        """Raft.create calls this with the node's Config before the node
        sends anything, so that the transport fits its timing to the node's
        (TcpNetwork keeps its reconnect back-off below the election
        timeout). The default does nothing."""


class NetworkLike(Protocol):
    """What Raft.create needs of a network, as a type: `client(target,
    node)` (Network subclasses have it; configure() is optional)."""

    def client(self, target: int, node: Any) -> NetworkClient: ...


class RaftNode:
    """The receiving end: what a server (RaftServer, LocalRouter, or your
    own) hands each decoded request to. raftcore.Raft is one; a test double
    subclasses this and overrides what it serves.

    Each coroutine returns the response message to send back (None for
    transfer_leader) or raises; the server answers a raise with an error the
    caller raises as NetworkError. append_entries_nowait follows the fast
    path contract of the module docstring; the default declines, and the
    server then awaits append_entries.
    """

    async def append_entries(self, req: AppendEntriesRequest) -> AppendEntriesResponse:
        raise NotImplementedError(f"{type(self).__name__} does not serve AppendEntries")

    def append_entries_nowait(self, req: AppendEntriesRequest, reply: Reply) -> bool:
        return False

    async def vote(self, req: VoteRequest) -> VoteResponse:
        raise NotImplementedError(f"{type(self).__name__} does not serve Vote")

    async def install_snapshot(self, req: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__} does not serve InstallSnapshot")

    async def transfer_leader(self, req: Any) -> None:
        raise NotImplementedError(f"{type(self).__name__} does not serve TransferLeader")
