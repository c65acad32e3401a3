"""Engine rules for node identity: storage incarnations recorded in the
membership, and what a node whose storage was wiped or replaced may not do.

Driven synchronously, without an event loop (see engine_harness.py); each
test runs in a forked child (`isolated`).
"""
import pytest

import engine_harness as h     # tests/engine_harness.py, on the path through conftest.py

from raftcore.codec import decode_message, encode_message
from raftcore.commands import Append, SendAppend, SendVote
from raftcore.errors import CodecError, NotAllowed
from raftcore.engine import CANDIDATE, LEADER
from raftcore.membership import Membership
from raftcore.messages import VoteRequest, VoteResponse
from raftcore.model import Node
from raftcore.types import ENTRY_MEMBERSHIP, ENTRY_NORMAL, Entry, Vote

isolated = h.isolated
flush_all = h.flush_all


def pinned(incarnations, voters=None):
    """A membership whose node records hold the given incarnations (None: not recorded)."""
    return Membership([set(voters or incarnations)],
                      {i: Node(f"n{i}", incarnation=inc) for i, inc in incarnations.items()})


def node(node_id, membership, incarnation, **config):
    """An engine whose log holds the membership entry (1, 1), committed."""
    e = h.make_engine(node_id, **config)
    e.restore(Vote(1, None), None, [Entry(1, 1, ENTRY_MEMBERSHIP, membership)], 1, 1)
    assert e.take_commands() == []
    e.incarnation = incarnation
    return e


def elect(candidate, voters, now=0.0):
    """Campaigns and feeds granted votes from `voters` ({id: incarnation the
    voter answers with}); returns the commands emitted."""
    candidate.trigger_elect(now)
    cmds = candidate.take_commands()
    req = next(c.request for c in cmds if isinstance(c, SendVote))
    for voter, inc in voters.items():
        candidate.handle_vote_response(voter, req, VoteResponse(req.term, True, voter, inc), now)
        cmds += candidate.take_commands()
    flush_all(candidate)
    return cmds + candidate.take_commands()


def pump(engines, cmds_by_node, down=(), now=0.0, limit=300):
    """Delivers every SendAppend (and its answer) until none is left, each
    node flushing what it appends at once. Returns the number of requests
    delivered; more than `limit` means the exchange never settles."""
    queue = [(src, c) for src, cmds in cmds_by_node.items() for c in cmds]
    delivered = 0
    while queue:
        src, c = queue.pop(0)
        if not isinstance(c, SendAppend):
            continue
        if src in down or c.target in down:
            engines[src].handle_append_failure(c.target, c.request, now)     # the runtime's report
            queue += [(src, x) for x in engines[src].take_commands()]
            continue
        delivered += 1
        assert delivered <= limit, "replication never settles: requests keep flowing"
        sender, receiver = engines[src], engines[c.target]
        resp = receiver.handle_append_entries(c.request, now)
        flush_all(receiver)
        queue += [(c.target, x) for x in receiver.take_commands()]
        sender.handle_append_response(c.target, c.request, resp, now)
        flush_all(sender)
        queue += [(src, x) for x in sender.take_commands()]
    return delivered


def heartbeat(leader, engines, down=()):
    leader.tick(leader.heartbeat_deadline)
    cmds = leader.take_commands()
    pump(engines, {leader.id: cmds}, down)
    return cmds


def recorded(engine):
    return {i: n.incarnation for i, n in engine.membership.nodes.items()}


@isolated
def test_leader_records_the_incarnation_each_member_answered_with_in_the_membership():
    m = pinned({1: "inc-1", 2: None, 3: None})
    es = {i: node(i, m, f"inc-{i}") for i in (1, 2, 3)}
    leader = es[1]
    pump(es, {1: elect(leader, {2: "inc-2", 3: "inc-3"}, now=0.0)}, down={3})
    assert leader.committed == 2 and recorded(leader)[2] is None
    # Node 3 is not heard from: the heartbeat records what is known.
    cmds = heartbeat(leader, es, down={3})
    appended = [e for c in cmds if isinstance(c, Append) for e in c.entries]
    assert len(appended) == 1 and appended[0].kind == ENTRY_MEMBERSHIP
    assert appended[0].payload.configs == m.configs
    assert leader.committed == 3
    assert recorded(leader) == {1: "inc-1", 2: "inc-2", 3: None}
    # Node 3 answers: its incarnation is recorded at once, in one more entry.
    heartbeat(leader, es)
    assert leader.committed == 4
    for e in es.values():
        assert recorded(e) == {1: "inc-1", 2: "inc-2", 3: "inc-3"}
    # Everything is recorded: later heartbeats append nothing.
    assert not [c for c in heartbeat(leader, es) if isinstance(c, Append)]


