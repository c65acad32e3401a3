"""`raftcore bench --embed`: command throughput through the embedding layer
against client_write doing the same state-machine work.

raftcore bench's in-process setup: 3 voters in one process, MemLogStore,
LocalRouter, the same Config. Both sides apply ReplCounter.add(1) on every
node:

- client_write: N tasks each awaiting `leader.client_write(["add", 1])` in a
  loop; the state machine calls the counter's add and answers its result
  (the least a hand-written state machine does);
- layer: N tasks each awaiting `node.call("counter", "add", [1])` on the
  leader's EmbeddedNode: a session entry stamped with the leader's clock,
  applied by ReplicatedStateMachine (session bookkeeping, the answer kept for
  a retry, the result checked as a msgpack value), bounded by the call's
  deadline.

Each row runs the two sides alternately, twice each, and keeps each side's
better figure: on a shared machine a load spike during one run must not
decide the ratio.
"""
from __future__ import annotations

import asyncio
import gc
import time
from dataclasses import dataclass
from typing import Any, Optional, Sequence

from raftcore.bench import BenchmarkError, default_ops, machine_description
from raftcore.config import Config
from raftcore.embed.node import EmbeddedNode
from raftcore.embed.objects import ReplCounter
from raftcore.embed.replicated import ReplicatedStateMachine
from raftcore.errors import NetworkError
from raftcore.model import Node, ServerState
from raftcore.network.local import LocalRouter
from raftcore.raft import Raft
from raftcore.storage.mem import MemLogStore, MemStateMachine

__all__ = ["EmbedRow", "run_embed", "format_embed_table", "machine_description"]

#: Each side is measured this many times per row, alternately; the best counts.
ROUNDS = 2


class CounterStateMachine(MemStateMachine):
    """The client_write side: applies ["add", n] to a ReplCounter, as the
    layer's state machine does, and answers its result."""

    def __init__(self) -> None:
        super().__init__()
        self.counter = ReplCounter()

    def _apply_normal(self, data: dict, payload: Any) -> Any:
        return self.counter.add(payload[1])


class _NoForwarding:
    """The benchmark calls the leader's own node: nothing is forwarded."""

    async def request(self, target: int, node: Optional[Node], msg: list) -> list:
        raise NetworkError("the benchmark does not forward")

    async def close(self) -> None:
        pass


@dataclass
class EmbedRow:
    clients: int
    ops: int
    client_write_per_s: float
    layer_per_s: float

    @property
    def ratio(self) -> float:
        return self.layer_per_s / self.client_write_per_s


def _config(clients: int) -> Config:
    # As raftcore bench's rows: a stable leader on a loaded machine.
    return Config(seed=7, max_pending_writes=max(65536, clients * 2),
                  election_timeout_min=1.0, election_timeout_max=2.0)


async def _cluster(clients: int, make_sm: Any) -> tuple[list[Raft], list[MemLogStore]]:
    router = LocalRouter()
    rafts, stores = [], []
    for i in (1, 2, 3):
        store = MemLogStore()
        r = await Raft.create(i, _config(clients), router.network(i), store, make_sm())
        router.add(i, r)
        rafts.append(r)
        stores.append(store)
    await rafts[0].initialize({i: Node(f"local-{i}") for i in (1, 2, 3)})
    await rafts[0].wait(10).state(ServerState.LEADER, "the benchmark leader")
    return rafts, stores


async def _timed(clients: int, ops: int, call: Any) -> float:
    async def client() -> None:
        for _ in range(ops):
            await call()

    gc.collect()
    t0 = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return clients * ops / (time.perf_counter() - t0)


async def _client_write_side(clients: int, ops: int) -> float:
    rafts, stores = await _cluster(clients, CounterStateMachine)
    try:
        leader = rafts[0]
        write = leader.client_write
        rate = await _timed(clients, ops, lambda: write(["add", 1]))
        if leader.state_machine.counter.value != clients * ops:
            raise BenchmarkError(f"client_write: the counter is "
                                 f"{leader.state_machine.counter.value}, not {clients * ops}")
        return rate
    finally:
        await _close(rafts, stores)


async def _layer_side(clients: int, ops: int) -> float:
    rafts, stores = await _cluster(clients, lambda: ReplicatedStateMachine(
        {"counter": ReplCounter()}))
    leader = rafts[0]
    node = EmbeddedNode(leader, None, stores[0], leader.state_machine, _NoForwarding(),
                        timeout=60.0)
    try:
        call = node.call
        rate = await _timed(clients, ops, lambda: call("counter", "add", [1]))
        value = leader.state_machine.objects["counter"].value
        if value != clients * ops:
            raise BenchmarkError(f"layer: the counter is {value}, not {clients * ops}")
        return rate
    finally:
        await _close(rafts, stores)


async def _close(rafts: list[Raft], stores: list[MemLogStore]) -> None:
    for r in rafts:
        await r.shutdown()
    for s in stores:
        await s.close()


async def run_embed(clients_list: Sequence[int], ops: Optional[int] = None) -> list[EmbedRow]:
    """One row per client count: each side's best of ROUNDS alternating runs."""
    rows = []
    for c in clients_list:
        n = ops or max(20, default_ops(c, 1) // 4)
        plain, layer = 0.0, 0.0
        for _ in range(ROUNDS):
            plain = max(plain, await _client_write_side(c, n))
            layer = max(layer, await _layer_side(c, n))
        rows.append(EmbedRow(c, c * n, plain, layer))
    return rows


def format_embed_table(rows: Sequence[EmbedRow]) -> str:
    lines = [f"{'clients':>7} {'ops':>8} {'client_write/s':>15} {'layer call/s':>13} "
             f"{'layer/cw':>8}"]
    for r in rows:
        lines.append(f"{r.clients:>7} {r.ops:>8,} {r.client_write_per_s:>15,.0f} "
                     f"{r.layer_per_s:>13,.0f} {r.ratio:>8.1%}")
    return "\n".join(lines)
