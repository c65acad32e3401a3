"""Storage conformance suite: checks any LogStore or StateMachine against the
contracts in raftcore.storage.base (openraft's testing::Suite, for raftcore).

Run everything at once::

    from raftcore.testing.storage_suite import (
        LogStoreFactory, run_log_store_suite, run_state_machine_suite)

    await run_log_store_suite(LogStoreFactory(
        new=lambda: MyLogStore(fresh_dir()),           # a fresh, empty store
        reopen=lambda old: MyLogStore(old.path)))      # optional: same data, new object
    await run_state_machine_suite(MyStateMachine, command=lambda i: my_command(i))

or expose each check as its own pytest test::

    from raftcore.testing.storage_suite import LOG_STORE_CHECKS

    @pytest.mark.parametrize("check", [c for _, c in LOG_STORE_CHECKS],
                             ids=[n for n, _ in LOG_STORE_CHECKS])
    def test_my_log_store(check, tmp_path):
        asyncio.run(check(my_factory(tmp_path)))

Factories. `new()` returns a fresh, empty store (or an awaitable of one).
`reopen(store)`, when given, returns a store over what `store` persisted; the
suite has awaited `store.close()` before, and has waited for every append it
relies on to be reported flushed. With `reopen`, every log store check
verifies its state again after reopening (durability); an in-memory store
that outlives a node may return the same object. A check that needs it does
nothing extra without it.

What is checked. Log stores: vote save and read; append and read ranges;
reads see appends at once, before they are flushed; on_flushed is called
once per append, in order; gaps and overlaps are refused; truncate_after at
several points; purge at several points (including past the last entry); the
log state after purges and truncations; the initial state a node recovers
from the store (vote, log, a conflicting tail overwritten, a log ahead of or
behind the state machine); membership recovered from the log or, once purged
from it, from the state machine; the optional committed log id; the store's
identity (an incarnation made with the store, kept across reopens and new
for a new store, and a durable cluster id). State
machines: applying single and multiple entries, blank and membership entries
(None responses), mixed batches, applied_state, that batching does not
change responses, and the durability contract: a snapshot reported by
durable_snapshot() is there after a restart (`reopen`).

The "initial state" and "membership recovered" checks start a real node
(`Raft.create` on a LocalRouter, with ticks off so nothing moves) on the
stores and read its metrics: recovery is the runtime's work, so this checks
what a node actually gets from the store. The log store checks pair the store
under test with a MemStateMachine; the state machine checks pair the machine
under test with a MemLogStore.

State machine snapshots: build, carry the bytes in chunks to a fresh
machine, install, compare applied state, membership and later answers.

Not covered: log reads from a separate reader object (raftcore's LogStore
has no separate reader).
"""
from __future__ import annotations

import asyncio
import inspect
import traceback
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Optional, Sequence, Union

from raftcore.config import Config
from raftcore.errors import StorageError
from raftcore.membership import Membership
from raftcore.model import Node
from raftcore.storage.base import LogState, LogStore, StateMachine, StoreIdentity
from raftcore.storage.mem import MemLogStore, MemStateMachine
from raftcore.types import ENTRY_BLANK, ENTRY_MEMBERSHIP, ENTRY_NORMAL, Entry, LogId, Vote

__all__ = [
    "LogStoreFactory", "StateMachineFactory", "SuiteFailure",
    "LOG_STORE_CHECKS", "STATE_MACHINE_CHECKS",
    "run_log_store_suite", "run_state_machine_suite",
]

#: Failure guard for a flush to be reported; never a means of waiting.
FLUSH_GUARD = 30.0


class SuiteFailure(AssertionError):
    """One or more conformance checks failed; the message lists them."""


async def _maybe_await(value: Any) -> Any:
    if inspect.isawaitable(value):
        return await value
    return value


@dataclass
class LogStoreFactory:
    """Makes log stores for the suite: `new()` a fresh empty one, and
    optionally `reopen(old)` one over the data `old` persisted (old is closed)."""

    new: Callable[[], Union[LogStore, Awaitable[LogStore]]]
    reopen: Optional[Callable[[LogStore], Union[LogStore, Awaitable[LogStore]]]] = None

    async def make(self) -> LogStore:
        return await _maybe_await(self.new())

    async def cycle(self, store: LogStore) -> LogStore:
        """Closes and reopens `store` when the factory can; else returns it."""
        if self.reopen is None:
            return store
        await store.close()
        return await _maybe_await(self.reopen(store))


def _default_command(i: int) -> Any:
    # MemStateMachine's set: responses differ (previous values), keys repeat.
    return ["set", f"key{i % 4}", i]


