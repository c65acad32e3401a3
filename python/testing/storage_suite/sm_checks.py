"""State machine checks: applying entries, responses, membership, snapshots
(build, transfer, install) and the durable-snapshot contract across a
restart (paired with a MemLogStore)."""
from __future__ import annotations

from raftcore.storage.mem import MemLogStore
from raftcore.testing.storage_suite.factories import StateMachineFactory, _maybe_await
from raftcore.testing.storage_suite.helpers import (_append, _apply, _blank, _boot, _inline, _m,
                                                    _membership, _snapshot_applied)
from raftcore.types import ENTRY_NORMAL, Entry, LogId


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
