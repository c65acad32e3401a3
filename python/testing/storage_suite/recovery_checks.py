"""Log store checks through a real node: the initial state and membership a
node recovers from the store (paired with a MemStateMachine)."""
from __future__ import annotations

from raftcore.storage.mem import MemStateMachine
from raftcore.testing.storage_suite.factories import LogStoreFactory
from raftcore.testing.storage_suite.helpers import (_append, _blank, _boot, _m, _membership, _run,
                                                    _snapshot_applied, _state)
from raftcore.types import LogId, Vote


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
