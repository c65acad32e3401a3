"""Cluster scenarios for linearizable reads and leadership control (issue 3)
on LocalRouter.

Reads: ReadIndex and the leader lease, on the leader and on followers; a
deposed leader in a minority must not serve a read with either policy.
Election hygiene: vote refusal while a leader is heard from (and after a
restart), a leader ignoring higher terms during its lease, transfer votes
bypassing both, leadership transfer, pre-vote, check-quorum, and the
elect switch and trigger.

Tests run and synchronize as cluster_harness's docstring says.
"""
from __future__ import annotations

import asyncio
import logging

import pytest

from raftcore import Node, Raft, ReadPolicy, Vote
from raftcore.errors import ForwardToLeader, NotAllowed, OutcomeUnknown, Timeout
from raftcore.messages import VoteRequest
from raftcore.storage import MemStateMachine

from cluster_harness import (  # tests/conftest.py puts it on sys.path
    ELECTION_MIN, ELECTION_MAX, GUARD, LEADER, FOLLOWER, cluster_test, converge,
    leader_after_a_write, running_cluster, stable_leader, stays, wait_all_applied)

READ_INDEX = ReadPolicy.READ_INDEX
LEASE_READ = ReadPolicy.LEASE_READ
POLICIES = (READ_INDEX, LEASE_READ)


async def next_round(raft: Raft, timeout: float = GUARD) -> None:
    """Returns at the node's next state-change round (for a leader: at the
    latest, the next heartbeat answer)."""
    calls = 0

    def second_call(_m) -> bool:
        nonlocal calls
        calls += 1
        return calls > 1

    await raft.wait(timeout).metrics(second_call, "the next round")


