"""Frames on a TCP (or TLS) connection: the wire constants and FrameConnection.

Nothing here knows Raft: a frame is an opaque body (msgpack by convention),
so any program speaking raftcore's wire format (the kv client, a tool) can
use this module on its own:

    conn = await open_frame_connection(host, port, ssl=None, max_frame=DEFAULT_MAX_FRAME_SIZE)
    await client_handshake(conn, conn, secret)    # optional (raftcore.network.auth)
    conn.start(on_frame, on_end)                  # from now on frames arrive as callbacks
    conn.send_frame(body)
    ...
    conn.close(); await conn.wait_closed()

Every frame is

    length   4 bytes, big-endian: the number of bytes that follow it
    version  1 byte: WIRE_VERSION
    body     the rest

A FrameConnection is an asyncio.Protocol. Until start() it reads like a
StreamReader (`await readexactly(n)`, for a handshake); from start() on it
cuts frames out of the bytes as they arrive, in data_received, and hands
each body to on_frame at once: no task wakes per frame. hold() and release()
pause and resume reading (backpressure), drain() waits for the send buffer
to empty below the transport's high-water mark.
"""
from __future__ import annotations

import asyncio
import ssl as _ssl
import struct
from typing import Any, Callable, Optional

import msgpack

from raftcore.errors import ConfigError

__all__ = ["WIRE_VERSION", "DEFAULT_MAX_FRAME_SIZE", "SERVICE_TYPE_MIN", "HEADER_SIZE",
           "WRITE_HIGH_WATER", "FrameConnection", "open_frame_connection", "frame",
           "unpack_header", "unpackb", "wait_closed"]

#: The version byte of every frame this module writes and the only one it reads.
#: Version 3: entries may go as their leader-made encoding (codec.ENCODED_NORMAL).
#: Version 4: a node whose log is empty votes only in the first elections (a
#: node of version 3 may also grant again a candidate it voted for, which
#: is unsafe: engine_identity.may_vote_on_empty_log).
WIRE_VERSION = 4
#: Largest frame (version byte + body) accepted or sent. It must exceed the
#: largest AppendEntries a node sends: Config.max_payload_bytes (4 MiB by
#: default) of byte payloads plus per-entry overhead, or one oversized entry
#: that travels alone.
DEFAULT_MAX_FRAME_SIZE = 32 * 1024 * 1024
#: Message types from this one up belong to services (RaftServer.start's
#: `services`); raftcore's RPC messages use types below it.
SERVICE_TYPE_MIN = 64

_HEADER = struct.Struct(">IB")
#: Bytes of a frame's header (length and version).
HEADER_SIZE = _HEADER.size
_pack_header = _HEADER.pack
_unpack_header_from = _HEADER.unpack_from
#: (length, version) of a frame header's HEADER_SIZE bytes.
unpack_header = _HEADER.unpack
# A writer whose transport buffers more than this waits for it to drain.
WRITE_HIGH_WATER = 4 * 1024 * 1024
# Frames up to this size are sent as one joined buffer, larger ones as two.
_JOIN_BELOW = 64 * 1024
# Bytes buffered before start() (a handshake reads a few hundred) past which
# reading pauses until they are read.
_READ_LIMIT = 1024 * 1024

OnFrame = Callable[[bytes], Optional[str]]
OnEnd = Callable[[Optional[str], bool], None]


def frame(body: bytes) -> bytes:
    """`body` with its frame header in front."""
    return _pack_header(len(body) + 1, WIRE_VERSION) + body


def unpackb(body: bytes) -> Any:
    """A frame body as msgpack (binary type on, map keys of any type)."""
    return msgpack.unpackb(body, raw=False, strict_map_key=False)


