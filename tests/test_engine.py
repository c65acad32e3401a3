"""Unit tests of the Raft engine (raftcore.engine), driven synchronously.

Each test steps one or more engines by hand and asserts the exact commands
they emit. Names say the rule proved, most of them a sentence of the Raft
paper (Ongaro & Ousterhout, "In Search of an Understandable Consensus
Algorithm", extended version), as etcd raft's raft_paper_test.go does.

Every engine test runs in a forked child (`isolated`), so that a crash of the
compiled engine fails that test, with the Python stack at the crash, instead
of killing the whole run.
"""
import importlib.machinery
import importlib
import random

import pytest

import engine_harness as h     # tests/engine_harness.py, on the path through conftest.py

import raftcore.engine
from raftcore.commands import (Append, Apply, SaveVote, SendAppend, SendTransfer, SendVote,
                               Truncate)
from raftcore.engine import CANDIDATE, FOLLOWER, LEADER, LEARNER
from raftcore.errors import ForwardToLeader, NotAllowed
from raftcore.messages import (AppendEntriesRequest as AER, AppendEntriesResponse as AEResp,
                               VoteRequest, VoteResponse)
from raftcore.types import ENTRY_BLANK, ENTRY_NORMAL, Entry, Vote

isolated = h.isolated
restored = h.restored
members = h.members
elect = h.elect
sends = h.sends
only = h.only
deliver_append = h.deliver_append
flush_all = h.flush_all
log_ids = h.log_ids

M3 = members({1, 2, 3})
M4 = members({1, 2, 3, 4})
M5 = members({1, 2, 3, 4, 5})
JOINT = members({1, 2, 3}, {1, 4, 5})

PROBE, REPLICATE = 0, 1   # raftcore.progress states


def blank(term, index):
    return Entry(term, index, ENTRY_BLANK, None)


def normal(term, index, data):
    return Entry(term, index, ENTRY_NORMAL, data)


def cluster(membership=M3, acked=None, **config):
    """Leader 1 elected in term 2 over followers that all hold [(1, 1)]
    (committed). The leader's blank entry (2, 2) is flushed on the leader
    first, then delivered to the followers in `acked` (all by default), so
    those end in REPLICATE with matched 2. Returns (leader, {id: follower})."""
    ids = sorted(membership.nodes)
    leader = restored(1, membership, terms=[1], vote=Vote(1, None), committed=1, **config)
    followers = {i: restored(i, membership, terms=[1], vote=Vote(1, None), committed=1, **config)
                 for i in ids if i != 1}
    _, cmds = elect(leader, [i for i in ids if i != 1])
    assert leader.state == LEADER
    flush_all(leader)
    leader.take_commands()
    out = sends(cmds)
    for i in (ids[1:] if acked is None else acked):
        resp, _, _ = deliver_append(leader, followers[i], only(out[i]))
        assert resp.success
    return leader, followers


# ------------------------------------------------------------------ build


def test_engine_runs_as_a_compiled_extension_module_not_python_source():
    for name in ("engine", "types", "log", "progress", "quorum", "messages", "membership"):
        mod = importlib.import_module(f"raftcore.{name}")
        assert mod.__file__.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES)), mod.__file__
        assert isinstance(mod.__loader__, importlib.machinery.ExtensionFileLoader), mod.__loader__
        assert not hasattr(mod, "__cached__") or mod.__cached__ is None
    assert raftcore.engine.Engine.__module__ == "raftcore.engine"
    assert type(raftcore.engine.Engine.tick).__name__ in ("method_descriptor", "cython_function_or_method")


# ---------------------------------------------------------------- election


@isolated
def test_follower_that_hears_nothing_for_an_election_timeout_saves_a_vote_for_itself_in_the_next_term_before_requesting_votes():
    e = restored(1, M3, terms=[1, 1], vote=Vote(1, 2, True), committed=1, rng=0.25)
    # timeout = min + rng() * (max - min) = 1.0 + 0.25 * 1.0
    assert e.next_deadline() == 1.25
    e.tick(1.2499)
    assert e.take_commands() == []
    assert e.state == FOLLOWER
    e.tick(1.25)
    assert e.take_commands() == [
        SaveVote(Vote(2, 1, False)),
        SendVote(2, VoteRequest(2, 1, 1, 2)),
        SendVote(3, VoteRequest(2, 1, 1, 2)),
    ]
    assert e.state == CANDIDATE
    assert e.vote == Vote(2, 1, False)


@isolated
def test_follower_that_receives_append_entries_from_the_leader_does_not_start_an_election():
    e = restored(2, M3, terms=[1], vote=Vote(1, 1, True), committed=1)
    e.tick(0.9)
    assert e.handle_append_entries(AER(1, 1, 1, 1, [], 1), 0.9) == AEResp(1, True, 1)
    assert e.take_commands() == []
    e.tick(1.5)                      # the original deadline (1.0) has passed
    assert e.take_commands() == []
    assert e.state == FOLLOWER
    e.tick(1.9)                      # 0.9 + election timeout
    assert e.take_commands()[0] == SaveVote(Vote(2, 2, False))


@isolated
def test_follower_that_grants_a_vote_waits_a_full_election_timeout_before_campaigning():
    # Figure 2, followers: convert to candidate only if the election timeout
    # elapses "without receiving AppendEntries ... or granting vote to candidate".
    # (same term: nothing but the grant itself restarts the timer)
    e = restored(2, M3, terms=[1], vote=Vote(2, None), committed=1)
    assert e.handle_vote_request(VoteRequest(2, 3, 1, 1), 0.9) == VoteResponse(2, True, 2)
    e.take_commands()
    e.tick(1.5)                      # the deadline set at start (1.0) has passed
    assert e.take_commands() == []
    e.tick(1.9)                      # 0.9 + election timeout
    assert e.take_commands()[0] == SaveVote(Vote(3, 2, False))


@isolated
def test_learner_never_starts_an_election():
    m = members({1, 2, 3}, learners={4})
    e = restored(4, m, terms=[1], vote=Vote(1, None), committed=1)
    assert e.state == LEARNER
    for t in (1.0, 5.0, 50.0):
        e.tick(t)
        assert e.take_commands() == []
    with pytest.raises(NotAllowed):
        e.trigger_elect(60.0)
    assert e.take_commands() == []


@isolated
@pytest.mark.parametrize("last_term, last_index, granted", [
    (3, 1, True),    # higher last term wins even with a shorter log
    (2, 3, True),    # same last term, same length
    (2, 4, True),    # same last term, longer log
    (2, 2, False),   # same last term, shorter log
    (1, 9, False),   # lower last term loses even with a longer log
    (0, 0, False),   # empty log
])
def test_voter_grants_its_vote_only_to_a_candidate_whose_log_is_at_least_as_up_to_date(
        last_term, last_index, granted):
    # Section 5.4.1: "the voter denies its vote if its own log is more up-to-date".
    voter = restored(2, M3, terms=[1, 1, 2], vote=Vote(3, None), committed=1)
    resp = voter.handle_vote_request(VoteRequest(3, 3, last_term, last_index), 0.0)
    assert resp == VoteResponse(3, granted, 2)
    if granted:
        assert voter.take_commands() == [SaveVote(Vote(3, 3, False))]
        assert voter.vote == Vote(3, 3, False)
    else:
        assert voter.take_commands() == []
        assert voter.vote == Vote(3, None)


