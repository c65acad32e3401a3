"""RaftServer: serves one node's RPCs, and an application's own services, over
TCP (the serving side of raftcore.network.tcp: see its docstring).

Each accepted connection is a FrameConnection; every request frame steps the
node as it arrives, through the RaftNode contract of raftcore.network.base
(an AppendEntries first through append_entries_nowait).
"""
from __future__ import annotations

import asyncio
import functools
import logging
import ssl as _ssl
from typing import Any, Awaitable, Callable, Mapping, Optional

import msgpack

from raftcore.codec import decode_message, encode_message
from raftcore.errors import CodecError, ConfigError
from raftcore.messages import (AppendEntriesRequest, InstallSnapshotRequest,
                               TransferLeaderRequest, VoteRequest)
from raftcore.network.auth import (AUTH_TIMEOUT, HELLO_MAGIC, check_secret, hello_cluster_id,
                                   hello_frame, server_handshake)
from raftcore.network.base import RaftNode, hand_over
from raftcore.network.framing import (DEFAULT_MAX_FRAME_SIZE, SERVICE_TYPE_MIN, WRITE_HIGH_WATER,
                                      FrameConnection, check_positive, check_ssl, unpackb,
                                      wait_closed)

__all__ = ["RaftServer"]

log = logging.getLogger("raftcore.network.tcp")

# A server connection with this many requests being handled stops reading
# until some finish (the Raft in-flight window keeps a sane peer far below).
_MAX_HANDLING_PER_CONN = 1024
# Longest handler error text sent back to the caller.
_MAX_REASON = 2000


async def _raise(exc: BaseException) -> Any:
    raise exc


class _ServerConn:
    """One accepted connection."""

    __slots__ = ("frames", "transport", "peer", "packer", "closed", "unstarted", "handling",
                 "room", "task", "ended", "waiter")

    def __init__(self, frames: FrameConnection) -> None:
        self.frames = frames
        self.transport = frames.transport
        self.peer = frames.peer()
        self.packer = msgpack.Packer(use_bin_type=True)
        self.closed = False
        self.unstarted = 0          # handler tasks created but not yet started
        self.handling = 0           # handler tasks not finished
        self.room: Optional[asyncio.Future] = None   # set when `handling` drops below the cap
        self.task: Optional[asyncio.Task] = None
        self.ended: Optional[asyncio.Future] = None  # the reader's end: a reason or None
        self.waiter: Optional[asyncio.Task] = None   # releases the held reader (backpressure)

    def reply(self, rid: int, resp: Any) -> None:
        # uvloop may have closed the transport (a reset) before the reading
        # loop saw it; a write would then raise RuntimeError.
        if self.closed or self.transport.is_closing():
            return
        body = self.packer.pack([rid, None if resp is None else encode_message(resp)])
        self.frames.send_frame(body)

    def reply_value(self, rid: int, value: Any) -> None:
        """Replies with a plain msgpack-able value (a service's reply)."""
        # uvloop may have closed the transport (a reset) before the reading
        # loop saw it; a write would then raise RuntimeError.
        if self.closed or self.transport.is_closing():
            return
        body = self.packer.pack([rid, value])
        self.frames.send_frame(body)

    def reply_error(self, rid: int, exc: BaseException) -> None:
        if self.closed or self.transport.is_closing():
            return
        reason = f"{type(exc).__name__}: {exc}"
        if len(reason) > _MAX_REASON:
            reason = reason[:_MAX_REASON] + "..."
        body = self.packer.pack([rid, None, reason])
        self.frames.send_frame(body)


