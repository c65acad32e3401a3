"""Cluster scenarios for learners and membership changes (issue 3) on LocalRouter.

openraft's extended joint consensus: learners receive the log but do not
vote; change_membership goes through a joint configuration and then the
uniform one; one change at a time; a leader removed from the voters hands
over and steps down; a removed node cannot disrupt the cluster.

Tests run and synchronize as cluster_harness's docstring says.
"""
from __future__ import annotations

import asyncio
from typing import Optional

import pytest

from raftcore import ChangeMembers, Node, Raft, ServerState
from raftcore.errors import Fatal, ForwardToLeader, NotAllowed, OutcomeUnknown
from raftcore.storage import MemStateMachine
from raftcore.types import ENTRY_MEMBERSHIP

from cluster_harness import (  # tests/conftest.py puts it on sys.path
    ELECTION_MIN, ELECTION_MAX, GUARD, LEADER, FOLLOWER, cluster_test, converge,
    running_cluster, stable_leader, stays, wait_all_applied, wait_any_leader)

CANDIDATE = ServerState.CANDIDATE
LEARNER = ServerState.LEARNER


class MembershipLog:
    """Records every distinct membership a node's metrics show, in order,
    from a metrics waiter that is checked at each state change of the node."""

    def __init__(self, raft: Raft) -> None:
        self.raft = raft
        self.seen: list = []
        self._started = asyncio.Event()
        self._task: Optional[asyncio.Task] = None

    def _observe(self, m) -> bool:
        self._started.set()
        if m.membership is not None and (not self.seen or self.seen[-1] != m.membership):
            self.seen.append(m.membership)
        return False

    async def start(self) -> "MembershipLog":
        self._task = asyncio.ensure_future(
            self.raft.wait(None).metrics(self._observe, "recording memberships"))
        await self._started.wait()     # the waiter is registered
        return self

    async def stop(self) -> list:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        return self.seen


def membership_entries(raft: Raft) -> list:
    """(index, voter configurations) of the membership entries in a node's log
    that change the voters, in order. (A leader also appends entries that keep
    the voters and only record members' storage incarnations, whenever a
    member first answers: they are left out.)"""
    last = raft.metrics.last_log_index
    out = []
    for e in raft.log_store.entries(1, last):
        if e.kind == ENTRY_MEMBERSHIP and (not out or out[-1][1] != e.payload.configs):
            out.append((e.index, e.payload.configs))
    return out


def fs(*ids) -> frozenset:
    return frozenset(ids)


async def wait_uniform(raft: Raft, voters, timeout: float = GUARD):
    """Waits until `raft`'s membership is the uniform (not joint) voter set
    `voters`. (wait().members() compares the union of the voter sets, which
    a joint configuration with the same new set also matches.)"""
    want = (frozenset(voters),)
    return await raft.wait(timeout).metrics(
        lambda m: m.membership is not None and m.membership.configs == want,
        f"uniform voters {sorted(want[0])}")


# ---------------------------------------------------------------- learners

@cluster_test
async def test_add_learner_blocking_returns_once_the_learner_caught_up():
    # replication_lag_threshold=1: add_learner(blocking=True) returns only
    # once the learner is within one entry of the leader's log. The learner
    # is added after 1000 writes, to an otherwise idle cluster: it must
    # catch up on all of them without any further write.
    async with running_cluster(3, seed=101, replication_lag_threshold=1) as c:
        leader = await stable_leader(c.all())
        written = []
        for i in range(0, 1000, 250):
            written += await leader.client_write_many(
                [["set", f"k{j}", j] for j in range(i, i + 250)])
        learner = await c.add_node(4)
        assert learner.metrics.last_log_index == 0
        resp = await leader.add_learner(4, Node("n4"), blocking=True, timeout=GUARD)
        assert resp is not None and resp.index > written[-1].index
        lm = leader.metrics
        assert lm.replication[4] + 1 >= lm.last_log_index, lm
        # Adding the same learner again changes nothing.
        assert await leader.add_learner(4, Node("n4"), blocking=True, timeout=GUARD) is None
        assert leader.metrics.last_log_index == lm.last_log_index

        m4 = await learner.wait(GUARD).applied_index_at_least(resp.index)
        assert m4.state == LEARNER
        assert m4.membership.voter_ids == fs(1, 2, 3)
        assert m4.membership.learner_ids == fs(4)
        assert m4.current_leader == leader.id
        for j in range(1000):
            assert learner.state_machine.get(f"k{j}") == j


