"""Tests of the commit-index quorum (raftcore.quorum.QuorumTracker) and of the
per-follower replication progress (raftcore.progress.Progress, observed
through the leader engine that drives it)."""
import itertools
import random

import pytest

from raftcore.progress import Progress
from raftcore.quorum import QuorumTracker

import engine_harness as h     # tests/engine_harness.py, on the path through conftest.py

from raftcore.commands import Append, SendAppend
from raftcore.engine import LEADER
from raftcore.messages import AppendEntriesRequest as AER, AppendEntriesResponse as AEResp
from raftcore.types import ENTRY_BLANK, ENTRY_NORMAL, Entry, Vote

PROBE, REPLICATE = 0, 1


# ------------------------------------------------------------ reference


def reference_accepted(configs, values):
    """By definition: the highest value v such that, in every voter set, a
    strict majority of voters holds at least v (0 when none)."""
    best = 0
    for v in sorted(set(values.values()) | {0}):
        if all(2 * sum(1 for n in cfg if values.get(n, 0) >= v) > len(cfg)
               for cfg in configs if cfg):
            best = max(best, v)
    return best


# ------------------------------------------------------------ quorum


@pytest.mark.parametrize("n", [3, 5, 7])
def test_quorum_accepts_the_highest_value_held_by_a_majority_of_voters(n):
    voters = list(range(1, n + 1))
    q = QuorumTracker([voters])
    assert q.accepted == 0
    majority = n // 2 + 1
    # Raise voters one at a time to 10: accepted moves exactly when the
    # majority-th voter gets there.
    for k, v in enumerate(voters, 1):
        changed = q.set(v, 10)
        assert q.accepted == (10 if k >= majority else 0)
        assert changed == (k == majority)


def test_quorum_set_reports_whether_the_accepted_value_changed():
    q = QuorumTracker([[1, 2, 3]])
    assert q.set(1, 5) is False          # 1 of 3
    assert q.set(2, 3) is True           # {5, 3}: accepted 3
    assert q.accepted == 3
    assert q.set(1, 9) is False          # {9, 3, 0}: still 3
    assert q.set(3, 4) is True           # {9, 4, 3}: 4
    assert q.accepted == 4
    assert q.set(3, 4) is False          # same value again


def test_quorum_ignores_a_value_lower_than_the_one_a_voter_holds():
    q = QuorumTracker([[1, 2, 3]])
    q.set(1, 7)
    q.set(2, 7)
    assert q.accepted == 7
    assert q.set(2, 2) is False
    assert q.accepted == 7
    assert q.value_of(2) == 7


def test_quorum_ignores_nodes_that_are_not_voters():
    q = QuorumTracker([[1, 2, 3]])
    assert q.set(9, 100) is False
    assert q.accepted == 0
    assert q.value_of(9) is None
    q.set(1, 4)
    assert q.accepted == 0


def test_joint_quorum_accepts_only_what_a_majority_of_both_voter_sets_holds():
    q = QuorumTracker([[1, 2, 3], [1, 4, 5]])
    q.set(1, 10)
    q.set(2, 10)
    q.set(3, 10)
    assert q.accepted == 0                # old set: all; new set {1, 4, 5}: only 1
    assert q.set(4, 6) is True
    assert q.accepted == 6                # new set: 1 and 4 hold >= 6
    assert q.set(5, 10) is True
    assert q.accepted == 10
    assert q.value_of(1) == 10


def test_joint_quorum_of_disjoint_sets_takes_the_lower_of_the_two_majorities():
    q = QuorumTracker([[1, 2, 3], [4, 5, 6, 7]])
    for node, v in {1: 9, 2: 8, 3: 1, 4: 7, 5: 6, 6: 5, 7: 0}.items():
        q.set(node, v)
    # old set: 8 (two of three hold >= 8); new set: 5 (three of four hold >= 5)
    assert q.accepted == 5


CONFIGS = {
    "1": [[1]],
    "2": [[1, 2]],
    "3": [[1, 2, 3]],
    "4": [[1, 2, 3, 4]],
    "5": [[1, 2, 3, 4, 5]],
    "7": [[1, 2, 3, 4, 5, 6, 7]],
    "joint 3+3 overlapping": [[1, 2, 3], [2, 3, 4]],
    "joint 3+5": [[1, 2, 3], [1, 4, 5, 6, 7]],
    "joint 5+3 disjoint": [[1, 2, 3, 4, 5], [6, 7, 8]],
}