class RaftServer:
    """Serves one node's RPCs over TCP: `await RaftServer.start(raft, host, port)`.

    `raft` is a RaftNode (raftcore.network.base; a Raft is one). An
    AppendEntries goes to `raft.append_entries_nowait(req, reply)` first and
    is awaited through `raft.append_entries(req)` only if declined; the
    other requests to `raft.vote(req)` and so on, each in a task. A
    handler that raises (say the node has shut down: Fatal) is answered with
    an error frame, which the caller raises as NetworkError. `port` is the
    port listened on (the one picked by the OS when 0 was given).
    `await close()` stops listening, closes every connection and waits for
    the handlers in progress to finish (they are never cancelled).
    """

    # Shared-secret authentication, set by start(): None serves everyone.
    _secret: Optional[bytes] = None
    _auth_timeout: float = AUTH_TIMEOUT

    def __init__(self, raft: RaftNode, ssl: Optional[_ssl.SSLContext], max_frame_size: int,
                 services: Optional[dict] = None) -> None:
        self._raft = raft
        #: Service message type -> handler; None when the server has none.
        self._services = services or None
        self._ssl = ssl
        self._max_frame = max_frame_size
        self._server: Optional[asyncio.base_events.Server] = None
        self._port = 0
        self._conns: set[_ServerConn] = set()
        self._handlers: set[asyncio.Task] = set()
        # AppendEntries answers waiting for the node's flush, which come to
        # _answer_later (see _dispatch); close() waits for them.
        self._answers_due = 0
        self._answers_drained: Optional[asyncio.Future] = None
        self._append = raft.append_entries
        self._append_nowait = raft.append_entries_nowait
        # Request type -> handler run in a task of its own (AppendEntries has
        # its own path, see _dispatch).
        self._handlers_by_type = {
            VoteRequest: raft.vote,
            InstallSnapshotRequest: getattr(raft, "install_snapshot", None),
            TransferLeaderRequest: getattr(raft, "transfer_leader", None),
        }
        self._closed = False

    @classmethod
    async def start(cls, raft: RaftNode, host: str, port: int,
                    ssl: Optional[_ssl.SSLContext] = None, *, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
                    services: Optional[Mapping[int, Callable[[list], Awaitable[Any]]]] = None,
                    secret: Optional[bytes] = None, auth_timeout: float = AUTH_TIMEOUT,
                    ) -> "RaftServer":
        """Listens on host:port (port 0: any free port) and serves `raft`'s RPCs,
        and the application's own requests through `services` (message type
        >= SERVICE_TYPE_MIN -> async handler; see the module docstring)."""
        # secret: the cluster's shared secret (see TcpNetwork): a connection
        # must prove it holds it within auth_timeout seconds, or it is closed
        # before any of its frames reaches the node.
        secret = check_secret(secret)
        check_positive("auth_timeout", auth_timeout)
        check_ssl(ssl)
        check_positive("max_frame_size", max_frame_size, integer=True)
        if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port < 65536:
            raise ConfigError(f"port must be an integer in [0, 65535], got {port!r}")
        if services is not None:
            services = dict(services)
            for t, handler in services.items():
                if not isinstance(t, int) or isinstance(t, bool) or t < SERVICE_TYPE_MIN:
                    raise ConfigError(f"service message types must be integers >= "
                                      f"{SERVICE_TYPE_MIN} (lower ones are raftcore's RPCs), "
                                      f"got {t!r}")
                if not callable(handler):
                    raise ConfigError(f"the handler of service message type {t} is not "
                                      f"callable: {handler!r}")
        self = cls(raft, ssl, max_frame_size, services)
        self._secret = secret
        self._auth_timeout = auth_timeout
        self._server = await asyncio.get_running_loop().create_server(
            self._protocol, host, port, ssl=ssl)
        self._port = self._server.sockets[0].getsockname()[1]
        log.info("serving node %s on %s:%s%s", getattr(raft, "id", "?"), host, self.port,
                 (" (TLS)" if ssl is not None else "")
                 + (" (shared-secret authentication)" if secret is not None else ""))
        return self

    @property
    def port(self) -> int:
        """The port listened on (of the first socket, if the host gave several)."""
        return self._port

    @property
    def connections(self) -> int:
        """How many peer connections are open now."""
        return len(self._conns)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._server.close()
        conns = list(self._conns)
        for c in conns:
            c.closed = True
            c.frames.close()
            if c.task is not None:
                c.task.cancel()
        await asyncio.gather(*(c.task for c in conns if c.task is not None),
                             return_exceptions=True)
        # Handlers in progress finish on their own (a node that shuts down
        # fails them); they are never cancelled half-way.
        if self._handlers:
            await asyncio.gather(*list(self._handlers), return_exceptions=True)
        if self._answers_due:
            self._answers_drained = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._answers_drained)
        await asyncio.gather(*(wait_closed(c.frames) for c in conns), return_exceptions=True)
        await self._server.wait_closed()

    # ------------------------------------------------------------ serving

    def _protocol(self) -> FrameConnection:
        """A new connection's protocol: it cuts frames as they arrive."""
        return FrameConnection(self._max_frame, "", on_made=self._accepted)

    def _accepted(self, frames: FrameConnection) -> None:
        asyncio.get_running_loop().create_task(self._serve(frames))

    async def _serve(self, frames: FrameConnection) -> None:
        conn = _ServerConn(frames)
        if self._closed:
            frames.abort()
            return
        conn.task = asyncio.current_task()
        self._conns.add(conn)
        reason = None
        try:
            if self._secret is not None:
                reason = await server_handshake(frames, self._secret, self._auth_timeout)
                if reason is not None:
                    return
                log.debug("connection from %s authenticated", conn.peer)
            ended = conn.ended = asyncio.get_running_loop().create_future()
            frames.start(functools.partial(self._request_frame, conn),
                         functools.partial(self._conn_ended, conn))
            reason = await ended
        except asyncio.CancelledError:
            if not self._closed:
                raise
        except (ConnectionError, OSError, _ssl.SSLError) as exc:
            log.debug("connection from %s failed: %s", conn.peer, exc)
        finally:
            frames.stop()
            if conn.waiter is not None:
                conn.waiter.cancel()
            if reason is not None:
                log.warning("closing the connection from %s: %s", conn.peer, reason)
            conn.closed = True
            self._conns.discard(conn)
            if not self._closed:
                frames.close()

    def _conn_ended(self, conn: _ServerConn, reason: Optional[str], warn: bool) -> None:
        """The reader's end of `conn`: _serve logs `reason` (None: closed cleanly)."""
        if reason is not None and not warn:
            log.debug("connection from %s failed: %s", conn.peer, reason)
            reason = None
        if not conn.ended.done():
            conn.ended.set_result(reason)

    def _request_frame(self, conn: _ServerConn, body: bytes) -> Optional[str]:
        """One request frame's body: steps the node for it. Returns a reason
        to close the connection, or None."""
        try:
            obj = unpackb(body)
        except TypeError as exc:
            return self._refuse_undecodable(conn, body, exc)
        except Exception as exc:
            return f"frame body is not msgpack ({exc or type(exc).__name__})"
        if type(obj) is not list or len(obj) != 2 or type(obj[0]) is not int:
            if type(obj) is list and obj and obj[0] == HELLO_MAGIC:
                return self._hello(conn, obj)
            return "frame body is not [request_id, message]"
        msg = obj[1]
        services = self._services
        try:
            if (services is not None and type(msg) is list and msg
                    and type(msg[0]) is int and msg[0] >= SERVICE_TYPE_MIN):
                handler = services.get(msg[0])
                if handler is None:
                    return f"unknown service message type {msg[0]}"
                self._spawn(conn, self._handle(conn, rid=obj[0], handler=handler, msg=msg,
                                               raw=True))
            else:
                try:
                    msg = decode_message(msg)
                except Exception as exc:
                    return f"malformed message: {exc}"
                reason = self._dispatch(conn, obj[0], msg)
                if reason is not None:
                    return reason
        except Exception as exc:  # a bug of ours: log it, drop this connection only
            log.error("serving the connection from %s failed", conn.peer, exc_info=True)
            return f"internal error: {exc!r}"
        if (conn.handling >= _MAX_HANDLING_PER_CONN
                or conn.transport.get_write_buffer_size() > WRITE_HIGH_WATER):
            # Backpressure: no more requests from this peer until there is room.
            conn.frames.hold()
            self._spawn_waiter(conn)
        return None

    def _refuse_undecodable(self, conn: _ServerConn, body: bytes,
                            exc: TypeError) -> Optional[str]:
        """A frame of well-formed msgpack that Python cannot hold (a map
        whose key is a list or a map: `unhashable type`): the sender's bad
        value, not a broken stream. Its request gets an error answer and the
        connection goes on; a frame that is no request closes it."""
        try:
            obj = msgpack.unpackb(body, raw=False, strict_map_key=False, object_pairs_hook=list)
        except Exception:
            return f"frame body is not msgpack ({exc})"
        if type(obj) is not list or len(obj) != 2 or type(obj[0]) is not int:
            return "frame body is not [request_id, message]"
        log.info("refusing request %s from %s: it cannot be decoded (%s)", obj[0], conn.peer, exc)
        conn.reply_error(obj[0], CodecError(
            f"the request cannot be decoded ({exc}): a map key that is a tuple, list or map "
            "on the sender arrives as a list or map, which cannot be a key"))
        return None

    def _hello(self, conn: _ServerConn, obj: list) -> Optional[str]:
        """Answers a cluster hello with this node's cluster id; a reason to
        close the connection if the peer belongs to another cluster."""
        try:
            theirs = hello_cluster_id(obj)
        except ValueError as exc:
            return str(exc)
        mine = getattr(getattr(self._raft, "metrics", None), "cluster_id", None)
        conn.frames.write(hello_frame(mine))
        if theirs is not None and mine is not None and theirs != mine:
            return (f"the peer belongs to cluster {theirs}, this node to cluster {mine} "
                    "(a node of another cluster, or one pointed at another cluster's storage)")
        return None

    def _spawn_waiter(self, conn: _ServerConn) -> None:
        # Not one of _handlers (which close() waits for): a peer that never
        # reads would keep a drain waiting for good. _serve cancels it.
        conn.waiter = asyncio.get_running_loop().create_task(self._release_when_room(conn))

    async def _release_when_room(self, conn: _ServerConn) -> None:
        try:
            while conn.handling >= _MAX_HANDLING_PER_CONN and not conn.closed:
                conn.room = asyncio.get_running_loop().create_future()
                await conn.room
            if conn.frames.backed_up() and not conn.closed:
                await conn.frames.drain()
        except (ConnectionError, OSError, _ssl.SSLError):
            return
        conn.waiter = None
        if not conn.closed:
            conn.frames.release()

    def _dispatch(self, conn: _ServerConn, rid: int, msg: Any) -> Optional[str]:
        """Steps the node for one request: answers it now or starts its task.
        Returns a reason to close the connection, or None."""
        t = type(msg)
        if t is AppendEntriesRequest:
            # The synchronous path only when no earlier request of this
            # connection still waits to start: requests reach the node in order.
            if not conn.unstarted and self._append_now(conn, rid, msg):
                return None
            self._spawn(conn, self._handle(conn, rid, self._append, msg))
            return None
        handler = self._handlers_by_type.get(t)
        if handler is not None:
            self._spawn(conn, self._handle(conn, rid, handler, msg))
            return None
        return (f"unexpected message {t.__name__} (a server takes AppendEntries, Vote, "
                "InstallSnapshot and TransferLeader requests)")

    def _spawn(self, conn: _ServerConn, coro: Any) -> None:
        conn.unstarted += 1
        conn.handling += 1
        t = asyncio.get_running_loop().create_task(coro)
        self._handlers.add(t)
        t.add_done_callback(self._handlers.discard)

    async def _handle(self, conn: _ServerConn, rid: int, handler: Any, msg: Any,
                      raw: bool = False) -> None:
        # Everything before the handler's first await runs now, in the order
        # the tasks were created: the node sees requests in arrival order.
        conn.unstarted -= 1
        try:
            pending = handler(msg)
        except Exception as exc:     # a service handler that raised before awaiting
            pending = _raise(exc)
        await self._finish(conn, rid, pending, raw)

    def _append_now(self, conn: _ServerConn, rid: int, msg: AppendEntriesRequest) -> bool:
        """Hands an AppendEntries to the node's fast path: True if it took it
        (its answer goes to _answer_later, now or from the log flush's
        completion), False if it must be awaited."""
        # In hand before the call: the answer may come before it returns.
        conn.handling += 1
        self._answers_due += 1
        if hand_over(self._append_nowait, msg, functools.partial(self._answer_later, conn, rid),
                     self._raft):
            return True
        self._answer_done(conn)
        return False

    def _answer_later(self, conn: _ServerConn, rid: int, resp: Any,
                      exc: Optional[BaseException]) -> None:
        """The node's answer to an AppendEntries its fast path took (given
        at once, or from the log flush's completion)."""
        try:
            if exc is not None:
                log.debug("append of request %s from %s failed: %r", rid, conn.peer, exc)
                conn.reply_error(rid, exc)
            else:
                try:
                    conn.reply(rid, resp)
                except Exception as err:  # a node answering a non-message is our bug
                    log.error("cannot encode the reply to request %s from %s: %s", rid,
                              conn.peer, err)
                    conn.reply_error(rid, err)
        except Exception:   # never into the node's flush completion
            log.error("replying to request %s from %s failed", rid, conn.peer, exc_info=True)
        finally:
            self._answer_done(conn)

    def _answer_done(self, conn: _ServerConn) -> None:
        self._answers_due -= 1
        drained = self._answers_drained
        if not self._answers_due and drained is not None and not drained.done():
            drained.set_result(None)
        self._handled(conn)

    def _handled(self, conn: _ServerConn) -> None:
        """A request of `conn` was answered: make room for the next one."""
        conn.handling -= 1
        room = conn.room
        if room is not None and conn.handling < _MAX_HANDLING_PER_CONN:
            conn.room = None
            if not room.done():
                room.set_result(None)

    async def _finish(self, conn: _ServerConn, rid: int, pending: Any, raw: bool = False) -> None:
        """Awaits a handler and sends its reply: a raftcore message, or with
        `raw` (a service's) a plain msgpack-able value."""
        try:
            try:
                resp = await pending
            except asyncio.CancelledError as exc:
                conn.reply_error(rid, exc)
                raise
            except Exception as exc:
                log.debug("handler of request %s from %s raised %r", rid, conn.peer, exc)
                conn.reply_error(rid, exc)
                return
            try:
                if raw:
                    conn.reply_value(rid, resp)
                else:
                    conn.reply(rid, resp)
            except Exception as exc:  # a handler returning a non-message is our bug
                log.error("cannot encode the reply to request %s from %s: %s", rid, conn.peer,
                          exc)
                conn.reply_error(rid, exc)
        finally:
            self._handled(conn)
