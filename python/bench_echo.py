"""The TCP floor of `raftcore bench --transport tcp`: round trips per second
of clients awaiting an echo over loopback between two processes, on the
transport stack raftcore's RPCs use (uvloop, FrameConnection's framing, a
msgpack body decoded and encoded again on each side), with no Raft at all.

A write over TCP needs at least one such round trip (leader to its fastest
follower and back), so this is the least any TCP write path can cost. As
raftcore batches the writes of many clients into one AppendEntries, each
side here sends the frames made in one turn of its event loop with one
write: with many clients the floor is a batched round trip, not one
syscall per client.

The echo side runs as `python -m raftcore.bench_echo`: it prints its port,
then answers each frame [request id, payload] with the same frame until its
stdin closes.
"""
from __future__ import annotations

import asyncio
import sys
import time

import msgpack

from raftcore.network.framing import FrameConnection, frame, open_frame_connection, unpackb


class _Batched:
    """Frames sent on `conn` within one turn of the event loop, written together."""

    def __init__(self, conn: FrameConnection) -> None:
        self.conn = conn
        self.frames: list = []

    def send(self, body: bytes) -> None:
        if not self.frames:
            asyncio.get_running_loop().call_soon(self._flush)
        self.frames.append(frame(body))

    def _flush(self) -> None:
        frames, self.frames = self.frames, []
        if self.conn.transport is not None and not self.conn.transport.is_closing():
            self.conn.transport.writelines(frames)


async def serve() -> None:
    """Echoes every frame on every connection; stops when stdin closes."""
    loop = asyncio.get_running_loop()

    def connection() -> FrameConnection:
        return FrameConnection(on_made=_echo_on)

    server = await loop.create_server(connection, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    stop = asyncio.Event()
    loop.add_reader(sys.stdin.fileno(), lambda: sys.stdin.buffer.read1(1) or stop.set())
    await stop.wait()
    server.close()


def _echo_on(conn: FrameConnection) -> None:
    out = _Batched(conn)

    def on_frame(body: bytes) -> None:
        rid, payload = unpackb(body)
        out.send(msgpack.packb([rid, payload]))

    conn.start(on_frame, lambda reason, warn: None)


async def run_tcp_floor(clients: int, ops_per_client: int, payload_size: int) -> float:
    """Round trips per second of `clients` tasks, each sending `ops_per_client`
    frames of `payload_size` bytes of payload in turn to an echo process over
    one loopback connection and awaiting each answer."""
    from raftcore.bench import read_port, start_process, stop_process

    proc = await start_process("raftcore.bench_echo")
    try:
        port = await read_port(proc, "the echo process")
        conn = await open_frame_connection("127.0.0.1", port, timeout=30)
        try:
            return await _round_trips(conn, clients, ops_per_client, b"x" * payload_size)
        finally:
            conn.close()
    finally:
        await stop_process(proc)


async def _round_trips(conn: FrameConnection, clients: int, ops_per_client: int,
                       payload: bytes) -> float:
    loop = asyncio.get_running_loop()
    waiting: dict = {}
    ended = loop.create_future()

    def on_frame(body: bytes) -> None:
        rid, _ = unpackb(body)
        waiting.pop(rid).set_result(None)

    def on_end(reason, warn) -> None:
        if not ended.done():
            ended.set_result(reason or "closed by the echo process")
        for fut in waiting.values():
            if not fut.done():
                fut.set_exception(ConnectionError(f"echo connection ended: {reason}"))

    conn.start(on_frame, on_end)
    pack = msgpack.packb
    out = _Batched(conn)

    async def client(k: int) -> None:
        for i in range(ops_per_client):
            rid = k * ops_per_client + i
            fut = waiting[rid] = loop.create_future()
            out.send(pack([rid, payload]))
            await fut

    t0 = time.perf_counter()
    await asyncio.gather(*(client(k) for k in range(clients)))
    return clients * ops_per_client / (time.perf_counter() - t0)


def main() -> int:
    import uvloop
    uvloop.run(serve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