@cluster_test
async def test_learner_receives_the_log_and_never_votes_or_campaigns():
    async with running_cluster(3, seed=112) as c:
        leader = await stable_leader(c.all())
        written = await leader.client_write_many([["set", f"k{j}", j] for j in range(300)])
        learner = await c.add_node(4)
        resp = await leader.add_learner(4, Node("n4"), blocking=True, timeout=GUARD)
        assert resp.index > written[-1].index
        # It keeps receiving new entries, the ones from before it joined too.
        more = await leader.client_write(["set", "after", 1])
        m4 = await learner.wait(GUARD).applied_index_at_least(more.index)
        assert m4.state == LEARNER
        assert m4.membership.voter_ids == fs(1, 2, 3) and m4.membership.learner_ids == fs(4)
        assert learner.state_machine.get("after") == 1
        assert all(learner.state_machine.get(f"k{j}") == j for j in range(300))
        for r in c.all():
            m = await r.wait(GUARD).metrics(
                lambda m: m.membership.learner_ids == fs(4), "learner 4 in the membership")
            assert m.membership.voter_ids == fs(1, 2, 3)

        with pytest.raises(NotAllowed, match="not a voter"):
            learner.trigger.elect()
        with pytest.raises(NotAllowed, match="already a voter"):
            await leader.add_learner(leader.id, Node(f"n{leader.id}"))

        # Two of three voters go down. The last voter campaigns again and
        # again; the learner is never asked (so it cannot make up a quorum
        # with it) and never campaigns itself, for all those timeouts.
        voter = c.others(leader, learner)[0]
        down = c.others(voter, learner)
        learner_term = learner.metrics.current_term
        n0 = len(c.router.votes)
        for r in down:
            await r.shutdown()

        def campaigns(votes):
            return len({v.req.term for v in votes[n0:] if v.src == voter.id}) >= 3

        await c.router.wait_votes(campaigns, GUARD, f"three campaigns of node {voter.id}")
        recent = c.router.votes[n0:]
        assert not [v for v in recent if v.dst == learner.id], "a learner was asked to vote"
        assert not [v for v in recent if v.src == learner.id], "a learner campaigned"
        m4 = learner.metrics
        assert m4.state == LEARNER and m4.current_term == learner_term
        assert voter.metrics.state == CANDIDATE


# -------------------------------------------------------- grow and shrink