@isolated
def test_acknowledgements_from_a_member_answering_under_another_incarnation_do_not_count():
    m = pinned({1: "a", 2: "b", 3: "c"})
    es = {1: node(1, m, "a"), 2: node(2, m, "b"), 3: node(3, m, "c-replaced")}
    leader = es[1]
    pump(es, {1: elect(leader, {2: "b"})})
    assert leader.committed == 2
    assert leader.stale_members == {3}
    index = leader.client_write([b"x"], 0.0)
    flush_all(leader)
    pump(es, {1: leader.take_commands()}, down={2})
    assert es[3].last_log_index == index          # node 3 holds and acknowledged it ...
    assert leader.committed == index - 1          # ... but only node 2's ack commits it
    heartbeat(leader, es)
    assert leader.committed == index


@isolated
@pytest.mark.parametrize("pre_vote", [False, True])
def test_candidate_does_not_count_a_vote_from_a_voter_answering_under_another_incarnation(pre_vote):
    m = pinned({1: "a", 2: "b", 3: "c"})
    candidate = node(1, m, "a", pre_vote=pre_vote)
    candidate.tick(candidate.election_deadline)
    req = next(c.request for c in candidate.take_commands() if isinstance(c, SendVote))
    assert req.pre_vote == pre_vote
    candidate.handle_vote_response(2, req, VoteResponse(req.term, True, 2, "b-wiped"), 0.0)
    assert not h.sends(candidate.take_commands(), SendVote)
    assert candidate.state != LEADER and (pre_vote or candidate.state == CANDIDATE)
    candidate.handle_vote_response(3, req, VoteResponse(req.term, True, 3, "c"), 0.0)
    if pre_vote:
        assert candidate.state == CANDIDATE     # the real election started
    else:
        assert candidate.state == LEADER


@isolated
def test_node_whose_storage_the_membership_does_not_record_never_votes_or_campaigns():
    m = pinned({1: "a", 2: "b", 3: "c"})
    e = node(3, m, "c-wiped")
    assert e.identity_stale
    e.tick(e.election_deadline)
    assert e.take_commands() == []
    resp = e.handle_vote_request(VoteRequest(5, 1, 1, 1), 0.0)
    assert not resp.granted and resp.incarnation == "c-wiped"
    assert e.take_commands() == [] and e.vote == Vote(1, None)
    with pytest.raises(NotAllowed, match="wiped or replaced"):
        e.trigger_elect(0.0)
    # Removed and added back: the new record is not pinned yet, the node may vote.
    readded = pinned({1: "a", 2: "b", 3: None})
    e.restore(Vote(1, None), None, [Entry(1, 1, ENTRY_MEMBERSHIP, readded)], 1, 1)
    assert not e.identity_stale
    assert e.handle_vote_request(VoteRequest(5, 1, 1, 1), 0.0).granted


