"""Channel: a pipelined request/reply stream to one peer over frames, with
reconnection and back-off (the client side of raftcore.network.tcp: see its
docstring, "Connections", "Pipelining" and "Failures").

A Channel sends `[request_id, encode(msg)]` frames over one FrameConnection
at a time, matches replies (`[request_id, value]`, or `[request_id, None,
reason]` for a handler's error) to calls by request id, and fails every call
still waiting when the connection is lost. It knows no Raft: encode and
decode default to raftcore.codec's encode_message / decode_message, and an
application passes its own (identity functions for plain msgpack values,
with expect=None to take a reply of any type). Its settings come from `net`,
any object with the attributes rpc_timeout, connect_timeout,
max_frame_size, ssl, secret (None: no handshake), cluster_id (None, or
announced in a cluster hello) and backoff_max (TcpNetwork is one);
rpc_timeout and backoff_max are read at each use. `target` only names the
peer in messages.
"""
from __future__ import annotations

import asyncio
import functools
import logging
import ssl as _ssl
from typing import Any, Callable, Optional

import msgpack

from raftcore.codec import decode_message, encode_message
from raftcore.errors import CodecError, NetworkError, Timeout
from raftcore.network.auth import AuthError, client_handshake, client_hello
from raftcore.network.base import ReplyCallback
from raftcore.network.framing import (WRITE_HIGH_WATER, FrameConnection, open_frame_connection,
                                      unpackb, wait_closed)

__all__ = ["Channel", "BACKOFF_INITIAL", "BACKOFF_MAX"]

log = logging.getLogger("raftcore.network.tcp")

#: Reconnect back-off: first delay after a failure, and its cap.
BACKOFF_INITIAL = 0.2
BACKOFF_MAX = 1.0


class _Conn:
    """One open client connection and the calls awaiting a reply on it, by
    request id."""

    __slots__ = ("frames", "transport", "pending", "closed")

    def __init__(self, frames: FrameConnection) -> None:
        self.frames = frames        # hands replies over as they arrive: no reader task
        self.transport = frames.transport
        self.pending: dict[int, asyncio.Future] = {}
        self.closed = False


