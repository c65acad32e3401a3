"""The cluster benchmark behind `raftcore bench`.

openraft's cluster_benchmark workload: 3 voters in one process, an in-memory
log store, a state machine that applies nothing but records progress, and the
in-process router; N client tasks each awaiting client_write in a loop, timed
until the leader has applied every write. Beside it, the asyncio floor: a
client task awaiting a future that a leader task resolves in batches, the
least work any asyncio write path must do, measured in the same run.
"""
from __future__ import annotations

import asyncio
import bisect
import functools
import gc
import math
import os
import resource
import shutil
import sys
import tempfile
import time
from array import array
from dataclasses import asdict, dataclass
from typing import Any, Optional, Sequence

from raftcore.config import Config
from raftcore.errors import ForwardToLeader, OutcomeUnknown
from raftcore.model import Node, ServerState
from raftcore.network.local import LocalRouter
from raftcore.raft import Raft
from raftcore.storage.base import StateMachine
from raftcore.storage.mem import MemLogStore
from raftcore.types import ENTRY_MEMBERSHIP, ENTRY_NORMAL


class ProgressStateMachine(StateMachine):
    """Applies nothing; records how far it got (the benchmark's state machine)."""

    def __init__(self) -> None:
        self.last_entry = None      # the last entry applied (its log_id made when asked)
        self.applied_normal = 0
        self.membership = None

    def apply(self, entries):
        n = len(entries)
        for e in entries:
            if e.kind != ENTRY_NORMAL:
                n -= 1
                if e.kind == ENTRY_MEMBERSHIP:
                    self.membership = e.payload
        self.applied_normal += n
        self.last_entry = entries[-1]
        return [None] * len(entries)

    @property
    def last_applied(self):
        return self.last_entry.log_id if self.last_entry is not None else None

    async def applied_state(self):
        return self.last_applied, None

    # Snapshots of the benchmark's state: how far it got.
    async def build_snapshot(self, executor):
        from raftcore.errors import NotAllowed
        from raftcore.messages import SnapshotMeta
        from raftcore.storage.base import Snapshot
        if self.last_applied is None:
            raise NotAllowed("nothing applied yet")
        last = self.last_applied
        self._snapshot = Snapshot(SnapshotMeta(last.term, last.index, self.membership,
                                               f"bench-{last.index}"),
                                  str(self.applied_normal).encode())
        return self._snapshot

    def get_current_snapshot(self):
        return getattr(self, "_snapshot", None)

    def durable_snapshot(self):
        # The benchmark's stores are thrown away after the run, never
        # restarted from: purge as far as the snapshot, as with MemLogStore.
        snap = self.get_current_snapshot()
        return snap.meta if snap is not None else None

    async def install_snapshot(self, meta, data):
        from raftcore.storage.base import Snapshot
        self.applied_normal = int(data)
        self.last_entry = _SnapshotEnd(meta.last_log_id)
        self.membership = meta.membership
        self._snapshot = Snapshot(meta, data)


class _SnapshotEnd:
    """Where an installed snapshot ends, in place of the last entry applied."""

    def __init__(self, log_id) -> None:
        self.log_id = log_id


@dataclass
class BenchRow:
    clients: int
    ops: int
    batch: int
    seconds: float
    puts_per_s: float
    ns_per_op: float
    p50_us: float
    p99_us: float
    floor_per_s: Optional[float] = None
    of_floor: Optional[float] = None
    # Latency of every call, as a histogram: counts[i] calls took between
    # edges_us[i] and edges_us[i + 1] microseconds.
    latency_hist: Optional[dict] = None
    vs_pysyncobj: Optional[float] = None   # puts_per_s / PySyncObj writes/s


