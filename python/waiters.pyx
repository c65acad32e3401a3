# cython: annotation_typing=False
"""What waits on a node's state: linearizable reads waiting for a quorum to
confirm the leadership they were asked under, and Raft.wait() conditions
waiting for the metrics to satisfy them.

Compiled: the runtime (core.pyx) checks both after every round, through
waiters.pxd (C calls; nothing when nobody waits).
"""
from raftcore.engine cimport Engine, S_LEADER
from raftcore.types cimport LogId

import asyncio

from raftcore.errors import ForwardToLeader, Timeout


cdef class ReadWaiters:
    """The read points of linearizable reads on a leader, each answered once
    its round of heartbeats is confirmed by a quorum."""

    def __init__(self, core, Engine engine) -> None:
        """`core`: the node (RaftCore), whose engine it steps to start a round."""
        self.core = core
        self.engine = engine
        self.waiting = []

    async def read_log_id(self, bint lease):
        """Leader: the read point of a linearizable read, once leadership is
        confirmed (by the lease, or by a quorum answering a new round)."""
        core = self.core
        core.check_running()
        engine = self.engine
        if lease:
            index = engine.lease_read(core.loop.time())
            if index >= 0:
                return LogId(engine.log.term_of(index), index)
        index, seq = core.step(engine.read_index, core.loop.time())
        term = engine.vote.term
        if engine.confirmed_seq < seq:
            fut = core.loop.create_future()
            self.waiting.append((seq, term, fut))
            limit = 2 * core.config.election_timeout_max
            try:
                await asyncio.wait_for(fut, limit)
            except asyncio.TimeoutError:
                raise Timeout(f"node {core.id} could not confirm its leadership with a quorum "
                              f"within {limit}s; retry, or read from the current leader") from None
        return LogId(engine.log.term_of(index), index)

    cdef void check(self):
        engine = self.engine
        keep = []
        for w in self.waiting:
            seq, term, fut = w
            if fut.done():
                continue
            if engine.state != S_LEADER or engine.vote.term != term:
                fut.set_exception(ForwardToLeader(engine.leader_id, engine.leader_node()))
            elif engine.confirmed_seq >= seq:
                fut.set_result(None)
            else:
                keep.append(w)
        self.waiting = keep

    cdef void fail_all(self, err):
        for _, _, fut in self.waiting:
            _fail(fut, err)
        self.waiting.clear()


cdef class MetricWaiters:
    """Futures waiting for a predicate on the node's metrics to hold, and
    futures waiting for the node to stop."""

    def __init__(self) -> None:
        self.waiting = []
        self.until_stopped = []

    def add(self, predicate, fut) -> None:
        """`fut` gets the metrics once `predicate(metrics)` holds; with
        predicate None, only the node's stop settles it (fail_all), and it
        costs nothing per round: the metrics are built after a round only
        while a predicate waits."""
        if predicate is None:
            self.until_stopped.append(fut)
        else:
            self.waiting.append((predicate, fut))

    def remove(self, fut) -> None:
        self.waiting = [w for w in self.waiting if w[1] is not fut]
        self.until_stopped = [f for f in self.until_stopped if f is not fut]

    cdef void check(self, metrics):
        """Answers `metrics` to each waiter whose predicate now holds (the
        predicate's error to one that raises)."""
        keep = []
        for pred, fut in self.waiting:
            if fut.done():
                continue
            try:
                ok = pred(metrics)
            except Exception as exc:
                fut.set_exception(exc)
                continue
            if ok:
                fut.set_result(metrics)
            else:
                keep.append((pred, fut))
        self.waiting = keep

    cdef void fail_all(self, err):
        for _, fut in self.waiting:
            _fail(fut, err)
        self.waiting.clear()
        for fut in self.until_stopped:
            _fail(fut, err)
        self.until_stopped.clear()


cdef inline void _fail(fut, exc):
    if not fut.done():
        fut.set_exception(exc)