@isolated
def test_leader_replicates_from_scratch_to_a_member_restarted_on_empty_storage_and_reports_it():
    m = pinned({1: "a", 2: "b", 3: "c"})
    es = {i: node(i, m, inc) for i, inc in ((1, "a"), (2, "b"), (3, "c"))}
    leader = es[1]
    pump(es, {1: elect(leader, {2: "b", 3: "c"})})
    leader.client_write([b"x", b"y"], 0.0)
    flush_all(leader)
    pump(es, {1: leader.take_commands()})
    assert es[3].last_log_index == leader.last_log_index == leader.committed == 4
    # Node 3 loses its disk and restarts under its old id: a new incarnation.
    es[3] = h.make_engine(3)
    es[3].incarnation = "c-new"
    heartbeat(leader, es)       # pump's limit fails the test if the leader livelocks
    assert es[3].last_log_index == leader.last_log_index
    assert es[3].identity_stale and recorded(es[3])[3] == "c"
    assert leader.stale_members == {3}
    # Its acks do not count: with node 2 down nothing commits.
    index = leader.client_write([b"z"], 0.0)
    flush_all(leader)
    pump(es, {1: leader.take_commands()}, down={2})
    assert es[3].last_log_index == index and leader.committed < index
    heartbeat(leader, es)
    assert leader.committed == index

    # Removed, then added back: its new incarnation is recorded and counts.
    leader.change_membership(pinned({1: "a", 2: "b"}), 0.0)
    flush_all(leader)
    pump(es, {1: leader.take_commands()})
    leader.change_membership(Membership([{1, 2}], {**leader.membership.nodes, 3: Node("n3")}),
                             0.0)
    flush_all(leader)
    pump(es, {1: leader.take_commands()})
    heartbeat(leader, es)       # node 3 answers ...
    heartbeat(leader, es)       # ... and the next heartbeat records its incarnation
    assert recorded(leader)[3] == "c-new"
    leader.change_membership(Membership([{1, 2, 3}], leader.membership.nodes), 0.0)
    flush_all(leader)
    pump(es, {1: leader.take_commands()})
    assert leader.stale_members == set() and not es[3].identity_stale
    index = leader.client_write([b"w"], 0.0)
    flush_all(leader)
    pump(es, {1: leader.take_commands()}, down={2})
    assert leader.committed == index


@isolated
def test_leader_that_finds_a_member_on_new_storage_keeps_its_quorum_contact():
    # check_quorum: a leader steps down once no quorum answered for an
    # election timeout. Finding that node 3 came back on new storage must not
    # make it forget that node 2 answered a moment ago.
    m = pinned({1: "a", 2: "b", 3: "c"})
    es = {i: node(i, m, inc, check_quorum=True) for i, inc in ((1, "a"), (2, "b"), (3, "c"))}
    leader = es[1]
    pump(es, {1: elect(leader, {2: "b", 3: "c"})})
    for _ in range(8):          # leading for four seconds, twice election_timeout_max
        heartbeat(leader, es)
    es[3] = h.make_engine(3)
    es[3].incarnation = "c-new"
    heartbeat(leader, es, down={2})     # node 2 misses one round; node 3 answers it
    assert leader.stale_members == {3}
    heartbeat(leader, es)
    assert leader.state == LEADER


@isolated
def test_recording_incarnations_keeps_the_heartbeat_rounds_the_voters_answered():
    # Lease reads and check_quorum count on the rounds a quorum answered; an
    # entry that only records incarnations keeps the voters, and those counts.
    m = pinned({1: "a", 2: None, 3: None})
    es = {i: node(i, m, inc) for i, inc in ((1, "a"), (2, "b"), (3, "c"))}
    leader = es[1]
    pump(es, {1: elect(leader, {2: "b", 3: "c"})}, down={3})
    confirmed = leader.confirmed_seq
    assert confirmed > 0
    leader.tick(leader.heartbeat_deadline)      # records node 2's incarnation
    appended = [e for c in leader.take_commands() if isinstance(c, Append) for e in c.entries]
    assert [e.kind for e in appended] == [ENTRY_MEMBERSHIP]
    assert recorded(leader)[2] == "b"
    assert leader.confirmed_seq == confirmed


@isolated
def test_rounds_answered_under_an_incarnation_the_new_membership_does_not_record_stop_counting():
    # Node 3 answered as "c"; a membership entry recording "x" for it makes
    # those answers ones from other storage: with node 2 silent, the leader
    # holds no lease until node 3 answers as "x".
    m = pinned({1: "a", 2: None, 3: None})
    es = {i: node(i, m, inc) for i, inc in ((1, "a"), (2, "b"), (3, "c"))}
    leader = es[1]
    pump(es, {1: elect(leader, {3: "c"})}, down={2})
    assert leader.lease_valid(0.1)
    nodes = {**leader.membership.nodes, 3: Node("n3", incarnation="x")}
    leader.change_membership(Membership(m.configs, nodes), 0.1)
    assert recorded(leader)[3] == "x"
    assert not leader.lease_valid(0.1)