@isolated
def test_voter_grants_at_most_one_vote_per_term_first_come_first_served_even_across_a_restart():
    voter = restored(2, M3, terms=[1], vote=Vote(3, None), committed=1)
    assert voter.handle_vote_request(VoteRequest(3, 1, 1, 1), 0.0) == VoteResponse(3, True, 2)
    assert voter.take_commands() == [SaveVote(Vote(3, 1, False))]
    # A second candidate of the same term, with an even better log, is refused.
    assert voter.handle_vote_request(VoteRequest(3, 3, 2, 5), 0.0) == VoteResponse(3, False, 2)
    assert voter.take_commands() == []
    # The same candidate asking again (a retry) gets the same answer; nothing new to save.
    assert voter.handle_vote_request(VoteRequest(3, 1, 1, 1), 0.0) == VoteResponse(3, True, 2)
    assert voter.take_commands() == []
    # After a restart from the saved vote, the vote still holds.
    again = restored(2, M3, terms=[1], vote=Vote(3, 1, False), committed=1)
    assert again.handle_vote_request(VoteRequest(3, 3, 2, 5), 0.0) == VoteResponse(3, False, 2)
    assert again.take_commands() == []


@isolated
@pytest.mark.parametrize("voter_state", ["follower same term", "follower older term",
                                         "candidate older term", "leader older term"])
def test_vote_is_saved_before_the_response_that_grants_it(voter_state):
    # Figure 2: persistent state (votedFor) is updated on stable storage
    # before responding to RPCs. The runtime runs the emitted commands before
    # it sends the response, so the granting save_vote must already be out.
    if voter_state == "follower same term":
        voter = restored(2, M3, terms=[1], vote=Vote(4, None), committed=1)
    elif voter_state == "follower older term":
        voter = restored(2, M3, terms=[1], vote=Vote(2, 1, True), committed=1)
    elif voter_state == "candidate older term":
        voter = restored(2, M3, terms=[1], vote=Vote(2, None), committed=1)
        voter.trigger_elect(0.0)
        assert voter.state == CANDIDATE
    else:
        voter, _ = cluster(M3)
        voter.take_commands()
    voter.take_commands()
    # (at 3.0: long after any leader lease or vote refusal window of time 0)
    resp = voter.handle_vote_request(VoteRequest(4, 3, 2, 10), 3.0)
    assert resp == VoteResponse(4, True, voter.id)
    cmds = voter.take_commands()
    assert cmds and all(isinstance(c, SaveVote) for c in cmds), cmds
    assert cmds[-1] == SaveVote(Vote(4, 3, False))
    assert voter.state == FOLLOWER


@isolated
def test_candidate_becomes_leader_once_a_majority_granted_and_not_before():
    e = restored(1, M5, terms=[1, 1], vote=Vote(1, None), committed=1)
    req, cmds = elect(e, [])
    assert cmds == [SaveVote(Vote(2, 1, False))] + [
        SendVote(i, VoteRequest(2, 1, 1, 2)) for i in (2, 3, 4, 5)]
    e.handle_vote_response(2, req, VoteResponse(2, True, 2), 0.0)
    e.handle_vote_response(3, req, VoteResponse(2, False, 3), 0.0)    # refusal: not a vote
    e.handle_vote_response(2, req, VoteResponse(2, True, 2), 0.0)     # duplicate: counts once
    assert e.take_commands() == []
    assert e.state == CANDIDATE
    e.handle_vote_response(4, req, VoteResponse(2, True, 4), 0.0)
    assert e.state == LEADER and e.leader_id == 1
    assert e.take_commands()[0] == SaveVote(Vote(2, 1, True))


@isolated
def test_new_leader_appends_a_blank_entry_of_its_term_and_sends_it_to_every_follower():
    # Section 8: "each leader commit a blank no-op entry into the log at the start of its term".
    e = restored(1, M3, terms=[1, 1], vote=Vote(1, None), committed=1)
    _, cmds = elect(e, [3])
    b = blank(2, 3)
    assert cmds[-4:] == [
        SaveVote(Vote(2, 1, True)),
        Append([b]),
        SendAppend(2, AER(2, 1, 1, 2, [b], 1)),
        SendAppend(3, AER(2, 1, 1, 2, [b], 1)),
    ]
    assert e.last_log_id() == h.LogId(2, 3)


@isolated
def test_leader_ignores_vote_responses_that_arrive_after_it_won():
    e = restored(1, M5, terms=[1], vote=Vote(1, None), committed=1)
    req, _ = elect(e, [2, 3])
    assert e.state == LEADER
    e.handle_vote_response(4, req, VoteResponse(2, True, 4), 0.0)
    assert e.take_commands() == []        # in particular no second blank entry
    assert e.last_log_index == 2


@isolated
def test_vote_request_of_a_stale_term_is_refused_with_the_current_term_and_changes_nothing():
    voter = restored(2, M3, terms=[1, 5], vote=Vote(5, 1, True), committed=1)
    assert voter.handle_vote_request(VoteRequest(4, 3, 9, 99), 0.0) == VoteResponse(5, False, 2)
    assert voter.take_commands() == []
    assert voter.vote == Vote(5, 1, True)


@isolated
def test_vote_responses_to_an_earlier_term_do_not_count_in_a_later_election():
    e = restored(1, M3, terms=[1], vote=Vote(1, None), committed=1)
    old_req, _ = elect(e, [])          # term 2, no answers in time
    new_req, _ = elect(e, [])          # term 3
    assert new_req.term == 3
    e.handle_vote_response(2, old_req, VoteResponse(2, True, 2), 0.0)
    e.handle_vote_response(3, old_req, VoteResponse(2, True, 3), 0.0)
    assert e.take_commands() == []
    assert e.state == CANDIDATE and e.vote == Vote(3, 1, False)
    e.handle_vote_response(2, new_req, VoteResponse(3, True, 2), 0.0)
    assert e.state == LEADER


@isolated
@pytest.mark.parametrize("message", ["vote request", "vote response", "append entries",
                                     "append response"])
def test_leader_that_sees_a_higher_term_steps_down_and_saves_the_new_term(message):
    # Section 5.1: "If a candidate or leader discovers that its term is out of
    # date, it immediately reverts to follower state." The events come at
    # t = 3, after the leader's lease (heard from a quorum at t = 0) ran out.
    leader, _ = cluster(M3)
    leader.take_commands()
    assert leader.vote == Vote(2, 1, True)
    t = 3.0
    blank_req = AER(2, 1, 1, 1, [blank(2, 2)], 1)
    if message == "vote request":
        # A candidate whose log is behind: the term is adopted, the vote refused.
        resp = leader.handle_vote_request(VoteRequest(5, 3, 1, 1), t)
        assert resp == VoteResponse(5, False, 1)
        expected = [SaveVote(Vote(5, None, False))]
    elif message == "vote response":
        leader.handle_vote_response(2, VoteRequest(2, 1, 1, 1), VoteResponse(5, False, 2), t)
        expected = [SaveVote(Vote(5, None, False))]
    elif message == "append entries":
        resp = leader.handle_append_entries(AER(5, 3, 2, 2, [], 2), t)
        assert resp == AEResp(5, True, 2)
        expected = [SaveVote(Vote(5, 3, True))]
    else:
        leader.handle_append_response(2, blank_req, AEResp(5, False), t)
        expected = [SaveVote(Vote(5, None, False))]
    assert leader.take_commands() == expected
    assert leader.state == FOLLOWER
    assert leader.vote.term == 5
    with pytest.raises(ForwardToLeader):
        leader.client_write([b"x"], t)
    # Nothing of its old leadership goes on: no heartbeats, old answers ignored.
    leader.handle_append_response(2, blank_req, AEResp(2, True, 2), t)
    leader.tick(t + 0.6)
    assert sends(leader.take_commands()) == {}
    assert leader.replication() is None