async def write_when_accepted(raft: Raft, cmd, timeout: float = GUARD):
    """Writes cmd on `raft`, which must stay leader, retrying while it
    refuses writes with ForwardToLeader (a refused write was not committed)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            return await raft.client_write(cmd)
        except ForwardToLeader:
            assert raft.metrics.state == LEADER, raft.metrics
            if loop.time() >= deadline:
                raise
            await next_round(raft, max(deadline - loop.time(), 0.01))


def up_to_date_request(term: int, candidate: int, raft: Raft, **kw) -> VoteRequest:
    """A vote request whose log is at least as up to date as raft's: a
    refusal can only come from the lease rules, not from the log check."""
    m = raft.metrics
    return VoteRequest(term, candidate, m.current_term, m.last_log_index + 100, **kw)


# ------------------------------------------------------------ leader reads

@cluster_test
async def test_leader_reads_see_every_write_acknowledged_before_them():
    async with running_cluster(3, seed=201) as c:
        leader = await stable_leader(c.all())
        for policy in POLICIES:
            for rnd in range(5):
                keys = [f"{policy.name}-{rnd}-{i}" for i in range(10)]
                resps = await leader.client_write_many([["set", k, i] for i, k in enumerate(keys)])
                log_id = await leader.ensure_linearizable(policy)
                assert log_id.index >= resps[-1].index, (policy, log_id, resps[-1])
                assert leader.metrics.last_applied_index >= log_id.index
                assert [leader.state_machine.get(k) for k in keys] == list(range(10))

        # Concurrent writers and readers: a read covers every write whose
        # acknowledgement came before the read began. (A lease read may
        # complete without suspending, so each reader waits for the next
        # acknowledgement between reads instead of spinning.)
        acked: dict = {}
        top = [0]
        wake = [asyncio.Event(), asyncio.Event()]

        async def writer(w: int) -> None:
            for n in range(150):
                resp = await leader.client_write(["set", f"c{w}-{n}", n])
                acked[f"c{w}-{n}"] = n
                top[0] = max(top[0], resp.index)
                for e in wake:
                    e.set()

        async def reader(policy: ReadPolicy, woken: asyncio.Event) -> int:
            reads = 0
            while True:
                bound, before = top[0], dict(acked)
                log_id = await leader.ensure_linearizable(policy)
                assert log_id.index >= bound, (policy, log_id, bound)
                for k, v in before.items():
                    assert leader.state_machine.get(k) == v, (policy, k)
                reads += 1
                if len(acked) >= 600:
                    return reads
                await woken.wait()
                woken.clear()

        results = await asyncio.gather(*(writer(w) for w in range(4)),
                                       reader(READ_INDEX, wake[0]), reader(LEASE_READ, wake[1]))
        assert all(n > 1 for n in results[4:]), results
        assert len(acked) == 600


@cluster_test
async def test_follower_read_with_read_log_id_from_leader():
    async with running_cluster(3, seed=202) as c:
        leader = await stable_leader(c.all())
        f, g = c.others(leader)
        for policy in POLICIES:
            # f falls behind (it must not campaign meanwhile).
            f.runtime_config.elect(False)
            c.router.cut(leader.id, f.id)
            keys = [f"{policy.name}-{i}" for i in range(20)]
            resps = await leader.client_write_many([["set", k, i] for i, k in enumerate(keys)])
            log_id = await leader.get_read_linearizer(policy)
            assert log_id.index >= resps[-1].index
            # A read on f now would be stale: it has none of these writes.
            assert f.metrics.last_applied_index < resps[0].index
            assert f.state_machine.get(keys[0]) is None
            c.router.uncut(leader.id, f.id)
            f.runtime_config.elect(True)
            # The follower waits for the read point, then reads locally.
            m = await f.wait(GUARD).applied_index_at_least(log_id.index)
            assert m.state == FOLLOWER and m.current_leader == leader.id
            assert [f.state_machine.get(k) for k in keys] == list(range(20))


@cluster_test
async def test_reads_on_a_follower_raise_forward_to_leader():
    async with running_cluster(3, seed=203) as c:
        leader = await stable_leader(c.all())
        await leader.client_write(["set", "a", 1])
        for f in c.others(leader):
            for policy in POLICIES:
                with pytest.raises(ForwardToLeader) as ei:
                    await f.ensure_linearizable(policy)
                assert ei.value.leader_id == leader.id
                assert ei.value.leader_node == Node(f"n{leader.id}")
                with pytest.raises(ForwardToLeader) as ei:
                    await f.get_read_linearizer(policy)
                assert ei.value.leader_id == leader.id


# ------------------------------------------------------ deposed leader reads

@cluster_test
async def test_deposed_leader_in_minority_serves_no_read_with_either_policy():
    # check_quorum off: the old leader keeps believing it leads, so only the
    # read protocol (quorum round, lease expiry) stands between it and a
    # stale read.
    async with running_cluster(3, seed=204, check_quorum=False) as c:
        old = await stable_leader(c.all())
        t = old.metrics.current_term
        base = await old.client_write(["set", "k", "old"])
        await wait_all_applied(c.all(), base.index)
        for policy in POLICIES:
            assert (await old.ensure_linearizable(policy)).index >= base.index

        c.router.isolate(old.id)
        majority = c.others(old)
        new = await stable_leader(majority)
        assert new.metrics.current_term > t
        acked = await new.client_write_many([["set", "k", "new"], ["set", "n", 1]])
        await wait_all_applied(majority, acked[-1].index)
        m = old.metrics
        assert m.state == LEADER and m.current_term == t   # it does not know
        assert old.state_machine.get("k") == "old"           # what a read would see

        results = await asyncio.gather(
            old.ensure_linearizable(READ_INDEX), old.ensure_linearizable(LEASE_READ),
            old.get_read_linearizer(READ_INDEX), old.get_read_linearizer(LEASE_READ),
            return_exceptions=True)
        for policy, r in zip(POLICIES * 2, results):
            assert isinstance(r, (ForwardToLeader, Timeout)), \
                f"deposed leader {old.id} served a {policy.name} read at {r!r}"
        assert old.metrics.state == LEADER and old.state_machine.get("k") == "old"

        c.router.heal()
        m = await old.wait(GUARD).metrics(
            lambda m: m.state == FOLLOWER and m.current_leader == new.id, "old follows new")
        marker = await converge(c.all())
        assert old.state_machine.get("k") == "new"
        assert (await new.ensure_linearizable(LEASE_READ)).index >= marker


@cluster_test
async def test_check_quorum_isolated_leader_steps_down_and_serves_nothing():
    async with running_cluster(3, seed=205) as c:
        old = await stable_leader(c.all())
        t = old.metrics.current_term
        base = await old.client_write(["set", "k", "old"])
        await wait_all_applied(c.all(), base.index)

        c.router.isolate(old.id)
        # A ReadIndex read started now cannot be confirmed by a quorum.
        pending_read = asyncio.ensure_future(old.ensure_linearizable(READ_INDEX))
        write = asyncio.ensure_future(old.client_write(["set", "lost", 1]))
        m = await old.wait(GUARD).metrics(lambda m: m.state != LEADER, "step down")
        # Nothing reached it: it stepped down by itself, in its own term.
        assert m.state == FOLLOWER and m.current_term == t, m
        with pytest.raises(ForwardToLeader):
            await asyncio.wait_for(pending_read, GUARD)
        with pytest.raises(ForwardToLeader):
            await old.client_write(["set", "x", 1])
        with pytest.raises(ForwardToLeader):
            await old.client_write_many([["set", "x", 1]])

        majority = c.others(old)
        new = await stable_leader(majority)
        acked = await new.client_write(["set", "k", "new"])
        await wait_all_applied(majority, acked.index)
        for policy in POLICIES:
            with pytest.raises(ForwardToLeader):
                await old.ensure_linearizable(policy)
        assert old.state_machine.get("k") == "old" and old.state_machine.get("lost") is None

        c.router.heal()
        # Its uncommitted write is replaced by the new leader's log; the old
        # leader cannot tell whether it is lost for good: outcome unknown.
        with pytest.raises(OutcomeUnknown):
            await asyncio.wait_for(write, GUARD)
        marker = await converge(c.all())
        for r in c.all():
            assert r.state_machine.get("k") == "new" and r.state_machine.get("lost") is None
            assert r.metrics.last_applied_index == marker


# ---------------------------------------------------------- vote refusal

@cluster_test
async def test_vote_refused_while_a_leader_is_heard_and_leader_ignores_higher_terms():
    async with running_cluster(3, seed=206) as c:
        leader, t = await leader_after_a_write(c)
        f, g = c.others(leader)
        # A quorum round just now: the followers heard from the leader and
        # the leader's lease holds.
        await leader.ensure_linearizable(READ_INDEX)

        resp = await f.vote(up_to_date_request(t + 1, g.id, f))
        assert not resp.granted and resp.term == t, resp
        resp = await f.vote(up_to_date_request(t + 1, g.id, f, pre_vote=True))
        assert not resp.granted, resp
        m = f.metrics
        assert m.current_term == t and m.current_leader == leader.id and m.state == FOLLOWER
        assert m.vote.node_id == leader.id

        # The leader, within its lease, ignores a higher term and keeps it.
        resp = await leader.vote(up_to_date_request(t + 5, f.id, leader))
        assert not resp.granted and resp.term == t, resp
        m = leader.metrics
        assert m.state == LEADER and m.current_term == t
        assert (await leader.client_write(["set", "a", 2])).log_id.term == t

        # A leadership-transfer vote bypasses the refusal.
        resp = await f.vote(up_to_date_request(t + 1, g.id, f, transfer=True))
        assert resp.granted and resp.term == t + 1, resp
        m = f.metrics
        assert m.current_term == t + 1 and m.vote == Vote(t + 1, g.id, False)
        # (The cluster then moves to a newer term and settles again.)
        marker = await converge(c.all())
        for r in c.all():
            assert r.metrics.current_term > t and r.state_machine.get("a") == 2
            assert r.metrics.last_applied_index == marker


@cluster_test
async def test_restarted_node_refuses_votes_for_election_timeout_min():
    async with running_cluster(3, seed=207) as c:
        leader, t = await leader_after_a_write(c)
        f, g = c.others(leader)
        store = f.log_store
        await f.shutdown()
        c.router.remove(f.id)

        # Restarted on its old store, not connected: it has a term, so for
        # election_timeout_min it refuses votes (a leader's lease may count
        # on it), even an up-to-date candidate of a higher term.
        f2 = await c.add_node(f.id, log_store=store, sm=MemStateMachine(), enable_elect=False)
        c.router.remove(f.id)
        resp = await f2.vote(up_to_date_request(t + 1, g.id, f2))
        assert not resp.granted and resp.term == t, resp
        assert f2.metrics.current_term == t

        # A fresh node (no term) has no lease to protect: it grants at once
        # (a request of a cluster's first election: on empty storage, a node
        # grants no other, see test_identity_engine).
        fresh = await c.add_node(9, enable_elect=False)
        c.router.remove(9)
        resp = await fresh.vote(up_to_date_request(t + 1, g.id, f2, fresh={9}))
        assert resp.granted and resp.term == t + 1, resp

        # Once election_timeout_min has passed (it hears nobody meanwhile),
        # the same request is granted.
        await stays(f2, lambda m: m.current_term == t and m.state == FOLLOWER,
                    2 * ELECTION_MIN, "the restarted node stays quiet")
        resp = await f2.vote(up_to_date_request(t + 1, g.id, f2))
        assert resp.granted and resp.term == t + 1, resp
        assert f2.metrics.vote == Vote(t + 1, g.id, False)


@cluster_test
async def test_node_on_an_empty_log_refuses_other_candidates_and_says_why(caplog):
    # It may be a member that lost its disk (engine_identity: test_identity_engine
    # has the rule); an operator facing a cluster without a leader reads why.
    async with running_cluster(3, seed=231) as c:
        leader, t = await leader_after_a_write(c)
        empty = await c.add_node(9, enable_elect=False)
        c.router.remove(9)
        req = up_to_date_request(t + 1, leader.id, leader)
        with caplog.at_level(logging.WARNING, logger="raftcore.node.9"):
            first = await empty.vote(req)
            second = await empty.vote(req)
        assert not first.granted and not second.granted and second.term == 0
        assert caplog.text.count("node 9 refuses to vote for") == 1     # not at every request
        assert "its log is empty" in caplog.text
        assert empty.metrics.current_term == 0
        # Counted among the fresh voters (a first election, or added by a
        # change in progress), it grants.
        resp = await empty.vote(up_to_date_request(t + 1, leader.id, leader, fresh={9}))
        assert resp.granted and resp.term == t + 1


# ------------------------------------------------------------- transfer

@cluster_test
async def test_transfer_leader():
    async with running_cluster(3, seed=208) as c:
        old = await stable_leader(c.all())
        target, other = c.others(old)
        t = old.metrics.current_term
        resps = await old.client_write_many([["set", f"k{i}", i] for i in range(100)])
        await wait_all_applied(c.all(), resps[-1].index)

        old.trigger.transfer_leader(target.id)
        # Writes are refused while the transfer is under way.
        with pytest.raises(ForwardToLeader) as ei:
            await old.client_write(["set", "during", 1])
        assert ei.value.leader_id in (target.id, None)
        # The old leader dropped its lease when the transfer started.
        for policy in POLICIES:
            with pytest.raises(ForwardToLeader):
                await old.ensure_linearizable(policy)
        m = await target.wait(GUARD).state(LEADER)
        assert m.current_term == t + 1
        for r in (old, other):
            mm = await r.wait(GUARD).current_leader(target.id)
            assert mm.state == FOLLOWER and mm.current_term == t + 1

        # Writes resume on the new leader; the old one forwards to it.
        w = await target.client_write(["set", "after", 1])
        assert w.log_id.term == t + 1
        with pytest.raises(ForwardToLeader) as ei:
            await old.client_write(["set", "x", 1])
        assert ei.value.leader_id == target.id
        # Its first read point is at least its own blank entry and the write.
        first_of_term = min(e.index for e in target.log_store.entries(1, w.index)
                            if e.term == t + 1)
        log_id = await target.ensure_linearizable(READ_INDEX)
        assert log_id.index >= max(first_of_term, w.index)
        await wait_all_applied(c.all(), w.index)
        for r in c.all():
            assert r.state_machine.get("during") is None
            assert r.state_machine.get("after") == 1
            assert r.state_machine.get("k99") == 99
        with pytest.raises(ForwardToLeader):
            other.trigger.transfer_leader(old.id)
        with pytest.raises(NotAllowed, match="not a voter"):
            target.trigger.transfer_leader(42)


@cluster_test
async def test_transfer_to_isolated_node_times_out_and_leader_resumes():
    async with running_cluster(3, seed=209) as c:
        leader = await stable_leader(c.all())
        target, other = c.others(leader)
        t = leader.metrics.current_term
        base = await leader.client_write(["set", "a", 1])
        await wait_all_applied(c.all(), base.index)

        c.router.isolate(target.id)
        leader.trigger.transfer_leader(target.id)
        with pytest.raises(ForwardToLeader):
            await leader.client_write(["set", "during", 1])
        # The transfer cannot complete; after an election timeout the leader
        # gives it up and takes writes again, in the same term.
        w = await write_when_accepted(leader, ["set", "a", 2])
        assert w.data == 1 and w.log_id.term == t
        m = leader.metrics
        assert m.state == LEADER and m.current_term == t
        await other.wait(GUARD).applied_index_at_least(w.index)
        mo = other.metrics
        assert mo.current_leader == leader.id and mo.current_term == t
        assert target.metrics.state != LEADER
        assert leader.state_machine.get("during") is None


# -------------------------------------------------------------- pre-vote

@cluster_test
async def test_pre_vote_isolated_follower_does_not_raise_its_term():
    async with running_cluster(3, seed=210, enable_pre_vote=True) as c:
        leader, t = await leader_after_a_write(c)
        f = c.others(leader)[0]

        c.router.isolate(f.id)
        n0 = len(c.router.votes)

        def three_rounds(votes):
            return len([v for v in votes[n0:] if v.src == f.id]) >= 6

        await c.router.wait_votes(three_rounds, GUARD, f"three pre-vote rounds of node {f.id}")
        mine = [v for v in c.router.votes[n0:] if v.src == f.id]
        assert all(v.req.pre_vote and v.req.term == t + 1 for v in mine), mine
        m = f.metrics
        assert m.current_term == t and m.state == FOLLOWER, m

        c.router.heal()
        w = await leader.client_write(["set", "a", 2])
        await f.wait(GUARD).applied_index_at_least(w.index)
        marker = await converge(c.all())
        assert leader.metrics.state == LEADER
        for r in c.all():
            m = r.metrics
            assert m.current_term == t and m.current_leader == leader.id, m
            assert r.state_machine.get("a") == 2 and m.last_applied_index == marker
        assert not [v for v in c.router.votes if v.src == f.id and not v.req.pre_vote]


@cluster_test
async def test_without_pre_vote_isolated_follower_raises_the_term():
    async with running_cluster(3, seed=211) as c:
        leader, t = await leader_after_a_write(c)
        f = c.others(leader)[0]

        c.router.isolate(f.id)
        n0 = len(c.router.votes)

        def three_campaigns(votes):
            return len({v.req.term for v in votes[n0:] if v.src == f.id}) >= 3

        await c.router.wait_votes(three_campaigns, GUARD, f"three campaigns of node {f.id}")
        mine = [v for v in c.router.votes[n0:] if v.src == f.id]
        assert not any(v.req.pre_vote for v in mine)
        assert f.metrics.current_term >= t + 3

        c.router.heal()
        # Its higher term reaches the leader (in the answer to a heartbeat)
        # and forces an election: the whole cluster moves past term t.
        marker = await converge(c.all())
        for r in c.all():
            m = r.metrics
            assert m.current_term > t + 2, m
            assert r.state_machine.get("a") == 1 and m.last_applied_index == marker


# ------------------------------------------------------- elect switches

@cluster_test
async def test_elect_switch_off_stops_campaigns_and_trigger_elect_forces_one():
    async with running_cluster(3, seed=212) as c:
        old = await stable_leader(c.all())
        a, b = c.others(old)
        base = await old.client_write(["set", "a", 1])
        await wait_all_applied(c.all(), base.index)
        await asyncio.gather(*(r.wait(GUARD).log_index_at_least(old.metrics.last_log_index)
                               for r in c.all()))
        t = old.metrics.current_term
        for r in c.all():
            r.runtime_config.elect(False)

        c.router.isolate(old.id)
        # check_quorum: it steps down by itself, and does not campaign either.
        await old.wait(GUARD).metrics(lambda m: m.state != LEADER, "step down")
        n0 = len(c.router.votes)
        # Several election timeouts without a leader: nobody campaigns.
        await stays(a, lambda m: m.state == FOLLOWER and m.current_term == t,
                    3 * ELECTION_MAX, "a stays a follower in term t")
        for r in c.all():
            m = r.metrics
            assert m.state == FOLLOWER and m.current_term == t, m
        assert len(c.router.votes) == n0

        a.trigger.elect()
        m = await a.wait(GUARD).state(LEADER)
        assert m.current_term == t + 1
        await b.wait(GUARD).current_leader(a.id)
        a.trigger.elect()          # already the leader: nothing happens
        assert a.metrics.state == LEADER and a.metrics.current_term == t + 1

        c.router.heal()
        await old.wait(GUARD).current_leader(a.id)
        w = await a.client_write(["set", "a", 2])
        assert w.data == 1 and w.log_id.term == t + 1
        await wait_all_applied(c.all(), w.index)
        for r in c.all():
            assert r.metrics.current_term == t + 1 and r.state_machine.get("a") == 2
