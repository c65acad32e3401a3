"""Links: a TCP proxy in the test process that carries the traffic between
`raftcore kv` nodes and can cut one node off from its peers and heal the cut
(shared by the process tests; importable by name through conftest.py).
Clients reach the nodes directly, so a cut-off node still answers them."""
from __future__ import annotations

import asyncio
import functools
import struct

import msgpack

from raftcore.codec import decode_message
from raftcore.messages import VoteRequest
from raftcore.network.tcp import HELLO_MAGIC, SERVICE_TYPE_MIN, WIRE_VERSION

HOST = "127.0.0.1"
_FRAME_HEAD = struct.Struct(">IB")


def frame(obj) -> bytes:
    body = msgpack.packb(obj, use_bin_type=True)
    return _FRAME_HEAD.pack(len(body) + 1, WIRE_VERSION) + body


async def read_frame(reader) -> tuple[bytes, bytes]:
    head = await reader.readexactly(_FRAME_HEAD.size)
    return head, await reader.readexactly(_FRAME_HEAD.unpack(head)[0] - 1)


def is_hello(body: bytes) -> bool:
    obj = msgpack.unpackb(body, raw=False, strict_map_key=False)
    return type(obj) is list and bool(obj) and obj[0] == HELLO_MAGIC


def sender_of(body: bytes):
    """The node that sent a request frame's body, None for a client's request:
    every Raft request names its sender (leader_id, or a vote's candidate_id)."""
    _, msg = msgpack.unpackb(body, raw=False, strict_map_key=False)
    if msg[0] >= SERVICE_TYPE_MIN:
        return None
    m = decode_message(msg)
    return m.candidate_id if isinstance(m, VoteRequest) else m.leader_id


class Links:
    """The nodes' connections to each other: node i's peers reach it at
    addrs[i], and Links carries the bytes to where node i listens. cut(i)
    closes every connection from or to node i, and each new one once its
    first request shows it comes from or goes to node i; heal() lets new
    connections through again."""

    def __init__(self, listen: dict[int, str]) -> None:
        self.listen = listen
        self.addrs: dict[int, str] = {}
        self.cut_off = None
        self._servers: list[asyncio.AbstractServer] = []
        self._open: set[tuple] = set()
        self._carriers: set[asyncio.Task] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        for i in self.listen:
            server = await asyncio.start_server(functools.partial(self._carry, i), HOST, 0)
            self._servers.append(server)
            self.addrs[i] = f"{HOST}:{server.sockets[0].getsockname()[1]}"

    def cut(self, node: int) -> None:
        self.cut_off = node
        for link in list(self._open):
            if node in link[:2]:
                for w in link[2:]:
                    w.close()

    def heal(self) -> None:
        """The nodes reconnect on their own (they retry with back-off)."""
        self.cut_off = None

    async def held(self, dest: int, body: bytes, reader: asyncio.StreamReader) -> bool:
        """Called with the first request (`body`) of each connection to node
        `dest`: False carries the connection on. A test that stalls a path
        overrides it to read from `reader` instead and return True once done
        (the connection is then closed, nothing having reached the node)."""
        return False

    async def close(self) -> None:
        for s in self._servers:
            s.close()
        for w in self._writers:
            w.close()
        await asyncio.gather(*self._carriers, return_exceptions=True)

    async def _carry(self, dest: int, reader, writer) -> None:
        self._carriers.add(asyncio.current_task())
        self._writers.add(writer)
        try:
            await self._carry_from(dest, reader, writer)
        finally:
            self._carriers.discard(asyncio.current_task())

    async def _carry_from(self, dest: int, reader, writer) -> None:
        try:
            head, body = await read_frame(reader)
            if is_hello(body):
                # A connection opens with the cluster hello, which names no
                # sender. The proxy answers it as a node that has no cluster
                # id yet would (the connection goes on; the node still checks
                # the id each request carries) and routes on the request after it.
                writer.write(frame([HELLO_MAGIC, 1, None]))
                head, body = await read_frame(reader)
            sender = sender_of(body)
            if await self.held(dest, body, reader):
                writer.close()
                return
            host, port = self.listen[dest].rsplit(":", 1)
            up_reader, up_writer = await asyncio.open_connection(host, int(port))
        except (OSError, asyncio.IncompleteReadError):
            writer.close()
            return
        self._writers.add(up_writer)
        # Checked once connected, with no await before the link is recorded,
        # so that a cut made while connecting reaches this link too. A
        # client's request (sender None) passes unless it goes to the cut node.
        if self.cut_off is not None and self.cut_off in (sender, dest):
            writer.close()
            up_writer.close()
            return
        link = (sender, dest, writer, up_writer)
        self._open.add(link)
        up_writer.write(head + body)
        pumps = [asyncio.ensure_future(_pump(reader, up_writer)),
                 asyncio.ensure_future(_pump(up_reader, writer))]
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._open.discard(link)
            for p in pumps:
                p.cancel()
            writer.close()
            up_writer.close()
            await asyncio.gather(*pumps, return_exceptions=True)


async def _pump(reader, writer) -> None:
    try:
        while (data := await reader.read(1 << 16)) and not writer.is_closing():
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
