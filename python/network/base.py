"""The network interfaces a Raft node sends its RPCs through."""
from __future__ import annotations

import abc
from typing import Any

from raftcore.messages import (AppendEntriesRequest, AppendEntriesResponse, VoteRequest,
                               VoteResponse)


class NetworkClient(abc.ABC):
    """Sends one node's RPCs to one peer.

    Each method returns the peer's response, or raises (NetworkError,
    Timeout, ...) if none came. A method must finish within the node's
    Config.rpc_timeout: the runtime does not cancel it, so that a request
    handed to a peer in the same process is never cut off half-way.
    """

    @abc.abstractmethod
    async def append_entries(self, req: AppendEntriesRequest) -> AppendEntriesResponse:
        ...

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

    @abc.abstractmethod
    def client(self, target: int, node: Any) -> NetworkClient:
        """A client sending to `target`, reachable at `node` (a Node)."""

    def configure(self, config: Any) -> None:
        """Raft.create calls this with the node's Config before the node
        sends anything, so that the transport fits its timing to the node's
        (TcpNetwork keeps its reconnect back-off below the election
        timeout). The default does nothing."""