@pytest.mark.parametrize("seed", range(20))
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_quorum_matches_a_brute_force_reference_on_random_growing_values(name, seed):
    configs = CONFIGS[name]
    rnd = random.Random(f"{name}/{seed}")
    q = QuorumTracker(configs)
    voters = sorted(set(itertools.chain.from_iterable(configs)))
    nodes = voters + [99]                 # and a non-voter (a learner)
    values = {}
    before = 0
    for _ in range(200):
        node = rnd.choice(nodes)
        held = values.get(node, 0)
        # Mostly growth (small or large steps); sometimes a stale lower or equal value.
        r = rnd.random()
        if r < 0.15:
            value = rnd.randint(0, held)
        elif r < 0.85:
            value = held + rnd.randint(1, 3)
        else:
            value = held + rnd.randint(1, 50)
        changed = q.set(node, value)
        values[node] = max(held, value)
        want = reference_accepted(configs, {n: v for n, v in values.items() if n in voters})
        assert q.accepted == want, (values, value, node)
        assert changed == (want != before)
        assert q.accepted >= before       # the commit candidate never goes back
        before = want
        for v in voters:
            assert q.value_of(v) == values.get(v, 0)


# ------------------------------------------------------------ progress


def test_progress_needs_an_inflight_window_of_at_least_one_request():
    with pytest.raises(ValueError):
        Progress(2, 1, 0)
    p = Progress(2, 5, 1)
    assert (p.node_id, p.matched, p.next_index, p.state, p.probe_sent, p.inflight_count) == \
        (2, 0, 5, PROBE, False, 0)


M3 = h.members({1, 2, 3})


def new_leader(follower_terms=(1,), max_inflight=4, max_payload_entries=64):
    """Leader 1 of term 2 over [(1, 1)], flushed; follower 2 restored with
    `follower_terms`; the blank entry's probe to 2 not yet delivered."""
    leader = h.restored(1, M3, terms=[1], vote=Vote(1, None), committed=1,
                        max_inflight=max_inflight, max_payload_entries=max_payload_entries)
    follower = h.restored(2, M3, terms=list(follower_terms), vote=Vote(1, None),
                          committed=1, max_inflight=max_inflight,
                          max_payload_entries=max_payload_entries)
    _, cmds = h.elect(leader, [3])
    assert leader.state == LEADER
    h.flush_all(leader)
    leader.take_commands()
    return leader, follower, h.only(h.sends(cmds)[2])


@h.isolated
def test_new_leader_probes_each_follower_with_one_request_and_streams_nothing_until_it_answers():
    leader, _, probe = new_leader()
    assert probe == AER(2, 1, 1, 1, [Entry(2, 2, ENTRY_BLANK, None)], 1)
    p = leader.progress_of(2)
    assert (p.state, p.probe_sent, p.next_index, p.matched) == (PROBE, True, 2, 0)
    leader.client_write([b"x"], 0.0)
    assert [type(c) for c in leader.take_commands()] == [Append]
    # At the heartbeat, a probe still unanswered is sent again (it may be lost).
    leader.tick(leader.next_deadline())
    again = h.sends(leader.take_commands())[2]
    assert again == [AER(2, 1, 1, 1, [Entry(2, 2, ENTRY_BLANK, None),
                                      Entry(2, 3, ENTRY_NORMAL, b"x")], 1)]


@h.isolated
def test_successful_probe_switches_progress_to_replicate_at_the_matched_index():
    leader, follower, probe = new_leader()
    resp, _, cmds = h.deliver_append(leader, follower, probe)
    assert resp == AEResp(2, True, 2)
    p = leader.progress_of(2)
    assert (p.state, p.matched, p.next_index, p.inflight_count) == (REPLICATE, 2, 3, 0)
    assert leader.replication() == {2: 2, 3: 0}


@h.isolated
def test_rejected_probe_moves_next_index_back_to_the_follower_hint_and_probes_once_more():
    # Follower 2's log is empty: the probe at prev (1, 1) is rejected with
    # "resume at 1", and the leader probes again from the start.
    leader, follower, probe = new_leader(follower_terms=())
    resp, _, cmds = h.deliver_append(leader, follower, probe)
    assert resp == AEResp(2, False, 0, 1, 0)
    p = leader.progress_of(2)
    assert (p.state, p.next_index, p.probe_sent) == (PROBE, 1, True)
    assert cmds == [SendAppend(2, AER(2, 1, 0, 0, leader.entries(1, 2), 1))]
    resp, _, cmds = h.deliver_append(leader, follower, cmds[0].request)
    assert resp == AEResp(2, True, 2)
    assert (p.state, p.matched, p.next_index) == (REPLICATE, 2, 3)