def vote_request(candidate, pre_vote=False):
    """The vote (or pre-vote) request `candidate` sends when its election timeout passes."""
    candidate.tick(candidate.election_deadline)
    req = next(c.request for c in candidate.take_commands() if isinstance(c, SendVote))
    assert req.pre_vote == pre_vote
    return req


def restarted(e, **config):
    """`e` restarted on its storage: its vote and its (flushed) log."""
    r = h.make_engine(e.id, **config)
    r.restore(e.vote, None, e.entries(1, e.last_log_index), e.committed, e.committed)
    assert r.take_commands() == []
    r.incarnation = e.incarnation
    return r


def wiped(node_id, incarnation):
    """A member restarted on empty storage under its old id."""
    e = h.make_engine(node_id)
    e.incarnation = incarnation
    return e


@isolated
@pytest.mark.parametrize("pre_vote", [False, True])
def test_member_wiped_after_its_record_was_committed_cannot_elect_a_candidate_lacking_it(
        pre_vote):
    # Simulator seed 17808671: node 3 never got past the first entry; node 1
    # led, recorded node 2's incarnation and committed entries on {1, 2};
    # node 2 lost its disk, so the record is on node 1 alone. Node 3 lacks
    # it: without another rule node 2 grants, node 3 counts the vote and
    # leads without the committed entries.
    m = pinned({1: "a", 2: None, 3: None})
    es = {i: node(i, m, "abc"[i - 1], pre_vote=pre_vote) for i in (1, 2, 3)}
    leader = es[1]
    pump(es, {1: elect(leader, {2: "b"})}, down={3})
    heartbeat(leader, es, down={3})         # records node 2's incarnation
    index = leader.client_write([b"x"], 0.0)
    flush_all(leader)
    pump(es, {1: leader.take_commands()}, down={3})
    assert leader.committed == index and recorded(es[2])[2] == "b"
    assert es[3].last_log_index == 1

    es[2] = wiped(2, "b-new")
    req = vote_request(es[3], pre_vote)
    assert not req.fresh                    # node 3 did not initialize the cluster
    resp = es[2].handle_vote_request(req, 0.0)
    assert not resp.granted and resp.incarnation == "b-new"
    # It saved nothing, not even the term: its storage still looks lost.
    assert es[2].take_commands() == [] and es[2].vote == Vote(0, None)
    es[3].handle_vote_response(2, req, resp, 0.0)
    assert es[3].state != LEADER and not h.sends(es[3].take_commands(), SendVote)

    # The leader restarts and is elected with node 3's vote; its entries
    # tell node 2 that it was replaced: it votes no more.
    leader = es[1] = restarted(leader, pre_vote=pre_vote)
    req = vote_request(leader, pre_vote)
    assert not es[2].handle_vote_request(req, 0.0).granted
    assert es[3].handle_vote_request(req, 0.0).granted
    assert not es[2].identity_stale
    if not pre_vote:
        leader.handle_vote_response(3, req, VoteResponse(req.term, True, 3, "c"), 0.0)
        flush_all(leader)
        assert leader.state == LEADER
        pump(es, {1: leader.take_commands()})
        assert es[2].identity_stale and leader.stale_members == {2}