@isolated
def test_leader_whose_lease_holds_refuses_votes_without_adopting_the_higher_term():
    # Raft thesis 4.2.3 (disruptive servers): a server that heard from a
    # current leader within the minimum election timeout neither updates its
    # term nor grants its vote. Here the leader heard from a quorum at t = 0.
    leader, _ = cluster(M3)
    leader.take_commands()
    assert leader.lease_valid(0.99)
    assert leader.handle_vote_request(VoteRequest(5, 3, 9, 99), 0.99) == VoteResponse(2, False, 1)
    assert leader.take_commands() == []
    assert leader.state == LEADER and leader.vote == Vote(2, 1, True)
    # Once the lease is over, the same request deposes it and wins its vote.
    assert not leader.lease_valid(1.0)
    assert leader.handle_vote_request(VoteRequest(5, 3, 9, 99), 1.0) == VoteResponse(5, True, 1)
    cmds = leader.take_commands()
    assert cmds[-1] == SaveVote(Vote(5, 3, False))
    assert leader.state == FOLLOWER


@isolated
def test_lease_is_election_timeout_min_over_one_plus_the_clock_drift_bound_less_the_margin():
    # Followers refuse votes for election_timeout_min (1.0) by their own
    # clocks; one running 1.5 times as fast as the leader's (max_clock_drift
    # 0.5) stops refusing after 1 / 1.5 by the leader's clock.
    leader, followers = cluster(M3, max_clock_drift=0.5, lease_margin=0.05)
    lease = 1.0 / 1.5 - 0.05
    assert leader.lease_duration == lease
    leader.take_commands()
    # cluster() had a quorum acknowledge the round sent at t = 0.
    assert leader.lease_read(lease - 1e-6) == leader.committed
    assert leader.lease_read(lease) == -1
    # Past the lease a read is confirmed by a new round (ReadIndex): a
    # heartbeat to each follower, and nothing confirmed until a quorum answers.
    index, seq = leader.read_index(lease)
    heartbeats = sends(leader.take_commands())
    assert sorted(heartbeats) == [2, 3] and leader.confirmed_seq < seq
    deliver_append(leader, followers[2], only(heartbeats[2]), now=lease + 0.1)
    assert leader.confirmed_seq >= seq and index == leader.committed
    # The confirming round renews the lease, counted from its send.
    assert leader.lease_read(2 * lease - 1e-6) == index
    assert leader.lease_read(2 * lease) == -1


@pytest.mark.parametrize("drift, margin", [(-0.1, 0.0), (float("inf"), 0.0),
                                           (float("nan"), 0.0), (0.5, 1.0 / 1.5)])
def test_engine_refuses_a_negative_drift_bound_or_a_margin_that_leaves_no_lease(drift, margin):
    with pytest.raises(ValueError, match="max_clock_drift|lease_margin"):
        h.make_engine(1, max_clock_drift=drift, lease_margin=margin)


def answered_heartbeats(leader, followers, until, answering):
    """Ticks the leader through its heartbeat rounds up to `until`; the
    followers in `answering` answer each at once, the others' are lost."""
    while leader.heartbeat_deadline <= until:
        t = leader.heartbeat_deadline
        leader.tick(t)
        out = sends(leader.take_commands())
        for i in answering:
            deliver_append(leader, followers[i], only(out[i]), now=t)


@isolated
@pytest.mark.parametrize("change", ["learner added", "same voters"])
def test_check_quorum_still_counts_voters_that_answered_just_before_a_membership_change(change):
    # check_quorum: a leader steps down once no quorum answered a round sent
    # within election_timeout_max (2.0). A membership change that keeps the
    # voters must not make it forget that they answered a moment ago.
    leader, followers = cluster(M3, check_quorum=True)
    leader.take_commands()
    answered_heartbeats(leader, followers, 3.0, answering=[2, 3])
    answered_heartbeats(leader, followers, 4.5, answering=[])     # answers still on their way
    new = members({1, 2, 3}, learners=[4]) if change == "learner added" else members({1, 2, 3})
    leader.change_membership(new, 4.6)
    leader.tick(4.75)
    assert leader.state == LEADER
    # The last answered round was sent at 3.0: the check still fires once it
    # is election_timeout_max old, not later.
    leader.tick(5.1)
    assert leader.state == FOLLOWER


@isolated
@pytest.mark.parametrize("new_voters, leads", [({1, 3, 4}, True), ({1, 2, 4}, False)])
def test_check_quorum_in_a_joint_configuration_counts_answers_of_a_quorum_of_each_voter_set(
        new_voters, leads):
    # Node 3 answers every round, node 2 has been silent since t = 0, node 4
    # is added and has answered nothing. {1, 3, 4} holds a quorum that
    # answered; {1, 2, 4} does not (node 3's answers count only in the old set).
    leader, followers = cluster(M3, check_quorum=True)
    leader.take_commands()
    answered_heartbeats(leader, followers, 3.0, answering=[3])
    leader.change_membership(members({1, 2, 3}, new_voters), 3.1)
    leader.tick(3.2)
    assert (leader.state == LEADER) is leads


@isolated
@pytest.mark.parametrize("new, acked, lease", [
    (members({1, 2, 3}, learners=[4]), [2, 3], True),
    (members({1, 2, 3}, {1, 2, 4}), [2, 3], True),
    (members({1, 2, 3}, {1, 4, 5}), [2, 3], False),      # only the leader in the new set answered
    (members({1, 2, 3}, {1, 2, 4}), [3, 4], False),      # 4 answered as a learner, not as a voter
])
def test_lease_after_a_membership_change_counts_only_voters_that_answered_as_voters_of_each_set(
        new, acked, lease):
    # The followers in `acked` answered the round sent at t = 0: the lease
    # holds until 1.0 if they make a quorum of every voter set of the new
    # membership. Answers of a node that was not a voter promise nothing.
    leader, _ = cluster(members({1, 2, 3}, learners=[4]), acked=acked)
    leader.take_commands()
    leader.change_membership(new, 0.1)
    assert leader.lease_valid(0.2) is lease


@isolated
def test_follower_that_heard_from_the_leader_within_the_minimum_election_timeout_refuses_votes():
    f = restored(2, M3, terms=[1], vote=Vote(1, 1, True), committed=1)
    assert f.handle_append_entries(AER(1, 1, 1, 1, [], 1), 0.2) == AEResp(1, True, 1)
    assert f.handle_vote_request(VoteRequest(2, 3, 1, 1), 1.19) == VoteResponse(1, False, 2)
    assert f.take_commands() == [] and f.vote == Vote(1, 1, True)
    assert f.handle_vote_request(VoteRequest(2, 3, 1, 1), 1.2) == VoteResponse(2, True, 2)
    assert f.take_commands()[-1] == SaveVote(Vote(2, 3, False))


@isolated
def test_delayed_vote_request_of_an_abandoned_leadership_transfer_cannot_elect_a_leader_during_the_old_leaders_lease():
    # Raft thesis 6.4.1: a lease is safe only if no other leader can be
    # elected before it ends. Leader 1 asks 2 to take over; 2's transfer vote
    # requests are delayed; the transfer times out and 1 leads on, renewing
    # its lease with 3's ack at t = 2.0. Then 2's old request reaches 3.
    nodes = {i: restored(i, M3, terms=[1], vote=Vote(1, None), committed=1) for i in (1, 2, 3)}
    n1, n2, n3 = nodes[1], nodes[2], nodes[3]
    _, cmds = elect(n1, [2, 3])
    flush_all(n1)
    n1.take_commands()
    for i in (2, 3):
        deliver_append(n1, nodes[i], only(sends(cmds)[i]))
    n1.transfer_leader(2, 0.0)
    transfer = only(sends(n1.take_commands(), SendTransfer)[2])
    n2.handle_transfer_leader(transfer, 0.0)
    delayed = only(sends(n2.take_commands(), SendVote)[3])
    assert delayed.transfer and delayed.term == 3
    n1.tick(2.0)                                   # transfer deadline: 0 + election_timeout_max
    heartbeat = only(sends(n1.take_commands())[3])
    deliver_append(n1, n3, heartbeat, now=2.0)
    resp = n3.handle_vote_request(delayed, 2.1)
    n3.take_commands()
    n2.handle_vote_response(3, delayed, resp, 2.1)
    # Never both: a leader of term 3 and a term-2 leader that trusts its lease
    # (it would serve reads that miss term 3's commits).
    assert not (n2.state == LEADER and n1.state == LEADER and n1.lease_valid(2.1)), \
        (f"node 2 leads term {n2.vote.term} while node 1 (term {n1.vote.term}) holds a lease "
         f"and would answer lease_read(2.1) = {n1.lease_read(2.1)}")


