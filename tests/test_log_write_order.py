"""When a step's log write starts: FileLogStore.write_now, and the node
calling it once the step's AppendEntries are out and before it applies.

A log store batches the appends of one loop iteration and starts writing
them at the next one. The node knows better when its step is over: it calls
the store's write_now (where the store has one) after the step's sends (a
leader's AppendEntries go first: each one wakes a follower) and before the
step's apply (a follower's apply then overlaps its fsync).
"""
from __future__ import annotations

import asyncio
import threading

from async_runner import run_guarded
from cluster_harness import (Cluster, cluster_test, members, stable_leader,
                             wait_all_applied)
from raftcore.errors import StorageError
from raftcore.network import LocalRouter
from raftcore.storage import FileLogStore, MemLogStore, MemStateMachine
from raftcore.storage.file import FileOps
from raftcore.types import ENTRY_NORMAL, Entry

GUARD = 20.0


class HeldSyncOps(FileOps):
    """FileOps whose data syncs wait for `gate` (after setting `held`)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.held = threading.Event()

    def sync_data(self, fd: int) -> None:
        self.held.set()
        assert self.gate.wait(GUARD), "the test never released the sync"
        super().sync_data(fd)


def entry(index: int) -> Entry:
    return Entry(1, index, ENTRY_NORMAL, ["set", f"k{index}", b"v"])


def test_write_now_starts_the_buffered_group_before_the_loop_runs_again(tmp_path):
    async def body():
        ops = HeldSyncOps()
        store = FileLogStore(tmp_path, ops=ops)
        ops.gate.set()
        first = asyncio.get_running_loop().create_future()
        store.append([entry(1)], first.set_result)     # creates the segment
        assert await asyncio.wait_for(first, GUARD) is None
        ops.gate.clear()
        ops.held.clear()
        done = []
        store.append([entry(2)], done.append)
        store.write_now()
        # Without yielding to the loop: the group is on the flush thread
        # already (left to the loop, it would start only at its next pass).
        assert ops.held.wait(GUARD), "write_now did not start the group"
        # An append after it waits for that group, then goes in the next one.
        store.append([entry(3)], done.append)
        store.write_now()           # a group is in flight: nothing more to do
        ops.gate.set()
        await store.close()
        assert done == [None, None]
    run_guarded(body(), 60)


def test_write_now_never_reports_an_empty_append_from_inside_the_call(tmp_path):
    async def body():
        store = FileLogStore(tmp_path)
        done = []
        store.append([], done.append)
        store.write_now()
        assert done == []            # reported by the loop's pass, as before
        await store.close()
        assert done == [None]
    run_guarded(body(), 60)


# ------------------------------------------------------- the node's side

class OrderRecorder:
    """One list of what every node's store, state machine and network did,
    in the order it happened (LocalRouter delivers in process, so a
    leader's step holds its followers' steps)."""

    def __init__(self) -> None:
        self.events: list[tuple] = []


class RecordingStore(MemLogStore):
    def __init__(self, node_id: int, rec: OrderRecorder) -> None:
        super().__init__()
        self.node_id = node_id
        self.rec = rec

    def append(self, entries, on_flushed) -> None:
        if entries:
            self.rec.events.append(("append", self.node_id, entries[-1].index))
        super().append(entries, on_flushed)

    def write_now(self) -> None:
        self.rec.events.append(("write_now", self.node_id))


class RecordingMachine(MemStateMachine):
    def __init__(self, node_id: int, rec: OrderRecorder) -> None:
        super().__init__()
        self.node_id = node_id
        self.rec = rec

    def apply(self, entries):
        self.rec.events.append(("apply", self.node_id, entries[-1].index))
        return super().apply(entries)


class RecordingRouter(LocalRouter):
    def __init__(self, rec: OrderRecorder) -> None:
        super().__init__()
        self.rec = rec

    def deliver_nowait(self, src, dst, req, reply) -> bool:
        self.rec.events.append(("send", src, dst, req.entries[-1].index if req.entries else 0))
        return super().deliver_nowait(src, dst, req, reply)


@cluster_test
async def test_the_node_starts_its_log_write_after_its_sends_and_before_its_apply():
    rec = OrderRecorder()
    # Long election timeouts: one leader throughout, even on a loaded machine.
    c = Cluster(RecordingRouter(rec), seed=7301,
                cfg={"election_timeout_min": 1.0, "election_timeout_max": 2.0})
    try:
        for i in (1, 2, 3):
            await c.add_node(i, log_store=RecordingStore(i, rec), sm=RecordingMachine(i, rec))
        await c[1].initialize(members([1, 2, 3]))
        leader = await stable_leader(c.all())
        followers = [r.id for r in c.others(leader)]
        resp = await leader.client_write(["set", "a", 1])
        first = resp.log_id.index
        await wait_all_applied(c.all(), first)
        for n in range(4):
            resp = await leader.client_write(["set", f"k{n}", n])
        await wait_all_applied(c.all(), resp.log_id.index)
    finally:
        await c.shutdown()
    ev = rec.events
    checked = 0
    for pos, e in enumerate(ev):
        if e[0] != "append":
            continue
        node, index = e[1], e[2]
        if index < first:
            continue        # the election's entries: the leader was not known yet
        # The rest of this node's step: up to the write_now that ends it.
        rest = [x for x in ev[pos + 1:] if x[1] == node]
        assert ("write_now", node) in rest, f"node {node} never started writing index {index}"
        step = rest[:rest.index(("write_now", node))]
        assert not [x for x in step if x[0] in ("apply", "append")], \
            f"node {node} applied or appended again before starting the write of {index}: {step}"
        if node == leader.id:
            sent_to = {x[2] for x in step if x[0] == "send" and x[3] >= index}
            assert sent_to == set(followers), \
                f"the leader started writing {index} before sending it to {followers}: {step}"
        checked += 1
    assert checked >= 3 * 2, ev     # appends batch: at least the first and last


class FailingWriteStore(RecordingStore):
    """Holds each append's on_flushed until write_now; once `fail` is set,
    write_now reports a disk error to them instead (a store whose write
    cannot start fails at once, from inside the call)."""

    def __init__(self, node_id: int, rec: OrderRecorder) -> None:
        super().__init__(node_id, rec)
        self.fail = False
        self.held: list = []

    def append(self, entries, on_flushed) -> None:
        super().append(entries, lambda err: None)
        self.held.append(on_flushed)

    def write_now(self) -> None:
        super().write_now()
        held, self.held = self.held, []
        err = StorageError("disk gone") if self.fail else None
        for cb in held:
            cb(err)


@cluster_test
async def test_a_log_write_that_fails_at_once_stops_the_node_before_the_rest_of_its_step():
    rec = OrderRecorder()
    c = Cluster(RecordingRouter(rec), seed=7302,
                cfg={"election_timeout_min": 1.0, "election_timeout_max": 2.0})
    stores = {i: FailingWriteStore(i, rec) for i in (1, 2, 3)}
    try:
        for i in (1, 2, 3):
            await c.add_node(i, log_store=stores[i], sm=RecordingMachine(i, rec))
        await c[1].initialize(members([1, 2, 3]))
        leader = await stable_leader(c.all())
        victim = c.others(leader)[0]
        first = (await leader.client_write(["set", "a", 1])).log_id.index
        await leader.wait(GUARD).applied_index_at_least(first)
        stores[victim.id].fail = True
        # The next AppendEntries carries the new entry and commits `first`:
        # the victim's step appends, starts the write (which fails), and
        # would then apply `first`.
        rec.events.clear()
        second = (await leader.client_write(["set", "b", 2])).log_id.index
        error = await victim.wait(GUARD).stopped()
    finally:
        await c.shutdown()
    assert isinstance(error, StorageError), error
    mine = [e for e in rec.events if e[1] == victim.id]
    assert ("append", victim.id, second) in mine, mine
    failed_at = mine.index(("write_now", victim.id))
    assert not [e for e in mine[failed_at:] if e[0] == "apply"], mine