@cluster_test
async def test_grow_3_to_5_and_shrink_to_3_under_continuous_writes():
    # The test follows one leader through both changes (it watches the joint
    # configuration on it), so its election timeouts are long: a loaded
    # machine that starves the one event loop of all five nodes for a few
    # hundred milliseconds must not depose that leader.
    async with running_cluster(3, seed=102, election_timeout_min=1.0,
                               election_timeout_max=2.0) as c:
        leader = await stable_leader(c.all())
        lid = leader.id
        new4, new5 = await c.add_node(4), await c.add_node(5)
        acked: dict = {}
        stop = asyncio.Event()
        voters = [leader]

        async def writer(w: int) -> None:
            n = 0
            target = leader
            # Bounded, so the test stays small whatever the machine's speed.
            while not stop.is_set() and n < 5000:
                try:
                    await target.client_write(["set", f"w{w}-{n}", n])
                except (ForwardToLeader, OutcomeUnknown):      # a set is safe to repeat
                    target = await wait_any_leader(voters)
                    continue
                acked[f"w{w}-{n}"] = n
                if changing[0]:
                    changing[1] += 1
                n += 1

        changing = [False, 0]      # a change is under way; writes acked meanwhile
        tasks = [asyncio.ensure_future(writer(w)) for w in range(3)]
        try:
            await leader.wait(GUARD).metrics(lambda m: len(acked) >= 50, "50 writes acked")
            # A little network latency: commits take real round trips, so
            # the writers keep proposing while each change is joint.
            c.router.set_delay(0.002)

            # -- grow: two learners, then {1,2,3} -> {1,2,3,4,5}
            await leader.add_learner(4, Node("n4"), blocking=True)
            await leader.add_learner(5, Node("n5"), blocking=True)
            follower = c.others(leader, new4, new5)[0]
            logs = [await MembershipLog(r).start() for r in (leader, follower)]
            old3 = fs(1, 2, 3)
            all5 = fs(1, 2, 3, 4, 5)
            n_before = len(acked)
            changing[:] = [True, 0]
            resp = await leader.change_membership(all5)
            changing[0] = False
            assert changing[1] > 0, "no write was acknowledged during the change"
            assert resp.log_id.term == leader.metrics.current_term
            voters[:] = c.all()
            for r in c.all():
                m = await wait_uniform(r, all5)
                assert not m.membership.is_joint and m.membership.learner_ids == fs()
            for r in (new4, new5):
                assert (await r.wait(GUARD).state(FOLLOWER)).state == FOLLOWER
            # The leader and an old follower were in the joint configuration
            # (old and new voter sets together) before the uniform one.
            for log in logs:
                seen = [m.configs for m in await log.stop()]
                assert (old3, all5) in seen, (log.raft.id, seen)
                assert seen.index((old3, all5)) < seen.index((all5,)), (log.raft.id, seen)
            await leader.wait(GUARD).metrics(lambda m: len(acked) > n_before + 50,
                                             "writes continue in the grown cluster")

            # -- shrink: {1,2,3,4,5} -> {leader, 4, 5}; the other two old voters go
            final = fs(lid, 4, 5)
            removed = c.others(leader, new4, new5)
            logs = [await MembershipLog(r).start() for r in (leader, new4)]
            n_before = len(acked)
            changing[:] = [True, 0]
            await leader.change_membership(final)
            changing[0] = False
            assert changing[1] > 0, "no write was acknowledged during the change"
            voters[:] = [leader, new4, new5]
            for log in logs:
                seen = [m.configs for m in await log.stop()]
                assert (all5, final) in seen, (log.raft.id, seen)
                assert seen.index((all5, final)) < seen.index((final,)), (log.raft.id, seen)
            await leader.wait(GUARD).metrics(lambda m: len(acked) > n_before + 50,
                                             "writes continue in the shrunk cluster")
        finally:
            stop.set()
            c.router.set_delay(0)
            await asyncio.wait_for(asyncio.gather(*tasks), GUARD)

        remaining = [leader, new4, new5]
        assert len(acked) > 150
        marker = await converge(remaining)
        for r in remaining:
            m = r.metrics
            assert m.membership.voter_ids == final and not m.membership.is_joint, (r.id, m)
            assert set(m.membership.nodes) == set(final), (r.id, m.membership)
            for key, value in acked.items():
                assert r.state_machine.get(key, "MISSING") == value, (r.id, key)
            # The log holds the whole sequence: uniform, joint, uniform, joint, uniform.
            assert [cfgs for _, cfgs in membership_entries(r)][-4:] == [
                (old3, all5), (all5,), (all5, final), (final,)], r.id
        assert set(leader.metrics.replication) == {4, 5}
        assert leader.metrics.state == LEADER
        assert all(r.metrics.last_applied_index < marker for r in removed)


@cluster_test
async def test_joint_configuration_needs_a_majority_of_both_voter_sets():
    # check_quorum off: the leader must stay leader while it cannot reach a
    # majority of the new voter set, so the joint state can be observed.
    async with running_cluster(3, seed=103, check_quorum=False) as c:
        leader = await stable_leader(c.all())
        lid = leader.id
        f2, f3 = c.others(leader)
        n4, n5 = await c.add_node(4), await c.add_node(5)
        await leader.add_learner(4, Node("n4"))
        await leader.add_learner(5, Node("n5"))
        base = (await leader.client_write(["set", "base", 0])).index
        await wait_all_applied(c.all(), base)

        # The new voters {leader, 4, 5} stop hearing from the leader.
        c.router.cut(lid, 4)
        c.router.cut(lid, 5)
        change = asyncio.ensure_future(leader.change_membership({lid, 4, 5}))
        m = await leader.wait(GUARD).metrics(lambda m: m.membership.is_joint, "joint appended")
        joint_index = m.last_log_index
        assert m.membership.configs == (fs(1, 2, 3), fs(lid, 4, 5))
        for f in (f2, f3):
            mf = await f.wait(GUARD).log_index_at_least(joint_index)
            assert mf.membership.is_joint
        # All of the old voters hold the joint entry, but only one of the new
        # ones does (the leader): it is not committed, and nor is a write after it.
        write = asyncio.ensure_future(leader.client_write(["set", "during", 1]))
        await f2.wait(GUARD).log_index_at_least(joint_index + 1)
        await f3.wait(GUARD).log_index_at_least(joint_index + 1)
        await stays(leader, lambda m: m.committed < joint_index and m.state == LEADER,
                    2 * ELECTION_MIN, "the joint entry stays uncommitted")
        assert not change.done() and not write.done()
        assert n4.metrics.membership.voter_ids == fs(1, 2, 3)   # it never got the entry

        c.router.uncut(lid, 4)
        c.router.uncut(lid, 5)
        resp = await asyncio.wait_for(change, GUARD)
        assert (await asyncio.wait_for(write, GUARD)).index == joint_index + 1
        assert resp.index > joint_index + 1
        for r in (leader, n4, n5):
            m = await wait_uniform(r, {lid, 4, 5})
            assert not m.membership.is_joint
        marker = await converge([leader, n4, n5])
        assert n4.state_machine.get("during") == 1 and n5.state_machine.get("during") == 1
        assert leader.metrics.last_applied_index == marker