@isolated
def test_pre_vote_round_changes_no_term_and_saves_no_vote_until_a_majority_would_grant():
    # Raft thesis 9.6: a candidate first asks whether it would win, without
    # raising any term; only then does it start the real election.
    # (Their logs are the first entry alone and record no incarnations:
    # their requests ask as in a cluster's first election: `fresh`.)
    cand = restored(1, M3, terms=[1], vote=Vote(1, None), committed=1, pre_vote=True)
    voter = restored(2, M3, terms=[1], vote=Vote(1, None), committed=1, pre_vote=True)
    cand.tick(cand.next_deadline())
    pre = VoteRequest(2, 1, 1, 1, True, False, fresh={2, 3})
    assert cand.take_commands() == [SendVote(2, pre), SendVote(3, pre)]
    assert cand.vote == Vote(1, None) and cand.state == FOLLOWER
    resp = voter.handle_vote_request(pre, 1.0)
    assert resp == VoteResponse(1, True, 2)
    assert voter.take_commands() == [] and voter.vote == Vote(1, None)
    cand.handle_vote_response(2, pre, resp, 1.0)
    assert cand.take_commands() == [
        SaveVote(Vote(2, 1, False)),
        SendVote(2, VoteRequest(2, 1, 1, 1, fresh={2, 3})),
        SendVote(3, VoteRequest(2, 1, 1, 1, fresh={2, 3})),
    ]
    assert cand.state == CANDIDATE


@isolated
def test_candidate_that_receives_append_entries_from_a_leader_of_its_term_becomes_its_follower():
    e = restored(3, M3, terms=[1], vote=Vote(1, None), committed=1)
    e.trigger_elect(0.0)
    e.take_commands()
    assert e.state == CANDIDATE and e.vote == Vote(2, 3, False)
    resp = e.handle_append_entries(AER(2, 1, 1, 1, [blank(2, 2)], 1), 0.0)
    assert resp == AEResp(2, True, 2)
    assert e.take_commands() == [Append([blank(2, 2)])]    # its vote stands: no save_vote
    assert e.state == FOLLOWER and e.leader_id == 1


@isolated
def test_dueling_candidates_of_one_term_refuse_each_other_and_neither_wins_until_a_later_term():
    # Section 5.2: a split vote ends with a timeout and a new election.
    # Node 3 is unreachable; 1 and 2 both campaign in term 2.
    n1 = restored(1, M3, terms=[1], vote=Vote(1, None), committed=1, rng=0.8)
    n2 = restored(2, M3, terms=[1], vote=Vote(1, None), committed=1, rng=0.2)
    n1.trigger_elect(0.0)
    n2.trigger_elect(0.0)
    r1 = only(sends(n1.take_commands(), SendVote)[2])
    r2 = only(sends(n2.take_commands(), SendVote)[1])
    a1 = n2.handle_vote_request(r1, 0.0)
    a2 = n1.handle_vote_request(r2, 0.0)
    assert a1 == VoteResponse(2, False, 2) and a2 == VoteResponse(2, False, 1)
    assert n1.take_commands() == [] and n2.take_commands() == []
    n1.handle_vote_response(2, r1, a1, 0.0)
    n2.handle_vote_response(1, r2, a2, 0.0)
    assert n1.state == CANDIDATE and n2.state == CANDIDATE
    assert n1.take_commands() == [] and n2.take_commands() == []
    # Randomized timeouts: 2's fires first (rng 0.2 < 0.8).
    assert n2.next_deadline() < n1.next_deadline()
    t = n2.next_deadline()
    n1.tick(t)
    n2.tick(t)
    assert n1.take_commands() == []
    cmds = n2.take_commands()
    assert cmds[0] == SaveVote(Vote(3, 2, False))
    r3 = only(sends(cmds, SendVote)[1])
    a3 = n1.handle_vote_request(r3, t)
    assert a3 == VoteResponse(3, True, 1)
    assert n1.state == FOLLOWER
    n2.handle_vote_response(1, r3, a3, t)
    assert n2.state == LEADER and n2.vote == Vote(3, 2, True)


@isolated
def test_split_vote_among_four_voters_is_resolved_by_the_first_randomized_timeout():
    rngs = {1: 0.1, 2: 0.3, 3: 0.5, 4: 0.9}
    nodes = {i: restored(i, M4, terms=[1], vote=Vote(1, None), committed=1, rng=rngs[i])
             for i in (1, 2, 3, 4)}
    nodes[1].trigger_elect(0.0)
    nodes[2].trigger_elect(0.0)
    reqs = {i: sends(nodes[i].take_commands(), SendVote) for i in (1, 2)}
    # 3 hears from 1 first, 4 from 2 first: two votes each, three needed.
    order = [(1, 3), (2, 4), (1, 2), (2, 1), (1, 4), (2, 3)]
    for cand, voter in order:
        req = only(reqs[cand][voter])
        resp = nodes[voter].handle_vote_request(req, 0.0)
        nodes[voter].take_commands()
        nodes[cand].handle_vote_response(voter, req, resp, 0.0)
    assert [nodes[i].state for i in (1, 2, 3, 4)] == [CANDIDATE, CANDIDATE, FOLLOWER, FOLLOWER]
    assert all(n.take_commands() == [] for n in nodes.values())
    # The earliest deadline of all four is a candidate's (1's, at 0 + 1.1):
    first = min(nodes, key=lambda i: nodes[i].next_deadline())
    assert first in (1, 2)
    t = nodes[first].next_deadline()
    for n in nodes.values():
        n.tick(t)
    cmds = {i: nodes[i].take_commands() for i in nodes}
    assert [i for i in nodes if cmds[i]] == [first]
    out = sends(cmds[first], SendVote)
    for voter, rs in sorted(out.items()):
        resp = nodes[voter].handle_vote_request(only(rs), t)
        assert resp.granted
        nodes[first].handle_vote_response(voter, only(rs), resp, t)
    assert nodes[first].state == LEADER and nodes[first].vote.term == 3
    assert sum(n.state == LEADER for n in nodes.values()) == 1


@isolated
def test_joint_membership_elects_only_with_a_majority_of_both_voter_sets():
    e = restored(1, JOINT, terms=[1], vote=Vote(1, None), committed=1)
    req, _ = elect(e, [2, 3])          # all of the old set, none of the new but itself
    assert e.state == CANDIDATE
    e.handle_vote_response(4, req, VoteResponse(2, True, 4), 0.0)
    assert e.state == LEADER
    f = restored(1, JOINT, terms=[1], vote=Vote(1, None), committed=1)
    elect(f, [4, 5])                   # all of the new set only
    assert f.state == CANDIDATE


# ------------------------------------------------------------- replication


