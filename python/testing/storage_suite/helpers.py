"""What the checks share: entry builders, flush tracking, log assertions,
booting a node on the stores under test. Internal to the suite."""
from __future__ import annotations

import asyncio
from typing import Any, Callable, Optional, Sequence

from raftcore.config import Config
from raftcore.errors import StorageError
from raftcore.membership import Membership
from raftcore.model import Node
from raftcore.storage.base import LogState, LogStore, StateMachine
from raftcore.testing.storage_suite.factories import LogStoreFactory, _maybe_await
from raftcore.types import ENTRY_BLANK, ENTRY_MEMBERSHIP, ENTRY_NORMAL, Entry, LogId

#: Failure guard for a flush to be reported; never a means of waiting.
FLUSH_GUARD = 30.0


def _m(*ids: int, **data: Any) -> Membership:
    return Membership([set(ids)], {i: Node(f"n{i}", data.get(f"n{i}")) for i in ids})


def _normal(term: int, index: int, payload: Any = None) -> Entry:
    return Entry(term, index, ENTRY_NORMAL, payload if payload is not None else
                 ["set", f"k{index}", index])


def _blank(term: int, index: int) -> Entry:
    return Entry(term, index, ENTRY_BLANK, None)


def _membership(term: int, index: int, m: Membership) -> Entry:
    return Entry(term, index, ENTRY_MEMBERSHIP, m)


def _run(terms: Sequence[int], first: int = 1) -> list[Entry]:
    """Normal entries with the given terms, from index `first`."""
    return [_normal(t, first + i) for i, t in enumerate(terms)]


def _key(e: Entry) -> tuple:
    return (e.term, e.index, e.kind, e.payload)


class _Flushes:
    """Records on_flushed calls: append() hands out callbacks, wait() waits
    until every one handed out was called."""

    def __init__(self) -> None:
        self.calls: list = []           # (append number, error) in call order
        self.issued = 0
        self._waiter: Optional[asyncio.Future] = None

    def callback(self) -> Callable:
        n = self.issued
        self.issued += 1

        def on_flushed(err: Optional[BaseException]) -> None:
            self.calls.append((n, err))
            w = self._waiter
            if w is not None and not w.done() and len(self.calls) >= self.issued:
                w.set_result(None)
        return on_flushed

    async def wait(self, what: str = "appends") -> None:
        if len(self.calls) < self.issued:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await asyncio.wait_for(self._waiter, FLUSH_GUARD)
            except asyncio.TimeoutError:
                raise AssertionError(
                    f"{what}: only {len(self.calls)} of {self.issued} on_flushed calls "
                    f"arrived within {FLUSH_GUARD}s") from None
        errors = [(n, e) for n, e in self.calls if e is not None]
        assert not errors, f"{what}: on_flushed reported errors: {errors}"


async def _append(store: LogStore, *batches: Sequence[Entry]) -> None:
    """Appends the batches and waits until all are reported flushed."""
    fl = _Flushes()
    for b in batches:
        store.append(list(b), fl.callback())
    await fl.wait()


async def _expect_storage_error(what: str, fn: Callable, *args: Any) -> None:
    try:
        await _maybe_await(fn(*args))
    except StorageError:
        return
    except Exception as exc:
        raise AssertionError(f"{what}: expected StorageError, got {exc!r}") from exc
    raise AssertionError(f"{what}: expected StorageError, nothing was raised")


async def _assert_log(store: LogStore, state: LogState, entries: Sequence[Entry],
                      what: str) -> None:
    """The store's log state is `state` and it holds exactly `entries` after
    the purged id; reading below or beyond them fails."""
    got = await store.get_log_state()
    assert got == state, f"{what}: log state {got}, expected {state}"
    purged = state.last_purged_log_id.index if state.last_purged_log_id else 0
    if entries:
        first, last = entries[0].index, entries[-1].index
        assert first == purged + 1, f"{what}: test bug, entries must start after the purge"
        read = await store.read_entries(first, last)
        assert [_key(e) for e in read] == [_key(e) for e in entries], \
            f"{what}: read_entries({first}, {last}) returned {read}, expected {list(entries)}"
        await _expect_storage_error(f"{what}: reading past the last entry",
                                    store.read_entries, first, last + 1)
    else:
        last = state.last_log_id.index if state.last_log_id else 0
        await _expect_storage_error(f"{what}: reading from an empty log",
                                    store.read_entries, last + 1, last + 1)
    if purged:
        await _expect_storage_error(f"{what}: reading a purged entry",
                                    store.read_entries, purged, purged)


async def _assert_log_durable(f: LogStoreFactory, store: LogStore, state: LogState,
                              entries: Sequence[Entry], what: str) -> LogStore:
    """_assert_log now and, when the factory can reopen, after reopening.
    Returns the store to go on with."""
    await _assert_log(store, state, entries, what)
    if f.reopen is not None:
        store = await f.cycle(store)
        await _assert_log(store, state, entries, what + " (after reopen)")
    return store


def _state(purged: Optional[LogId], last: Optional[LogId]) -> LogState:
    return LogState(purged, last)


async def _boot(log_store: LogStore, sm: StateMachine) -> Any:
    """Starts a node on the stores (ticks off: it stays as recovered) and
    returns its metrics right after recovery."""
    from raftcore.network import LocalRouter
    from raftcore.raft import Raft
    cfg = Config(enable_tick=False, enable_elect=False, enable_heartbeat=False, seed=1)
    raft = await Raft.create(1, cfg, LocalRouter().network(1), log_store, sm)
    try:
        return raft.metrics
    finally:
        await raft.shutdown()


async def _inline(fn: Callable, *args: Any) -> Any:
    return fn(*args)


async def _snapshot_applied(sm: StateMachine) -> None:
    """Has the state machine snapshot what it applied, where the interface
    has snapshots: a node refuses to start on a log purged past its state
    machine's snapshot. (Setup for the purge checks, not a snapshot check.)"""
    build = getattr(sm, "build_snapshot", None)
    if build is not None:
        await build(_inline)


async def _apply(sm: StateMachine, entries: Sequence[Entry]) -> list:
    out = await _maybe_await(sm.apply(list(entries)))
    assert isinstance(out, list), f"apply returned {type(out).__name__}, expected a list"
    assert len(out) == len(entries), \
        f"apply returned {len(out)} responses for {len(entries)} entries; one per entry"
    return out