@isolated
@pytest.mark.parametrize("pre_vote", [False, True])
def test_node_on_empty_storage_votes_only_in_the_clusters_first_elections(pre_vote):
    m = pinned({1: "a", 2: None, 3: None})
    # The initializing node, whose log is its first entry alone: no leader
    # was ever elected. Its requests say so, and empty storage grants them.
    first = node(1, m, "a", pre_vote=pre_vote)
    req = vote_request(first, pre_vote)
    assert req.fresh == {2, 3}
    assert wiped(2, "b").handle_vote_request(req, 0.0).granted
    # Any other node's first entry came from a leader, which may have
    # recorded the voter in entries this node lacks.
    req = vote_request(node(3, m, "c", pre_vote=pre_vote), pre_vote)
    assert not req.fresh
    assert not wiped(2, "b").handle_vote_request(req, 0.0).granted
    # The initializing node once a leader wrote to its log: the same.
    led = node(1, m, "a", pre_vote=pre_vote)
    led.restore(Vote(1, 1, True), None,
                [Entry(1, 1, ENTRY_MEMBERSHIP, m), Entry(1, 2, ENTRY_NORMAL, b"")], 1, 1)
    req = vote_request(led, pre_vote)
    assert not req.fresh
    assert not wiped(2, "b").handle_vote_request(req, 0.0).granted
    # Nor one that voted for this candidate since its storage was made:
    # a request of the candidate's first election, delayed in the network,
    # may have planted that vote after it lost its disk (finding H1,
    # test_a_late_first_election_request_...).
    voted = wiped(2, "b")
    voted.restore(Vote(1, 1), None, [], 0, 0)
    assert not voted.handle_vote_request(req, 0.0).granted
    assert voted.take_commands() == [] and voted.vote == Vote(1, 1)
    # Nor one that heard from a leader, without its entries yet: it may
    # still be a wiped member the candidate lacks the record of.
    followed = wiped(2, "b")
    followed.restore(Vote(1, 1, True), None, [], 0, 0)
    req = vote_request(node(3, m, "c", pre_vote=pre_vote), pre_vote)
    assert not followed.handle_vote_request(req, 0.0).granted
    assert followed.take_commands() == [] and followed.vote == Vote(1, 1, True)
    # Nothing records incarnations: the initializing node cannot be told
    # from the others, and any node whose log is the first entry alone asks
    # as in a first election.
    bare = pinned({1: None, 2: None, 3: None})
    assert vote_request(node(3, bare, None, pre_vote=pre_vote), pre_vote).fresh == {1, 2}
    # A node that keeps one is not the initializer of such a cluster.
    assert not vote_request(node(3, bare, "c", pre_vote=pre_vote), pre_vote).fresh


@isolated
def test_first_leader_sends_no_entry_before_its_own_is_durable():
    # A leader counts its own flush like a follower's ack, so followers may
    # commit its entries before its store flushed them, and a crash loses
    # them. Elected on the first entry alone, it would then look like an
    # untouched initializer again, and a wiped voter would elect it without
    # what the others committed (review of VoteRequest.fresh).
    m = pinned({1: "a", 2: None, 3: None})
    leader = node(1, m, "a")
    leader.tick(leader.election_deadline)
    req = next(c.request for c in leader.take_commands() if isinstance(c, SendVote))
    assert req.fresh == {2, 3}
    leader.handle_vote_response(2, req, VoteResponse(req.term, True, 2, "b"), 0.0)
    assert leader.state == LEADER
    cmds = leader.take_commands()
    assert [c.entries for c in cmds if isinstance(c, Append)] != []
    held = [c.request for c in cmds if isinstance(c, SendAppend)]
    assert held and all(r.entries == [] for r in held)
    leader.tick(leader.heartbeat_deadline)
    assert all(c.request.entries == [] for c in leader.take_commands()
               if isinstance(c, SendAppend))
    flush_all(leader)           # its blank entry is durable: now it sends
    sent = h.sends(leader.take_commands())
    assert sorted(sent) == [2, 3]
    assert all(r.entries and r.entries[-1].index == 2 for reqs in sent.values() for r in reqs)


def test_fresh_voters_cross_the_wire_and_only_then_add_an_item():
    first = VoteRequest(2, 1, 0, 1, True, False, "c", fresh={3, 2})
    later = VoteRequest(2, 3, 0, 1, True, False, "c")
    assert decode_message(encode_message(first)) == first
    assert decode_message(encode_message(later)) == later
    # Requests without fresh voters keep the eight items earlier releases read.
    assert len(encode_message(later)) == 8 and encode_message(first)[8] == [2, 3]
    with pytest.raises(CodecError, match="Vote.fresh must be a list"):
        decode_message(encode_message(later) + [True])
    with pytest.raises(CodecError, match="integer voter ids, got str"):
        decode_message(encode_message(later) + [["2"]])
    with pytest.raises(CodecError, match="8 or 9 items, got 10"):
        decode_message(encode_message(first) + [[4]])


