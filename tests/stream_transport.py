"""StreamNetwork: a third transport, written from raftcore.network.base's
docstring alone, to show the contract is enough (test_stream_transport runs
cluster tests over it).

Plain asyncio streams; a frame is a 4-byte big-endian length and a msgpack
body. A request is [request_id, message] and its answer [request_id, ok,
message or error text], messages being raftcore.codec's encode_message of
the RPC. Node addresses are names looked up in a shared `directory`
(name -> port on 127.0.0.1), so a restarted node can listen anywhere.
"""
from __future__ import annotations

import asyncio
import struct
from typing import Any, Optional

import msgpack

from raftcore.codec import decode_message, encode_message
from raftcore.errors import NetworkError, Timeout
from raftcore.messages import AppendEntriesRequest
from raftcore.network.base import Network, NetworkClient, RaftNode, Reply

HOST = "127.0.0.1"
_LEN = struct.Struct(">I")
_HANDLERS = {"AppendEntriesRequest": "append_entries", "VoteRequest": "vote",
             "InstallSnapshotRequest": "install_snapshot",
             "TransferLeaderRequest": "transfer_leader"}


def _frame(obj: Any) -> bytes:
    body = msgpack.packb(obj, use_bin_type=True)
    return _LEN.pack(len(body)) + body


async def _read_frame(reader: asyncio.StreamReader) -> Any:
    size, = _LEN.unpack(await reader.readexactly(_LEN.size))
    return msgpack.unpackb(await reader.readexactly(size), raw=False, strict_map_key=False)


class StreamServer:
    """Serves one RaftNode on a free port of HOST."""

    def __init__(self, node: RaftNode) -> None:
        self.node = node
        self.port = 0
        self._server: Optional[asyncio.Server] = None
        self._writers: set = set()

    async def start(self) -> "StreamServer":
        self._server = await asyncio.start_server(self._serve, HOST, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        self._server.close()
        for w in list(self._writers):
            w.close()
        await self._server.wait_closed()

    async def _serve(self, reader, writer) -> None:
        self._writers.add(writer)
        try:
            while True:
                rid, raw = await _read_frame(reader)
                self._dispatch(writer, rid, decode_message(raw))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    def _dispatch(self, writer, rid: int, msg: Any) -> None:
        def reply(resp, exc) -> None:
            if writer.is_closing():
                return
            if exc is not None:
                writer.write(_frame([rid, False, f"{type(exc).__name__}: {exc}"]))
            else:
                writer.write(_frame([rid, True, None if resp is None else encode_message(resp)]))
        if type(msg) is AppendEntriesRequest:
            try:
                if self.node.append_entries_nowait(msg, reply):
                    return
            except Exception as exc:
                return reply(None, exc)
        handler = getattr(self.node, _HANDLERS[type(msg).__name__])
        asyncio.ensure_future(self._answer(handler(msg), reply))

    @staticmethod
    async def _answer(pending, reply) -> None:
        try:
            resp = await pending
        except Exception as exc:
            return reply(None, exc)
        reply(resp, None)


class StreamNetwork(Network):
    def __init__(self, directory: dict, rpc_timeout: float) -> None:
        self.directory = directory
        self.rpc_timeout = rpc_timeout

    def client(self, target: int, node: Any) -> NetworkClient:
        return StreamClient(self, node.addr)


class StreamClient(NetworkClient):
    """One connection at a time to the peer, replies matched by request id."""

    def __init__(self, net: StreamNetwork, name: str) -> None:
        self._net = net
        self._name = name
        self._writer = None
        self._pending: dict[int, Reply] = {}
        self._next = 0
        self._connecting: Optional[asyncio.Task] = None

    def append_entries_nowait(self, req: AppendEntriesRequest, reply: Reply) -> bool:
        if self._writer is None:
            return False
        self._send(req, reply)
        return True

    async def append_entries(self, req):
        return await self._call(req)

    async def vote(self, req):
        return await self._call(req)

    async def install_snapshot(self, req):
        return await self._call(req)

    async def transfer_leader(self, req):
        return await self._call(req)

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()

    async def _call(self, req) -> Any:
        if self._writer is None:
            if self._connecting is None:
                self._connecting = asyncio.ensure_future(self._connect())
            try:
                await asyncio.shield(self._connecting)
            finally:
                self._connecting = None
        fut = asyncio.get_running_loop().create_future()
        self._send(req, lambda resp, exc: fut.done() or (
            fut.set_exception(exc) if exc is not None else fut.set_result(resp)))
        return await fut

    def _send(self, req, reply: Reply) -> None:
        self._next = rid = self._next + 1
        self._pending[rid] = reply
        self._writer.write(_frame([rid, encode_message(req)]))
        # Every RPC ends within rpc_timeout (the contract's promise).
        asyncio.get_running_loop().call_later(self._net.rpc_timeout, self._settle, rid, None,
                                              Timeout(f"no reply from {self._name}"))

    def _settle(self, rid: int, resp: Any, exc: Optional[BaseException]) -> None:
        reply = self._pending.pop(rid, None)
        if reply is not None:
            reply(resp, exc)

    async def _connect(self) -> None:
        port = self._net.directory.get(self._name)
        try:
            reader, writer = await asyncio.open_connection(HOST, port)
        except (OSError, TypeError) as exc:
            raise NetworkError(f"cannot connect to {self._name}: {exc}") from None
        self._writer = writer
        asyncio.ensure_future(self._read_replies(reader, writer))

    async def _read_replies(self, reader, writer) -> None:
        try:
            while True:
                rid, ok, raw = await _read_frame(reader)
                if ok:
                    self._settle(rid, None if raw is None else decode_message(raw), None)
                else:
                    self._settle(rid, None, NetworkError(raw))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            if self._writer is writer:
                self._writer = None
            writer.close()
            for rid in list(self._pending):
                self._settle(rid, None, NetworkError(f"connection to {self._name} lost"))