@isolated
def test_leader_appends_a_client_write_locally_then_sends_it_to_every_replicating_follower():
    leader, _ = cluster(M3)
    leader.take_commands()
    assert leader.client_write([b"a", b"b"], 0.0) == 3
    e3, e4 = normal(2, 3, b"a"), normal(2, 4, b"b")
    assert leader.take_commands() == [
        Append([e3, e4]),
        SendAppend(2, AER(2, 1, 2, 2, [e3, e4], 2)),
        SendAppend(3, AER(2, 1, 2, 2, [e3, e4], 2)),
    ]


@isolated
def test_write_to_a_follower_raises_forward_to_leader_naming_the_leader():
    _, followers = cluster(M3)
    with pytest.raises(ForwardToLeader) as info:
        followers[2].client_write([b"x"], 0.0)
    assert info.value.leader_id == 1 and info.value.leader_node == "node-1"
    assert followers[2].take_commands() == []


@isolated
def test_leader_sends_nothing_more_to_a_follower_whose_probe_is_unanswered():
    leader, _ = cluster(M3, acked=[2])
    leader.take_commands()
    leader.client_write([b"x"], 0.0)
    x = normal(2, 3, b"x")
    assert leader.take_commands() == [Append([x]), SendAppend(2, AER(2, 1, 2, 2, [x], 2))]
    p = leader.progress_of(3)
    assert (p.state, p.probe_sent, p.next_index) == (PROBE, True, 2)


@isolated
def test_append_batches_carry_at_most_max_payload_entries():
    leader, _ = cluster(M3, max_payload_entries=2, max_inflight=8)
    leader.take_commands()
    data = [b"a", b"b", b"c", b"d", b"e"]
    leader.client_write(data, 0.0)
    es = [normal(2, 3 + i, d) for i, d in enumerate(data)]
    batches = [AER(2, 1, 2, 2, es[0:2], 2), AER(2, 1, 2, 4, es[2:4], 2), AER(2, 1, 2, 6, es[4:5], 2)]
    assert leader.take_commands() == [Append(es)] + [
        SendAppend(t, b) for t in (2, 3) for b in batches]


@isolated
def test_append_batches_stay_within_max_payload_bytes_but_always_carry_one_entry():
    leader, _ = cluster(M3, max_payload_bytes=10, max_inflight=8)
    leader.take_commands()
    data = [b"aaaa", b"bbbb", b"cccc", b"d" * 20, b"e"]
    leader.client_write(data, 0.0)
    es = [normal(2, 3 + i, d) for i, d in enumerate(data)]
    cmds = leader.take_commands()
    got = [[e.payload for e in r.entries] for r in sends(cmds)[2]]
    assert got == [[b"aaaa", b"bbbb"], [b"cccc"], [b"d" * 20], [b"e"]]
    assert [r.prev_log_index for r in sends(cmds)[2]] == [2, 4, 5, 6]
    assert sends(cmds)[3] == sends(cmds)[2]
    assert cmds[0] == Append(es)


@isolated
def test_inflight_window_pipelines_up_to_max_inflight_requests_and_each_ack_reopens_it():
    leader, fs = cluster(M3, acked=[2], max_payload_entries=1, max_inflight=2)
    leader.take_commands()
    leader.client_write([b"a", b"b", b"c", b"d"], 0.0)
    out = sends(leader.take_commands())[2]
    # Two requests out at once, before any answer: pipelined.
    assert [h.last_of(r) for r in out] == [3, 4]
    assert leader.progress_of(2).inflight_count == 2
    leader.client_write([b"e"], 0.0)
    assert 2 not in sends(leader.take_commands())
    _, _, cmds = deliver_append(leader, fs[2], out[0])
    assert [(c.target, h.last_of(c.request)) for c in cmds if isinstance(c, SendAppend)] == [(2, 5)]
    _, _, cmds = deliver_append(leader, fs[2], out[1])
    assert [(c.target, h.last_of(c.request)) for c in cmds if isinstance(c, SendAppend)] == [(2, 6)]
    assert leader.progress_of(2).inflight_count == 2
    assert leader.progress_of(2).matched == 4


@isolated
def test_reordered_append_responses_never_lower_matched_nor_leak_inflight_slots():
    leader, fs = cluster(M3, acked=[2], max_payload_entries=1, max_inflight=3)
    leader.take_commands()
    leader.client_write([b"a", b"b", b"c"], 0.0)
    reqs = sends(leader.take_commands())[2]
    flush_all(leader)
    leader.take_commands()
    f = fs[2]
    resps = []
    for r in reqs:
        resps.append(f.handle_append_entries(r, 0.0))
        flush_all(f)
        f.take_commands()
    assert [r.matched for r in resps] == [3, 4, 5]
    p = leader.progress_of(2)
    leader.handle_append_response(2, reqs[1], resps[1], 0.0)     # 4 before 3
    assert (p.matched, p.inflight_count) == (4, 1)
    assert leader.committed == 4
    leader.handle_append_response(2, reqs[0], resps[0], 0.0)     # the late 3
    assert (p.matched, p.inflight_count, leader.committed) == (4, 1, 4)
    leader.handle_append_response(2, reqs[2], resps[2], 0.0)
    assert (p.matched, p.inflight_count, leader.committed) == (5, 0, 5)
    leader.handle_append_response(2, reqs[0], resps[0], 0.0)     # a duplicate of 3
    assert (p.matched, p.inflight_count, leader.committed) == (5, 0, 5)
    assert p.state == REPLICATE
    leader.take_commands()
    # The whole window is free again: three more requests go out at once.
    leader.client_write([b"d", b"e", b"f", b"g"], 0.0)
    assert [h.last_of(r) for r in sends(leader.take_commands())[2]] == [6, 7, 8]


@isolated
def test_append_entries_of_a_stale_term_is_rejected_with_the_current_term_and_changes_nothing():
    f = restored(2, M3, terms=[1, 1], vote=Vote(5, 3, True), committed=1)
    req = AER(4, 1, 1, 2, [normal(4, 3, b"x")], 2)
    assert f.handle_append_entries(req, 0.0) == AEResp(5, False, 0, 0, 0)
    assert f.take_commands() == []
    assert log_ids(f) == [(1, 1), (1, 2)]
    assert f.committed == 1 and f.vote == Vote(5, 3, True)


@isolated
def test_follower_rejects_entries_whose_previous_entry_it_does_not_hold_and_hints_where_to_resume():
    # Figure 2: "Reply false if log doesn't contain an entry at prevLogIndex
    # whose term matches prevLogTerm".
    f = restored(2, M3, terms=[1, 1, 1], vote=Vote(2, 1, True), committed=1)
    # prev beyond the end: resume right after the follower's last entry.
    assert f.handle_append_entries(AER(2, 1, 2, 5, [normal(2, 6, b"x")], 1), 0.0) == \
        AEResp(2, False, 0, 4, 0)
    # prev present with another term: resume at the first entry of that term.
    assert f.handle_append_entries(AER(2, 1, 2, 3, [normal(2, 4, b"x")], 1), 0.0) == \
        AEResp(2, False, 0, 1, 1)
    assert f.take_commands() == []
    assert log_ids(f) == [(1, 1), (1, 2), (1, 3)]


@isolated
def test_follower_appends_only_the_entries_it_does_not_already_hold():
    f = restored(2, M3, terms=[1, 1, 2, 2, 2], vote=Vote(2, 1, True), committed=2)
    es = h.entries_of_terms([2, 2, 2, 2, 2], start=3)
    resp = f.handle_append_entries(AER(2, 1, 1, 2, es, 2), 0.0)
    assert resp == AEResp(2, True, 7)
    assert f.take_commands() == [Append(es[3:])]
    assert log_ids(f) == [(1, 1), (1, 2), (2, 3), (2, 4), (2, 5), (2, 6), (2, 7)]