@isolated
def test_first_leader_deposed_before_its_entry_was_durable_holds_again_when_reelected():
    # Third review, F1: re-elected in term 2, its blank entry of term 1
    # still not durable, it sent everything at once; followers committed
    # on their own acks, and a crash left it with its first entry alone.
    m = pinned({1: "a", 2: None, 3: None})
    leader = node(1, m, "a")
    req = vote_request(leader)
    leader.handle_vote_response(2, req, VoteResponse(req.term, True, 2, "b"), 0.0)
    assert leader.state == LEADER
    leader.take_commands()                  # its blank entry: appended, not flushed
    leader.handle_vote_response(3, req, VoteResponse(req.term + 1, False, 3, "c"), 0.0)
    assert leader.state != LEADER
    leader.take_commands()
    req = vote_request(leader)
    leader.handle_vote_response(2, req, VoteResponse(req.term, True, 2, "b"), 0.0)
    assert leader.state == LEADER and leader.last_log_index == 3
    assert all(r.entries == [] for reqs in h.sends(leader.take_commands()).values()
               for r in reqs)
    flush_all(leader)
    sent = h.sends(leader.take_commands())
    assert sorted(sent) == [2, 3] and all(r.entries for reqs in sent.values() for r in reqs)


@isolated
@pytest.mark.parametrize("pre_vote", [False, True])
def test_voters_a_change_adds_do_not_grant_on_an_empty_log(pre_vote):
    # Second review, finding S1: node 3's log ends in the joint entry
    # ({1, 2, 3}, {1..5}); the final {1..5} and an entry E committed on
    # {1, 4, 5} and node 4 was wiped. Were 4 fresh (added by the change),
    # node 3 would win with {2, 3} and {2, 3, 4} and lose E: the old
    # majority is needed to commit the change, not to hold what follows it.
    joint = Membership([{1, 2, 3}, {1, 2, 3, 4, 5}],
                       {i: Node(f"n{i}", incarnation=inc) for i, inc in
                        ((1, "a"), (2, "b"), (3, "c"), (4, None), (5, None))})
    lagging = node(3, joint, "c", pre_vote=pre_vote)
    first = pinned({1: "a", 2: None, 3: None})
    lagging.restore(Vote(1, 1, True), None, [Entry(1, 1, ENTRY_MEMBERSHIP, first),
                                             Entry(1, 2, ENTRY_NORMAL, b""),
                                             Entry(1, 3, ENTRY_MEMBERSHIP, joint)], 3, 3)
    req = vote_request(lagging, pre_vote)
    assert not req.fresh
    assert not wiped(4, "d-new").handle_vote_request(req, 0.0).granted


@isolated
@pytest.mark.parametrize("max_payload_entries", [1, 64])
def test_the_first_entry_travels_only_with_the_second(max_payload_entries):
    # Second review, finding S2: a follower holding the first entry alone
    # could lead, write another entry 2 and truncate the initializer back
    # to its first entry alone: an untouched initializer again.
    m = pinned({1: "a", 2: None, 3: None})
    leader = node(1, m, "a", max_payload_entries=max_payload_entries, max_payload_bytes=1)
    cmds = elect(leader, {2: "b"})          # its blank entry is durable: it sends
    assert leader.state == LEADER
    req = h.sends(cmds)[2][-1]               # (the first: a heartbeat, sent while held)
    assert req.entries
    follower = wiped(2, "b")
    resp = follower.handle_append_entries(req, 0.0)     # empty: asks from index 1
    assert not resp.success and resp.conflict_index == 1
    leader.handle_append_response(2, req, resp, 0.0)
    again = h.sends(leader.take_commands())[2][0]
    assert [e.index for e in again.entries][:2] == [1, 2]


