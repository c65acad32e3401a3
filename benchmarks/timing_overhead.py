"""What timing every call costs a benchmark client: the asyncio floor
(raftcore.bench.run_floor's loop, with its leader task) with no bookkeeping,
with every call timed into a latency array, and with one call in 16 timed,
in one process.

    python benchmarks/timing_overhead.py
"""
from __future__ import annotations

import asyncio
import time
from array import array

import uvloop

from raftcore.bench import floor_leader


async def floor(clients: int, ops: int, sample_every: int) -> float:
    """Round trips/s; sample_every 0: no timing, N: every N-th call timed."""
    loop = asyncio.get_running_loop()
    pending: list = []
    wake = asyncio.Event()
    lat = array("q", bytes(8 * clients * ops))
    perf = time.perf_counter_ns

    async def client(k: int) -> None:
        base = k * ops
        for i in range(ops):
            timed = sample_every and not i % sample_every
            if timed:
                t = perf()
            fut = loop.create_future()
            pending.append(fut)
            wake.set()
            await fut
            if timed:
                lat[base + i] = perf() - t

    lt = asyncio.ensure_future(floor_leader(pending, wake))
    t0 = time.perf_counter()
    await asyncio.gather(*(client(k) for k in range(clients)))
    dt = time.perf_counter() - t0
    lt.cancel()
    return clients * ops / dt


async def main() -> None:
    for clients, ops in ((1, 200_000), (256, 1000)):
        for label, every in (("untimed", 0), ("every call timed", 1), ("1 in 16 timed", 16)):
            rate = await floor(clients, ops, every)
            print(f"clients={clients:4d} {label:>17}: {rate:12,.0f} round trips/s")


if __name__ == "__main__":
    uvloop.run(main())