# ---------------------------------------------------------- replace leader

async def _replace_leader(seed: int, retain: bool) -> None:
    async with running_cluster(3, seed=seed) as c:
        old = await stable_leader(c.all())
        old_term = old.metrics.current_term
        before = await old.client_write_many([["set", f"b{i}", i] for i in range(50)])
        n4 = await c.add_node(4)
        await old.add_learner(4, Node("n4"))
        new_voters = {r.id for r in c.others(old, n4)} | {4}

        resp = await old.change_membership(new_voters, retain=retain)
        assert resp.index > before[-1].index
        # Once the membership without it is committed, the leader steps down.
        m = await old.wait(GUARD).metrics(lambda m: m.state != LEADER, "old leader steps down")
        assert m.state == LEARNER, m
        assert m.membership.voter_ids == frozenset(new_voters)
        assert not m.membership.is_voter(old.id)
        assert (old.id in m.membership.learner_ids) is retain

        voters = [c[i] for i in sorted(new_voters)]
        new = await stable_leader(voters)
        assert new.id != old.id
        assert new.metrics.current_term > old_term
        with pytest.raises(ForwardToLeader):
            await old.client_write(["set", "x", 1])
        with pytest.raises(NotAllowed, match="not a voter"):
            old.trigger.elect()

        after = await new.client_write_many([["set", f"a{i}", i] for i in range(200)])
        assert all(r.log_id.term == new.metrics.current_term for r in after)
        last = after[-1].index
        await wait_all_applied(voters, last)
        for r in voters:
            assert r.metrics.membership.voter_ids == frozenset(new_voters)
            assert all(r.state_machine.get(f"b{i}") == i for i in range(50))
            assert all(r.state_machine.get(f"a{i}") == i for i in range(200))
        if retain:
            # Still a learner: it keeps receiving (and applying) the log.
            await old.wait(GUARD).applied_index_at_least(last)
            assert old.state_machine.get("a199") == 199
            assert old.metrics.state == LEARNER
            assert old.id in new.metrics.replication
        else:
            # Not a member at all: nobody replicates to it any more.
            assert old.id not in new.metrics.replication
            assert old.metrics.last_log_index < last
            assert old.metrics.state == LEARNER


@cluster_test
async def test_replace_leader_retained_as_learner():
    await _replace_leader(104, retain=True)


@cluster_test
async def test_replace_leader_removed_entirely():
    await _replace_leader(105, retain=False)


# ------------------------------------------------------ faults and changes

@cluster_test
async def test_remove_unreachable_follower():
    async with running_cluster(3, seed=106) as c:
        leader = await stable_leader(c.all())
        gone, stay = c.others(leader)
        t = leader.metrics.current_term
        base = (await leader.client_write(["set", "base", 0])).index
        await wait_all_applied(c.all(), base)

        c.router.isolate(gone.id)
        resp = await leader.change_membership({leader.id, stay.id})
        assert resp.log_id.term == t
        for r in (leader, stay):
            m = await wait_uniform(r, {leader.id, stay.id})
            assert not m.membership.is_joint and gone.id not in m.membership.nodes
        assert set(leader.metrics.replication) == {stay.id}
        # Writes commit with the two remaining voters.
        resps = await leader.client_write_many([["set", f"k{i}", i] for i in range(20)])
        await stay.wait(GUARD).applied_index_at_least(resps[-1].index)
        assert stay.state_machine.get("k19") == 19
        # The unreachable node never heard of it.
        assert gone.metrics.membership.voter_ids == fs(1, 2, 3)
        assert gone.state_machine.get("k0") is None

        # It comes back, still believing it is a voter, and campaigns with
        # ever higher terms: both members refuse without adopting its term.
        c.router.heal()
        n0 = len(c.router.votes)

        def answered_by_both(votes):
            got = {v.dst for v in votes[n0:] if v.src == gone.id and v.resp is not None}
            return got >= {leader.id, stay.id}

        await c.router.wait_votes(answered_by_both, GUARD,
                                  f"node {gone.id}'s vote requests answered after healing")
        for v in c.router.votes[n0:]:
            if v.src == gone.id and v.resp is not None:
                assert v.req.term > t and not v.resp.granted and v.resp.term == t, v
        for r in (leader, stay):
            m = r.metrics
            assert m.current_term == t and m.current_leader == leader.id, m
        assert leader.metrics.state == LEADER
        assert (await leader.client_write(["set", "after", 1])).log_id.term == t