@dataclass
class StateMachineFactory:
    """Makes fresh state machines for the suite; `command(i)` makes the
    payload of the i-th normal entry (default: MemStateMachine's
    ``["set", key, value]``); `reopen(old)`, when given, makes the state
    machine a restarted process would make over what `old` persisted (as
    the application creates it on start-up). Without `reopen`, a machine
    that reports a durable snapshot fails the durability check: the suite
    cannot see it survive a restart."""

    new: Callable[[], Union[StateMachine, Awaitable[StateMachine]]]
    command: Callable[[int], Any] = _default_command
    reopen: Optional[Callable[[StateMachine],
                              Union[StateMachine, Awaitable[StateMachine]]]] = None

    async def make(self) -> StateMachine:
        return await _maybe_await(self.new())


def _log_factory(f: Any) -> LogStoreFactory:
    return f if isinstance(f, LogStoreFactory) else LogStoreFactory(f)


def _sm_factory(f: Any, command: Optional[Callable] = None,
                reopen: Optional[Callable] = None) -> StateMachineFactory:
    if isinstance(f, StateMachineFactory):
        return f
    return StateMachineFactory(f, command or _default_command, reopen)


# ------------------------------------------------------------------ helpers

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


# ------------------------------------------------------- log store checks

async def check_initial_state(f: LogStoreFactory) -> None:
    """A fresh store has no vote, no log and no committed id."""
    store = await f.make()
    try:
        for what in ("fresh", "after reopen"):
            assert await store.read_vote() is None, f"{what}: vote of a fresh store"
            assert await store.get_log_state() == _state(None, None), f"{what}: log state"
            assert await store.read_committed() is None, f"{what}: committed"
            if what == "fresh":
                store = await f.cycle(store)
    finally:
        await store.close()


async def check_identity(f: LogStoreFactory) -> None:
    """read_identity gives an incarnation made with the store, the same after
    a reopen and another for another store; save_cluster_id is durable.
    Without them a node cannot tell that its storage was wiped or belongs to
    another cluster."""
    store = await f.make()
    other = None
    try:
        ident = await store.read_identity()
        assert ident is not None, (
            "read_identity returned None: the store keeps no identity, so its node cannot "
            "tell a wiped disk or another cluster's (implement read_identity and "
            "save_cluster_id)")
        assert isinstance(ident.incarnation, str) and ident.incarnation, ident
        assert ident.cluster_id is None, f"a fresh store has no cluster id, got {ident}"
        store = await f.cycle(store)
        got = await store.read_identity()
        assert got == ident, f"after reopen read_identity returned {got}, before {ident}"
        await store.save_cluster_id("cluster-1")
        want = StoreIdentity("cluster-1", ident.incarnation)
        got = await store.read_identity()
        assert got == want, f"read_identity returned {got} after save_cluster_id"
        store = await f.cycle(store)
        got = await store.read_identity()
        assert got == want, f"after reopen read_identity returned {got}, expected {want}"
        other = await f.make()
        theirs = (await other.read_identity()).incarnation
        assert theirs != ident.incarnation, f"two stores share the incarnation {theirs}"
    finally:
        await store.close()
        if other is not None:
            await other.close()


async def check_save_and_read_vote(f: LogStoreFactory) -> None:
    """save_vote then read_vote returns the latest vote, committed flag and
    all; it survives a reopen."""
    store = await f.make()
    try:
        for v in (Vote(1, 1), Vote(2, None), Vote(2, 3), Vote(2, 3, True), Vote(7, 1, True)):
            await store.save_vote(v)
            got = await store.read_vote()
            assert got == v, f"read_vote returned {got} after save_vote({v})"
        store = await f.cycle(store)
        got = await store.read_vote()
        assert got == Vote(7, 1, True), f"after reopen read_vote returned {got}"
        await store.save_vote(Vote(8, 2))
        store = await f.cycle(store)
        assert await store.read_vote() == Vote(8, 2)
    finally:
        await store.close()


def _varied_entries() -> list[Entry]:
    m = Membership([{1, 2, 3}, {2, 3, 4}], {1: Node("h1:1", {"zone": "a"}), 2: Node("h2:2"),
                                           3: Node("h3:3"), 4: Node("h4:4", [1, 2]),
                                           5: Node("h5:5")})
    payloads = [b"\x00\xffbytes", "text \u00e9", 12345678901234, -1, 3.5, True,
                ["set", "k", [1, {"nested": b"x"}]], {"a": 1, "b": [None, "z"]}, {7: "int key"}]
    out: list[Entry] = [_membership(1, 1, m), _blank(1, 2)]
    for p in payloads:
        out.append(_normal(1, len(out) + 1, p))
    out.append(_blank(2, len(out) + 1))
    return out      # 12 entries


