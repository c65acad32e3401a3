"""The cluster benchmark behind `raftcore bench`.

openraft's cluster_benchmark workload: 3 voters (or --nodes) in one process
on the in-process router (or over loopback TCP, one process each), an
in-memory (or file) log store, a state machine that applies nothing but
records progress; N client tasks each awaiting client_write in a loop, timed
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
import statistics
import sys
import tempfile
import time
from array import array
from dataclasses import asdict, dataclass
from typing import Any, Optional, Sequence

from raftcore.config import Config, SnapshotPolicy
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
    nodes: int = 3
    payload: int = 8
    mb_per_s: float = 0.0           # goodput: payload bytes applied per second, 1e6 B/MB
    floor_per_s: Optional[float] = None
    of_floor: Optional[float] = None
    # Latency of every call, as a histogram: counts[i] calls took between
    # edges_us[i] and edges_us[i + 1] microseconds.
    latency_hist: Optional[dict] = None
    vs_pysyncobj: Optional[float] = None   # puts_per_s / PySyncObj writes/s
    # Over TCP: round trips/s of the same clients awaiting an echo from
    # another process over loopback (raftcore.bench_echo), and the share of it.
    tcp_floor_per_s: Optional[float] = None
    of_tcp_floor: Optional[float] = None
    # With the file store: mb_per_s over the disk's sequential write bandwidth
    # measured in the same run (seq_write_mb_per_s).
    of_disk_write: Optional[float] = None


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


#: The benchmark cluster's election timeouts (the leader's and its followers'):
#: a row measures a stable leader, and on a loaded machine the default
#: 150-300 ms made followers campaign mid-row (in process, one event loop
#: for every node; over TCP, 7 processes on 2 cores).
ELECTION_TIMEOUTS = {"election_timeout_min": 1.0, "election_timeout_max": 2.0}


def snapshot_policy(snapshots: bool) -> SnapshotPolicy:
    """The default snapshot policy, or none (snapshots off)."""
    return SnapshotPolicy() if snapshots else SnapshotPolicy.never()


class Cluster:
    """The benchmark's voters; `leader` is node 1, in this process."""

    def __init__(self) -> None:
        self.leader: Optional[Raft] = None
        self.followers: list = []       # over TCP: the follower processes
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
                        workdir: str = "", nodes: int = 3) -> Cluster:
    """`nodes` voters: in this process on LocalRouter, or over loopback TCP
    with every node but the leader in a process of its own (started with
    the leader's snapshot policy)."""
    c = Cluster()
    ids = range(1, nodes + 1)
    if transport == "local":
        router = LocalRouter()
        rafts = []
        for i in ids:
            ls = await _log_store(store, workdir, i)
            r = await Raft.create(i, config, router.network(i), ls, ProgressStateMachine())
            router.add(i, r)
            rafts.append(r)
            c._closers.append(ls.close)
            c._closers.append(r.shutdown)
        c.leader = rafts[0]
        members = {i: Node(f"local-{i}") for i in ids}
    else:
        from raftcore.network.tcp import RaftServer, TcpNetwork
        members = {}
        snapshots = config.snapshot_policy.logs_since_last_snapshot is not None
        for i in ids[1:]:
            proc = await start_process(
                "raftcore.bench_node", "--id", str(i), "--store", store,
                "--dir", os.path.join(workdir, f"node{i}"),
                *(() if snapshots else ("--no-snapshots",)))
            c._closers.append(functools.partial(stop_process, proc))
            c.followers.append(proc)
            members[i] = Node(f"127.0.0.1:{await read_port(proc, f'benchmark node {i}')}")
        ls = await _log_store(store, workdir, 1)
        c.leader = await Raft.create(1, config, TcpNetwork(rpc_timeout=config.rpc_timeout), ls,
                                     ProgressStateMachine())
        server = await RaftServer.start(c.leader, "127.0.0.1", 0)
        c._closers.append(ls.close)
        c._closers.append(server.close)
        c._closers.append(c.leader.shutdown)
        members[1] = Node(f"127.0.0.1:{server.port}")
    await c.leader.initialize(members)
    await c.leader.wait(10).state(ServerState.LEADER, "the benchmark leader")
    return c


async def start_process(module: str, *args: str):
    """`python -m module args` with pipes on stdin (closing it stops the
    process) and stdout (where it prints its port)."""
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", module, *args,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)


async def read_port(proc, what: str) -> int:
    """The port a started process prints on its first line."""
    line = await asyncio.wait_for(proc.stdout.readline(), 30)
    if not line.strip().isdigit():
        raise RuntimeError(f"{what} did not start (printed {line!r})")
    return int(line)


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