@cluster_test
async def test_change_while_a_minority_is_partitioned_completes_and_minority_catches_up():
    # Pre-vote keeps the partitioned nodes from raising their terms, so the
    # heal is a plain catch-up (term disruption is covered elsewhere).
    async with running_cluster(5, seed=107, enable_pre_vote=True) as c:
        leader = await stable_leader(c.all())
        a, b, m1, m2 = c.others(leader)
        base = (await leader.client_write(["set", "base", 0])).index
        await wait_all_applied(c.all(), base)

        c.router.isolate(m1.id)
        c.router.isolate(m2.id)
        acked = await leader.client_write_many([["set", f"p{i}", i] for i in range(30)])
        # Remove m2 from the voters (kept as a learner) while m1 and m2 are cut off.
        final = fs(leader.id, a.id, b.id, m1.id)
        await leader.change_membership(ChangeMembers.remove_voters({m2.id}), retain=True)
        acked += await leader.client_write_many([["set", f"q{i}", i] for i in range(30)])
        for r in (leader, a, b):
            m = await wait_uniform(r, final)
            assert m.membership.learner_ids == fs(m2.id)
        for r in (m1, m2):
            assert r.metrics.membership.voter_ids == fs(1, 2, 3, 4, 5)
            assert r.metrics.last_applied_index < acked[0].index

        c.router.heal()
        marker = await converge(c.all())
        for r in c.all():
            m = r.metrics
            assert m.membership.voter_ids == final and not m.membership.is_joint, (r.id, m)
            assert m.membership.learner_ids == fs(m2.id)
            assert all(r.state_machine.get(f"p{i}") == i for i in range(30)), r.id
            assert all(r.state_machine.get(f"q{i}") == i for i in range(30)), r.id
            assert m.last_applied_index == marker
        assert m2.metrics.state == LEARNER
        assert m1.metrics.state in (FOLLOWER, LEADER)


# ------------------------------------------------------------- API errors

@cluster_test
async def test_membership_api_refusals_and_add_voters():
    async with running_cluster(3, seed=108) as c:
        leader = await stable_leader(c.all())
        f = c.others(leader)[0]
        n4 = await c.add_node(4)
        last = leader.metrics.last_log_index

        with pytest.raises(NotAllowed, match=r"\[4\].*add_learner first"):
            await leader.change_membership(ChangeMembers.add_voter_ids({4}))
        with pytest.raises(NotAllowed, match=r"\[4\].*add_learner first"):
            await leader.change_membership({1, 2, 3, 4})
        with pytest.raises(NotAllowed, match="every voter"):
            await leader.change_membership(set())
        with pytest.raises(NotAllowed, match="every voter"):
            await leader.change_membership(ChangeMembers.remove_voters({1, 2, 3}))
        with pytest.raises(NotAllowed, match="remove_voters first"):
            await leader.change_membership(ChangeMembers.remove_nodes({f.id}))
        # Nothing was proposed by the refused calls.
        assert leader.metrics.last_log_index == last
        assert leader.metrics.membership.voter_ids == fs(1, 2, 3)

        # On a follower: forward to the leader.
        with pytest.raises(ForwardToLeader) as ei:
            await f.change_membership({1, 2})
        assert ei.value.leader_id == leader.id
        with pytest.raises(ForwardToLeader) as ei:
            await f.add_learner(4, Node("n4"))
        assert ei.value.leader_id == leader.id

        # One change at a time. Slow deliveries keep the first one in progress.
        c.router.set_delay(0.01)
        first = asyncio.ensure_future(
            leader.change_membership(ChangeMembers.add_voters({4: Node("n4")})))
        m = await leader.wait(GUARD).metrics(lambda m: m.membership.is_joint, "joint appended")
        assert m.membership.configs == (fs(1, 2, 3), fs(1, 2, 3, 4))
        with pytest.raises(NotAllowed, match="membership change is in progress"):
            await leader.change_membership({1, 2})
        with pytest.raises(NotAllowed, match="membership change is in progress"):
            await leader.add_learner(5, Node("n5"))
        c.router.set_delay(0)
        resp = await asyncio.wait_for(first, GUARD)

        # add_voters took a brand-new node straight to voter.
        for r in c.all():
            m = await wait_uniform(r, {1, 2, 3, 4})
            assert m.membership.nodes[4] == Node("n4") and not m.membership.is_joint
        m4 = await n4.wait(GUARD).applied_index_at_least(resp.index)
        assert m4.state == FOLLOWER
        w = await leader.client_write(["set", "four", 4])
        await n4.wait(GUARD).applied_index_at_least(w.index)
        assert n4.state_machine.get("four") == 4
        # The next change is allowed now.
        await leader.change_membership(ChangeMembers.remove_voters({4}), retain=True)
        m = await wait_uniform(n4, {1, 2, 3})
        assert m.membership.learner_ids == fs(4) and m.state == LEARNER


