"""The engine's elections: vote requests and answers, pre-vote, campaigning
and becoming leader (Raft paper, section 5.2; pre-vote: Ongaro's thesis,
section 9.6).

Engine (engine.pyx) is one cdef class, and a cdef class is defined in one
module: its concerns are functions of the engine's state, one module each,
and its event methods call them (handle_vote_request here is the body of
Engine.handle_vote_request, whose docstring says what it does).
"""
from raftcore.engine cimport Engine, S_CANDIDATE, S_LEADER
from raftcore.types cimport Vote, make_entry, BLANK
from raftcore.messages cimport VoteRequest, VoteResponse
from raftcore.commands cimport new_send_vote
from raftcore cimport engine_reads as reads
from raftcore cimport engine_replication as replication
from raftcore cimport engine_identity as identity


cdef object handle_vote_request(Engine e, VoteRequest req, double now):
    e.now = now
    cdef bint granted = False
    if identity.self_stale(e):
        # This node may have forgotten a vote it cast in req.term.
        return VoteResponse(e.vote.term, False, e.id, e.incarnation)
    if e.log.is_empty() and not identity.may_vote_on_empty_log(e, req):
        # Nor does it adopt the term (nothing it saves changes what it may do).
        return VoteResponse(e.vote.term, False, e.id, e.incarnation)
    if req.term < e.vote.term or e.storage_full:
        # storage_full: a vote counts only once saved, and it cannot be;
        # not even the term is adopted (saving it would fail too).
        return VoteResponse(e.vote.term, False, e.id, e.incarnation)
    if not req.transfer and req.candidate_id != e.leader_id and (
            now < e.vote_refuse_until
            or (e.state == S_LEADER and reads.lease_valid(e, now))):
        # A leader may be counting on this node for its lease: refuse,
        # and do not even adopt the higher term (so a removed or
        # partitioned node cannot depose a healthy leader).
        return VoteResponse(e.vote.term, False, e.id, e.incarnation)
    cdef long long my_last_term = e.log.last_term()
    cdef bint up_to_date = (req.last_log_term > my_last_term or (
        req.last_log_term == my_last_term and req.last_log_index >= e.log.last_index()))
    if req.pre_vote:
        # Would we vote in req.term? Answer without changing anything.
        return VoteResponse(e.vote.term, req.term > e.vote.term and up_to_date, e.id,
                            e.incarnation)
    if req.term > e.vote.term:
        e._become_follower(Vote(req.term, None, False), None)
    if e._free_to_vote(req.candidate_id) and up_to_date and e.state != S_LEADER:
        granted = True
        e._set_vote(Vote(req.term, req.candidate_id, False))
        e._reset_election_deadline()
    return VoteResponse(e.vote.term, granted, e.id, e.incarnation)


cdef object handle_vote_response(Engine e, target, VoteRequest req, VoteResponse resp, double now):
    e.now = now
    if resp.term > e.vote.term and not (req.pre_vote and resp.granted):
        e._become_follower(Vote(resp.term, None, False), None)
        return
    pinned = identity.recorded_incarnations(e).get(target)
    if pinned is not None and pinned != resp.incarnation:
        return      # the voter's storage was replaced: it may have voted in this term
    if req.pre_vote:
        if not e.prevoting or req.term != e.vote.term + 1 or not resp.granted:
            return
        e.pre_granted.add(target)
        if e.membership.is_quorum(e.pre_granted):
            start_election(e, False)
        return
    if e.state != S_CANDIDATE or req.term != e.vote.term or not resp.granted:
        return
    e.granted.add(target)
    if e.membership.is_quorum(e.granted):
        become_leader(e)


cdef void campaign(Engine e):
    """Election timeout: a pre-vote round first if enabled, else an election."""
    if not e.pre_vote:
        start_election(e, False)
        return
    e._reset_election_deadline()
    e.prevoting = True
    e.pre_granted = {e.id}
    if e.membership.is_quorum(e.pre_granted):
        start_election(e, False)
        return
    cdef VoteRequest req = VoteRequest(e.vote.term + 1, e.id, e.log.last_term(),
                                       e.log.last_index(), True, False, e.cluster_id,
                                       identity.fresh_voters(e))
    for target in sorted(e.membership.voter_ids):
        if target != e.id:
            e.output.append(new_send_vote(target, req))


cdef void start_election(Engine e, bint transfer):
    e._set_vote(Vote(e.vote.term + 1, e.id, False))
    e.state = S_CANDIDATE
    e.leader_id = None
    e._clear_leader_state()
    e.granted = {e.id}
    e._reset_election_deadline()
    if e.membership.is_quorum(e.granted):
        become_leader(e)
        return
    cdef VoteRequest req = VoteRequest(e.vote.term, e.id, e.log.last_term(),
                                       e.log.last_index(), False, transfer, e.cluster_id,
                                       identity.fresh_voters(e))
    for target in sorted(e.membership.voter_ids):
        if target != e.id:
            e.output.append(new_send_vote(target, req))


cdef void become_leader(Engine e):
    e._set_vote(Vote(e.vote.term, e.id, True))
    e.state = S_LEADER
    e.leader_id = e.id
    e.granted = set()
    e.leader_since = e.now
    e.lease_forfeited = False
    replication.rebuild_replication(e)
    # A blank entry of the new term lets the leader commit (and learn the
    # commit point of) everything before it (Raft paper, section 8).
    e.term_start_index = e.log.last_index() + 1
    e._append_local([make_entry(e.vote.term, e.term_start_index, BLANK, None)])
    replication.broadcast_heartbeat(e)