@isolated
def test_a_late_first_election_request_to_a_wiped_member_elects_nobody_lacking_entries():
    # Finding H1 (review of session 16). Node 1 initialized the cluster;
    # its first vote request to node 2 is held up in the network. It leads
    # with node 3; node 3 leads the next term and commits its entries with
    # node 2 while node 1 is away. Node 2 loses its disk, and then the late
    # request arrives: node 2 grants it (it is fresh and node 2's log is
    # empty; node 1 ignores the answer of a term long passed). Node 1,
    # lacking what nodes 2 and 3 committed, campaigns again: node 2 must
    # not grant it for having voted for it.
    m = pinned({1: "a", 2: None, 3: None})
    es = {1: node(1, m, "a"), 2: wiped(2, "b"), 3: wiped(3, "c")}
    first = es[1]
    first.trigger_elect(0.0)
    late = h.sends(first.take_commands(), SendVote)[2][0]
    assert late.fresh == {2, 3}
    first.handle_vote_response(3, late, es[3].handle_vote_request(late, 0.0), 0.0)
    flush_all(first)
    assert first.state == LEADER
    pump(es, {1: first.take_commands()}, down={2})
    assert es[3].last_log_index == 2

    second = es[3]
    req = vote_request(second)
    later = 10.0                            # node 1's lease is long over
    resp = first.handle_vote_request(req, later)
    assert resp.granted
    second.handle_vote_response(1, req, resp, later)
    flush_all(second)
    assert second.state == LEADER
    pump(es, {3: second.take_commands()}, down={1}, now=later)
    written = second.client_write([b"x"], later)
    flush_all(second)
    pump(es, {3: second.take_commands()}, down={1}, now=later)
    assert second.committed == written and es[2].last_log_index == written
    assert first.last_log_index < written

    es[2] = wiped(2, "b-new")
    assert es[2].handle_vote_request(late, later).granted
    assert es[2].vote == Vote(late.term, 1)
    first.take_commands()
    req = vote_request(first)
    assert not req.fresh
    assert not es[2].handle_vote_request(req, later).granted
    assert not second.handle_vote_request(req, later).granted   # it holds what node 1 lacks


@isolated
def test_the_first_leader_does_not_step_down_before_a_follower_has_its_entries():
    # Its followers' logs may all be empty, and their votes count only for
    # an untouched initializer, which it is no longer: stepping down for a
    # silent quorum (check_quorum) would leave no node that can be elected.
    m = pinned({1: "a", 2: None, 3: None})
    es = {1: node(1, m, "a", check_quorum=True), 2: wiped(2, "b"), 3: wiped(3, "c")}
    first = es[1]
    first.trigger_elect(0.0)
    req = h.sends(first.take_commands(), SendVote)[2][0]
    first.handle_vote_response(2, req, es[2].handle_vote_request(req, 0.0), 0.0)
    flush_all(first)
    assert first.state == LEADER and first.last_log_index == 2
    first.take_commands()                   # its entries are lost on the way
    silent = 100.0
    first.tick(silent)
    assert first.state == LEADER
    # Once a follower has them, a silent quorum deposes it as any leader.
    heartbeat(first, es, down={3})
    assert es[2].last_log_index == 2
    first.tick(2 * silent)
    assert first.state != LEADER
    # A later leader, whose followers have not answered in its term yet,
    # steps down too: they hold entries and can elect another.
    again = restarted(first, check_quorum=True)
    req = vote_request(again)
    again.handle_vote_response(2, req, es[2].handle_vote_request(req, 2 * silent), 2 * silent)
    flush_all(again)
    assert again.state == LEADER
    again.take_commands()
    again.tick(3 * silent)
    assert again.state != LEADER


@isolated
def test_a_learner_holding_the_first_leaders_entries_does_not_let_it_step_down():
    # A learner votes for nobody: with the entries on it alone, stepping
    # down would still leave no node that can be elected (review 17d, T1c).
    m = pinned({1: "a", 2: None, 3: None, 4: None}, voters={1, 2, 3})
    es = {1: node(1, m, "a", check_quorum=True), 2: wiped(2, "b"), 3: wiped(3, "c"),
          4: wiped(4, "d")}
    first = es[1]
    first.trigger_elect(0.0)
    req = h.sends(first.take_commands(), SendVote)[2][0]
    first.handle_vote_response(2, req, es[2].handle_vote_request(req, 0.0), 0.0)
    flush_all(first)
    assert first.state == LEADER
    pump(es, {1: first.take_commands()}, down={2, 3})
    assert es[4].last_log_index == 2 and first.replication()[4] == 2
    first.tick(100.0)
    assert first.state == LEADER
