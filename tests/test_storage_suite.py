"""The storage conformance suite (raftcore.testing.storage_suite), run against
MemLogStore / MemStateMachine and FileLogStore, one test per check; and the
suite itself catches broken stores."""
from __future__ import annotations

import asyncio
import itertools

import pytest

from raftcore.kv import KvStateMachine
from raftcore.storage import FileLogStore, MemLogStore, MemStateMachine
from raftcore.storage.file import FileOps
from raftcore.storage.wal.iopath import NATIVE, PORTABLE
from raftcore.testing.storage_suite import (LOG_STORE_CHECKS, STATE_MACHINE_CHECKS,
                                            LogStoreFactory, StateMachineFactory, SuiteFailure,
                                            run_log_store_suite, run_state_machine_suite)

LOG_IDS = [n for n, _ in LOG_STORE_CHECKS]
LOG_FNS = [c for _, c in LOG_STORE_CHECKS]
SM_IDS = [n for n, _ in STATE_MACHINE_CHECKS]
SM_FNS = [c for _, c in STATE_MACHINE_CHECKS]


def run(coro) -> None:
    asyncio.run(asyncio.wait_for(coro, 60))


async def inline_executor(fn, *args):
    """Runs blocking work inline, as a deterministic simulation would."""
    return fn(*args)


def mem_factory() -> LogStoreFactory:
    # A MemLogStore outlives its node: "reopening" is going on with the object.
    return LogStoreFactory(MemLogStore, reopen=lambda store: store)


#: FileLogStore with the platform's OS calls, and with the portable fallbacks
#: (what RAFTCORE_PORTABLE_IO=1 selects; see raftcore.storage.wal.iopath).
IO_PATHS = [pytest.param(NATIVE, id="native"), pytest.param(PORTABLE, id="portable")]


def file_factory(tmp_path, io=NATIVE, **kw) -> LogStoreFactory:
    n = itertools.count()

    def opened(path):
        store = FileLogStore(path, ops=FileOps(io=io), **kw)
        assert store.io_path == io
        return store

    def new():
        return opened(tmp_path / f"store{next(n)}")

    def reopen(old):
        return opened(old.path)
    return LogStoreFactory(new, reopen)


@pytest.mark.parametrize("check", LOG_FNS, ids=LOG_IDS)
def test_mem_log_store(check):
    run(check(mem_factory()))


@pytest.mark.parametrize("io", IO_PATHS)
@pytest.mark.parametrize("check", LOG_FNS, ids=LOG_IDS)
def test_file_log_store(check, io, tmp_path):
    # Default segments: groups go through the compiled sync thread.
    run(check(file_factory(tmp_path, io)))


@pytest.mark.parametrize("io", IO_PATHS)
@pytest.mark.parametrize("check", LOG_FNS, ids=LOG_IDS)
def test_file_log_store_small_segments(check, io, tmp_path):
    # 256-byte segments: nearly every group rolls a segment, purges delete some.
    run(check(file_factory(tmp_path, io, segment_size=256)))


@pytest.mark.parametrize("io", IO_PATHS)
@pytest.mark.parametrize("check", LOG_FNS, ids=LOG_IDS)
def test_file_log_store_inline_executor(check, io, tmp_path):
    run(check(file_factory(tmp_path, io, executor=inline_executor)))


@pytest.mark.parametrize("check", SM_FNS, ids=SM_IDS)
def test_mem_state_machine(check):
    run(check(StateMachineFactory(MemStateMachine)))


class AsyncMemStateMachine(MemStateMachine):
    """MemStateMachine with an `async def apply`, the other kind the runtime supports."""

    async def apply(self, entries):
        await asyncio.sleep(0)
        return super().apply(entries)


def kv_factory(tmp_path) -> StateMachineFactory:
    """KvStateMachine with a snapshot directory: a restart reads the file."""
    n = itertools.count()
    return StateMachineFactory(lambda: KvStateMachine(tmp_path / f"sm{next(n)}"),
                               reopen=lambda old: KvStateMachine(old.path))


@pytest.mark.parametrize("check", SM_FNS, ids=SM_IDS)
def test_kv_state_machine_with_snapshot_files(check, tmp_path):
    run(check(kv_factory(tmp_path)))