async def check_append_and_read_ranges(f: LogStoreFactory) -> None:
    """Appended entries (every kind, varied payloads) read back equal, by any
    range; reading outside the log raises StorageError."""
    store = await f.make()
    try:
        ents = _varied_entries()
        await _append(store, ents[:1], ents[1:4], ents[4:])
        for attempt in ("appended", "after reopen"):
            n = len(ents)
            for first, last in ((1, n), (1, 1), (n, n), (3, 7), (5, 5), (2, n - 1)):
                got = await store.read_entries(first, last)
                assert [_key(e) for e in got] == [_key(e) for e in ents[first - 1:last]], \
                    f"{attempt}: read_entries({first}, {last}) returned {got}"
            got = await store.read_entries(5, 4)
            assert list(got) == [], f"{attempt}: read_entries(5, 4) returned {got}"
            m = (await store.read_entries(1, 1))[0].payload
            assert m.nodes[1].data == {"zone": "a"} and m.nodes[4].data == [1, 2], \
                f"{attempt}: node data of a membership entry was not kept: {m.nodes}"
            await _expect_storage_error(f"{attempt}: read_entries(0, 1)", store.read_entries, 0, 1)
            await _expect_storage_error(f"{attempt}: read_entries({n}, {n + 1})",
                                        store.read_entries, n, n + 1)
            await _expect_storage_error(f"{attempt}: read_entries({n + 1}, {n + 1})",
                                        store.read_entries, n + 1, n + 1)
            assert await store.get_log_state() == _state(None, LogId(2, n))
            if attempt == "appended":
                store = await f.cycle(store)
    finally:
        await store.close()


async def check_append_refuses_gaps_and_overlaps(f: LogStoreFactory) -> None:
    """An append that does not start right after the last entry raises
    StorageError and changes nothing."""
    store = await f.make()
    try:
        await _append(store, _run([1, 1, 1]))
        for bad in (_run([1], 5), _run([1, 1], 3), _run([1], 1)):
            fl = _Flushes()
            await _expect_storage_error(
                f"appending index {bad[0].index} after index 3",
                store.append, bad, fl.callback())
        await _assert_log(store, _state(None, LogId(1, 3)), _run([1, 1, 1]), "after refusals")
        await _append(store, _run([1], 4))
        await _assert_log_durable(f, store, _state(None, LogId(1, 4)), _run([1, 1, 1, 1]),
                                  "after a good append")
    finally:
        await store.close()


async def check_on_flushed_once_per_append_in_order(f: LogStoreFactory) -> None:
    """Many appends made back to back: each on_flushed is called exactly
    once, with None, in append order."""
    store = await f.make()
    try:
        fl = _Flushes()
        index = 1
        for n in range(40):
            size = 1 + n % 3
            store.append(_run([1] * size, index), fl.callback())
            index += size
        await fl.wait("40 appends")
        # One more append, flushed after the others: a duplicate call of an
        # earlier callback would have shown by now.
        store.append(_run([1], index), fl.callback())
        await fl.wait("the 41st append")
        order = [n for n, _ in fl.calls]
        assert order == list(range(41)), f"on_flushed calls in order {order}"
    finally:
        await store.close()


async def check_reads_see_appends_before_flush(f: LogStoreFactory) -> None:
    """A reader taken earlier (the store, or its bound read methods) sees a
    later append as soon as append() returns, before on_flushed is called."""
    store = await f.make()
    try:
        read, state = store.read_entries, store.get_log_state
        await _append(store, _run([1, 1]))
        fl = _Flushes()
        more = _run([2, 2, 2], 3)
        store.append(more, fl.callback())
        # No await between append() and these reads' start.
        got = await read(3, 5)
        st = await state()
        assert [_key(e) for e in got] == [_key(e) for e in more], f"read {got} after append"
        assert st == _state(None, LogId(2, 5)), f"log state {st} right after append"
        await fl.wait()
        got = await read(1, 5)
        assert [e.index for e in got] == [1, 2, 3, 4, 5]
    finally:
        await store.close()