@cluster_test
async def test_node_operations_add_set_and_remove_nodes():
    async with running_cluster(3, seed=114) as c:
        leader = await stable_leader(c.all())
        f = c.others(leader)[0]
        n6 = await c.add_node(6)
        # add_nodes: a learner, voters unchanged, and no joint step.
        await leader.change_membership(ChangeMembers.add_nodes({6: Node("n6")}))
        for r in c.others(n6):
            m = await r.wait(GUARD).metrics(lambda m: 6 in m.membership.learner_ids, "learner 6")
            assert m.membership.voter_ids == fs(1, 2, 3) and not m.membership.is_joint
        w = await leader.client_write(["set", "six", 6])
        await n6.wait(GUARD).applied_index_at_least(w.index)
        assert n6.metrics.state == LEARNER and n6.state_machine.get("six") == 6
        with pytest.raises(NotAllowed, match="already a member"):
            await leader.change_membership(ChangeMembers.add_nodes({6: Node("n6")}))

        # set_nodes: a member's address changes everywhere.
        await leader.change_membership(ChangeMembers.set_nodes({f.id: Node("moved")}))
        for r in c.all():
            m = await r.wait(GUARD).metrics(
                lambda m: m.membership.nodes[f.id] == Node("moved"), "the new address")
            assert m.membership.voter_ids == fs(1, 2, 3)
        with pytest.raises(NotAllowed, match="not a member"):
            await leader.change_membership(ChangeMembers.set_nodes({7: Node("n7")}))

        # remove_nodes: the learner is no longer replicated to.
        await leader.change_membership(ChangeMembers.remove_nodes({6}))
        for r in c.others(n6):
            m = await r.wait(GUARD).metrics(lambda m: 6 not in m.membership.nodes, "6 removed")
            assert m.membership.voter_ids == fs(1, 2, 3)
        assert 6 not in leader.metrics.replication
        w = await leader.client_write(["set", "gone", 1])
        await wait_all_applied(c.others(n6), w.index)
        assert n6.metrics.last_log_index < w.index


async def leader_and_learner_4(c) -> tuple[Raft, Raft]:
    """Adds node 4 as a learner of the 3-node cluster `c` and waits until
    every node applied a write made after it; returns (leader, node 4)."""
    leader = await stable_leader(c.all())
    n4 = await c.add_node(4)
    await leader.add_learner(4, Node("n4"))
    base = (await leader.client_write(["set", "base", 0])).index
    await wait_all_applied(c.all(), base)
    return leader, n4