def latency_histogram(sorted_ns: Sequence[int], per_decade: int = 10) -> dict:
    """Counts of `sorted_ns` (ascending, in nanoseconds) in log-spaced
    buckets, `per_decade` to each power of ten of microseconds, spanning the
    smallest to the largest value."""
    if not sorted_ns:
        return {"edges_us": [], "counts": []}
    lo_us = max(sorted_ns[0], 1) / 1e3
    hi_us = max(sorted_ns[-1], 1) / 1e3
    first = math.floor(math.log10(lo_us) * per_decade)
    last = max(first + 1, math.floor(math.log10(hi_us) * per_decade) + 1)
    edges_us = [10 ** (k / per_decade) for k in range(first, last + 1)]
    # bisect_left on the nanosecond edges: a value on an edge counts in the
    # bucket it opens; the top edge lies above the largest value.
    cuts = [bisect.bisect_left(sorted_ns, e * 1e3) for e in edges_us[1:-1]]
    cuts = [0, *cuts, len(sorted_ns)]
    counts = [cuts[i + 1] - cuts[i] for i in range(len(cuts) - 1)]
    return {"edges_us": [round(e, 3) for e in edges_us], "counts": counts}


class Cluster:
    """The benchmark's 3 voters; `leader` is node 1, in this process."""

    def __init__(self) -> None:
        self.leader: Optional[Raft] = None
        self._closers: list = []

    async def close(self) -> None:
        for fn in reversed(self._closers):
            await fn()


async def _log_store(store: str, workdir: str, node_id: int):
    if store == "mem":
        return MemLogStore()
    from raftcore.storage.file import FileLogStore
    return await FileLogStore.open(os.path.join(workdir, f"node{node_id}"))


async def start_cluster(config: Config, transport: str = "local", store: str = "mem",
                        workdir: str = "") -> Cluster:
    """3 voters: in this process on LocalRouter, or over loopback TCP with
    nodes 2 and 3 in processes of their own."""
    c = Cluster()
    if transport == "local":
        router = LocalRouter()
        rafts = []
        for i in (1, 2, 3):
            ls = await _log_store(store, workdir, i)
            r = await Raft.create(i, config, router.network(i), ls, ProgressStateMachine())
            router.add(i, r)
            rafts.append(r)
            c._closers.append(ls.close)
            c._closers.append(r.shutdown)
        c.leader = rafts[0]
        nodes = {i: Node(f"local-{i}") for i in (1, 2, 3)}
    else:
        from raftcore.network.tcp import RaftServer, TcpNetwork
        nodes = {}
        for i in (2, 3):
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "raftcore.bench_node", "--id", str(i), "--store", store,
                "--dir", os.path.join(workdir, f"node{i}"),
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
            c._closers.append(functools.partial(stop_process, proc))
            line = await asyncio.wait_for(proc.stdout.readline(), 30)
            if not line.strip().isdigit():
                raise RuntimeError(f"benchmark node {i} did not start (printed {line!r})")
            nodes[i] = Node(f"127.0.0.1:{int(line)}")
        ls = await _log_store(store, workdir, 1)
        c.leader = await Raft.create(1, config, TcpNetwork(rpc_timeout=config.rpc_timeout), ls,
                                     ProgressStateMachine())
        server = await RaftServer.start(c.leader, "127.0.0.1", 0)
        c._closers.append(ls.close)
        c._closers.append(server.close)
        c._closers.append(c.leader.shutdown)
        nodes[1] = Node(f"127.0.0.1:{server.port}")
    await c.leader.initialize(nodes)
    await c.leader.wait(10).state(ServerState.LEADER, "the benchmark leader")
    return c


async def stop_process(proc) -> None:
    """Stops a benchmark node process: closing its stdin asks it to exit; it
    is killed if it has not within 10 s."""
    if proc.returncode is None:
        proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except asyncio.TimeoutError:
            proc.kill()
            await proc.wait()


def fsync_samples_us(directory: str, rounds: int = 200) -> list[float]:
    """Durations (us) of `rounds` 4 KiB writes, each followed by fsync, to a
    new file in `directory`: the disk's cost of one durable flush."""
    path = os.path.join(directory, "fsync-probe")
    times = []
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        block = b"\0" * 4096
        for _ in range(rounds):
            t = time.perf_counter()
            os.write(fd, block)
            os.fsync(fd)
            times.append((time.perf_counter() - t) * 1e6)
    finally:
        os.close(fd)
        os.unlink(path)
    return times


