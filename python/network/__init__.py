"""Network: the transport contract (base: Network, NetworkClient, RaftNode and
the append_entries_nowait fast path), the in-process LocalRouter and the
TCP transport (TcpNetwork + RaftServer; tcp.py documents its wire format and
its modules: framing, auth, channel, client, server)."""
from raftcore.network.base import Network, NetworkClient, NetworkLike, RaftNode
from raftcore.network.local import LocalClient, LocalNetwork, LocalRouter
from raftcore.network.tcp import RaftServer, TcpClient, TcpNetwork

__all__ = ["Network", "NetworkLike", "NetworkClient", "RaftNode", "LocalRouter", "LocalNetwork", "LocalClient",
           "TcpNetwork", "TcpClient", "RaftServer"]
