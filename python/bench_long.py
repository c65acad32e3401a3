"""The long rows of `raftcore bench`: memory (--memory) and soak (--duration).

Memory: the leader process's RSS after millions of entries, with snapshots
off (the log keeps every entry) and with the default snapshot policy (the
log is purged behind each snapshot, so it keeps a bounded tail).

Soak: writes for a fixed time, reporting each second's throughput, p99.9
latency and the leader process's RSS, to show drift or a leak.

Both measure the process holding the leader (node 1), which is this one.
"""
from __future__ import annotations

import asyncio
import gc
import math
import time
from array import array
from dataclasses import dataclass, field
from typing import Any, Sequence

from raftcore.bench import BenchmarkError, bench_config, rss_mb, start_cluster


@dataclass
class MemoryRow:
    """The leader process after each checkpoint of entries written."""
    snapshots: bool                 # the default snapshot policy, or none
    payload: int
    nodes: int
    rss_start_mb: float             # once the cluster is up, before any write
    entries: list = field(default_factory=list)
    rss_mb: list = field(default_factory=list)
    #: Entries the leader's log holds (last log index - purged index).
    log_entries: list = field(default_factory=list)
    seconds: list = field(default_factory=list)     # since the first write


@dataclass
class SoakRow:
    """One value per whole second of writing, in order."""
    clients: int
    payload: int
    nodes: int
    seconds: float
    puts_per_s: float               # over the whole run
    rss_start_mb: float             # before the first write
    rss_end_mb: float               # after the last
    per_second: list = field(default_factory=list)      # writes completed that second
    p999_us: list = field(default_factory=list)
    p50_us: list = field(default_factory=list)
    rss_mb: list = field(default_factory=list)


def distinct_payloads(size: int, count: int, start: int) -> list:
    """`count` payloads of `size` bytes, each different (numbered from
    `start`): the leader's log must not hold one shared object many times."""
    pad = b"x" * max(0, size - 8)
    return [pad + (start + i).to_bytes(8, "little") for i in range(count)]


def log_entries(raft: Any) -> int:
    """Entries the node's log holds: from after the purge point to the last."""
    m = raft.metrics
    return m.last_log_index - (m.purged.index if m.purged is not None else 0)


async def run_memory(checkpoints: Sequence[int], snapshots: bool, payload_size: int = 100,
                     clients: int = 64, batch: int = 64, transport: str = "tcp",
                     store: str = "file", workdir: str = "", nodes: int = 3) -> MemoryRow:
    """Writes up to each of `checkpoints` (ascending entry counts) with
    `clients` tasks each calling client_write_many of `batch` distinct
    payloads, and records the leader process's RSS at each."""
    config = bench_config(clients * batch, payload_size, snapshots)
    cluster = await start_cluster(config, transport, store, workdir, nodes)
    leader = cluster.leader
    gc.collect()
    row = MemoryRow(snapshots, payload_size, nodes, round(rss_mb(), 1))
    written = [0]
    try:
        t0 = time.perf_counter()
        for target in checkpoints:
            await _write_until(leader, target, clients, batch, payload_size, written)
            gc.collect()
            row.entries.append(written[0])
            row.rss_mb.append(round(rss_mb(), 1))
            row.log_entries.append(log_entries(leader))
            row.seconds.append(round(time.perf_counter() - t0, 2))
    finally:
        await cluster.close()
    return row


async def _write_until(leader: Any, target: int, clients: int, batch: int, size: int,
                       written: list) -> None:
    async def client() -> None:
        while written[0] < target:
            n = min(batch, target - written[0])
            cmds = distinct_payloads(size, n, written[0])
            written[0] += n
            await leader.client_write_many(cmds)

    await _guarded(asyncio.gather(*(client() for _ in range(clients))), clients)
    if leader.state_machine.applied_normal != written[0]:
        raise BenchmarkError(f"the leader applied {leader.state_machine.applied_normal} "
                             f"entries, not the {written[0]} written")


async def _guarded(work: Any, clients: int) -> Any:
    """Awaits `work`, turning a lost leadership into a BenchmarkError."""
    from raftcore.errors import ForwardToLeader, OutcomeUnknown
    try:
        return await work
    except (ForwardToLeader, OutcomeUnknown) as exc:
        raise BenchmarkError(f"the benchmark leader lost its leadership during the "
                             f"{clients}-client row ({exc}); rerun it on a quieter machine"
                             ) from None