class Channel:
    """A pipelined request/reply stream to one peer, over one connection at a
    time, reconnecting with back-off after failures."""

    def __init__(self, net: Any, target: Any, host: str, port: int, addr: str,
                 kind: str = "", drop_on_timeout: bool = False,
                 encode: Callable[[Any], Any] = encode_message,
                 decode: Callable[[Any], Any] = decode_message) -> None:
        self._loop = asyncio.get_running_loop()
        self._encode = encode
        self._decode = decode
        self._kind = kind            # "" or "snapshot ": names the connection in messages
        self._drop_on_timeout = drop_on_timeout   # a call timing out drops the connection
        self._target = target
        self._host = host
        self._port = port
        self._addr = addr
        self._net = net              # rpc_timeout is read from it at each call
        self._ssl = net.ssl
        self._connect_timeout = net.connect_timeout
        self._max_frame = net.max_frame_size
        self._packer = msgpack.Packer(use_bin_type=True)
        self._conn: Optional[_Conn] = None
        self._connecting: Optional[asyncio.Task] = None
        self._next_id = 0
        self._queued = 0             # calls waiting to send (for a connection or a drain)
        self._backoff = 0.0          # current back-off delay; 0: the peer is healthy
        self._retry_at = 0.0         # loop time of the next allowed connect attempt
        self._last_error = ""
        self._closed = False

    def _who(self) -> str:
        return f"node {self._target} at {self._addr}" + (
            f" ({self._kind}connection)" if self._kind else "")

    # ------------------------------------------------------------- calls

    async def call(self, msg: Any, expect: Optional[type]) -> Any:
        conn = self._conn
        if conn is None or conn.frames.backed_up():
            cid = getattr(msg, "cluster_id", None)
            if cid is not None:
                self._net.cluster_id = cid      # for the hello of the connection to come
            # Wait for a connection or for the send buffer to drain; while a
            # caller waits here call_nowait declines, so requests go out in
            # the order they were made.
            self._queued += 1
            try:
                conn = await self._ready()
            finally:
                self._queued -= 1
        rid, fut, timer = self._send(conn, msg)
        return await self._reply(conn, rid, fut, timer, msg, expect)

    async def _ready(self) -> _Conn:
        conn = self._conn
        if conn is None:
            return await self._connect()
        try:
            # Bounded: a peer that stopped reading must not hold the call
            # past rpc_timeout (the runtime relies on every RPC ending).
            await asyncio.wait_for(conn.frames.drain(), self._net.rpc_timeout)
        except asyncio.TimeoutError:
            reason = (f"no room to send to {self._who()} within rpc_timeout "
                      f"{self._net.rpc_timeout}s: the connection is stalled")
            if self._drop_on_timeout:
                self._drop(conn, reason)
            raise Timeout(reason) from None
        except (ConnectionError, OSError) as exc:
            raise NetworkError(f"connection to {self._who()} failed: {exc}") from None
        return conn

    def call_nowait(self, msg: Any, expect: Optional[type], reply: Any) -> bool:
        """Sends `msg` right away when connected (and not backed up): True,
        and reply(value, None) or reply(None, error) is called once, as the
        reply frame is read (or the call fails); False otherwise, nothing
        sent (use call). A reply of another type than `expect` closes the
        connection and is given to reply as a NetworkError."""
        conn = self._conn
        if (conn is None or self._queued
                or conn.transport.get_write_buffer_size() > WRITE_HIGH_WATER):
            return False
        slot = ReplyCallback(None)
        rid, _, timer = self._send(conn, msg, slot)
        slot.reply = functools.partial(self._called_back, conn, rid, timer, msg, expect, reply)
        return True

    def _called_back(self, conn: _Conn, rid: int, timer: Any, msg: Any, expect: Optional[type],
                     reply: Any, value: Any, exc: Optional[BaseException]) -> None:
        timer.cancel()
        if exc is None and expect is not None and type(value) is not expect:
            reason = f"replied to a {type(msg).__name__} with a {type(value).__name__}"
            exc = NetworkError(f"{self._who()} {reason}")
            value = None
            self._protocol_error(conn, reason)
        try:
            reply(value, exc)
        except Exception:   # the caller's bug: never into the reading of replies
            log.error("the reply callback of request %s to %s raised", rid, self._who(),
                      exc_info=True)

    def _send(self, conn: _Conn, msg: Any, slot: Any = None) -> tuple:
        """Frames and writes one request; (request id, reply future -- `slot`
        if given --, timeout handle)."""
        self._next_id = rid = self._next_id + 1
        try:
            body = self._packer.pack([rid, self._encode(msg)])
        except (TypeError, ValueError, OverflowError) as exc:
            raise CodecError(f"cannot encode {type(msg).__name__} for {self._who()}: {exc}; "
                             "entry payloads must be msgpack-able values") from None
        size = len(body) + 1
        if size > self._max_frame:
            log.warning("%s is %d bytes, over max_frame_size %d: not sent to %s; lower "
                        "Config.max_payload_bytes/max_payload_entries or raise max_frame_size",
                        type(msg).__name__, size, self._max_frame, self._who())
            raise NetworkError(f"{type(msg).__name__} of {size} bytes exceeds max_frame_size "
                               f"{self._max_frame}; not sent to {self._who()}")
        if conn.closed:
            raise NetworkError(f"connection to {self._who()} was lost; retrying with back-off")
        conn.frames.send_frame(body)
        # Registered once written: a write that raised leaves no orphan
        # behind (the reply cannot be read before this returns).
        loop = self._loop
        fut = loop.create_future() if slot is None else slot
        conn.pending[rid] = fut
        return rid, fut, loop.call_later(self._net.rpc_timeout, self._expire, conn, rid)

    async def _reply(self, conn: _Conn, rid: int, fut: asyncio.Future, timer: Any, msg: Any,
                     expect: Optional[type]) -> Any:
        try:
            resp = await fut
        except BaseException:
            conn.pending.pop(rid, None)
            raise
        finally:
            timer.cancel()
        if expect is not None and type(resp) is not expect:
            reason = f"replied to a {type(msg).__name__} with a {type(resp).__name__}"
            self._protocol_error(conn, reason)
            raise NetworkError(f"{self._who()} {reason}")
        return resp

    def _expire(self, conn: _Conn, rid: int) -> None:
        fut = conn.pending.pop(rid, None)
        if fut is not None and not fut.done():
            fut.set_exception(Timeout(
                f"no reply from {self._who()} within rpc_timeout {self._net.rpc_timeout}s; "
                "the request may or may not have been handled (a late reply is dropped)"))
            if self._drop_on_timeout:
                self._drop(conn, f"no reply within rpc_timeout {self._net.rpc_timeout}s")

    def _drop(self, conn: _Conn, reason: str) -> None:
        """Aborts `conn` now, its unsent bytes discarded, and fails the calls
        waiting on it; the next call connects afresh, with no back-off (this
        connection stalled; the peer may well take a new one)."""
        log.debug("dropping the connection to %s: %s", self._who(), reason)
        if self._conn is conn:
            self._conn = None
        conn.transport.abort()
        self._lost(conn, reason)

    # -------------------------------------------------------- connecting

    async def _connect(self) -> _Conn:
        if self._closed:
            raise NetworkError(f"the client of {self._who()} is closed")
        task = self._connecting
        if task is None:
            now = self._loop.time()
            if now < self._retry_at:
                raise NetworkError(
                    f"{self._who()} is unreachable ({self._last_error}); next connection "
                    f"attempt in {self._retry_at - now:.2f}s")
            task = self._connecting = self._loop.create_task(self._open())
            # Retrieved here too, in case every caller gave up (was cancelled).
            task.add_done_callback(_retrieve)
        # Shielded: a caller that gives up must not cancel the shared attempt.
        return await asyncio.shield(task)

    async def _open(self) -> _Conn:
        try:
            try:
                frames = await open_frame_connection(
                    self._host, self._port, ssl=self._ssl, max_frame=self._max_frame,
                    kind="reply ", timeout=self._connect_timeout)
            except asyncio.TimeoutError:
                self._failed(f"connect timed out after {self._connect_timeout}s")
                raise NetworkError(f"cannot connect to {self._who()}: {self._last_error}") \
                    from None
            except (OSError, _ssl.SSLError, EOFError) as exc:
                self._failed(f"connect failed: {exc}")
                raise NetworkError(f"cannot connect to {self._who()}: {exc}") from None
            secret = self._net.secret
            if secret is not None:
                try:
                    await asyncio.wait_for(client_handshake(frames, frames, secret),
                                           self._connect_timeout)
                except BaseException as exc:
                    frames.abort()
                    if isinstance(exc, asyncio.TimeoutError):
                        reason = (f"no shared-secret handshake within {self._connect_timeout}s "
                                  "(a server started without a secret never sends one)")
                    elif isinstance(exc, AuthError):
                        reason = f"authentication failed: {exc}"
                    elif isinstance(exc, (OSError, _ssl.SSLError)):
                        reason = f"connection failed during authentication: {exc}"
                    else:
                        raise
                    if self._backoff == 0.0:
                        log.warning("cannot connect to %s: %s", self._who(), reason)
                    self._failed(reason)
                    raise NetworkError(f"cannot connect to {self._who()}: {reason}") from None
            if self._net.cluster_id is not None:
                await self._hello(frames, self._net.cluster_id)
            if self._closed:
                frames.abort()
                raise NetworkError(f"the client of {self._who()} is closed")
            conn = _Conn(frames)
            self._conn = conn
            frames.start(functools.partial(self._reply_frame, conn),
                         functools.partial(self._reader_ended, conn))
            log.debug("connected to %s", self._who())
            return conn
        finally:
            self._connecting = None

    async def _hello(self, frames: FrameConnection, cluster_id: str) -> None:
        """Announces the cluster id; a server of another cluster fails the connect."""
        try:
            theirs = await asyncio.wait_for(client_hello(frames, frames, cluster_id),
                                            self._connect_timeout)
        except BaseException as exc:
            frames.abort()
            if isinstance(exc, asyncio.TimeoutError):
                reason = f"no answer to the cluster hello within {self._connect_timeout}s"
            elif isinstance(exc, (AuthError, OSError, _ssl.SSLError)):
                reason = f"cluster hello failed: {exc}"
            else:
                raise
            self._failed(reason)
            raise NetworkError(f"cannot connect to {self._who()}: {reason}") from None
        if theirs is not None and theirs != cluster_id:
            frames.abort()
            reason = (f"it belongs to cluster {theirs}, this node to cluster {cluster_id} "
                      "(another cluster's node at that address?)")
            if self._backoff == 0.0:
                log.warning("cannot connect to %s: %s", self._who(), reason)
            self._failed(reason)
            raise NetworkError(f"cannot connect to {self._who()}: {reason}")

    def _failed(self, reason: str) -> None:
        """Starts or extends the back-off after a failed connect or a lost connection."""
        cap = self._net.backoff_max
        if self._backoff == 0.0:
            log.info("%s unreachable: %s; retrying with back-off", self._who(), reason)
            self._backoff = min(BACKOFF_INITIAL, cap)
        else:
            log.debug("%s still unreachable: %s", self._who(), reason)
            self._backoff = min(self._backoff * 2, cap)
        self._last_error = reason
        self._retry_at = self._loop.time() + self._backoff

    # ----------------------------------------------------------- replies

    def _reply_frame(self, conn: _Conn, body: bytes) -> Optional[str]:
        """One reply frame's body: settles the call it answers. Returns a
        reason to close the connection, or None."""
        try:
            obj = unpackb(body)
        except Exception as exc:
            return f"reply frame is not msgpack ({exc})"
        if type(obj) is not list or not 2 <= len(obj) <= 3 or type(obj[0]) is not int:
            return "reply frame is not [request_id, message]"
        pending = conn.pending
        if len(obj) == 2:
            if obj[1] is None:
                resp = None          # the reply of a handler returning nothing
            else:
                try:
                    resp = self._decode(obj[1])
                except Exception as exc:
                    return f"malformed reply message: {exc}"
            # Taken out of `pending` only now: if the reply could not be
            # read, closing the connection fails the call.
            fut = pending.pop(obj[0], None)
            if fut is not None and not fut.done():
                fut.set_result(resp)
        else:
            if obj[1] is not None or type(obj[2]) is not str:
                return "malformed error reply"
            fut = pending.pop(obj[0], None)
            if fut is not None and not fut.done():
                fut.set_exception(NetworkError(
                    f"{self._who()} failed to handle the request: {obj[2]}"))
        if fut is None:
            log.debug("dropped a late reply from %s (request %s)", self._who(), obj[0])
        if not conn.closed:     # (a reply of the wrong type has just closed it)
            self._backoff = 0.0
        return None

    def _reader_ended(self, conn: _Conn, reason: Optional[str], warn: bool) -> None:
        if warn:
            log.warning("closing the connection to %s: %s", self._who(), reason)
        self._lost(conn, reason or "closed by the peer")

    def _protocol_error(self, conn: _Conn, reason: str) -> None:
        log.warning("closing the connection to %s: %s", self._who(), reason)
        self._lost(conn, reason)

    def _lost(self, conn: _Conn, reason: str) -> None:
        """Closes `conn` and fails every call still waiting on it."""
        if conn.closed:
            return
        conn.closed = True
        conn.frames.stop()
        if self._conn is conn:
            self._conn = None
            if not self._closed:
                self._failed(f"connection lost: {reason}")
        conn.frames.close()
        if conn.pending:
            msg = (f"connection to {self._who()} lost ({reason}); the request may or may not "
                   "have been handled")
            for fut in conn.pending.values():
                if not fut.done():
                    fut.set_exception(NetworkError(msg))
            conn.pending.clear()

    # ----------------------------------------------------------- closing

    async def close(self) -> None:
        self._closed = True
        if self._connecting is not None:
            self._connecting.cancel()
            try:
                await self._connecting
            except BaseException:
                pass
        conn = self._conn
        if conn is None:
            return
        self._lost(conn, "client closed")
        await wait_closed(conn.frames)


def _retrieve(task: asyncio.Task) -> None:
    if not task.cancelled():
        task.exception()
