"""Shared helpers of the tests that run `raftcore kv` as real processes
(test_kv_process, test_identity_process, test_poison_writes,
test_partition_heal, test_snapshot_stream_process, test_disk_full,
test_lease_clock_drift): a cluster of node processes killed on exit whatever
happens, conditions polled under a failure guard, and a stream of writes
that checks each is applied once.

Nodes run as `python -m raftcore.cli kv ...` with this process's environment
(so a PYTHONPATH pointing at an installed copy reaches them too), on ports
found free by binding port 0. Tests import it by name (conftest.py puts this
folder on sys.path).
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys

from async_runner import async_test
from raftcore.errors import Timeout
from raftcore.kv import Client

HOST = "127.0.0.1"
#: Failure guard of every condition polled below (never a way to wait).
GUARD = 30.0
#: Whole-test guard.
TEST_GUARD = 120.0
#: Node options: election timeouts well above the heartbeat for a loaded
#: machine; frequent snapshots and a short log tail, so that restarts load
#: snapshot files and a lagging follower is caught up by a snapshot.
NODE_ARGS = ["--heartbeat", "0.05", "--election-timeout", "0.3,0.6",
             "--snapshot-every", "50", "--keep-logs", "20", "--log-level", "INFO"]
#: Writes acknowledged per phase of a crash scenario.
PHASE = 300


def free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind((HOST, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def node_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "raftcore.cli", "kv", *args]


class KvCluster:
    """`raftcore kv` processes 1..n; `with KvCluster(tmp_path) as c:` kills
    whatever still runs on exit."""

    def __init__(self, tmp_path, n: int = 3, extra: list[str] = ()) -> None:
        self.tmp = tmp_path
        self.extra = list(extra)
        self.ids = list(range(1, n + 1))
        self.addrs = {i: f"{HOST}:{p}" for i, p in zip(self.ids, free_ports(n))}
        self.peers = ",".join(f"{i}={a}" for i, a in self.addrs.items())
        self.procs: dict[int, subprocess.Popen] = {}

    def log_path(self, i: int):
        return self.tmp / f"n{i}.log"

    def start(self, i: int, init: bool = False, args: list[str] = ()) -> None:
        """Starts node i with the cluster's options and then `args`, its own."""
        assert i not in self.procs, f"node {i} is running"
        with open(self.log_path(i), "ab") as out:
            self.procs[i] = subprocess.Popen(
                node_cmd("--id", str(i), "--dir", str(self.tmp / f"n{i}"), "--peers",
                         self.peers, *NODE_ARGS, *self.extra, *(["--init"] if init else []),
                         *args),
                stdout=out, stderr=subprocess.STDOUT, cwd=self.tmp, env=dict(os.environ))

    def start_all(self, init: bool = True) -> None:
        for i in self.ids:
            self.start(i, init=init and i == 1)

    def kill(self, i: int) -> None:
        """kill -9."""
        p = self.procs.pop(i)
        p.kill()
        p.wait()

    def terminate(self, i: int) -> int:
        """SIGTERM; the exit status."""
        p = self.procs.pop(i)
        p.send_signal(signal.SIGTERM)
        try:
            return p.wait(GUARD)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
            raise AssertionError(f"node {i} did not exit after SIGTERM\n{self.logs()}")

    def log_text(self, i: int) -> str:
        try:
            return self.log_path(i).read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def logs(self, lines: int = 25) -> str:
        return "\n".join(f"--- node {i} (last {lines} lines)\n"
                         + "\n".join(self.log_text(i).splitlines()[-lines:]) for i in self.ids)

    def __enter__(self) -> "KvCluster":
        return self

    def __exit__(self, *exc) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.kill()
        for p in self.procs.values():
            p.wait()
        self.procs.clear()


def kv_test(fn):
    """Runs the async body on a fresh uvloop loop with a whole-test guard."""
    return async_test(TEST_GUARD)(fn)


async def until(cond, what: str, cluster: KvCluster | None = None, timeout: float = GUARD):
    """Polls `await cond()` until it returns something true, which is returned."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        r = await cond()
        if r:
            return r
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}"
                                 + (f"\n{cluster.logs()}" if cluster else ""))
        await asyncio.sleep(0.05)


async def status_of(addr: str) -> dict | None:
    """The node's status, or None if it does not answer promptly."""
    probe = Client(addr, timeout=1.0, attempt_timeout=0.5)
    try:
        return await probe.status(node=addr)
    except Timeout:
        return None
    finally:
        await probe.close()