@isolated
def test_follower_truncates_only_from_the_first_conflicting_entry():
    # Figure 2: "If an existing entry conflicts with a new one (same index but
    # different terms), delete the existing entry and all that follow it".
    f = restored(2, M3, terms=[1, 1, 2, 2, 2], vote=Vote(3, 1, True), committed=2)
    es = h.entries_of_terms([2, 3, 3, 3], start=3)      # (2, 3) matches, (3, 4) conflicts
    resp = f.handle_append_entries(AER(3, 1, 1, 2, es, 2), 0.0)
    assert resp == AEResp(3, True, 6)
    assert f.take_commands() == [Truncate(4), Append(es[1:])]
    assert log_ids(f) == [(1, 1), (1, 2), (2, 3), (3, 4), (3, 5), (3, 6)]


@isolated
def test_duplicated_or_delayed_older_append_entries_never_deletes_later_entries():
    leader, fs = cluster(M3, acked=[2], max_payload_entries=2)
    leader.take_commands()
    leader.client_write([b"a", b"b", b"c", b"d"], 0.0)
    r_early, r_late = sends(leader.take_commands())[2]
    f = fs[2]
    for r in (r_early, r_late):
        f.handle_append_entries(r, 0.0)
        f.take_commands()
    assert log_ids(f)[-1] == (2, 6)
    for stale in (r_early, r_late, r_early, AER(2, 1, 1, 1, [blank(2, 2)], 1)):
        resp = f.handle_append_entries(stale, 0.0)
        assert resp == AEResp(2, True, h.last_of(stale))
        assert f.take_commands() == []
        assert log_ids(f)[-1] == (2, 6)
    assert f.entries(3, 6) == r_early.entries + r_late.entries


@isolated
def test_follower_commits_up_to_leader_commit_but_never_past_what_the_request_proved_matching():
    # Figure 2: commitIndex = min(leaderCommit, index of last new entry).
    # The follower holds stale entries 3..5 of term 2 that the term-3 leader lacks.
    f = restored(2, M3, terms=[1, 1, 2, 2, 2], vote=Vote(3, 1, True), committed=2)
    assert f.handle_append_entries(AER(3, 1, 1, 2, [], 4), 0.0) == AEResp(3, True, 2)
    assert f.committed == 2
    assert f.take_commands() == []
    e3 = blank(3, 3)
    assert f.handle_append_entries(AER(3, 1, 1, 2, [e3], 4), 0.0) == AEResp(3, True, 3)
    assert f.take_commands() == [Truncate(3), Append([e3])]
    assert f.committed == 3
    f.log_flushed(3, 3)
    assert f.take_commands() == [Apply([e3])]


# Figure 7 of the Raft paper: the leader's log (term 8) and six followers'.
FIG7_LEADER = [1, 1, 1, 4, 4, 5, 5, 6, 6, 6]
FIG7_FOLLOWERS = {
    "a": [1, 1, 1, 4, 4, 5, 5, 6, 6],
    "b": [1, 1, 1, 4],
    "c": [1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 6],
    "d": [1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 7, 7],
    "e": [1, 1, 1, 4, 4, 4, 4],
    "f": [1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3],
}
# At most this many round trips until the follower's log equals the leader's
# (one per conflicting term skipped, plus the one that succeeds).
FIG7_MAX_ROUND_TRIPS = {"a": 2, "b": 2, "c": 1, "d": 1, "e": 3, "f": 3}


@isolated
@pytest.mark.parametrize("name", sorted(FIG7_FOLLOWERS))
def test_leader_brings_each_figure7_follower_log_into_line_with_few_round_trips(name):
    # Section 5.3: the leader finds the latest entry where the two logs agree,
    # the follower deletes what follows it and takes the leader's entries;
    # with the conflict term/index hint, one round trip per conflicting term.
    terms = FIG7_FOLLOWERS[name]
    leader = restored(1, M3, terms=FIG7_LEADER, vote=Vote(7, None), committed=0)
    follower = restored(2, M3, terms=terms, vote=Vote(max(terms), None), committed=0)
    _, cmds = elect(leader, [3])
    assert leader.vote == Vote(8, 1, True)
    assert leader.last_log_id() == h.LogId(8, 11)
    flush_all(leader)
    leader.take_commands()
    target = log_ids(leader)
    divergent = sum(1 for i in range(1, max(len(terms), 11) + 1)
                    if i > len(terms) or i > 11 or (terms[i - 1], i) != target[i - 1])
    first_conflict = next((i for i in range(1, min(len(terms), 11) + 1)
                           if (terms[i - 1], i) != target[i - 1]), None)
    pending = list(sends(cmds)[2])
    round_trips, truncations = 0, []
    while log_ids(follower) != target:
        assert pending, f"the leader stopped sending; follower log {log_ids(follower)}"
        assert round_trips < 20, "no convergence"
        req = pending.pop(0)
        round_trips += 1
        resp, f_cmds, l_cmds = deliver_append(leader, follower, req)
        truncations += [c.since for c in f_cmds if isinstance(c, Truncate)]
        pending += sends(l_cmds).get(2, [])
    assert follower.entries(1, 11) == leader.entries(1, 11)
    assert round_trips <= FIG7_MAX_ROUND_TRIPS[name]
    if divergent >= 6:      # b, e, f: one entry per round trip would take 6 to 8
        assert 2 * round_trips <= divergent, (round_trips, divergent)
    # Matching entries survive: the only truncation starts at the first conflict.
    if first_conflict is None or first_conflict > len(terms):
        assert truncations == []
    else:
        assert truncations == [first_conflict]
    # The leader now knows the follower holds everything, and commits by it.
    assert leader.progress_of(2).matched == 11
    assert leader.committed == 11



@isolated
def test_rejection_naming_a_term_the_leader_also_holds_resumes_right_after_the_leaders_last_entry_of_that_term():
    # The follower's conflicting entry has term 2; the leader's last entry of
    # term 2 is at index 2, so the logs can agree at most up to there.
    leader = restored(1, M3, terms=[1, 2, 3, 3, 3, 3, 3], vote=Vote(3, None), committed=0)
    follower = restored(2, M3, terms=[1, 2, 2, 2, 2, 2], vote=Vote(2, None), committed=0)
    _, cmds = elect(leader, [3])
    flush_all(leader)
    leader.take_commands()
    resp, _, cmds = deliver_append(leader, follower, only(sends(cmds)[2]))
    assert resp == AEResp(4, False, 0, 7, 0)           # no index 7 at all
    resp, _, cmds = deliver_append(leader, follower, only(sends(cmds)[2]))
    assert resp == AEResp(4, False, 0, 2, 2)           # index 6 has term 2, from index 2 on
    assert only(sends(cmds)[2]) == AER(4, 1, 2, 2, leader.entries(3, 8), 0)
    deliver_append(leader, follower, only(sends(cmds)[2]))
    assert log_ids(follower) == log_ids(leader)

# ---------------------------------------------------------------- commit


