"""A write whose entry leaves its leader's log is not known to have failed.

Scripted on the simulator's nodes (real runtime and engine, virtual time,
message filters), so each schedule plays the same way every run: elections
happen only when the script triggers them."""
from __future__ import annotations

import asyncio

from raftcore.errors import ForwardToLeader, OutcomeUnknown
from raftcore.model import Node
from raftcore.testing import sim, virtual_loop

FIVE = (1, 2, 3, 4, 5)


async def _cluster(leader: int, **config) -> sim.Simulation:
    """Five nodes that elect only when told to, led by `leader`, all caught up."""
    s = sim.Simulation(seed=1, settings=sim.SimSettings(nodes=5, spares=0))
    for i in FIVE:
        await s.start_node(i, enable_elect=False, enable_pre_vote=False, **config)
    await s.rafts[1].initialize({i: Node(f"sim-{i}") for i in FIVE})
    await s._elect(leader)
    start = s.rafts[leader]._core.engine.term_start_index
    await s._until(lambda: all(s.rafts[i].metrics.last_applied_index >= start for i in FIVE),
                   2.0, "every node applying the leader's first entry")
    return s


async def _shutdown(s: sim.Simulation) -> None:
    for i, r in s.rafts.items():
        if i not in s.down:
            await r.shutdown()


def _lose_between(s: sim.Simulation, a: int, others: set, handler: str = "") -> object:
    def lose(src, dst, name, req):
        return ((src == a and dst in others) or (dst == a and src in others)) and (
            not handler or name == handler)
    s.net.filters.append(lose)
    return lose


def test_a_write_truncated_on_its_leader_but_committed_later_is_answered_outcome_unknown():
    """Leader 1 gets write W to node 2 only; node 3 wins the next term with
    4 and 5 and its entry replaces W on node 1; node 3 goes down and node 2,
    which still holds W, wins the term after and commits it. Telling the
    writer ForwardToLeader (did not happen) would make a retry apply W twice."""
    async def scenario():
        s = await _cluster(leader=1)
        try:
            r1 = s.rafts[1]
            t1 = r1._core.engine.vote.term
            cut_1 = _lose_between(s, 1, {3, 4, 5})
            before = r1._core.engine.last_log_index
            write = asyncio.ensure_future(r1.client_write(["set", "k", "W"]))
            w = before + 1
            await s._until(lambda: s._durable_term_at(2, w) == t1, 1.0, "W flushed on node 2")
            # Node 3's entries reach node 1 only: 4 and 5 keep the log that
            # lets node 2 win later, node 2 keeps W.
            cut_3 = _lose_between(s, 3, {2, 4, 5}, handler="append_entries")
            await s._elect(3)
            s.net.filters.remove(cut_1)
            cut_1 = _lose_between(s, 1, {4, 5})
            await s._until(write.done, 1.0, "the writer answered")
            assert s._durable_term_at(2, w) == t1, "node 2 still holds W"
            await s.crash(3)
            s.net.filters.remove(cut_1)
            s.net.filters.remove(cut_3)
            await s._elect(2)
            r2 = s.rafts[2]
            await s._until(lambda: r2.metrics.last_applied_index >= w, 1.0, "W applied on node 2")
            return write.exception(), r2.state_machine.get("k"), s.checker.committed[w]
        finally:
            await _shutdown(s)

    err, value, committed = virtual_loop.run(scenario())
    assert value == "W" and committed[2] == repr(["set", "k", "W"]), "a later leader committed W"
    assert isinstance(err, OutcomeUnknown), f"the writer was told {err!r}"


def test_writes_past_an_installed_snapshot_that_replaced_their_entries_are_outcome_unknown():
    """Leader 1, cut off, appends 12 writes; node 2 leads a newer term,
    commits 4 writes, snapshots and purges its log (it keeps none); node 1, back, installs
    that snapshot, which replaces its whole log: writes at indexes up to the
    snapshot's and past it alike may or may not be committed (another node
    could hold them), and none is answered as refused."""
    async def scenario():
        s = await _cluster(leader=1, max_in_snapshot_log_to_keep=0)
        try:
            r1, r2 = s.rafts[1], s.rafts[2]
            s.net.isolate(1)
            writes = [asyncio.ensure_future(r1.client_write(["set", "k", f"old-{n}"]))
                      for n in range(12)]
            first = r1._core.engine.last_log_index + 1
            await s._until(lambda: r1._core.engine.last_log_index == first + 11, 1.0,
                           "12 writes in node 1's log")
            await s._elect(2)
            for n in range(4):
                await r2.client_write(["set", "k", f"new-{n}"])
            snap = (await r2.trigger.snapshot()).meta.last_log_index
            await s._until(lambda: r2._core.purged is not None
                           and r2._core.purged.index == snap, 1.0, "node 2 purging its log")
            assert first + 11 > snap >= first, "node 1's entries reach past the snapshot"
            s.net.restore(1)
            await s._until(lambda: all(w.done() for w in writes), 2.0, "every write answered")
            assert r1._core.snapshot.index == snap, "node 1 installed the snapshot"
            return [w.exception() for w in writes], snap - first + 1
        finally:
            await _shutdown(s)

    errors, covered = virtual_loop.run(scenario())
    assert covered < len(errors)
    refused = [n for n, e in enumerate(errors) if isinstance(e, ForwardToLeader)]
    assert not refused, f"writes {refused} were answered ForwardToLeader"
    assert all(isinstance(e, OutcomeUnknown) for e in errors), errors