async def statuses(c: KvCluster, ids=None) -> dict[int, dict | None]:
    ids = list(c.procs) if ids is None else ids
    got = await asyncio.gather(*(status_of(c.addrs[i]) for i in ids))
    return dict(zip(ids, got))


async def wait_leader(c: KvCluster) -> int:
    """The id of the leader once every running node follows it."""
    async def agreed():
        st = await statuses(c)
        if any(s is None for s in st.values()):
            return None
        leaders = {s["leader"] for s in st.values()}
        lid = leaders.pop() if len(leaders) == 1 else None
        if lid is not None and lid in st and st[lid]["state"] == "LEADER":
            return lid
        return None
    return await until(agreed, "a leader that every running node follows", c)


async def wait_converged(c: KvCluster, expected: dict, applied_commands: int) -> None:
    """Every node has applied everything acknowledged: then its map holds
    exactly `expected` (by stale local reads), and it applied
    `applied_commands` commands (no write lost, none applied twice)."""
    ids = list(c.procs)
    first = await until(lambda: all_up(c, ids), "every node to answer", c)
    target = max(s["applied"] for s in first.values())

    async def caught_up():
        st = await statuses(c, ids)
        return st if all(s is not None and s["applied"] >= target for s in st.values()) \
            else None
    st = await until(caught_up, f"every node to apply up to index {target}", c)
    for i, s in st.items():
        assert s["applied_commands"] == applied_commands, (
            f"node {i} applied {s['applied_commands']} commands, {applied_commands} were "
            f"acknowledged (fewer: a write was lost; more: one was applied twice)\n{c.logs()}")
        assert s["keys"] == len(expected), (i, s["keys"], len(expected))
    reader = Client(list(c.addrs.values()), timeout=GUARD)
    try:
        for i in ids:
            keys = list(expected)
            values = await asyncio.gather(*(reader.get(k, "<absent>", stale=True, node=c.addrs[i])
                                            for k in keys))
            wrong = {k: v for k, v in zip(keys, values) if expected[k] != v}
            assert not wrong, f"node {i}: keys with wrong values (key: value read): " \
                              f"{dict(list(wrong.items())[:10])}"
    finally:
        await reader.close()


async def all_up(c: KvCluster, ids) -> dict | None:
    st = await statuses(c, ids)
    return st if all(s is not None for s in st.values()) else None


class WriteStream:
    """Writers, each advancing counter c<j> by cas n -> n+1 and setting a
    fresh key k<j>-<n+1> per step, through one shared Client."""

    def __init__(self, client: Client, writers: int = 8) -> None:
        self.client = client
        self.steps = [0] * writers
        self.acked = 0
        self._stopping = False
        self._tasks = [asyncio.ensure_future(self._run(j)) for j in range(writers)]

    async def _run(self, j: int) -> None:
        n = 0
        while not self._stopping:
            ok, cur = await self.client.cas(f"c{j}", n or None, n + 1)
            assert (ok, cur) == (True, n + 1), (
                f"writer {j}: cas {n} -> {n + 1} was answered {(ok, cur)}: the write was "
                "applied twice (the retry saw the first application) or lost")
            self.acked += 1
            prev = await self.client.set(f"k{j}-{n + 1}", n + 1)
            assert prev is None, (f"writer {j}: set of fresh key k{j}-{n + 1} found {prev!r}: "
                                  "it was applied twice")
            self.acked += 1
            n += 1
            self.steps[j] = n

    def check(self) -> None:
        """Raises what a writer raised."""
        for t in self._tasks:
            if t.done():
                t.result()

    async def acked_at_least(self, n: int, c: KvCluster, what: str) -> None:
        async def cond():
            self.check()
            return self.acked >= n
        await until(cond, f"{n} acknowledged writes ({what}); have {self.acked}", c)

    async def stop(self) -> None:
        self._stopping = True
        await asyncio.gather(*self._tasks)

    def expected(self) -> dict:
        out = {}
        for j, n in enumerate(self.steps):
            if n:
                out[f"c{j}"] = n
            for i in range(1, n + 1):
                out[f"k{j}-{i}"] = i
        return out


@contextlib.asynccontextmanager
async def serving(c: KvCluster, **client_options):
    """Starts every node of `c`; yields a Client of all of them and the id of
    the leader once one serves; closes the client on exit."""
    c.start_all()
    client = Client(list(c.addrs.values()), **{"timeout": GUARD, **client_options})
    try:
        leader = await wait_leader(c)
        yield client, leader
    finally:
        await client.close()