@isolated
def test_leader_commits_an_old_term_entry_only_once_an_entry_of_its_own_term_is_on_a_majority():
    # Figure 8 / section 5.4.2: "Raft never commits log entries from previous
    # terms by counting replicas."  S1 leads term 4 holding (2, 2) from term 2;
    # S5 holds (3, 2) and could still overwrite (2, 2) if it were committed.
    logs = {1: [1, 2], 2: [1, 2], 3: [1], 4: [1], 5: [1, 3]}
    nodes = {i: restored(i, M5, terms=logs[i], vote=Vote(3, None), committed=1,
                         max_payload_entries=1) for i in logs}
    s1 = nodes[1]
    _, cmds = elect(s1, [2, 3])
    assert s1.vote.term == 4 and s1.last_log_id() == h.LogId(4, 3)
    flush_all(s1)
    assert s1.take_commands() == []
    first = sends(cmds)
    nxt = {}
    for i in (3, 4):
        _, _, c = deliver_append(s1, nodes[i], only(first[i]))   # rejected: no index 2
        probe = only(sends(c)[i])
        assert probe == AER(4, 1, 1, 1, [h.entries_of_terms([2], start=2)[0]], 1)
        _, _, c = deliver_append(s1, nodes[i], probe)             # (2, 2) now on 1, 3 and 4
        nxt[i] = only(sends(c)[i])
        assert nxt[i].entries == [blank(4, 3)]
        assert c == [SendAppend(i, nxt[i])]                 # no apply
    assert s1.replication()[3] == 2 and s1.replication()[4] == 2
    assert s1.committed == 1                                      # a majority holds it, still not committed
    _, _, c = deliver_append(s1, nodes[3], nxt[3])
    assert s1.committed == 1 and c == []
    _, _, c = deliver_append(s1, nodes[4], nxt[4])
    assert s1.committed == 3
    assert c == [Apply([h.entries_of_terms([2], start=2)[0], blank(4, 3)])]


@isolated
def test_leader_counts_its_own_flush_as_one_ack_and_commits_only_once_flushed_on_a_majority():
    leader, fs = cluster(M3)
    leader.take_commands()
    leader.client_write([b"x"], 0.0)
    reqs = sends(leader.take_commands())
    _, _, c = deliver_append(leader, fs[2], only(reqs[2]))
    assert c == [] and leader.committed == 2          # follower 2 only: leader's copy not durable
    leader.log_flushed(2, 3)
    assert leader.committed == 3
    assert leader.take_commands() == [Apply([normal(2, 3, b"x")])]


@isolated
def test_acks_of_a_follower_majority_commit_without_the_leader_and_apply_once_the_leader_flushed():
    # A majority of followers alone (2 of 3) has the entry durably: it is
    # committed. The leader may apply it only from its own durable log
    # (apply never goes beyond min(committed, flushed)), and must apply it
    # as soon as its flush is reported.
    leader, fs = cluster(M3)
    leader.take_commands()
    leader.client_write([b"x"], 0.0)
    reqs = sends(leader.take_commands())
    deliver_append(leader, fs[2], only(reqs[2]))
    _, _, c = deliver_append(leader, fs[3], only(reqs[3]))
    assert leader.committed == 3
    assert c == []                                     # not flushed on the leader: no apply yet
    leader.log_flushed(2, 3)
    assert leader.take_commands() == [Apply([normal(2, 3, b"x")])]


@isolated
def test_acks_of_followers_that_are_no_majority_without_the_leader_wait_for_the_leader_flush():
    leader, fs = cluster(M5)
    leader.take_commands()
    leader.client_write([b"x"], 0.0)
    reqs = sends(leader.take_commands())
    deliver_append(leader, fs[2], only(reqs[2]))
    _, _, c = deliver_append(leader, fs[3], only(reqs[3]))
    assert leader.committed == 2 and c == []           # 2 of 5, leader not durable
    leader.log_flushed(2, 3)
    assert leader.committed == 3
    assert leader.take_commands() == [Apply([normal(2, 3, b"x")])]


@isolated
def test_joint_membership_commits_only_with_a_majority_of_both_voter_sets():
    leader = restored(1, JOINT, terms=[1], vote=Vote(1, None), committed=1)
    fs = {i: restored(i, JOINT, terms=[1], vote=Vote(1, None), committed=1) for i in (2, 3, 4, 5)}
    _, cmds = elect(leader, [2, 4])
    assert leader.state == LEADER
    flush_all(leader)
    leader.take_commands()
    out = sends(cmds)
    assert sorted(out) == [2, 3, 4, 5]
    deliver_append(leader, fs[2], only(out[2]))
    deliver_append(leader, fs[3], only(out[3]))
    assert leader.committed == 1                       # old set {1,2,3}: all; new set {1,4,5}: one
    _, _, c = deliver_append(leader, fs[4], only(out[4]))
    assert leader.committed == 2
    assert c == [Apply([blank(2, 2)])]


@isolated
def test_follower_applies_in_log_order_never_beyond_its_commit_index_nor_its_flushed_log():
    f = restored(2, M3, terms=[1], vote=Vote(1, None), committed=1)
    es = h.entries_of_terms([2, 2, 2, 2, 2], start=2)    # indexes 2..6
    assert f.handle_append_entries(AER(2, 1, 1, 1, es, 5), 0.0) == AEResp(2, True, 6)
    assert f.take_commands() == [SaveVote(Vote(2, 1, True)), Append(es)]
    assert f.committed == 5                             # nothing flushed: nothing applied
    f.log_flushed(2, 3)
    assert f.take_commands() == [Apply(es[0:2])]
    f.log_flushed(2, 3)                                  # a repeated report changes nothing
    assert f.take_commands() == []
    f.log_flushed(2, 6)
    assert f.take_commands() == [Apply(es[2:4])]    # flushed 6, committed 5
    assert f.handle_append_entries(AER(2, 1, 2, 6, [], 6), 0.0) == AEResp(2, True, 6)
    assert f.take_commands() == [Apply(es[4:5])]


@isolated
def test_restart_applies_committed_entries_the_state_machine_had_not_applied():
    f = h.make_engine(2)
    es = h.entries_of_terms([1, 1, 2, 2])
    f.restore(Vote(2, 1, True), None, es, 3, 1, M3)
    assert f.take_commands() == [Apply(es[1:3])]


# ----------------------------------------------------- random simulation


