"""A node purges its log only behind a snapshot its state machine reports
durable (StateMachine.durable_snapshot), so a state machine of the user's own
restarts with a FileLogStore whatever it does with its snapshots; and the
start-up error of a log purged past the state machine says what to do."""
from __future__ import annotations

import asyncio
import logging

import pytest

from async_runner import run_guarded
from raftcore import Config, LogId, Node, Raft, ServerState
from raftcore.config import SnapshotPolicy
from raftcore.errors import StorageError
from raftcore.kv import KvStateMachine
from raftcore.network import LocalRouter
from raftcore.storage import FileLogStore, MemLogStore, MemStateMachine
from raftcore.types import ENTRY_NORMAL, Entry

#: Failure guard of every wait (never a way to wait).
GUARD = 10.0


def config() -> Config:
    # Snapshots only when the test asks; purge right up to them.
    return Config(heartbeat_interval=0.03, election_timeout_min=0.3, election_timeout_max=0.6,
                  seed=1, snapshot_policy=SnapshotPolicy.never(), max_in_snapshot_log_to_keep=0)


def run(coro) -> None:
    run_guarded(coro, 60)


async def start(store, sm, init: bool = False) -> Raft:
    router = LocalRouter()
    raft = await Raft.create(1, config(), router.network(1), store, sm)
    router.add(1, raft)
    if init:
        await raft.initialize({1: Node("n1")})
    await raft.wait(GUARD).state(ServerState.LEADER)
    return raft


async def write(raft: Raft, first: int, n: int) -> int:
    """Sets k<first>..k<first+n-1>; returns the last index, applied."""
    resps = await raft.client_write_many([["set", f"k{i}", i] for i in range(first, first + n)])
    await raft.wait(GUARD).applied_index_at_least(resps[-1].index)
    return resps[-1].index


async def snapshot_then_settle(raft: Raft) -> LogId:
    """Builds a snapshot; returns its last log id once any purge it caused
    has run (a write applied after it: commands run in order)."""
    snap = await raft.trigger.snapshot()
    await write(raft, 10_000, 1)
    return snap.meta.last_log_id


class InMemorySnapshots(MemStateMachine):
    """A state machine of the user's own that keeps its snapshots in memory
    only, and so reports none durable (StateMachine's default)."""


class FirstSnapshotDurable(MemStateMachine):
    """Reports only its first snapshot durable, however many it builds."""

    first = None

    async def build_snapshot(self, executor):
        snap = await super().build_snapshot(executor)
        if self.first is None:
            self.first = snap.meta
        return snap

    def durable_snapshot(self):
        return self.first


def test_a_state_machine_without_durable_snapshots_keeps_the_log_and_restarts(tmp_path, caplog):
    async def body():
        store = FileLogStore(tmp_path / "log")
        raft = await start(store, InMemorySnapshots(), init=True)
        try:
            await write(raft, 0, 50)
            with caplog.at_level(logging.WARNING, logger="raftcore.node.1"):
                snap = await snapshot_then_settle(raft)
            assert raft.metrics.snapshot == snap
            assert raft.metrics.purged is None, "purged behind a snapshot kept in memory only"
            assert "the log is not purged past its start: InMemorySnapshots reports no " \
                   "snapshot as durable" in caplog.text
            last = await write(raft, 100, 10)
        finally:
            await raft.shutdown()
            await store.close()
        # A restart: the same log, a new (empty) state machine object.
        store = FileLogStore(tmp_path / "log")
        raft = await start(store, InMemorySnapshots())
        try:
            await raft.wait(GUARD).applied_index_at_least(last)
            data = raft.state_machine.data
            assert [data[f"k{i}"] for i in range(50)] == list(range(50))
            assert [data[f"k{i}"] for i in range(100, 110)] == list(range(100, 110))
        finally:
            await raft.shutdown()
            await store.close()
    run(body())


def test_the_log_is_purged_only_up_to_the_snapshot_reported_durable(tmp_path):
    async def body():
        store = FileLogStore(tmp_path / "log")
        sm = FirstSnapshotDurable()
        raft = await start(store, sm, init=True)
        try:
            await write(raft, 0, 20)
            first = await snapshot_then_settle(raft)
            assert raft.metrics.purged == first
            await write(raft, 20, 20)
            second = await snapshot_then_settle(raft)
            assert second.index > first.index
            assert raft.metrics.snapshot == second
            assert raft.metrics.purged == first          # not past what is durable
            raft.trigger.purge_log(second.index)         # nor when asked to
            await write(raft, 40, 1)
            assert raft.metrics.purged == first
            assert (await store.get_log_state()).last_purged_log_id == first
        finally:
            await raft.shutdown()
            await store.close()
    run(body())


def test_a_state_machine_with_snapshot_files_has_its_log_purged_and_restarts(tmp_path):
    async def body():
        store = FileLogStore(tmp_path / "log")
        raft = await start(store, await KvStateMachine.open(tmp_path / "snapshots"), init=True)
        try:
            await write(raft, 0, 30)
            snap = await snapshot_then_settle(raft)
            assert raft.metrics.purged == snap
            last = await write(raft, 100, 5)
        finally:
            await raft.shutdown()
            await store.close()
        store = FileLogStore(tmp_path / "log")
        assert (await store.get_log_state()).last_purged_log_id == snap
        raft = await start(store, await KvStateMachine.open(tmp_path / "snapshots"))
        try:
            await raft.wait(GUARD).applied_index_at_least(last)
            data = raft.state_machine.data
            assert all(data[f"k{i}"] == i for i in [*range(30), *range(100, 105)])
        finally:
            await raft.shutdown()
            await store.close()
    run(body())


def test_an_in_memory_log_store_is_purged_up_to_any_snapshot():
    async def body():
        raft = await start(MemLogStore(), MemStateMachine(), init=True)
        try:
            await write(raft, 0, 20)
            snap = await snapshot_then_settle(raft)
            assert raft.metrics.purged == snap
        finally:
            await raft.shutdown()
    run(body())


def test_a_log_purged_past_the_state_machine_names_the_contract_and_the_way_back(tmp_path):
    async def body():
        store = FileLogStore(tmp_path / "log")
        flushed = asyncio.get_running_loop().create_future()
        store.append([Entry(1, i, ENTRY_NORMAL, ["set", "k", i]) for i in range(1, 7)],
                     lambda err: flushed.set_result(err))
        assert await flushed is None
        store.purge(LogId(1, 4))
        durable = asyncio.get_running_loop().create_future()
        store.append([Entry(1, 7, ENTRY_NORMAL, None)], lambda err: durable.set_result(err))
        assert await durable is None             # the purge with it
        await store.close()
        store = FileLogStore(tmp_path / "log")
        try:
            with pytest.raises(StorageError) as err:
                await Raft.create(1, config(), LocalRouter().network(1), store,
                                  MemStateMachine())
        finally:
            await store.close()
        msg = str(err.value)
        assert "the log is purged up to LogId(1, 4) but the state machine's snapshot covers " \
               "only nothing" in msg, msg
        assert "a StateMachine must write a snapshot durably before durable_snapshot() " \
               "reports it, and load it when created again" in msg, msg
        assert "To bring the node back: fix the state machine, then replace this node's " \
               "storage with empty storage" in msg, msg
    run(body())