async def run_soak(seconds: float, clients: int, payload_size: int = 8,
                   transport: str = "local", store: str = "mem", workdir: str = "",
                   nodes: int = 3) -> SoakRow:
    """`clients` tasks each awaiting client_write in a loop for `seconds`;
    every call is timed, into the array of the (whole) second it ended in;
    calls still in flight at the deadline count in the last second."""
    cluster = await start_cluster(bench_config(clients, payload_size), transport, store,
                                  workdir, nodes)
    leader = cluster.leader
    payload = b"x" * payload_size
    gc.collect()
    row = SoakRow(clients, payload_size, nodes, seconds, 0.0, round(rss_mb(), 1), 0.0)
    last = max(1, math.ceil(seconds)) - 1
    buckets: dict = {}
    perf = time.perf_counter_ns
    t0 = perf()
    deadline = t0 + int(seconds * 1e9)

    async def client() -> None:
        write = leader.client_write
        while True:
            t = perf()
            if t >= deadline:
                return
            await write(payload)
            end = perf()
            k = min(last, (end - t0) // 1_000_000_000)
            lat = buckets.get(k)
            if lat is None:
                lat = buckets[k] = array("q")
            lat.append(end - t)

    async def each_second() -> None:
        # Closes each second's figures once it is over, so that the timings
        # of a long soak are not all held until the end.
        while True:
            now = (perf() - t0) // 1_000_000_000
            while len(row.per_second) < min(now, last):
                _close_second(row, buckets.pop(len(row.per_second), array("q")))
            await asyncio.sleep(max(0.0, (t0 + (now + 1) * 1e9 - perf()) / 1e9))

    ticker = asyncio.ensure_future(each_second())
    try:
        await _guarded(asyncio.gather(*(client() for _ in range(clients))), clients)
    finally:
        ticker.cancel()
        await cluster.close()
    row.seconds = (perf() - t0) / 1e9
    while len(row.per_second) <= last:
        _close_second(row, buckets.pop(len(row.per_second), array("q")))
    row.puts_per_s = sum(row.per_second) / row.seconds
    gc.collect()
    row.rss_end_mb = round(rss_mb(), 1)
    return row


def _close_second(row: SoakRow, lat: array) -> None:
    s = sorted(lat)
    row.per_second.append(len(s))
    row.p999_us.append(round(s[min(len(s) - 1, int(len(s) * 0.999))] / 1e3, 1) if s else 0.0)
    row.p50_us.append(round(s[len(s) // 2] / 1e3, 1) if s else 0.0)
    row.rss_mb.append(round(rss_mb(), 1))


def format_memory(rows: Sequence[MemoryRow]) -> str:
    lines = [f"{'snapshots':>9} {'payload':>7} {'entries':>12} {'leader RSS MB':>13} "
             f"{'log entries':>12} {'seconds':>8}"]
    for r in rows:
        policy = "default" if r.snapshots else "off"
        lines.append(f"{policy:>9} {r.payload:>7} {'0':>12} {r.rss_start_mb:>13,.1f} "
                     f"{'':>12} {'':>8}")
        for n, rss, kept, sec in zip(r.entries, r.rss_mb, r.log_entries, r.seconds):
            lines.append(f"{policy:>9} {r.payload:>7} {n:>12,} {rss:>13,.1f} "
                         f"{kept:>12,} {sec:>8,.1f}")
    return "\n".join(lines)


def format_soak(row: SoakRow) -> str:
    lines = [f"{'second':>6} {'put/s':>10} {'p50 us':>9} {'p99.9 us':>9} {'RSS MB':>8}"]
    for i, (n, p50, p999, rss) in enumerate(zip(row.per_second, row.p50_us, row.p999_us,
                                                row.rss_mb)):
        lines.append(f"{i + 1:>6} {n:>10,} {p50:>9,.1f} {p999:>9,.1f} {rss:>8,.1f}")
    lines.append(f"soak: {row.clients} clients, {row.nodes} voters, {row.payload} B: "
                 f"{row.puts_per_s:,.0f} put/s over {row.seconds:.1f} s; leader process RSS "
                 f"{row.rss_start_mb:,.1f} MB before, {row.rss_end_mb:,.1f} MB after")
    return "\n".join(lines)