class BenchmarkError(RuntimeError):
    """A row could not be measured (its figures would be wrong)."""


#: One call in this many is timed for the latency figures (see run_cluster).
LATENCY_SAMPLE = 16


async def run_cluster(clients: int, ops_per_client: int, batch: int = 1,
                      payload: bytes = b"x" * 8, progress: Any = None,
                      transport: str = "local", store: str = "mem",
                      workdir: str = "") -> BenchRow:
    """One benchmark row: `clients` tasks each making `ops_per_client` calls
    (client_write, or client_write_many of `batch` payloads)."""
    # A --payload above the default command cap is measured, not refused.
    # Election timeouts of 1-2 s: a row measures a stable leader, and on a
    # loaded machine the default 150-300 ms made followers of the
    # in-process cluster (one event loop for all three) campaign mid-row.
    config = Config(seed=7, max_pending_writes=max(65536, clients * batch * 2),
                    max_command_bytes=max(Config.max_command_bytes, len(payload) + 5),
                    election_timeout_min=1.0, election_timeout_max=2.0)
    cluster = await start_cluster(config, transport, store, workdir)
    leader = cluster.leader
    # Every LATENCY_SAMPLE-th call of each client is timed: reading the clock
    # and storing the figure on every call cost a third of the asyncio
    # floor's time per write at 256 clients, harness work the floor does not
    # do. The first call of each client is always timed.
    every = LATENCY_SAMPLE
    per_client = -(-ops_per_client // every)
    lat = array("q", bytes(8 * clients * per_client))
    done = [0]
    perf = time.perf_counter_ns

    async def client(k: int) -> None:
        base = k * per_client
        call = leader.client_write if batch == 1 else leader.client_write_many
        arg = payload if batch == 1 else [payload] * batch
        for i in range(ops_per_client):
            if i % every:
                await call(arg)
            else:
                t = perf()
                await call(arg)
                lat[base + i // every] = perf() - t
                done[0] += min(every, ops_per_client - i)

    reporter = None
    if progress is not None:
        reporter = asyncio.ensure_future(progress.follow(done, clients * ops_per_client))
    try:
        gc.collect()
        t0 = time.perf_counter()
        try:
            await asyncio.gather(*(client(k) for k in range(clients)))
        except (ForwardToLeader, OutcomeUnknown) as exc:
            raise BenchmarkError(
                f"the benchmark leader lost its leadership during the {clients}-client row "
                f"({exc}): a follower heard no heartbeat for an election timeout, which on an "
                f"overloaded machine (load average {os.getloadavg()[0]:.1f}) can happen; the "
                "row is not measured, rerun it on a quieter machine") from None
        dt = time.perf_counter() - t0
    finally:
        if reporter is not None:
            reporter.cancel()
            progress.finish()
        await cluster.close()
    total_ops = clients * ops_per_client
    entries = total_ops * batch
    if leader.state_machine.applied_normal != entries:
        raise BenchmarkError(f"the leader applied {leader.state_machine.applied_normal} "
                             f"entries, not the {entries} written")
    s = sorted(lat)
    return BenchRow(
        clients=clients, ops=entries, batch=batch, seconds=dt,
        puts_per_s=entries / dt, ns_per_op=dt * 1e9 / entries,
        p50_us=s[len(s) // 2] / 1e3, p99_us=s[min(len(s) - 1, int(len(s) * 0.99))] / 1e3,
        latency_hist=latency_histogram(s))


async def floor_leader(pending: list, wake: asyncio.Event) -> None:
    """The floor's leader task: each time it is woken, resolves every future
    the clients put in `pending` (runs until cancelled)."""
    while True:
        await wake.wait()
        wake.clear()
        batch = pending[:]
        pending.clear()
        for fut in batch:
            fut.set_result(None)


async def run_floor(clients: int, ops_per_client: int) -> float:
    """Round trips per second of the asyncio floor: each client puts a future
    in a list and wakes a leader task, which resolves all waiting futures."""
    loop = asyncio.get_running_loop()
    pending: list = []
    wake = asyncio.Event()

    async def client() -> None:
        for _ in range(ops_per_client):
            fut = loop.create_future()
            pending.append(fut)
            wake.set()
            await fut

    lt = asyncio.ensure_future(floor_leader(pending, wake))
    t0 = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    dt = time.perf_counter() - t0
    lt.cancel()
    return clients * ops_per_client / dt


class ProgressBar:
    """A one-line progress bar on stderr."""

    def __init__(self, label: str, stream=sys.stderr) -> None:
        self.label = label
        self.stream = stream

    async def follow(self, done: list, total: int) -> None:
        while True:
            self._draw(done[0], total)
            await asyncio.sleep(0.25)

    def _draw(self, n: int, total: int) -> None:
        if not self.stream.isatty():
            return
        width = 30
        filled = int(width * n / total) if total else width
        self.stream.write(f"\r{self.label} [{'#' * filled}{'.' * (width - filled)}] "
                          f"{n}/{total}")
        self.stream.flush()

    def finish(self) -> None:
        if not self.stream.isatty():
            return
        self.stream.write("\r" + " " * 79 + "\r")
        self.stream.flush()


def default_ops(clients: int, batch: int) -> int:
    """Enough calls for a stable figure (about 200k entries, at least 20 calls a client)."""
    return max(20, 200_000 // (clients * batch))


async def run_all(clients_list: Sequence[int], ops: Optional[int], batch: int,
                  payload_size: int, floor: bool, show_progress: bool,
                  transport: str = "local", store: str = "mem",
                  workdir: Optional[str] = None) -> list[BenchRow]:
    rows = []
    payload = b"x" * payload_size
    for c in clients_list:
        n = ops or default_ops(c, batch)
        if store == "file" or transport == "tcp":
            n = ops or max(20, min(n, 20_000 // c if store == "file" else 100_000 // c))
        bar = ProgressBar(f"clients={c}") if show_progress else None
        rowdir = tempfile.mkdtemp(prefix=f"raftcore-bench-{c}-", dir=workdir)
        # The floor is measured right before and right after the row and the
        # higher figure is used: on a shared machine a load spike during one
        # floor measurement must not make raftcore's share look better.
        floor_ops = max(20, 200_000 // c)
        floor_before = await run_floor(c, floor_ops) if floor else 0.0
        try:
            row = await run_cluster(c, n, batch, payload, bar, transport, store, rowdir)
        finally:
            shutil.rmtree(rowdir, ignore_errors=True)
        if floor:
            row.floor_per_s = max(floor_before, await run_floor(c, floor_ops))
            row.of_floor = row.puts_per_s / row.floor_per_s
        rows.append(row)
    return rows


def peak_rss_mb() -> float:
    # ru_maxrss is in kilobytes on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def format_table(rows: Sequence[BenchRow]) -> str:
    head = f"{'clients':>7} {'batch':>5} {'put/s':>12} {'ns/op':>9} {'p50 us':>9} {'p99 us':>9}"
    has_floor = any(r.floor_per_s for r in rows)
    has_pso = any(r.vs_pysyncobj for r in rows)
    if has_floor:
        head += f" {'floor/s':>12} {'of floor':>8}"
    if has_pso:
        head += f" {'x PySyncObj':>11}"
    lines = [head]
    for r in rows:
        line = (f"{r.clients:>7} {r.batch:>5} {r.puts_per_s:>12,.0f} {r.ns_per_op:>9,.0f} "
                f"{r.p50_us:>9,.1f} {r.p99_us:>9,.1f}")
        if has_floor:
            line += (f" {r.floor_per_s:>12,.0f} {r.of_floor:>8.1%}" if r.floor_per_s
                     else " " * 22)
        if has_pso and r.vs_pysyncobj:
            line += f" {r.vs_pysyncobj:>11.2f}"
        lines.append(line)
    return "\n".join(lines)


def rows_as_dicts(rows: Sequence[BenchRow]) -> list[dict]:
    return [asdict(r) for r in rows]


def machine_description() -> str:
    return f"{os.cpu_count()} cpus, Python {sys.version.split()[0]}, {sys.platform}"