async def check_truncate_after_at_several_points(f: LogStoreFactory) -> None:
    """truncate_after(t) removes every entry above t (t from 0 to past the
    end); the log goes on from t + 1 with other terms; the truncation holds
    after a reopen, with the new entries and not the old ones."""
    base = _run([1] * 4 + [2] * 8)            # 12 entries
    for t in (0, 1, 4, 7, 11, 12, 20):
        store = await f.make()
        try:
            await _append(store, base[:5], base[5:])
            store.truncate_after(t)
            kept = base[:min(t, 12)]
            last = kept[-1].log_id if kept else None
            await _assert_log(store, _state(None, last), kept, f"truncate_after({t})")
            new = _run([3, 3, 3], len(kept) + 1)
            await _append(store, new)
            await _assert_log_durable(f, store, _state(None, new[-1].log_id), kept + new,
                                      f"truncate_after({t}) then append")
        finally:
            await store.close()


async def check_truncate_twice_and_unflushed(f: LogStoreFactory) -> None:
    """Truncations of entries not yet reported flushed, and truncating twice,
    leave the right log, also after reopen; every on_flushed is called."""
    store = await f.make()
    try:
        fl = _Flushes()
        store.append(_run([1] * 6), fl.callback())
        store.truncate_after(4)
        store.append(_run([2, 2, 2], 5), fl.callback())      # 5..7
        store.truncate_after(5)
        store.append(_run([3], 6), fl.callback())            # 6
        await fl.wait()
        expect = _run([1] * 4) + _run([2], 5) + _run([3], 6)
        await _assert_log_durable(f, store, _state(None, LogId(3, 6)), expect,
                                  "two truncations")
    finally:
        await store.close()


async def check_purge_at_several_points(f: LogStoreFactory) -> None:
    """purge(upto) removes every entry up to upto (from the first entry to
    the last, and past it); reads below fail; the log goes on; a lower purge
    later is a no-op; all of it holds after a reopen."""
    terms = [1] * 4 + [2] * 8
    base = _run(terms)
    for p in (1, 4, 5, 11, 12):
        store = await f.make()
        try:
            await _append(store, base[:6], base[6:])
            upto = LogId(terms[p - 1], p)
            store.purge(upto)
            kept = base[p:]
            last = kept[-1].log_id if kept else upto
            await _assert_log(store, _state(upto, last), kept, f"purge({upto})")
            store.purge(LogId(1, 1))                         # lower: no-op
            await _assert_log(store, _state(upto, last), kept, f"purge({upto}) then a lower one")
            new = _run([3, 3], 13)
            await _append(store, new)
            await _assert_log_durable(f, store, _state(upto, new[-1].log_id), kept + new,
                                      f"purge({upto}) then append")
        finally:
            await store.close()
    # Past the last entry (a node that installed a newer snapshot).
    store = await f.make()
    try:
        await _append(store, base)
        store.purge(LogId(3, 20))
        await _assert_log(store, _state(LogId(3, 20), LogId(3, 20)), [], "purge past the end")
        new = _run([3, 4], 21)
        await _append(store, new)
        await _assert_log_durable(f, store, _state(LogId(3, 20), LogId(4, 22)), new,
                                  "purge past the end, then append")
    finally:
        await store.close()


async def check_log_state_after_purge_and_truncate(f: LogStoreFactory) -> None:
    """The log state through a sequence of purges, truncations and appends."""
    store = await f.make()
    try:
        log = _run([1] * 10)
        await _append(store, log)
        store.purge(LogId(1, 3))
        store.truncate_after(7)
        await _assert_log(store, _state(LogId(1, 3), LogId(1, 7)), log[3:7], "purge 3, cut 7")
        store.truncate_after(3)            # everything after the purge point
        await _assert_log(store, _state(LogId(1, 3), LogId(1, 3)), [], "cut at the purge point")
        new = _run([2, 2], 4)
        await _append(store, new)
        store = await _assert_log_durable(f, store, _state(LogId(1, 3), LogId(2, 5)), new,
                                          "append after")
        store.purge(LogId(2, 5))
        await _assert_log(store, _state(LogId(2, 5), LogId(2, 5)), [], "purge all")
        await _append(store, _run([4], 6))
        await _assert_log_durable(f, store, _state(LogId(2, 5), LogId(4, 6)), _run([4], 6),
                                  "purge all, append")
    finally:
        await store.close()


async def check_committed_round_trip(f: LogStoreFactory) -> None:
    """save_committed / read_committed: a store that keeps the committed id
    returns the last one saved, also after a reopen (keeping none, always
    returning None, is allowed)."""
    store = await f.make()
    try:
        await _append(store, _run([1] * 5))
        await store.save_committed(LogId(1, 3))
        got = await store.read_committed()
        if got is None:
            return
        assert got == LogId(1, 3), f"read_committed returned {got}"
        await store.save_committed(LogId(1, 5))
        store = await f.cycle(store)
        got = await store.read_committed()
        assert got == LogId(1, 5), f"read_committed after reopen returned {got}"
    finally:
        await store.close()