@cluster_test
async def test_uncommitted_membership_is_in_force_and_reverts_when_truncated():
    async with running_cluster(3, seed=113) as c:
        old, n4 = await leader_and_learner_4(c)
        before = old.metrics.membership
        assert before.voter_ids == fs(1, 2, 3) and before.learner_ids == fs(4)

        c.router.isolate(old.id)
        change = asyncio.ensure_future(old.change_membership(ChangeMembers.add_voter_ids({4})))
        m = await old.wait(GUARD).metrics(lambda m: m.membership.is_joint, "joint appended")
        # In force as soon as it is in the log, though it cannot commit.
        assert m.membership.configs == (fs(1, 2, 3), fs(1, 2, 3, 4))
        assert m.committed < m.last_log_index

        rest = c.others(old)
        new = await stable_leader(rest)
        w = await new.client_write(["set", "new", 1])
        await wait_all_applied(rest, w.index)
        for r in rest:
            assert r.metrics.membership == before

        c.router.heal()
        # The new leader's log replaces the joint entry: the membership before
        # it is back in force on the old leader, which cannot tell whether
        # another node still holds the entry (the outcome is unknown to it).
        with pytest.raises(OutcomeUnknown):
            await asyncio.wait_for(change, GUARD)
        m = await old.wait(GUARD).metrics(lambda m: not m.membership.is_joint,
                                          "the joint entry is truncated")
        assert m.membership == before
        marker = await converge(c.all())
        for r in c.all():
            assert r.metrics.membership == before, r.id
            assert r.state_machine.get("new") == 1 and r.metrics.last_applied_index == marker
        assert n4.metrics.state == LEARNER


@cluster_test
async def test_change_interrupted_by_leader_change_is_completed_by_next_change():
    async with running_cluster(3, seed=115) as c:
        old, n4 = await leader_and_learner_4(c)
        rest = c.others(old)
        # Every answer to the leader is lost: the joint entry reaches all the
        # others, but the leader never learns that it could commit it.
        for r in rest:
            c.router.cut(r.id, old.id)
        change = asyncio.ensure_future(old.change_membership(ChangeMembers.add_voter_ids({4})))
        m = await old.wait(GUARD).metrics(lambda m: m.membership.is_joint, "joint appended")
        joint = m.membership
        joint_index = m.last_log_index
        for r in rest:
            mr = await r.wait(GUARD).log_index_at_least(joint_index)
            assert mr.membership == joint
        await old.shutdown()
        with pytest.raises(Fatal):
            await asyncio.wait_for(change, GUARD)

        # A new leader is elected under the joint configuration (node 4
        # votes: it is a voter of the new set) and commits the joint entry.
        new = await stable_leader(rest)
        assert new.metrics.membership == joint
        await new.wait(GUARD).metrics(lambda m: m.committed >= joint_index, "joint committed")
        # The next change first finishes the interrupted one, then applies its own.
        final = {r.id for r in rest}
        await new.change_membership(final)
        for r in rest:
            m = await wait_uniform(r, final)
            assert not m.membership.is_joint and old.id not in m.membership.nodes
        cfgs = [cfg for _, cfg in membership_entries(new)]
        all4 = fs(old.id, *final)
        assert cfgs[-4:] == [(fs(1, 2, 3), all4), (all4,), (all4, frozenset(final)),
                             (frozenset(final),)], cfgs
        w = await new.client_write(["set", "k", 1])
        await wait_all_applied(rest, w.index)
        assert all(r.state_machine.get("base") == 0 for r in rest)
        assert n4.metrics.state in (FOLLOWER, LEADER)


# ----------------------------------------------------- uninformed voter

@cluster_test
async def test_voter_that_does_not_know_it_is_a_voter_still_votes():
    async with running_cluster(3, seed=109) as c:
        leader = await stable_leader(c.all())
        lid = leader.id
        keep, drop = c.others(leader)
        n4 = await c.add_node(4)
        await leader.add_learner(4, Node("n4"))
        base = (await leader.client_write(["set", "base", 0])).index
        await wait_all_applied(c.all(), base)

        # Node 4 stops hearing from the leader, then becomes a voter in its
        # place of `drop` ({leader, keep} are a majority of both voter sets).
        c.router.cut(lid, 4)
        new_voters = {lid, keep.id, 4}
        await leader.change_membership(new_voters, retain=True)
        await wait_uniform(keep, new_voters)
        await wait_uniform(drop, new_voters)   # a learner now: it won't campaign
        m4 = n4.metrics
        assert m4.state == LEARNER and m4.membership.voter_ids == fs(1, 2, 3)

        # The leader goes. `keep` needs node 4's vote (2 of {leader, keep, 4}),
        # and node 4 grants it although it still thinks it is a learner.
        t = leader.metrics.current_term
        n0 = len(c.router.votes)
        await leader.shutdown()
        m = await keep.wait(GUARD).state(LEADER)
        assert m.current_term > t
        granted = [v for v in c.router.votes[n0:]
                   if v.src == keep.id and v.dst == 4 and v.resp is not None and v.resp.granted]
        assert granted, c.router.votes[n0:]
        assert n4.metrics.vote.node_id == keep.id and n4.metrics.vote.term == m.current_term
        # Then it learns the membership from the new leader and helps commit.
        m4 = await wait_uniform(n4, new_voters)
        assert m4.state == FOLLOWER
        w = await keep.client_write(["set", "k", "v"])
        await n4.wait(GUARD).applied_index_at_least(w.index)
        assert n4.state_machine.get("k") == "v" and n4.state_machine.get("base") == 0