class Sim:
    """Several Nodes exchanging messages through a network that delays,
    reorders, duplicates and drops them, with flushes reported late and
    nodes restarting from what they persisted. Every choice comes from a
    seeded random.Random, so a failure replays exactly. One clock for all:
    `now` only moves forward."""

    def __init__(self, seed, n=3, **options):
        self.rnd = random.Random(seed)
        self.now = 0.0
        self.options = dict(max_payload_entries=3, max_inflight=2, **options)
        ids = list(range(1, n + 1))
        self.membership = members(set(ids))
        self.nodes = {i: h.Node(h.make_engine(i, rng=self.rnd.random, **self.options))
                      for i in ids}
        self.net = []                 # (kind, src, dst, payload...)
        self.held = []                # (node id, term, response msg) waiting for a flush
        self.leaders = {}             # term -> leader id
        self.applied = {}             # index -> entry applied there (by any node)
        self.writes = 0
        self.budget = 5000            # deliveries, so a livelock fails instead of hanging
        self.nodes[1].engine.initialize(self.membership)
        self.settle()

    # --- plumbing
    def settle(self, check=True):
        for node in self.nodes.values():
            node.run()
            for kind, dst, req in node.outbox:
                self.net.append((kind, node.id, dst, req))
            node.outbox = []
            self.release(node)
        if check:
            self.check()

    def release(self, node):
        keep = []
        for (nid, term, msg) in self.held:
            if nid != node.id:
                keep.append((nid, term, msg))
            elif node.engine.vote.term != term:
                # A newer term truncated meanwhile: the claimed match may no
                # longer hold, so the runtime answers a failure instead.
                self.net.append(msg[:4] + (AEResp(node.engine.vote.term, False, 0, 0, 0),))
            elif node.engine.flushed >= msg[4].matched:
                self.net.append(msg)
            else:
                keep.append((nid, term, msg))
        self.held = keep

    def deliver(self, msg):
        self.budget -= 1
        assert self.budget > 0, "the simulation exceeded its step budget (livelock?)"
        kind, src, dst = msg[0], msg[1], msg[2]
        e = self.nodes[dst].engine
        if kind == "vote":
            resp = e.handle_vote_request(msg[3], self.now)
            self.nodes[dst].run()                     # save_vote durable before answering
            self.net.append(("vote_resp", dst, src, msg[3], resp))
        elif kind == "vote_resp":
            e.handle_vote_response(src, msg[3], msg[4], self.now)
        elif kind == "append":
            resp = e.handle_append_entries(msg[3], self.now)
            self.nodes[dst].run()
            out = ("append_resp", dst, src, msg[3], resp)
            if resp.success and e.flushed < resp.matched:
                self.held.append((dst, resp.term, out))
            else:
                self.net.append(out)
        elif kind == "append_resp":
            e.handle_append_response(src, msg[3], msg[4], self.now)

    def restart(self, i):
        old = self.nodes[i]
        e = h.make_engine(i, rng=self.rnd.random, now=self.now, **self.options)
        # Everything the log store accepted survives (the store flushed it
        # before the crash); the vote is what save_vote made durable.
        e.restore(old.saved_vote, None, list(old.disk), 0, len(old.applied), None)
        # As the runtime does: a restarted node forgot when it last heard
        # from a leader, so it assumes it just did.
        e.refuse_votes_until(self.now + h.DEFAULTS["election_timeout_min"])
        node = h.Node(e, disk=old.disk, applied=old.applied)
        node.saved_vote = old.saved_vote
        self.nodes[i] = node
        # Answers it held back until a flush die with it: their senders' RPCs fail.
        for (nid, _, msg) in self.held:
            if nid == i:
                self.nodes[msg[2]].engine.handle_append_failure(i, msg[3], self.now)
        self.held = [x for x in self.held if x[0] != i]

    # --- invariants
    def check(self):
        leaders = [n.engine for n in self.nodes.values() if n.engine.state == LEADER]
        for node in self.nodes.values():
            e = node.engine
            if e.state == LEADER:
                other = self.leaders.setdefault(e.vote.term, node.id)
                assert other == node.id, f"two leaders in term {e.vote.term}: {other} and {node.id}"
                # Leader completeness: it holds every entry applied anywhere.
                for idx, ent in self.applied.items():
                    assert idx <= e.last_log_index and e.entries(idx, idx)[0] == ent, \
                        f"leader {node.id} of term {e.vote.term} lacks applied entry {ent}"
                # A valid lease means no newer leader can exist yet.
                if e.lease_valid(self.now):
                    newer = [x.id for x in leaders if x.vote.term > e.vote.term]
                    assert not newer, f"leader {node.id} holds a lease while {newer} lead a later term"
            for ent in node.applied:
                prev = self.applied.setdefault(ent.index, ent)
                assert prev == ent, f"state machine safety: {prev} and {ent} applied at {ent.index}"
        # Log matching: equal log ids imply equal prefixes.
        logs = {i: n.engine.entries(1, n.engine.last_log_index) for i, n in self.nodes.items()}
        ids = sorted(logs)
        for a in ids:
            for b in ids:
                if a >= b:
                    continue
                la, lb = logs[a], logs[b]
                common = min(len(la), len(lb))
                last_equal = max((k for k in range(common) if la[k].term == lb[k].term), default=-1)
                assert la[:last_equal + 1] == lb[:last_equal + 1], f"log matching broken: {a} vs {b}"

    def leader(self):
        for node in self.nodes.values():
            if node.engine.state == LEADER:
                return node
        return None

    # --- one random step
    def step(self):
        r = self.rnd.random()
        if r < 0.45 and self.net:
            msg = self.net.pop(self.rnd.randrange(len(self.net)))
            if self.rnd.random() < 0.05:
                self.net.append(msg)                   # duplicated
            self.deliver(msg)
        elif r < 0.55 and self.net:
            msg = self.net.pop(self.rnd.randrange(len(self.net)))
            # A lost request or a lost answer look the same to the sender: its
            # RPC fails (times out), and the runtime reports that.
            if msg[0] == "append":
                self.nodes[msg[1]].engine.handle_append_failure(msg[2], msg[3], self.now)
            elif msg[0] == "append_resp":
                self.nodes[msg[2]].engine.handle_append_failure(msg[1], msg[3], self.now)
        elif r < 0.75:
            pending = [n for n in self.nodes.values() if n.pending_flush]
            if pending:
                self.rnd.choice(pending).flush_one()
        elif r < 0.85:
            node = self.leader()
            if node is not None:
                self.writes += 1
                node.engine.client_write([f"w{self.writes}".encode()], self.now)
        elif r < 0.99:
            node = self.rnd.choice(list(self.nodes.values()))
            self.now = max(self.now, min(node.engine.next_deadline(), self.now + 0.3))
            node.engine.tick(self.now)
        else:
            node_id = self.rnd.choice(list(self.nodes))
            if not self.first_leader_alone(node_id):
                self.restart(node_id)
        self.settle()

    def first_leader_alone(self, node_id):
        """Whether `node_id` is the initializer (node 1) holding on disk
        entries past its first while no other node holds any. Restarted
        then, it could never be elected again: the others' logs are empty,
        and they vote only in the first elections
        (engine_identity.may_vote_on_empty_log), a stall by design that
        test_identity_engine covers; this test does not restart it then."""
        return node_id == 1 and len(self.nodes[1].disk) > 1 and not any(
            n.disk for i, n in self.nodes.items() if i != 1)

    def quiesce(self):
        """No more faults: deliver everything, flush everything, let time run."""
        for _ in range(300):
            while self.net or any(n.pending_flush for n in self.nodes.values()):
                for node in self.nodes.values():
                    node.flush()
                self.settle(check=False)
                while self.net:
                    self.deliver(self.net.pop(0))
                    self.settle(check=False)
                self.check()
            leader = self.leader()
            if leader is not None:
                last = leader.engine.last_log_index
                if all(len(n.applied) == last for n in self.nodes.values()):
                    return leader
            # Time runs to the next deadline of any node: heartbeats or elections.
            node = min(self.nodes.values(), key=lambda n: n.engine.next_deadline())
            self.now = max(self.now, node.engine.next_deadline())
            for n in self.nodes.values():
                n.engine.tick(self.now)
            self.settle()
        raise AssertionError("the cluster did not converge: " + repr(
            {i: (n.engine.state, n.engine.vote, n.engine.last_log_index, n.engine.committed,
                 len(n.applied)) for i, n in self.nodes.items()}))


SIM_CASES = [(seed, 3 if seed % 2 else 5, dict(check_quorum=seed % 3 == 1, pre_vote=seed % 4 >= 2))
             for seed in range(16)]


@isolated
@pytest.mark.parametrize("seed, n, options", SIM_CASES,
                         ids=[f"seed{s}-{n}nodes-" + "-".join(k for k, v in o.items() if v)
                              for s, n, o in SIM_CASES])
def test_random_delays_drops_duplicates_and_restarts_keep_raft_safety_and_then_converge(
        seed, n, options):
    # Figure 3's guarantees (election safety, log matching, leader
    # completeness, state machine safety) and lease exclusivity hold after
    # every step; once faults stop, every node applies the whole log.
    sim = Sim(seed, n=n, **options)
    for _ in range(1500):
        sim.step()
    leader = sim.quiesce()
    logs = [x.engine.entries(1, x.engine.last_log_index) for x in sim.nodes.values()]
    assert all(lg == logs[0] for lg in logs)
    assert all(x.applied == logs[0] for x in sim.nodes.values())
    assert leader.engine.committed == leader.engine.last_log_index
    assert sim.writes > 0 and len(sim.leaders) >= 1
