"""The kv client's connection to one node: the transport's frames (length,
version byte, msgpack [request_id, message]), the shared-secret handshake,
and requests pipelined over one stream, answered by request id.

This re-implements the client side of raftcore.network.tcp's framing and
pipelined channel; it is to be replaced by the transport's own framing and
connection once those are modules of their own. Client depends only on this
narrow interface, so the swap stays inside this file:

    conn = await connect(addr, timeout, ssl=..., secret=..., max_frame=...)
    reply = await conn.call(message, timeout)   # ConnectionLost, KvError, TimeoutError
    conn.closed, conn.failure                   # gone; refused for good (a KvError)
    await conn.close()
"""
from __future__ import annotations

import asyncio
import itertools
import struct
from typing import Any, Optional

import msgpack

from raftcore.kv.protocol import KvError
from raftcore.network.tcp import WIRE_VERSION, parse_address
# The transport's shared-secret handshake, client side (see its module docstring).
from raftcore.network.tcp import AUTH_MAGIC, AuthError, client_handshake

_HEADER = struct.Struct(">IB")


class ConnectionLost(Exception):
    """The connection failed before the reply came."""


class Connection:
    """One pipelined connection of a Client to one node."""

    def __init__(self, addr: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 max_frame: int) -> None:
        self.addr = addr
        self.reader = reader
        self.writer = writer
        self.max_frame = max_frame
        self.pending: dict[int, asyncio.Future] = {}
        self.closed = False
        #: Set when the node refused this client for good (it wants the
        #: cluster's secret): raised by every call instead of retrying.
        self.failure: Optional[KvError] = None
        self._ids = itertools.count(1)
        self._packer = msgpack.Packer(use_bin_type=True)
        self.task = asyncio.get_running_loop().create_task(self._read_loop())

    async def call(self, msg: list, timeout: float) -> Any:
        # The transport may be closed (a failed write, a reset) before the
        # read loop has seen it; uvloop then refuses writes with RuntimeError.
        if self.closed or self.writer.transport.is_closing():
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
        fut = asyncio.get_running_loop().create_future()
        self.pending[rid] = fut
        try:
            try:
                self.writer.write(_HEADER.pack(len(body) + 1, WIRE_VERSION) + body)
            except (RuntimeError, OSError) as exc:
                self._close(f"write failed: {exc}")
                raise ConnectionLost(f"connection to {self.addr} lost ({exc})") from None
            return await asyncio.wait_for(fut, timeout)
        finally:
            self.pending.pop(rid, None)

    async def _read_loop(self) -> None:
        reason = "closed by the node"
        try:
            while True:
                try:
                    header = await self.reader.readexactly(_HEADER.size)
                except asyncio.IncompleteReadError:
                    break
                size, version = _HEADER.unpack(header)
                if version != WIRE_VERSION or not 1 <= size <= self.max_frame:
                    reason = f"bad reply frame (version {version}, {size} bytes)"
                    break
                body = await self.reader.readexactly(size - 1)
                obj = msgpack.unpackb(body, raw=False, strict_map_key=False)
                if type(obj) is list and obj and obj[0] == AUTH_MAGIC:
                    self.failure = KvError(
                        f"node {self.addr} requires the cluster's shared secret: pass "
                        "Client(secret=...) (the nodes' --secret-file)")
                    reason = "the node asked for the shared-secret handshake"
                    break
                if type(obj) is not list or not 2 <= len(obj) <= 3:
                    reason = "reply is not [request_id, value]"
                    break
                fut = self.pending.pop(obj[0], None)
                if fut is None or fut.done():
                    continue
                if len(obj) == 3:
                    fut.set_exception(KvError(f"node {self.addr} failed to handle the "
                                              f"request: {obj[2]}"))
                else:
                    fut.set_result(obj[1])
        except asyncio.CancelledError:
            reason = "client closed"
            raise
        except (OSError, asyncio.IncompleteReadError) as exc:
            reason = f"connection error: {exc or type(exc).__name__}"
        except Exception as exc:     # undecodable reply
            reason = f"bad reply: {exc}"
        finally:
            self._close(reason)

    def _close(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        self.writer.close()
        for fut in self.pending.values():
            if not fut.done():
                fut.set_exception(self.failure or
                                  ConnectionLost(f"connection to {self.addr} lost ({reason})"))
        self.pending.clear()

    async def close(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        self._close("client closed")


async def connect(addr: str, timeout: float, *, ssl: Any = None,
                  secret: Optional[bytes] = None, max_frame: int) -> Connection:
    """A connection to the node at `addr` ("HOST:PORT"), past the
    shared-secret handshake when `secret` is given. Raises KvError if the
    node refused the secret, ConnectionLost if it sent no handshake, OSError
    or asyncio.TimeoutError if it could not be reached within `timeout`."""
    host, port = parse_address(addr)
    kw = {"ssl": ssl} if ssl is not None else {}
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(host, port, limit=1024 * 1024, **kw), timeout)
    if secret is not None:
        try:
            await asyncio.wait_for(client_handshake(reader, writer, secret), timeout)
        except BaseException as exc:
            writer.transport.abort()
            if isinstance(exc, AuthError):
                raise KvError(f"node {addr}: authentication failed: {exc}") from None
            if isinstance(exc, asyncio.TimeoutError):
                raise ConnectionLost(f"no shared-secret handshake within {timeout:.3g}s (a node "
                                     "started without --secret-file never sends one)") from None
            raise
    return Connection(addr, reader, writer, max_frame)
