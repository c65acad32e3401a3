"""The kv client's connection to one node: requests pipelined over the
transport's own frames and handshake, answered by request id.

Client depends only on this narrow interface:

    conn = await connect(addr, timeout, ssl=..., secret=..., max_frame=...)
    reply = await conn.call(message, timeout)   # ConnectionLost, KvError, TimeoutError
    conn.closed, conn.failure                   # gone; refused for good (a KvError)
    await conn.close()

The bytes on the wire are the transport's: raftcore.network.framing's
FrameConnection cuts the frames (in data_received, no reader task) and
raftcore.network.auth runs the shared-secret handshake. What stays here is
the small part that is the kv client's own: which request a reply answers,
and which failures are final (a KvError: the node refused our secret or
asks for one, a handler failed, a request cannot be sent) and which are
worth another attempt, on this node or the next (ConnectionLost,
TimeoutError, OSError).

Why not raftcore.network.channel.Channel, the transport's pipelined client:
a Channel is a peer link that outlives its connections. It reconnects under
a back-off of its own (failing calls at once with "next connection attempt
in ..." until it ends), takes its timeouts from fixed settings, reports
every failure as one NetworkError, and logs a refused handshake or a bad
reply at WARNING. The kv client already decides, per attempt, what comes
next (this node again, the next one, or the leader a redirect names) under
one deadline per call and attempt_timeout per attempt, and must tell a
final refusal (a wrong or missing secret) from a lost connection. Over a
Channel those decisions would be made twice, a restarted node would be
retried only when the Channel's back-off allows, and a script using the
client would print the transport's warnings. One FrameConnection per node,
replaced by the client when it fails, keeps the client's failover as it is.
"""
from __future__ import annotations

import asyncio
import itertools
from typing import Any, Optional

import msgpack

from raftcore.kv.protocol import KvError
from raftcore.network.auth import AUTH_MAGIC, AuthError, client_handshake
from raftcore.network.client import parse_address
from raftcore.network.framing import FrameConnection, open_frame_connection, unpackb, wait_closed


class ConnectionLost(Exception):
    """The connection failed before the reply came."""


class Connection:
    """One pipelined connection of a Client to one node."""

    def __init__(self, addr: str, frames: FrameConnection, max_frame: int) -> None:
        self.addr = addr
        self.frames = frames
        self.max_frame = max_frame
        self.pending: dict[int, asyncio.Future] = {}
        self.closed = False
        #: Set when the node refused this client for good (it wants the
        #: cluster's secret): raised by every call instead of retrying.
        self.failure: Optional[KvError] = None
        self._ids = itertools.count(1)
        self._packer = msgpack.Packer(use_bin_type=True)
        frames.start(self._reply_frame, self._ended)

    async def call(self, msg: list, timeout: float) -> Any:
        # The transport may be closed (a failed write, a reset) before
        # connection_lost has told us; uvloop then refuses writes with RuntimeError.
        if self.closed or self.frames.transport.is_closing():
            self._close("closed")
            if self.failure is not None:
                raise self.failure
            raise ConnectionLost(f"connection to {self.addr} is closed")
        rid = next(self._ids)
        try:
            body = self._packer.pack([rid, msg])
        except (TypeError, ValueError, OverflowError) as exc:
            raise KvError(f"cannot encode the request with msgpack: {exc}") from None
        if len(body) + 1 > self.max_frame:
            raise KvError(f"request of {len(body) + 1} bytes exceeds max_frame_size "
                          f"{self.max_frame}")
        try:
            self.frames.send_frame(body)
        except (RuntimeError, OSError) as exc:
            self._close(f"write failed: {exc}")
            raise ConnectionLost(f"connection to {self.addr} lost ({exc})") from None
        # Registered once written: the reply cannot be read before this returns.
        fut = asyncio.get_running_loop().create_future()
        self.pending[rid] = fut
        try:
            return await asyncio.wait_for(fut, timeout)
        finally:
            self.pending.pop(rid, None)

    def _reply_frame(self, body: bytes) -> Optional[str]:
        """Settles the call a reply frame answers; a reason to close the
        connection if the frame is not a reply."""
        try:
            obj = unpackb(body)
        except Exception as exc:     # undecodable reply
            return f"bad reply: {exc}"
        if type(obj) is list and obj and obj[0] == AUTH_MAGIC:
            self.failure = KvError(
                f"node {self.addr} requires the cluster's shared secret: pass "
                "Client(secret=...), or raftcore ctl --secret-file (the nodes' "
                "--secret-file)")
            return "the node asked for the shared-secret handshake"
        if type(obj) is not list or not 2 <= len(obj) <= 3 or type(obj[0]) is not int:
            return "reply is not [request_id, value]"
        fut = self.pending.pop(obj[0], None)
        if fut is not None and not fut.done():
            if len(obj) == 3:
                fut.set_exception(KvError(f"node {self.addr} failed to handle the "
                                          f"request: {obj[2]}"))
            else:
                fut.set_result(obj[1])
        return None

    def _ended(self, reason: Optional[str], warn: bool) -> None:
        self._close(reason or "closed by the node")

    def _close(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        self.frames.stop()
        self.frames.close()
        for fut in self.pending.values():
            if not fut.done():
                fut.set_exception(self.failure or
                                  ConnectionLost(f"connection to {self.addr} lost ({reason})"))
        self.pending.clear()

    async def close(self) -> None:
        self._close("client closed")
        await wait_closed(self.frames)


async def connect(addr: str, timeout: float, *, ssl: Any = None,
                  secret: Optional[bytes] = None, max_frame: int) -> Connection:
    """A connection to the node at `addr` ("HOST:PORT"), past the
    shared-secret handshake when `secret` is given. Raises KvError if the
    node refused the secret, ConnectionLost if it sent no handshake, OSError
    or asyncio.TimeoutError if it could not be reached within `timeout`."""
    host, port = parse_address(addr)
    frames = await open_frame_connection(host, port, ssl=ssl, max_frame=max_frame,
                                         timeout=timeout)
    if secret is not None:
        try:
            await asyncio.wait_for(client_handshake(frames, frames, secret), timeout)
        except BaseException as exc:
            frames.abort()
            if isinstance(exc, AuthError):
                raise KvError(f"node {addr}: authentication failed: {exc}") from None
            if isinstance(exc, asyncio.TimeoutError):
                raise ConnectionLost(f"no shared-secret handshake within {timeout:.3g}s (a node "
                                     "started without --secret-file never sends one)") from None
            raise
    return Connection(addr, frames, max_frame)