@h.isolated
def test_pipelined_request_refused_before_an_earlier_one_arrived_is_resent_from_the_matched_index():
    # Two requests out at once; the network swaps them. The second is refused
    # (its previous entry is not there yet), then the first succeeds. The
    # entries of the refused one must go out again, or they would wait for
    # the next write: heartbeats to a replicating follower carry no entries.
    leader, follower, probe = new_leader(max_payload_entries=2)
    h.deliver_append(leader, follower, probe)           # matched 2, replicating
    leader.client_write([b"a", b"b", b"c", b"d"], 0.0)
    r1, r2 = h.sends(leader.take_commands())[2]
    assert (h.last_of(r1), h.last_of(r2)) == (4, 6)
    resp2 = follower.handle_append_entries(r2, 0.0)
    assert resp2 == AEResp(2, False, 0, 3, 0)
    resp1, _, cmds = h.deliver_append(leader, follower, r1)
    assert resp1 == AEResp(2, True, 4) and cmds == []   # r2 is still counted in flight
    leader.handle_append_response(2, r2, resp2, 0.0)
    p = leader.progress_of(2)
    assert p.matched == 4
    assert h.sends(leader.take_commands())[2] == [AER(2, 1, 2, 4, r2.entries, leader.committed)]
    assert p.next_index == 5 and p.matched == 4


@h.isolated
def test_lost_request_is_resent_from_the_matched_index_at_the_next_heartbeat_not_at_once():
    leader, follower, probe = new_leader(max_payload_entries=1)
    h.deliver_append(leader, follower, probe)
    leader.client_write([b"a", b"b"], 0.0)
    ra, rb = h.sends(leader.take_commands())[2]
    h.deliver_append(leader, follower, ra)            # matched 3
    leader.handle_append_failure(2, rb, 0.0)          # (2, 4) lost
    assert leader.take_commands() == []               # no tight retry loop
    p = leader.progress_of(2)
    assert (p.state, p.matched, p.next_index) == (PROBE, 3, 4)
    # Not even a new write retries at once against a peer that may be down.
    leader.client_write([b"c"], 0.0)
    assert leader.take_commands() == [Append([Entry(2, 5, ENTRY_NORMAL, b"c")])]
    leader.tick(leader.next_deadline())
    out = h.sends(leader.take_commands())
    assert out[2] == [AER(2, 1, 2, 3, [Entry(2, 4, ENTRY_NORMAL, b"b")], leader.committed)]


@h.isolated
def test_rejection_never_moves_next_index_to_or_below_the_matched_index():
    leader, follower, probe = new_leader(max_payload_entries=1)
    h.deliver_append(leader, follower, probe)           # matched 2
    leader.client_write([b"a", b"b"], 0.0)
    ra, rb = h.sends(leader.take_commands())[2]
    # An answer to the second request that points far back, below what 2
    # is known to hold: the leader resumes right after the matched index.
    leader.handle_append_response(2, rb, AEResp(2, False, 0, 1, 0), 0.0)
    p = leader.progress_of(2)
    assert (p.state, p.matched, p.next_index) == (PROBE, 2, 3)
    assert h.sends(leader.take_commands())[2] == [
        AER(2, 1, 2, 2, [Entry(2, 3, ENTRY_NORMAL, b"a")], leader.committed)]


@h.isolated
def test_heartbeat_never_claims_a_commit_index_beyond_what_the_follower_is_known_to_match():
    leader, f2, probe2 = new_leader()
    f3 = h.restored(3, M3, terms=[1], vote=Vote(1, None), committed=1)
    leader.trigger_heartbeat(0.0)                       # probes again, to both
    probe3 = h.sends(leader.take_commands())[3][0]
    h.deliver_append(leader, f2, probe2)
    h.deliver_append(leader, f3, probe3)                # both matched 2
    leader.client_write([b"x", b"y"], 0.0)
    reqs = h.sends(leader.take_commands())
    h.flush_all(leader)
    h.deliver_append(leader, f2, h.only(reqs[2]))       # only 2 holds 3..4
    assert leader.committed == 4
    leader.take_commands()
    leader.tick(leader.next_deadline())
    out = h.sends(leader.take_commands())
    assert out[2] == [AER(2, 1, 2, 4, [], 4)]
    assert out[3] == [AER(2, 1, 2, 2, [], 2)]          # not 4: 3 may not hold (2, 4) yet
