"""Micro-benchmarks of compiled hot paths, each beside a plain-Python
reference of the same function, so the gain from Cython is measured.

Run: pytest benchmarks/   (pytest-benchmark prints the table)
"""
import random

import pytest

from raftcore.commands import Append
from raftcore.engine import Engine
from raftcore.errors import ForwardToLeader
from raftcore.membership import Membership
from raftcore.quorum import QuorumTracker
from raftcore.types import ENTRY_MEMBERSHIP, ENTRY_NORMAL, Entry


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

    def run(cls=cls):
        q = cls(configs)
        changed = [q.set(node, value) for node, value in acks]
        return q.accepted, changed

    # Both implementations agree after every ack, not only at the end.
    assert run(QuorumTracker) == run(PyQuorum)
    benchmark.group = f"commit index, {voters} voters (3000 acks)"
    accepted, _ = benchmark(run)
    assert accepted > 0


def _leader(batch_cap=300):
    e = Engine(1, heartbeat_interval=0.05, election_timeout_min=0.15,
               election_timeout_max=0.3, max_payload_entries=batch_cap,
               max_payload_bytes=1 << 22, max_inflight=64, rng=random.Random(1).random)
    e.initialize(Membership([{1}], {1: None}))
    e.log_flushed(1, 2)
    e.take_commands()
    return e


class PyLeader:
    """Reference: the same step in plain Python, on the same state (a leader
    of a single-voter cluster, so no follower has a window to send into):
    check the node may propose, build one entry per payload, append them to
    the log, emit the append command. It builds raftcore's own Entry objects
    so both steps emit equal commands."""

    def __init__(self, term, entries):
        self.is_leader = True
        self.transfer_to = None
        self.term = term
        self.log = list(entries)
        self.output = []
        self.membership_log = []

    @property
    def last_log_index(self):
        return len(self.log)

    def client_write(self, payloads, now):
        self.now = now
        if not self.is_leader or self.transfer_to is not None:
            raise ForwardToLeader(None, None)
        term = self.term
        first = len(self.log) + 1
        entries = [Entry(term, first + i, ENTRY_NORMAL, p) for i, p in enumerate(payloads)]
        self.log.extend(entries)
        for e in entries:
            if e.kind == ENTRY_MEMBERSHIP:
                self.membership_log.append((e.index, e.payload))
        self.output.append(Append(entries))
        return first

    def take_commands(self):
        out = self.output
        self.output = []
        return out


def _py_leader():
    e = _leader()
    return PyLeader(e.vote.term, e.entries(1, e.last_log_index))


#: A leader whose log grows past this is replaced by a fresh one, so a long
#: benchmark run stays small (without it a run held millions of entries).
MAX_LOG = 100_000


def _stepper(new_leader, payloads):
    state = [new_leader()]

    def step():
        e = state[0]
        if e.last_log_index > MAX_LOG:
            e = state[0] = new_leader()
        first = e.client_write(payloads, 0.0)
        return first, e.take_commands()

    return step


@pytest.mark.parametrize("impl", ["cython", "python"])
@pytest.mark.parametrize("batch", [1, 64, 256])
def test_engine_client_write_batch(benchmark, impl, batch):
    """One engine step for a batch of client writes on a leader (log append,
    entries built, commands emitted), per call."""
    payloads = [b"x" * 16] * batch
    c_step, p_step = _stepper(_leader, payloads), _stepper(_py_leader, payloads)
    for _ in range(3):
        assert c_step() == p_step()

    benchmark.group = f"engine client_write step, batch of {batch}"
    first, commands = benchmark(c_step if impl == "cython" else p_step)
    assert first > 2 and len(commands[0].entries) == batch