class FrameConnection(asyncio.Protocol):
    """One connection carrying frames, client or server side (see the module
    docstring). `kind` names its frames in the reasons given to on_end
    ("reply " on a client, "" on a server). `on_made(conn)`, if given, is
    called once the connection (and its TLS handshake) is up.

    After start(on_frame, on_end): on_frame(body) is called for each frame
    and returns a reason to close the connection, or None; on_end(reason,
    warn) is called once when the connection ends or a frame is malformed
    (reason None: closed cleanly by the peer; warn: the peer misbehaved).
    """

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME_SIZE, kind: str = "",
                 on_made: Optional[Callable[["FrameConnection"], None]] = None) -> None:
        self.transport: Optional[asyncio.Transport] = None
        self._max_frame = max_frame
        self._kind = kind
        self._on_made = on_made
        self._on_frame: Optional[OnFrame] = None
        self._on_end: Optional[OnEnd] = None
        self._rest = bytearray()        # bytes not read or handed over yet
        self._error: Optional[BaseException] = None
        self._peer_done = False         # the peer closed (seen once what came is handed over)
        self._data_waiter: Optional[asyncio.Future] = None   # a readexactly waiting
        self._read_paused = False       # paused for _READ_LIMIT before start()
        self._stopped = False
        self._held = False
        self._taking = False            # in _take: an on_frame that calls back in returns
        self._write_paused = False
        self._drain_waiters: list[asyncio.Future] = []
        self._lost: Optional[asyncio.Future] = None

    # ------------------------------------------------- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport          # type: ignore[assignment]
        self._lost = asyncio.get_running_loop().create_future()
        if self._on_made is not None:
            self._on_made(self)

    def data_received(self, data: bytes) -> None:
        if self._stopped:
            return
        self._rest += data
        if self._on_frame is not None:
            self._take()
        else:
            if len(self._rest) > _READ_LIMIT and not self._read_paused:
                self._read_paused = True
                self.transport.pause_reading()
            self._wake_reader()

    def eof_received(self) -> bool:
        self._peer_end()
        # Keep the transport open to send what is still due (TLS cannot half-close).
        return self.transport.get_extra_info("sslcontext") is None

    def connection_lost(self, exc: Optional[BaseException]) -> None:
        if exc is not None:
            if self._on_frame is not None:
                self._end(f"connection error: {exc}", False)
            elif self._error is None:
                self._error = exc
            self._wake_reader()
        else:
            self._peer_end()
        for w in self._drain_waiters:
            if not w.done():
                w.set_exception(ConnectionResetError("connection lost"))
        self._drain_waiters.clear()
        if not self._lost.done():
            self._lost.set_result(None)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        for w in self._drain_waiters:
            if not w.done():
                w.set_result(None)
        self._drain_waiters.clear()

    # --------------------------------------------------------- before start
    async def readexactly(self, n: int) -> bytes:
        """The next `n` bytes (before start() only). Raises
        asyncio.IncompleteReadError if the peer closes first, or the error
        that ended the connection."""
        while len(self._rest) < n:
            if self._error is not None:
                raise self._error
            if self._peer_done:
                partial = bytes(self._rest)
                self._rest.clear()
                raise asyncio.IncompleteReadError(partial, n)
            self._data_waiter = asyncio.get_running_loop().create_future()
            try:
                await self._data_waiter
            finally:
                self._data_waiter = None
        data = bytes(self._rest[:n])
        del self._rest[:n]
        if self._read_paused and len(self._rest) <= _READ_LIMIT:
            self._read_paused = False
            self.transport.resume_reading()
        return data

    def _wake_reader(self) -> None:
        w = self._data_waiter
        if w is not None and not w.done():
            w.set_result(None)

    # ------------------------------------------------------------ frames
    def start(self, on_frame: OnFrame, on_end: OnEnd) -> None:
        """Hands every frame, from the bytes already buffered on, to on_frame."""
        self._on_frame, self._on_end = on_frame, on_end
        if self._read_paused:
            self._read_paused = False
            self.transport.resume_reading()
        if self._error is not None:
            self._end(f"connection error: {self._error}", False)
            return
        self._take()

    def stop(self) -> None:
        """No more frames are handed over (the connection is closed)."""
        self._stopped = True

    def hold(self) -> None:
        """Stops handing frames over and pauses reading until release()."""
        if not self._held:
            self._held = True
            if self.transport is not None:
                self.transport.pause_reading()

    def release(self) -> None:
        if self._held:
            self._held = False
            if self.transport is not None and not self._stopped:
                self.transport.resume_reading()
            self._take()

    def _peer_end(self) -> None:
        if self._on_frame is None:
            self._peer_done = True
            self._wake_reader()
        elif not self._peer_done:
            self._peer_done = True
            self._take()

    def _take(self) -> None:
        """Hands over every complete frame (unless held or stopped)."""
        if self._taking:
            return      # the loop below goes on with what is there
        self._taking = True
        rest, kind = self._rest, self._kind
        pos, end = 0, len(rest)
        try:
            while end - pos >= HEADER_SIZE and not self._stopped and not self._held:
                size, version = _unpack_header_from(rest, pos)
                if version != WIRE_VERSION:
                    return self._end(f"{kind}frame of unknown wire version {version} (this "
                                     f"node speaks {WIRE_VERSION})", True)
                if size > self._max_frame:
                    return self._end(f"{kind}frame of {size} bytes exceeds max_frame_size "
                                     f"{self._max_frame}", True)
                if size < 1:
                    return self._end(f"empty {kind}frame", True)
                stop = pos + HEADER_SIZE + size - 1
                if stop > end:
                    break
                body = bytes(rest[pos + HEADER_SIZE:stop])
                pos = stop
                reason = self._on_frame(body)
                if reason is not None:
                    return self._end(reason, True)
        finally:
            del rest[:pos]
            self._taking = False
        if self._peer_done and not self._held:
            self._ended_by_peer()

    def _ended_by_peer(self) -> None:
        rest, kind = len(self._rest), self._kind
        if not rest:
            self._end(None, False)
        elif rest < HEADER_SIZE:
            self._end(f"truncated {kind}frame header ({rest} of {HEADER_SIZE} bytes before "
                      "the connection closed)", True)
        else:
            size = _unpack_header_from(self._rest, 0)[0]
            self._end(f"truncated {kind}frame ({rest - HEADER_SIZE} of {size - 1} body bytes "
                      "before the connection closed)", True)

    def _end(self, reason: Optional[str], warn: bool) -> None:
        if self._stopped:
            return
        self._stopped = True
        self._rest = bytearray()
        self._on_end(reason, warn)

    # ------------------------------------------------------------ writing
    def write(self, data: bytes) -> None:
        self.transport.write(data)

    def send_frame(self, body: bytes) -> None:
        """Writes `body` as one frame."""
        if len(body) < _JOIN_BELOW:
            # One buffer, one send: copying a small body is cheaper than a
            # second write (uvloop sends each write at once).
            self.transport.write(_pack_header(len(body) + 1, WIRE_VERSION) + body)
        else:
            self.transport.writelines((_pack_header(len(body) + 1, WIRE_VERSION), body))

    def backed_up(self) -> bool:
        """Whether more than WRITE_HIGH_WATER bytes wait to be sent."""
        return self.transport.get_write_buffer_size() > WRITE_HIGH_WATER

    async def drain(self) -> None:
        """Returns once the transport takes writes again (below its high-water
        mark); ConnectionResetError if the connection is lost meanwhile."""
        if self.transport.is_closing():
            raise ConnectionResetError("connection lost")
        if not self._write_paused:
            return
        w = asyncio.get_running_loop().create_future()
        self._drain_waiters.append(w)
        await w

    # ------------------------------------------------------------ closing
    def close(self) -> None:
        self.transport.close()

    def abort(self) -> None:
        self.transport.abort()

    async def wait_closed(self) -> None:
        await asyncio.shield(self._lost)

    def peer(self) -> Any:
        return self.transport.get_extra_info("peername")


