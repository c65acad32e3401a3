"""Network: the Network/NetworkClient interfaces, the in-process LocalRouter
and the TCP transport (TcpNetwork + RaftServer)."""
from raftcore.network.base import Network, NetworkClient
from raftcore.network.local import LocalClient, LocalNetwork, LocalRouter
from raftcore.network.tcp import RaftServer, TcpClient, TcpNetwork

__all__ = ["Network", "NetworkClient", "LocalRouter", "LocalNetwork", "LocalClient",
           "TcpNetwork", "TcpClient", "RaftServer"]