# --------------------------------------------------------------- restart

@cluster_test
async def test_membership_recovered_after_restart():
    async with running_cluster(3, seed=110) as c:
        leader = await stable_leader(c.all())
        await c.add_node(4)
        await c.add_node(5)
        await leader.add_learner(4, Node("n4"))
        await leader.add_learner(5, Node("n5"))
        await leader.change_membership(ChangeMembers.add_voter_ids({4}))
        resps = await leader.client_write_many([["set", f"k{i}", i] for i in range(200)])
        await wait_all_applied(c.all(), resps[-1].index)
        want = leader.metrics.membership
        assert want.voter_ids == fs(1, 2, 3, 4) and want.learner_ids == fs(5)

        voter = next(r for r in c.others(leader) if r.id != 5)
        for old, state in ((voter, FOLLOWER), (c[5], LEARNER)):
            store = old.log_store
            await old.shutdown()
            c.router.remove(old.id)
            # Same log store, fresh state machine: the membership comes from the log.
            r = await c.add_node(old.id, log_store=store, sm=MemStateMachine())
            m = r.metrics
            assert m.membership == want, (r.id, m.membership, want)
            assert m.state == state
            assert m.last_log_index >= resps[-1].index
        more = await leader.client_write(["set", "more", 1])
        for i in (voter.id, 5):
            r = c[i]
            await r.wait(GUARD).applied_index_at_least(more.index)
            assert r.state_machine.data == leader.state_machine.data
            assert r.metrics.membership == want


# ---------------------------------------------------- removed node quiet

@cluster_test
async def test_removed_node_cannot_disrupt_the_cluster():
    async with running_cluster(3, seed=111) as c:
        leader = await stable_leader(c.all())
        x, y = c.others(leader)
        base = (await leader.client_write(["set", "base", 0])).index
        await wait_all_applied(c.all(), base)

        await leader.change_membership({leader.id, y.id}, retain=False)
        await wait_uniform(y, {leader.id, y.id})
        t = leader.metrics.current_term
        assert set(leader.metrics.replication) == {y.id}
        n0 = len(c.router.votes)

        if x.metrics.membership.is_voter(x.id):
            # x did not receive the final membership (the leader stops
            # replicating to it once that entry is appended): it still
            # believes it is a voter, so it can be made to campaign, and on
            # its own it campaigns at every election timeout.
            x.trigger.elect()
            assert x.metrics.state == CANDIDATE and x.metrics.current_term > t

            def refused_twice(votes):
                terms = {}
                for v in votes[n0:]:
                    if v.src == x.id and v.resp is not None:
                        terms.setdefault(v.req.term, set()).add(v.dst)
                return sum(1 for d in terms.values() if d >= {leader.id, y.id}) >= 2

            await c.router.wait_votes(refused_twice, GUARD,
                                      f"two campaigns of node {x.id} answered by both members")
            for v in c.router.votes[n0:]:
                if v.src == x.id and v.resp is not None:
                    assert not v.resp.granted and v.resp.term == t, v
            assert x.metrics.current_term > t + 1
        else:
            # x knows it is out: it cannot be made to campaign.
            with pytest.raises(NotAllowed, match="not a voter"):
                x.trigger.elect()
            await stays(x, lambda m: m.state == LEARNER, 2 * ELECTION_MAX, "x stays a learner")
            assert not [v for v in c.router.votes[n0:] if v.src == x.id]

        # The cluster did not notice.
        for r in (leader, y):
            m = r.metrics
            assert m.current_term == t and m.current_leader == leader.id, m
        assert leader.metrics.state == LEADER and x.metrics.state != LEADER
        w = await leader.client_write(["set", "still", "here"])
        assert w.log_id.term == t
        await y.wait(GUARD).applied_index_at_least(w.index)
        assert x.state_machine.get("still") is None
