"""A follower cut off until the leader purged past it, then healed through a
path that stalls the first snapshot stream, across `raftcore kv` processes.

A TCP proxy run by the test (tests/proxy.py's Links) stands between the cluster and node 3 (node 3's
address in the membership is the proxy's; node 3 listens elsewhere). It can
cut the path (every connection closed, new ones closed at once) and, once
healed, hold the first connection that starts with an InstallSnapshot: what
the leader sends on it is read and dropped, nothing comes back, until the
leader gives up and closes it. The leader must stream one snapshot at a time
(none other while the held one is open), cancel the held one, and bring
node 3 up with exactly one more, logging "sent snapshot" only for that one.

Node 1 initializes the cluster and leads; all three have long election
timeouts, so that no election moves the leadership or the term while streams
are counted. Every wait is a condition
polled with a guard (kv_harness's `until`) or a future the proxy sets;
nothing sleeps for synchronization, and nothing asserts on timing.
"""
from __future__ import annotations

import asyncio
import os
import subprocess

import msgpack

from raftcore.codec import decode_message
from raftcore.kv import Client
from raftcore.messages import InstallSnapshotRequest

from proxy import Links
from kv_harness import (GUARD, NODE_ARGS, KvCluster, kv_test, node_cmd,
                        status_of, until, wait_leader)

#: Nodes 2 and 3 never start an election while the test runs.
QUIET = ["--election-timeout", "10,20"]
#: The leader steps down (check-quorum) only after this long without a
#: quorum: well above what a loaded machine's pauses take.
STEADY = ["--election-timeout", "2,4"]

class StallingLinks(Links):
    """Links to node 3 alone (see the module docstring): once healed with
    stall_first_snapshot, the first connection that starts with an
    InstallSnapshot is held: what comes on it is read and dropped."""

    def __init__(self, node_3_listens_at: str) -> None:
        super().__init__({3: node_3_listens_at})
        self._stall_armed = False
        #: Connections that started with an InstallSnapshot since heal().
        self.snapshot_connections = 0
        loop = asyncio.get_running_loop()
        #: Set when the held connection is accepted, and when the leader closes it.
        self.stalled = loop.create_future()
        self.stalled_closed = loop.create_future()

    def heal(self, stall_first_snapshot: bool = False) -> None:
        super().heal()
        self._stall_armed = stall_first_snapshot
        self.snapshot_connections = 0

    async def held(self, dest: int, body: bytes, reader: asyncio.StreamReader) -> bool:
        if not _is_snapshot_chunk(body):
            return False
        self.snapshot_connections += 1
        if not self._stall_armed:
            return False
        self._stall_armed = False
        self.stalled.set_result(None)
        try:
            while await reader.read(1 << 16):
                pass        # dropped: node 3 never sees it, no reply comes back
        except OSError:
            pass
        self.stalled_closed.set_result(None)
        return True


def _is_snapshot_chunk(body: bytes) -> bool:
    rid_and_msg = msgpack.unpackb(body, raw=False, strict_map_key=False)
    return isinstance(decode_message(rid_and_msg[1]), InstallSnapshotRequest)


class ProxiedCluster(KvCluster):
    """Three `raftcore kv` nodes; the others reach node 3 through `proxy_port`."""

    def route_3_through(self, proxy_addr: str) -> None:
        self.peers = ",".join(f"{i}={proxy_addr}" if i == 3 else f"{i}={a}"
                              for i, a in self.addrs.items())

    def start(self, i: int, init: bool = False) -> None:
        extra = list(STEADY) if i == 1 else list(QUIET)
        if i == 3:
            extra += ["--listen", self.addrs[3]]
        with open(self.log_path(i), "ab") as out:
            self.procs[i] = subprocess.Popen(
                node_cmd("--id", str(i), "--dir", str(self.tmp / f"n{i}"), "--peers",
                         self.peers, *NODE_ARGS, *extra, *(["--init"] if init else [])),
                stdout=out, stderr=subprocess.STDOUT, cwd=self.tmp, env=dict(os.environ))


def _snapshot_events(log: str) -> list[str]:
    """The leader's snapshot stream lines about node 3, in order, as kinds."""
    kinds = []
    for line in log.splitlines():
        if "sending snapshot" in line and line.endswith(" to 3"):
            kinds.append("start")
        elif "the snapshot stream to 3 failed" in line:
            kinds.append("failed")
        elif "sent snapshot" in line and line.endswith(" to 3"):
            kinds.append("sent")
    return kinds


async def _settled(fut: asyncio.Future, what: str, c: KvCluster) -> None:
    try:
        await asyncio.wait_for(asyncio.shield(fut), GUARD)
    except asyncio.TimeoutError:
        raise AssertionError(f"no {what} within {GUARD}s\n{c.logs()}") from None


async def _write(client: Client, first: int, n: int) -> None:
    for i in range(first, first + n, 10):
        await asyncio.gather(*(client.set(f"k{j}", j) for j in range(i, min(first + n, i + 10))))


@kv_test
async def _stalled_snapshot_stream(c: ProxiedCluster) -> None:
    proxy = StallingLinks(c.addrs[3])
    await proxy.start()
    c.route_3_through(proxy.addrs[3])
    client = Client(c.addrs[1], timeout=GUARD)
    try:
        c.start_all()
        assert await wait_leader(c) == 1
        await _write(client, 0, 20)

        async def node_3_applied(index):
            s = await status_of(c.addrs[3])
            return s is not None and s["applied"] >= index
        leader = await status_of(c.addrs[1])
        await until(lambda: node_3_applied(leader["applied"]), "node 3 to replicate", c)

        # Cut node 3 off until the leader's log no longer holds what it lacks.
        proxy.cut(3)
        behind = (await status_of(c.addrs[3]))["applied"]
        written = 20

        async def purged_past_node_3():
            nonlocal written
            if (await status_of(c.addrs[1]))["purged"] > behind:
                return True
            await _write(client, written, 50)
            written += 50
        await until(purged_past_node_3, "the leader to purge what node 3 lacks", c)
        leader_log_at = len(c.log_text(1))
        node3_log_at = len(c.log_text(3))

        # Heal; the first snapshot stream's connection stalls.
        proxy.heal(stall_first_snapshot=True)
        await _settled(proxy.stalled, "a snapshot stream on the proxied path", c)
        await _settled(proxy.stalled_closed, "the leader to cancel the stalled stream", c)
        target = (await status_of(c.addrs[1]))["applied"]
        await until(lambda: node_3_applied(target), "node 3 to catch up", c)

        async def sent():
            return "sent" in _snapshot_events(c.log_text(1)[leader_log_at:])
        await until(sent, "the leader to log the snapshot it sent", c)
        # One stream while the held one was open; it failed; one more, sent.
        assert _snapshot_events(c.log_text(1)[leader_log_at:]) == \
            ["start", "failed", "start", "sent"], c.logs(60)
        assert proxy.snapshot_connections == 2
        assert c.log_text(3)[node3_log_at:].count("installed snapshot") == 1
        assert (await status_of(c.addrs[3]))["keys"] == written
    finally:
        await client.close()
        await proxy.close()


def test_a_stalled_snapshot_stream_is_cancelled_and_only_then_replaced(tmp_path):
    with ProxiedCluster(tmp_path) as c:
        _stalled_snapshot_stream(c)