def seq_write_mb_per_s(directory: str, total_mb: int = 64, block_kb: int = 1024) -> float:
    """The disk's sequential write bandwidth (MB/s, 1e6 bytes): `total_mb`
    MiB written in `block_kb` KiB writes to a new file in `directory`, then
    fsynced; timed from the first write to the end of the fsync."""
    path = os.path.join(directory, "seq-write-probe")
    block = os.urandom(block_kb * 1024)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        t = time.perf_counter()
        for _ in range(total_mb * 1024 // block_kb):
            os.write(fd, block)
        os.fsync(fd)
        dt = time.perf_counter() - t
    finally:
        os.close(fd)
        os.unlink(path)
    return total_mb * 1024 * 1024 / dt / 1e6


class DiskProbe:
    """The disk under --dir, measured before and after the rows: an fsync's
    cost and the sequential write bandwidth (the higher of the two)."""

    def __init__(self, directory: Optional[str]) -> None:
        self.dir = directory or tempfile.gettempdir()
        self.fsync_before = fsync_samples_us(self.dir)
        self.seq_before = seq_write_mb_per_s(self.dir)
        self.fsync_after: list = []
        self.fsync_us = self.seq_mb_per_s = 0.0

    def after(self, rows: Sequence[BenchRow]) -> None:
        """Measures again, and sets each row's share of the disk's bandwidth."""
        self.fsync_after = fsync_samples_us(self.dir)
        self.fsync_us = statistics.median(self.fsync_before + self.fsync_after)
        self.seq_after = seq_write_mb_per_s(self.dir)
        self.seq_mb_per_s = max(self.seq_before, self.seq_after)
        for r in rows:
            r.of_disk_write = r.mb_per_s / self.seq_mb_per_s

    def describe(self) -> str:
        return (f"fsync of this disk (4 KiB write + fsync, p50 of {len(self.fsync_before)} "
                f"before and {len(self.fsync_after)} after the rows): {self.fsync_us:,.0f} us "
                f"(p50 before {statistics.median(self.fsync_before):,.0f}, after "
                f"{statistics.median(self.fsync_after):,.0f})\n"
                f"sequential write of this disk (64 MiB in 1 MiB writes, then fsync; the "
                f"higher of before and after the rows): {self.seq_mb_per_s:,.0f} MB/s "
                f"(before {self.seq_before:,.0f}, after {self.seq_after:,.0f}); "
                f"'of disk' is a row's MB/s of payload over it")


class BenchmarkError(RuntimeError):
    """A row could not be measured (its figures would be wrong)."""


#: One call in this many is timed for the latency figures (see run_cluster).
LATENCY_SAMPLE = 16


def bench_config(in_flight: int, payload_size: int, snapshots: bool = True) -> Config:
    """The leader's Config for `in_flight` entries awaited at once: a
    --payload above the default command cap is measured, not refused."""
    return Config(seed=7, max_pending_writes=max(65536, in_flight * 2),
                  max_command_bytes=max(Config.max_command_bytes, payload_size + 5),
                  snapshot_policy=snapshot_policy(snapshots), **ELECTION_TIMEOUTS)


async def run_cluster(clients: int, ops_per_client: int, batch: int = 1,
                      payload: bytes = b"x" * 8, progress: Any = None,
                      transport: str = "local", store: str = "mem",
                      workdir: str = "", nodes: int = 3) -> BenchRow:
    """One benchmark row: `clients` tasks each making `ops_per_client` calls
    (client_write, or client_write_many of `batch` payloads) to a cluster
    of `nodes` voters."""
    cluster = await start_cluster(bench_config(clients * batch, len(payload)),
                                  transport, store, workdir, nodes)
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
        clients=clients, ops=entries, batch=batch, seconds=dt, nodes=nodes,
        payload=len(payload), mb_per_s=entries * len(payload) / dt / 1e6,
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


def default_ops(clients: int, batch: int, payload_size: int = 8, transport: str = "local",
                store: str = "mem") -> int:
    """Calls per client for a stable figure in reasonable time: about 200k
    entries in process, 100k over TCP, 20k to the file store, and at most
    256 MiB of payload per row; at least 20 calls a client."""
    entries = 200_000
    if transport == "tcp":
        entries = 100_000
    if store == "file":
        entries = 20_000
    entries = min(entries, 256 * 1024 * 1024 // max(1, payload_size))
    return max(20, entries // (clients * batch))


async def run_all(clients_list: Sequence[int], ops: Optional[int], batch: int,
                  payload_sizes: Sequence[int] | int, floor: bool, show_progress: bool,
                  transport: str = "local", store: str = "mem",
                  workdir: Optional[str] = None,
                  nodes_list: Sequence[int] = (3,)) -> list[BenchRow]:
    """One row per (nodes, payload, clients), in that nesting order."""
    if isinstance(payload_sizes, int):
        payload_sizes = [payload_sizes]
    rows = []
    for nodes in nodes_list:
        for size in payload_sizes:
            for c in clients_list:
                n = ops or default_ops(c, batch, size, transport, store)
                label = f"nodes={nodes} payload={size} clients={c}"
                bar = ProgressBar(label) if show_progress else None
                rows.append(await _measured_row(c, n, batch, b"x" * size, bar, floor,
                                                transport, store, workdir, nodes))
    return rows


async def _measured_row(c: int, n: int, batch: int, payload: bytes, bar: Any, floor: bool,
                        transport: str, store: str, workdir: Optional[str],
                        nodes: int) -> BenchRow:
    rowdir = tempfile.mkdtemp(prefix=f"raftcore-bench-{c}-", dir=workdir)
    # The floor is measured right before and right after the row and the
    # higher figure is used: on a shared machine a load spike during one
    # floor measurement must not make raftcore's share look better.
    # The TCP floor makes at most as many round trips as the row makes calls.
    echo_ops = min(n * batch, max(20, 20_000 // c))
    floors = [await _floors(c, len(payload), transport, echo_ops)] if floor else []
    try:
        row = await run_cluster(c, n, batch, payload, bar, transport, store, rowdir, nodes)
    finally:
        shutil.rmtree(rowdir, ignore_errors=True)
    if floor:
        floors.append(await _floors(c, len(payload), transport, echo_ops))
        row.floor_per_s = max(f[0] for f in floors)
        row.of_floor = row.puts_per_s / row.floor_per_s
        if transport == "tcp":
            row.tcp_floor_per_s = max(f[1] for f in floors)
            row.of_tcp_floor = row.puts_per_s / row.tcp_floor_per_s
    return row


async def _floors(clients: int, payload_size: int, transport: str,
                  echo_ops: int) -> tuple[float, float]:
    """The asyncio floor's and (over TCP) the TCP floor's round trips/s, the
    latter with `echo_ops` round trips per client."""
    from raftcore.bench_echo import run_tcp_floor

    asyncio_floor = await run_floor(clients, max(20, 200_000 // clients))
    if transport != "tcp":
        return asyncio_floor, 0.0
    return asyncio_floor, await run_tcp_floor(clients, echo_ops, payload_size)


def peak_rss_mb() -> float:
    # ru_maxrss is in kilobytes on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def rss_mb(pid: Optional[int] = None) -> float:
    """The resident set size of process `pid` (this one by default) now, in MiB."""
    with open(f"/proc/{pid or 'self'}/statm") as f:
        resident_pages = int(f.read().split()[1])
    return resident_pages * os.sysconf("SC_PAGE_SIZE") / (1024 * 1024)


def format_table(rows: Sequence[BenchRow]) -> str:
    head = (f"{'nodes':>5} {'payload':>7} {'clients':>7} {'batch':>5} {'put/s':>12} "
            f"{'MB/s':>8} {'ns/op':>9} {'p50 us':>9} {'p99 us':>9}")
    has_floor = any(r.floor_per_s for r in rows)
    has_pso = any(r.vs_pysyncobj for r in rows)
    has_tcp = any(r.tcp_floor_per_s for r in rows)
    has_disk = any(r.of_disk_write for r in rows)
    if has_floor:
        head += f" {'floor/s':>12} {'of floor':>8}"
    if has_tcp:
        head += f" {'tcp floor/s':>12} {'of tcp':>8}"
    if has_disk:
        head += f" {'of disk':>8}"
    if has_pso:
        head += f" {'x PySyncObj':>11}"
    lines = [head]
    for r in rows:
        line = (f"{r.nodes:>5} {r.payload:>7} {r.clients:>7} {r.batch:>5} "
                f"{r.puts_per_s:>12,.0f} {r.mb_per_s:>8,.1f} {r.ns_per_op:>9,.0f} "
                f"{r.p50_us:>9,.1f} {r.p99_us:>9,.1f}")
        if has_floor:
            line += (f" {r.floor_per_s:>12,.0f} {r.of_floor:>8.1%}" if r.floor_per_s
                     else " " * 22)
        if has_tcp:
            line += (f" {r.tcp_floor_per_s:>12,.0f} {r.of_tcp_floor:>8.1%}"
                     if r.tcp_floor_per_s else " " * 22)
        if has_disk:
            line += f" {r.of_disk_write:>8.1%}" if r.of_disk_write else " " * 9
        if has_pso and r.vs_pysyncobj:
            line += f" {r.vs_pysyncobj:>11.2f}"
        lines.append(line)
    return "\n".join(lines)


def rows_as_dicts(rows: Sequence[BenchRow]) -> list[dict]:
    return [asdict(r) for r in rows]


def machine_description() -> str:
    return f"{os.cpu_count()} cpus, Python {sys.version.split()[0]}, {sys.platform}"
