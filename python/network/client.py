"""TcpNetwork and TcpClient: one node's RPCs to its peers over TCP (the
sending side of raftcore.network.tcp: see its docstring), and
parse_address.
"""
from __future__ import annotations

import ipaddress
import logging
import re
import ssl as _ssl
from typing import Any, Optional

from raftcore.errors import ConfigError, NetworkError
from raftcore.messages import (AppendEntriesRequest, AppendEntriesResponse,
                               InstallSnapshotRequest, InstallSnapshotResponse,
                               TransferLeaderRequest, VoteRequest, VoteResponse)
from raftcore.network.auth import check_secret
from raftcore.network.base import Network, NetworkClient, Reply
from raftcore.network.channel import BACKOFF_MAX, Channel
from raftcore.network.framing import DEFAULT_MAX_FRAME_SIZE, check_positive, check_ssl

__all__ = ["TcpNetwork", "TcpClient", "parse_address"]

log = logging.getLogger("raftcore.network.tcp")

_NONE = type(None)


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
        check_ssl(ssl)
        check_positive("rpc_timeout", rpc_timeout)
        check_positive("max_frame_size", max_frame_size, integer=True)
        if connect_timeout is None:
            connect_timeout = rpc_timeout
        check_positive("connect_timeout", connect_timeout)
        self.ssl = ssl
        self.rpc_timeout = rpc_timeout
        self.max_frame_size = max_frame_size
        self.connect_timeout = connect_timeout
        if reconnect_backoff_max is not None:
            check_positive("reconnect_backoff_max", reconnect_backoff_max)
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
        self._repl = Channel(net, target, host, port, self.addr)
        self._ctl = Channel(net, target, host, port, self.addr, "control ")
        self._snap: Optional[Channel] = None

    # Plain functions returning the call's coroutine: one frame less per RPC.
    def append_entries(self, req: AppendEntriesRequest):
        if not req.entries:
            return self._ctl.call(req, AppendEntriesResponse)
        return self._repl.call(req, AppendEntriesResponse)

    def append_entries_nowait(self, req: AppendEntriesRequest, reply: Reply) -> bool:
        """The fast path (raftcore.network.base): when connected, the request
        is written now (not one task switch later) and reply(response,
        error) is called as its reply frame is read; False when not
        connected (the runtime then calls append_entries, which connects)."""
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
            snap = self._snap = Channel(self._net, self.target, self._host, self._port,
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