async def open_frame_connection(host: str, port: int, *, ssl: Optional[_ssl.SSLContext] = None,
                                max_frame: int = DEFAULT_MAX_FRAME_SIZE, kind: str = "reply ",
                                timeout: Optional[float] = None) -> FrameConnection:
    """Connects (and runs the TLS handshake, if `ssl`) within `timeout`
    seconds; raises asyncio.TimeoutError, OSError or ssl.SSLError."""
    loop = asyncio.get_running_loop()
    kw: dict = {}
    if ssl is not None:
        kw["ssl"] = ssl
        if timeout is not None:
            kw["ssl_handshake_timeout"] = timeout
    conn = FrameConnection(max_frame, kind)
    await asyncio.wait_for(loop.create_connection(lambda: conn, host, port, **kw), timeout)
    return conn


async def wait_closed(conn: FrameConnection) -> None:
    """Waits for a closing connection to close; aborts it if the peer does
    not finish a TLS shutdown promptly."""
    try:
        await asyncio.wait_for(conn.wait_closed(), 1.0)
    except (asyncio.TimeoutError, ConnectionError, OSError, _ssl.SSLError):
        conn.abort()
    except asyncio.CancelledError:
        conn.abort()
        raise


def check_ssl(ssl: Any) -> None:
    if ssl is not None and not isinstance(ssl, _ssl.SSLContext):
        raise ConfigError(f"ssl must be an ssl.SSLContext or None, got {type(ssl).__name__}")


def check_positive(name: str, v: Any, integer: bool = False) -> None:
    kinds = (int,) if integer else (int, float)
    if not isinstance(v, kinds) or isinstance(v, bool) or v <= 0:
        raise ConfigError(f"{name} must be a positive {'integer' if integer else 'number'}, "
                          f"got {v!r}")
