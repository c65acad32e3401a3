"""CPU time per write of the in-process cluster, beside the asyncio floor's
CPU time per round trip, measured in the same process.

On a shared machine wall-clock figures move with other work; process CPU
time moves much less, so this script is how benchmarks/README.md compares
builds. It is not a test (no thresholds): run it and read the figures.

    python benchmarks/cpu_per_write.py               # 1 and 256 clients, 3 runs each
    python benchmarks/cpu_per_write.py --clients 64 --writes 128000 --runs 5
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import time

import uvloop

from raftcore import bench
from raftcore.config import Config


async def measure(clients: int, writes: int) -> tuple[float, float]:
    """(ns of CPU per write, ns of CPU per floor round trip)."""
    cluster = await bench.start_cluster(Config(seed=7, max_pending_writes=65536))
    leader = cluster.leader
    payload = b"x" * 8

    async def client(n: int) -> None:
        write = leader.client_write
        for _ in range(n):
            await write(payload)

    await client(2000)      # warm up
    gc.collect()
    t0 = time.process_time()
    await asyncio.gather(*(client(writes // clients) for _ in range(clients)))
    raft_ns = (time.process_time() - t0) / writes * 1e9
    await cluster.close()
    t0 = time.process_time()
    await bench.run_floor(clients, writes // clients)
    floor_ns = (time.process_time() - t0) / writes * 1e9
    return raft_ns, floor_ns


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, nargs="*", default=[1, 256])
    p.add_argument("--writes", type=int, default=0, help="writes per run (default: by clients)")
    p.add_argument("--runs", type=int, default=3)
    args = p.parse_args()
    for clients in args.clients:
        writes = args.writes or (100_000 if clients == 1 else 1000 * clients)
        for _ in range(args.runs):
            raft_ns, floor_ns = uvloop.run(measure(clients, writes))
            print(f"clients={clients}: {raft_ns:,.0f} ns CPU per write, floor "
                  f"{floor_ns:,.0f} ns per round trip, share of floor {floor_ns / raft_ns:.1%}")


if __name__ == "__main__":
    main()
