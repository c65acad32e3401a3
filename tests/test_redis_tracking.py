"""WATCH turns on the tracking of modification indexes (kv/redis/apply.py):
a node proposes a TRACK entry before it reads the indexes of watched keys,
only when less than half of the span is left, and renews it while one of
its clients watches keys. A stand-in Raft applies each entry to a real
KvStateMachine at once; the cluster-wide behaviour runs in
test_redis_py.py (a WATCH on a follower, another key written meanwhile)."""
from __future__ import annotations

import asyncio
from typing import Any

from async_runner import async_test
from raftcore.codec import pack_plain
from raftcore.kv import KvStateMachine
from raftcore.kv.redis import server as server_module
from raftcore.kv.redis.apply import REDIS_CMD, TRACK, TRACK_SPAN_MS
from raftcore.kv.redis.cluster import ClusterBackend, SessionClient, now_ms
from raftcore.kv.redis.server import RedisServer
from raftcore.model import ServerState
from raftcore.types import ENTRY_NORMAL, Entry
from redis_harness import encode_command

HOST = "127.0.0.1"


class ApplyingRaft:
    """A leader that commits each write at once: it applies the entry to
    `sm` and records it."""

    def __init__(self, sm: KvStateMachine) -> None:
        self.sm = sm
        self.entries: list[list] = []

    async def client_write(self, cmd: list, owned: bool = False) -> Any:
        assert owned
        pack_plain(cmd)                # what a handed-over command must be
        self.entries.append(cmd)
        (resp,) = self.sm.apply([Entry(1, len(self.entries), ENTRY_NORMAL, cmd)])
        return type("Resp", (), {"data": resp})()

    def tracks(self) -> int:
        """How many entries carried a TRACK."""
        return sum(1 for e in self.entries if e[4][0] == REDIS_CMD and
                   any(c[0] == TRACK for c in e[4][2]))


@async_test(10)
async def test_the_sweep_of_expired_keys_goes_on_after_a_failed_attempt():
    backend, raft, client = _backend()
    raft.metrics = type("Metrics", (), {"state": ServerState.LEADER})()   # type: ignore[attr-defined]
    write, attempts = backend.write, []

    async def failing_once(cmds: list, *args: Any) -> Any:
        attempts.append(cmds)
        if len(attempts) == 1:
            raise RuntimeError("a bug in the write path")
        return await write(cmds, *args)
    try:
        assert await backend.write([[b"SET", b"k", b"v", b"PX", b"1"]]) == ["OK"]
        backend.write = failing_once                         # type: ignore[method-assign]
        sweep = asyncio.ensure_future(backend.sweep_expired(0.01))
        await until(lambda: b"k" not in backend.sm.data)
        assert len(attempts) >= 2
        sweep.cancel()
    finally:
        await client.close()


async def until(cond) -> None:
    """Lets the loop run until cond() holds (the guard bounds the test)."""
    while not cond():
        await asyncio.sleep(0.001)


def _backend() -> tuple[ClusterBackend, ApplyingRaft, SessionClient]:
    sm = KvStateMachine()
    raft = ApplyingRaft(sm)
    client = SessionClient([f"{HOST}:1"])          # never asked: the local Raft leads
    return ClusterBackend(raft, sm, client, "stale"), raft, client


async def _server_checking_often(backend: ClusterBackend, raft: ApplyingRaft) -> RedisServer:
    """A RedisServer whose renewal loop looks every 10 ms, not every 5 s."""
    saved = server_module.TRACK_CHECK_INTERVAL
    server_module.TRACK_CHECK_INTERVAL = 0.01
    try:
        return await RedisServer.start(backend, HOST, 0, raft=raft)
    finally:
        server_module.TRACK_CHECK_INTERVAL = saved


@async_test(10)
async def test_a_track_is_proposed_only_when_less_than_half_the_span_is_left():
    backend, raft, client = _backend()
    st = backend.sm.redis
    try:
        assert await backend.ensure_tracked() is None
        assert raft.tracks() == 1
        assert st.tracking_until >= now_ms() + TRACK_SPAN_MS // 2
        assert await backend.ensure_tracked() is None
        assert raft.tracks() == 1                    # enough left: nothing proposed
        st.tracking_until = now_ms() + TRACK_SPAN_MS // 2 - 1_000
        assert await backend.ensure_tracked() is None
        assert raft.tracks() == 2
        # This node's clock is behind the leader's (the entries' stamps):
        # the stamps decide.
        st.clock_ms = st.tracking_until - TRACK_SPAN_MS // 2 + 1
        assert await backend.ensure_tracked() is None
        assert raft.tracks() == 3
    finally:
        await client.close()


@async_test(20)
async def test_watch_turns_tracking_on_and_the_server_renews_it_while_a_client_watches():
    backend, raft, client = _backend()
    st = backend.sm.redis
    server = await _server_checking_often(backend, raft)
    reader, writer = await asyncio.open_connection(HOST, server.port)

    async def call(*args: bytes) -> bytes:
        writer.write(encode_command(list(args)))
        return await reader.readline()
    try:
        assert await call(b"SET", b"k", b"1") == b"+OK\r\n"
        assert raft.tracks() == 0 and b"k" not in st.versions      # nobody watches
        assert await call(b"WATCH", b"k") == b"+OK\r\n"
        assert raft.tracks() == 1 and st.tracking_until > now_ms()
        assert await call(b"SET", b"k", b"2") == b"+OK\r\n"
        assert b"k" in st.versions                                    # recorded now
        # The span runs out while the client still watches: renewed.
        st.tracking_until = 0
        await until(lambda: raft.tracks() == 2)
        assert st.tracking_until > now_ms()
        # The transaction sees the connection's own SET: it aborts (nil).
        assert await call(b"MULTI") == b"+OK\r\n"
        assert await call(b"INCR", b"k") == b"+QUEUED\r\n"
        assert await call(b"EXEC") == b"*-1\r\n"
    finally:
        writer.close()
        await server.close()
        await client.close()


@async_test(20)
async def test_the_renewal_goes_on_after_a_failed_attempt():
    backend, raft, client = _backend()
    attempts: list[int] = []
    renew = backend.ensure_tracked

    async def flaky() -> Any:
        attempts.append(1)
        if len(attempts) == 1:
            raise RuntimeError("a bug in the renewal")
        return await renew()
    backend.ensure_tracked = flaky            # type: ignore[method-assign]
    server = await _server_checking_often(backend, raft)
    # A client that watches a key (only its `watched` is looked at).
    watching = type("Watching", (), {"watched": {b"k": 1}})()
    try:
        server.conns.add(watching)                       # type: ignore[arg-type]
        await until(lambda: raft.tracks() >= 1)
        assert len(attempts) >= 2
    finally:
        server.conns.discard(watching)                   # type: ignore[arg-type]
        await server.close()
        await client.close()