class MemoryOnlySnapshots(MemStateMachine):
    """Reports its snapshots durable but keeps them in memory: the state
    machine whose node could not restart once its log was purged."""

    def durable_snapshot(self):
        snap = self.get_current_snapshot()
        return snap.meta if snap is not None else None


def test_a_state_machine_keeping_snapshots_in_memory_fails_the_durability_check():
    # A restarted process makes a new object: the snapshot is gone.
    factory = StateMachineFactory(MemoryOnlySnapshots, reopen=lambda old: MemoryOnlySnapshots())
    with pytest.raises(SuiteFailure) as err:
        run(run_state_machine_suite(factory))
    msg = str(err.value)
    assert msg.startswith(f"1 of {len(SM_FNS)} state machine checks failed:\n"
                          "--- durable_snapshot_survives_restart: "), msg
    assert "durable_snapshot() reported LogId(1, 11), but after a restart " \
           "get_current_snapshot() returns None" in msg, msg
    # Without reopen the claim cannot be checked, and the check says so.
    with pytest.raises(SuiteFailure, match=r"durable_snapshot_survives_restart: .*give "
                                           r"StateMachineFactory\(reopen=\.\.\.\)"):
        run(run_state_machine_suite(MemoryOnlySnapshots))
    # MemStateMachine itself claims nothing and passes.
    run(run_state_machine_suite(MemStateMachine))


def test_whole_suites_pass_through_the_runners(tmp_path):
    run(run_log_store_suite(MemLogStore))
    run(run_log_store_suite(file_factory(tmp_path, segment_size=4096)))
    run(run_state_machine_suite(MemStateMachine))
    run(run_state_machine_suite(AsyncMemStateMachine))


# ------------------------------------------------ the suite catches bugs

class ForgetsTruncation(MemLogStore):
    """Keeps entries that truncate_after should delete (reads them again)."""

    def truncate_after(self, index):
        pass


class FlushesOutOfOrder(MemLogStore):
    """Reports the flushes of appends made together last-in first-out."""

    def __init__(self):
        super().__init__()
        self._held = []

    def append(self, entries, on_flushed):
        super().append(entries, lambda err: None)
        if not self._held:
            asyncio.get_running_loop().call_soon(self._drain)
        self._held.append(on_flushed)

    def _drain(self):
        held, self._held = self._held, []
        for cb in reversed(held):
            cb(None)


class BlankAnswersSomething(MemStateMachine):
    def apply(self, entries):
        out = super().apply(entries)
        return [x if e.kind == 1 else "ok" for e, x in zip(entries, out)]


class BatchDependent(MemStateMachine):
    """Answers with the position in the batch: depends on batching."""

    def apply(self, entries):
        out = super().apply(entries)
        return [i if e.kind == 1 else None for i, (e, _) in enumerate(zip(entries, out))]


def failed_checks(coro) -> str:
    with pytest.raises(SuiteFailure) as info:
        run(coro)
    return str(info.value)


def test_suite_catches_a_store_that_forgets_truncations():
    msg = failed_checks(run_log_store_suite(LogStoreFactory(ForgetsTruncation)))
    assert "--- truncate_after_at_several_points" in msg
    assert "--- append_and_read_ranges" not in msg


def test_suite_catches_flushes_reported_out_of_order():
    msg = failed_checks(run_log_store_suite(LogStoreFactory(FlushesOutOfOrder)))
    assert "--- on_flushed_once_per_append_in_order" in msg


def test_suite_catches_a_vote_lost_on_reopen():
    factory = LogStoreFactory(MemLogStore, reopen=lambda old: MemLogStore())
    msg = failed_checks(run_log_store_suite(factory))
    assert "--- save_and_read_vote" in msg


def test_suite_catches_state_machine_bugs():
    msg = failed_checks(run_state_machine_suite(BlankAnswersSomething))
    assert "--- apply_blank" in msg and "--- apply_membership" in msg
    assert "--- apply_single" not in msg
    msg = failed_checks(run_state_machine_suite(BatchDependent))
    assert "--- batching_does_not_change_responses" in msg