async def check_initial_state_from_vote_and_log(f: LogStoreFactory) -> None:
    """A node started on the store recovers its vote, log and membership."""
    store = await f.make()
    try:
        await store.save_vote(Vote(3, 1, True))
        m = _m(1, 2, 3)
        ents = [_membership(1, 1, m), _blank(2, 2)] + _run([3, 3, 3], 3)
        await _append(store, ents)
        store = await f.cycle(store)
        got = await _boot(store, MemStateMachine())
        assert got.vote == Vote(3, 1, True) and got.current_term == 3, got
        assert got.last_log_index == 5 and got.purged is None, got
        assert got.membership == m, got
        assert got.last_applied is None, got
    finally:
        await store.close()


async def check_initial_state_conflicting_tail_overwritten(f: LogStoreFactory) -> None:
    """A node whose conflicting tail was truncated and overwritten by a newer
    leader restarts with the new entries, never the old ones."""
    store = await f.make()
    try:
        await store.save_vote(Vote(1, 1))
        old = [_membership(1, 1, _m(1, 2, 3))] + _run([1] * 5, 2)     # 1..6
        await _append(store, old)
        await store.save_vote(Vote(2, 2))
        store.truncate_after(3)
        new = _run([2, 2], 4)                                           # 4..5
        await _append(store, new)
        store = await f.cycle(store)
        got = await _boot(store, MemStateMachine())
        assert got.last_log_index == 5 and got.current_term == 2, got
        read = await store.read_entries(1, 5)
        assert [(e.term, e.index) for e in read] == \
            [(1, 1), (1, 2), (1, 3), (2, 4), (2, 5)], read
    finally:
        await store.close()


async def check_initial_state_log_ahead_of_state_machine(f: LogStoreFactory) -> None:
    """Log longer than what the state machine applied: the node keeps the
    whole log and starts from the machine's applied id."""
    store = await f.make()
    try:
        ents = [_membership(1, 1, _m(1, 2, 3))] + _run([1] * 5, 2)      # 1..6
        await _append(store, ents)
        sm = MemStateMachine()
        sm.apply(ents[:2])
        store = await f.cycle(store)
        got = await _boot(store, sm)
        assert got.last_log_index == 6, got
        assert got.last_applied == LogId(1, 2), got
        assert sm.last_applied == LogId(1, 2), "the state machine was applied again"
    finally:
        await store.close()


async def check_initial_state_state_machine_ahead_of_log(f: LogStoreFactory) -> None:
    """The "inverted" case: the state machine applied past the end of the
    log (as after a snapshot install). The node keeps the machine's applied
    id, applies nothing again and nothing is rolled back; the store reports
    its own log. (Which log position the runtime derives from this is the
    runtime's business and not checked here.)"""
    store = await f.make()
    try:
        await store.save_vote(Vote(1, 1))
        ents = [_membership(1, 1, _m(1, 2, 3)), _blank(1, 2)]
        await _append(store, ents)
        sm = MemStateMachine()
        sm.apply(ents + _run([1, 1, 1], 3))                              # applied 1..5
        before = dict(sm.data)
        store = await f.cycle(store)
        assert await store.get_log_state() == _state(None, LogId(1, 2))
        got = await _boot(store, sm)
        assert got.last_applied == LogId(1, 5), got
        assert sm.last_applied == LogId(1, 5) and sm.data == before, \
            "the state machine was changed by recovery"
        assert got.vote == Vote(1, 1), got
    finally:
        await store.close()


async def check_membership_from_log(f: LogStoreFactory) -> None:
    """Membership entries in the log (not applied yet): the node is in the
    last one's membership, node data included."""
    store = await f.make()
    try:
        m1, m2 = _m(1, 2, 3), _m(1, 7, 8, n7={"zone": "b"})
        await _append(store, [_membership(1, 1, m1), _blank(1, 2), _membership(1, 3, m2)],
                      _run([1], 4))
        store = await f.cycle(store)
        got = await _boot(store, MemStateMachine())
        assert got.membership == m2, got
        assert got.membership.nodes[7].data == {"zone": "b"}, got.membership.nodes
    finally:
        await store.close()


