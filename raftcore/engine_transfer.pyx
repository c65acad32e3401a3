"""The engine's leadership transfer: a leader hands over to a caught-up
voter (asked for, or because the committed membership removed it), and the
voter asked campaigns at once (Raft thesis, section 3.10).

Engine (engine.pyx) is one cdef class, and a cdef class is defined in one
module: its concerns are functions of the engine's state, one module each,
which its methods call (transfer_leader here is the body of
Engine.transfer_leader, whose docstring says what it does).
"""
from raftcore.engine cimport Engine, S_LEADER
from raftcore.progress cimport Progress
from raftcore.messages cimport TransferLeaderRequest
from raftcore.commands cimport new_send_transfer
from raftcore cimport engine_election as election

from raftcore.errors import ForwardToLeader, NotAllowed


cdef object transfer_leader(Engine e, target, double now):
    e.now = now
    if e.state != S_LEADER:
        raise ForwardToLeader(e.leader_id, e._node_of(e.leader_id))
    if target == e.id:
        return
    if not e.membership.is_voter(target):
        raise NotAllowed(f"node {target} is not a voter of {e.membership!r}; "
                         "leadership can only go to a voter")
    e.transfer_to = target
    e.transfer_deadline = now + e.election_max
    maybe_send_transfer(e)


cdef object handle_transfer_leader(Engine e, TransferLeaderRequest req, double now):
    e.now = now
    if req.term != e.vote.term or req.leader_id != e.leader_id:
        return
    if not e._can_campaign() or e.log.last_index() < req.last_log_index \
            or e.storage_full:
        return
    election.start_election(e, True)


cdef void maybe_send_transfer(Engine e):
    cdef Progress p = e.progress.get(e.transfer_to)
    if p is None or p.matched < e.log.last_index():
        return
    e.lease_forfeited = True
    e.output.append(new_send_transfer(e.transfer_to, TransferLeaderRequest(
        e.vote.term, e.id, e.log.last_index(), e.cluster_id)))


cdef void step_down_removed(Engine e):
    """The committed membership no longer has this leader as a voter:
    hand leadership to the most up-to-date voter and step down."""
    cdef Progress p, best = None
    for p in e.progress.values():
        if e.membership.is_voter(p.node_id) and (best is None or p.matched > best.matched):
            best = p
    if best is not None and best.matched >= e.log.last_index():
        e.output.append(new_send_transfer(best.node_id, TransferLeaderRequest(
            e.vote.term, e.id, e.log.last_index(), e.cluster_id)))
    e._become_follower(e.vote, None)
