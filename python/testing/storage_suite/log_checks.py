"""Log store checks on the store alone: vote, identity, appends and reads,
on_flushed, truncations, purges, the log state, the committed id; each one
verified again after a reopen when the factory can reopen."""
from __future__ import annotations

from raftcore.membership import Membership
from raftcore.model import Node
from raftcore.storage.base import StoreIdentity
from raftcore.testing.storage_suite.factories import LogStoreFactory
from raftcore.testing.storage_suite.helpers import (_append, _assert_log, _assert_log_durable,
                                                    _blank, _expect_storage_error, _Flushes, _key,
                                                    _membership, _normal, _run, _state)
from raftcore.types import Entry, LogId, Vote


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
