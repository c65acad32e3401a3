"""Micro-benchmarks of compiled hot paths, each beside a plain-Python
reference of the same function, so the gain from Cython is measured.

Run: pytest benchmarks/   (pytest-benchmark prints the table)
"""
import random

import pytest

from raftcore.engine import Engine
from raftcore.membership import Membership
from raftcore.quorum import QuorumTracker


class PyQuorum:
    """Reference: the quorum value recomputed by sorting on every update."""

    def __init__(self, configs):
        self.configs = [sorted(c) for c in configs]
        self.values = {n: 0 for c in configs for n in c}
        self.accepted = 0

    def set(self, node, value):
        if value <= self.values.get(node, value):
            return False
        self.values[node] = value
        old = self.accepted
        self.accepted = min(sorted((self.values[n] for n in c), reverse=True)[len(c) // 2]
                            for c in self.configs)
        return self.accepted != old


CONFIGS = {
    "3": [range(1, 4)],
    "5": [range(1, 6)],
    "7": [range(1, 8)],
    "joint-3-5": [range(1, 4), range(3, 8)],
}


def _acks(configs, n=3000, seed=1):
    rng = random.Random(seed)
    nodes = sorted({x for c in configs for x in c})
    cur = {x: 0 for x in nodes}
    out = []
    for _ in range(n):
        x = rng.choice(nodes)
        cur[x] += rng.randint(1, 64)
        out.append((x, cur[x]))
    return out


@pytest.mark.parametrize("impl", ["cython", "python"])
@pytest.mark.parametrize("voters", sorted(CONFIGS))
def test_commit_index_update(benchmark, impl, voters):
    configs = CONFIGS[voters]
    acks = _acks(configs)
    cls = QuorumTracker if impl == "cython" else PyQuorum

    def run():
        q = cls(configs)
        for node, value in acks:
            q.set(node, value)
        return q.accepted

    benchmark.group = f"commit index, {voters} voters (3000 acks)"
    result = benchmark(run)
    assert result == PyQuorum(configs).accepted or result > 0


def _leader(batch_cap=300):
    e = Engine(1, heartbeat_interval=0.05, election_timeout_min=0.15,
               election_timeout_max=0.3, max_payload_entries=batch_cap,
               max_payload_bytes=1 << 22, max_inflight=64, rng=random.Random(1).random)
    e.initialize(Membership([{1}], {1: None}))
    e.log_flushed(1, 2)
    e.take_commands()
    return e


@pytest.mark.parametrize("batch", [1, 64, 256])
def test_engine_client_write_batch(benchmark, batch):
    """One engine step for a batch of client writes on a leader (log append,
    entries built, commands emitted), per call."""
    e = _leader()
    payloads = [b"x" * 16] * batch

    def run():
        e.client_write(payloads, 0.0)
        e.take_commands()

    benchmark.group = "engine client_write step"
    benchmark(run)
    assert e.last_log_index > 2
