"""Network: the Network/NetworkClient interfaces and the in-process LocalRouter."""
from raftcore.network.base import Network, NetworkClient
from raftcore.network.local import LocalClient, LocalNetwork, LocalRouter

__all__ = ["Network", "NetworkClient", "LocalRouter", "LocalNetwork", "LocalClient"]