async def check_membership_from_state_machine(f: LogStoreFactory) -> None:
    """The log was purged past its membership entries: the node gets the
    membership the state machine applied last."""
    store = await f.make()
    try:
        m = _m(1, 2, 3)
        ents = [_membership(1, 1, m)] + _run([1] * 5, 2)                # 1..6
        await _append(store, ents)
        sm = MemStateMachine()
        sm.apply(ents[:4])
        await _snapshot_applied(sm)
        store.purge(LogId(1, 4))
        await _append(store, _run([2], 7))          # makes the purge durable
        store = await f.cycle(store)
        assert (await store.get_log_state()).last_purged_log_id == LogId(1, 4)
        got = await _boot(store, sm)
        assert got.membership == m, got
        assert got.purged == LogId(1, 4), got
    finally:
        await store.close()


async def check_membership_log_newer_than_state_machine(f: LogStoreFactory) -> None:
    """The state machine applied an older membership; a newer one is in the
    log after what it applied: the newer one is in force."""
    store = await f.make()
    try:
        m1, m2 = _m(1, 2, 3), _m(1, 2, 3, 4)
        ents = [_membership(1, 1, m1), _blank(1, 2), _membership(1, 3, m2), _blank(1, 4)]
        await _append(store, ents)
        sm = MemStateMachine()
        sm.apply(ents[:2])
        await _snapshot_applied(sm)
        store.purge(LogId(1, 1))
        await _append(store, _run([1], 5))
        store = await f.cycle(store)
        got = await _boot(store, sm)
        assert got.membership == m2, got
        sm2 = MemStateMachine()
        sm2.apply(ents[:3])            # now the machine has m2 as well: same answer
        await _snapshot_applied(sm2)
        got = await _boot(store, sm2)
        assert got.membership == m2, got
    finally:
        await store.close()


LOG_STORE_CHECKS: list[tuple[str, Callable[[LogStoreFactory], Awaitable[None]]]] = [
    (fn.__name__[len("check_"):], fn) for fn in (
        check_initial_state,
        check_identity,
        check_save_and_read_vote,
        check_append_and_read_ranges,
        check_append_refuses_gaps_and_overlaps,
        check_on_flushed_once_per_append_in_order,
        check_reads_see_appends_before_flush,
        check_truncate_after_at_several_points,
        check_truncate_twice_and_unflushed,
        check_purge_at_several_points,
        check_log_state_after_purge_and_truncate,
        check_committed_round_trip,
        check_initial_state_from_vote_and_log,
        check_initial_state_conflicting_tail_overwritten,
        check_initial_state_log_ahead_of_state_machine,
        check_initial_state_state_machine_ahead_of_log,
        check_membership_from_log,
        check_membership_from_state_machine,
        check_membership_log_newer_than_state_machine,
    )
]


# --------------------------------------------------- state machine checks

async def sm_check_initial_applied_state(f: StateMachineFactory) -> None:
    """A fresh state machine has applied nothing and knows no membership."""
    sm = await f.make()
    got = await sm.applied_state()
    assert tuple(got) == (None, None), f"applied_state of a fresh machine: {got}"


async def sm_check_apply_single(f: StateMachineFactory) -> None:
    """One normal entry: one response; applied_state moves to it."""
    sm = await f.make()
    out = await _apply(sm, [Entry(1, 1, ENTRY_NORMAL, f.command(1))])
    assert len(out) == 1
    applied, membership = await sm.applied_state()
    assert applied == LogId(1, 1) and membership is None, (applied, membership)


async def sm_check_apply_multiple(f: StateMachineFactory) -> None:
    """A batch of normal entries: one response per entry; applied_state is
    the last; a second batch goes on from there."""
    sm = await f.make()
    out = await _apply(sm, [Entry(1, i, ENTRY_NORMAL, f.command(i)) for i in range(1, 6)])
    assert len(out) == 5
    assert (await sm.applied_state())[0] == LogId(1, 5)
    out = await _apply(sm, [Entry(2, i, ENTRY_NORMAL, f.command(i)) for i in range(6, 9)])
    assert len(out) == 3
    assert (await sm.applied_state())[0] == LogId(2, 8)


async def sm_check_apply_blank(f: StateMachineFactory) -> None:
    """A blank entry gets None and moves applied_state."""
    sm = await f.make()
    assert await _apply(sm, [_blank(1, 1)]) == [None]
    assert tuple(await sm.applied_state()) == (LogId(1, 1), None)


async def sm_check_apply_membership(f: StateMachineFactory) -> None:
    """A membership entry gets None; applied_state reports that membership."""
    sm = await f.make()
    m = _m(1, 2, 3)
    assert await _apply(sm, [_membership(1, 1, m)]) == [None]
    applied, membership = await sm.applied_state()
    assert applied == LogId(1, 1) and membership == m, (applied, membership)


async def sm_check_apply_mixed_batch(f: StateMachineFactory) -> None:
    """Blank, normal and membership entries in one batch: None exactly for
    blank and membership entries; the last membership applied is kept
    across later normal and blank entries."""
    sm = await f.make()
    m1, m2 = _m(1, 2, 3), _m(1, 2, 3, 4)
    batch = [_blank(1, 1), Entry(1, 2, ENTRY_NORMAL, f.command(2)), _membership(1, 3, m1),
             Entry(1, 4, ENTRY_NORMAL, f.command(4)), _membership(1, 5, m2),
             Entry(1, 6, ENTRY_NORMAL, f.command(6)), _blank(2, 7)]
    out = await _apply(sm, batch)
    for i, e in enumerate(batch):
        if e.kind != ENTRY_NORMAL:
            assert out[i] is None, f"entry {e}: response {out[i]!r}, expected None"
    assert tuple(await sm.applied_state()) == (LogId(2, 7), m2)
    await _apply(sm, [Entry(2, 8, ENTRY_NORMAL, f.command(8))])
    assert tuple(await sm.applied_state()) == (LogId(2, 8), m2)


async def sm_check_batching_does_not_change_responses(f: StateMachineFactory) -> None:
    """The same entries applied one by one, in uneven batches and all at
    once give the same responses and applied state (nodes batch differently)."""
    m = _m(1, 2, 3)
    ents: list[Entry] = []
    for i in range(1, 31):
        if i == 1:
            ents.append(_membership(1, i, m))
        elif i % 11 == 0:
            ents.append(_blank(1 + i // 11, i))
        else:
            ents.append(Entry(1 + i // 11, i, ENTRY_NORMAL, f.command(i)))
    results = []
    for sizes in ([1] * 30, [2, 7, 1, 13, 4, 3], [30]):
        sm = await f.make()
        out: list = []
        pos = 0
        for n in sizes:
            out.extend(await _apply(sm, ents[pos:pos + n]))
            pos += n
        results.append((out, tuple(await sm.applied_state())))
    assert results[0] == results[1] == results[2], \
        f"responses depend on batching: {results}"
    assert results[0][1] == (LogId(3, 30), m)


async def sm_check_membership_recovered_from_state_machine(f: StateMachineFactory) -> None:
    """A node whose log was purged past its membership entries gets the
    membership from this state machine's applied_state."""
    m = _m(1, 2, 3)
    ents = [_membership(1, 1, m)] + [Entry(1, i, ENTRY_NORMAL, f.command(i)) for i in range(2, 6)]
    sm = await f.make()
    await _apply(sm, ents[:4])
    await _snapshot_applied(sm)
    store = MemLogStore()
    await _append(store, ents)
    store.purge(LogId(1, 4))
    got = await _boot(store, sm)
    assert got.membership == m, got
    assert got.last_applied == LogId(1, 4), got


async def sm_check_snapshot_build_transfer_install(f: StateMachineFactory) -> None:
    """A snapshot built on one machine, carried as bytes (in chunks) to a
    fresh one and installed there, gives the same applied state, membership
    and answers to later commands; applying goes on after it on both."""
    src = await f.make()
    m = _m(1, 2, 3)
    await _apply(src, [_membership(1, 1, m)] +
                 [Entry(1, i, ENTRY_NORMAL, f.command(i)) for i in range(2, 12)])
    snap = await src.build_snapshot(_inline)
    assert snap.meta.last_log_id == LogId(1, 11), snap.meta
    assert snap.meta.membership == m
    assert src.get_current_snapshot() is not None
    assert src.get_current_snapshot().meta.last_log_id == LogId(1, 11)
    chunks = [snap.data[i:i + 7] for i in range(0, len(snap.data), 7)]
    dst = await f.make()
    await dst.install_snapshot(snap.meta, b"".join(chunks))
    assert tuple(await dst.applied_state()) == (LogId(1, 11), m)
    assert dst.get_current_snapshot().meta.last_log_id == LogId(1, 11)
    more = [Entry(2, i, ENTRY_NORMAL, f.command(i)) for i in range(12, 16)]
    assert await _apply(src, more) == await _apply(dst, more), \
        "the installed machine answers differently from the one that built the snapshot"
    assert (await dst.applied_state())[0] == LogId(2, 15)


async def sm_check_snapshot_of_nothing_is_refused_or_empty(f: StateMachineFactory) -> None:
    """Building a snapshot before anything is applied raises a RaftError
    (there is nothing to snapshot), and leaves no current snapshot."""
    from raftcore.errors import RaftError
    sm = await f.make()
    try:
        await sm.build_snapshot(_inline)
    except RaftError:
        pass
    else:
        raise AssertionError("build_snapshot on an empty machine should raise RaftError")
    assert sm.get_current_snapshot() is None


async def sm_check_durable_snapshot_survives_restart(f: StateMachineFactory) -> None:
    """The contract that lets a node purge its log: a snapshot the machine
    reports in durable_snapshot() (after building one, and after installing
    one) is found again by a restarted machine (`reopen`), in
    get_current_snapshot() and applied_state(). A machine that keeps its
    snapshots in memory only must report None (its node then keeps the whole
    log of a persistent log store)."""
    m = _m(1, 2, 3)
    src = await f.make()
    await _apply(src, [_membership(1, 1, m)] +
                 [Entry(1, i, ENTRY_NORMAL, f.command(i)) for i in range(2, 12)])
    snap = await src.build_snapshot(_inline)
    dst = await f.make()
    await dst.install_snapshot(snap.meta, snap.data)
    for sm, how in ((src, "built"), (dst, "installed")):
        durable = sm.durable_snapshot()
        if durable is None:
            continue
        where = f"after a snapshot up to {snap.meta.last_log_id} was {how}"
        assert durable.last_log_index <= snap.meta.last_log_index, \
            f"{where}, durable_snapshot() reports {durable.last_log_id}, past it"
        assert f.reopen is not None, (
            f"{where}, durable_snapshot() reports {durable.last_log_id} as surviving a "
            "restart; give StateMachineFactory(reopen=...) so the suite can check it does")
        again = await _maybe_await(f.reopen(sm))
        current = again.get_current_snapshot()
        assert current is not None and \
            current.meta.last_log_index >= durable.last_log_index, (
                f"{where}, durable_snapshot() reported {durable.last_log_id}, but after a "
                f"restart get_current_snapshot() returns "
                f"{current.meta.last_log_id if current else None}: a node that purged its "
                "log behind that snapshot could not restart")
        applied, membership = await again.applied_state()
        assert applied is not None and applied.index >= durable.last_log_index, \
            f"{where}: after a restart applied_state() is {applied}"
        assert membership == m, f"{where}: after a restart the membership is {membership}"


STATE_MACHINE_CHECKS: list[tuple[str, Callable[[StateMachineFactory], Awaitable[None]]]] = [
    (fn.__name__[len("sm_check_"):], fn) for fn in (
        sm_check_initial_applied_state,
        sm_check_apply_single,
        sm_check_apply_multiple,
        sm_check_apply_blank,
        sm_check_apply_membership,
        sm_check_apply_mixed_batch,
        sm_check_batching_does_not_change_responses,
        sm_check_membership_recovered_from_state_machine,
        sm_check_snapshot_build_transfer_install,
        sm_check_snapshot_of_nothing_is_refused_or_empty,
        sm_check_durable_snapshot_survives_restart,
    )
]


# ------------------------------------------------------------------ runners

async def _run_all(checks: list, factory: Any, kind: str) -> None:
    failures = []
    for name, check in checks:
        try:
            await check(factory)
        except Exception as exc:
            failures.append((name, exc))
    if failures:
        lines = [f"{len(failures)} of {len(checks)} {kind} checks failed:"]
        for name, exc in failures:
            lines.append(f"--- {name}: {exc!r}")
            lines.append("".join(traceback.format_exception(exc)).rstrip())
        raise SuiteFailure("\n".join(lines)) from failures[0][1]


async def run_log_store_suite(factory: Union[LogStoreFactory, Callable],
                              reopen: Optional[Callable] = None) -> None:
    """Runs every log store check; raises SuiteFailure listing the failed ones.

    `factory` is a LogStoreFactory, or a callable making a fresh store (then
    `reopen` may be given separately)."""
    f = _log_factory(factory)
    if reopen is not None:
        f = LogStoreFactory(f.new, reopen)
    await _run_all(LOG_STORE_CHECKS, f, "log store")


async def run_state_machine_suite(factory: Union[StateMachineFactory, Callable],
                                  command: Optional[Callable[[int], Any]] = None,
                                  reopen: Optional[Callable] = None) -> None:
    """Runs every state machine check; raises SuiteFailure listing the failed
    ones. `command(i)` makes the payload of the i-th normal entry; `reopen`
    as in StateMachineFactory."""
    await _run_all(STATE_MACHINE_CHECKS, _sm_factory(factory, command, reopen),
                   "state machine")
