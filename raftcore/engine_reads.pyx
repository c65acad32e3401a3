"""The engine's reads: ReadIndex (a heartbeat round a quorum answers) and the
leader lease (no round trip while a quorum answered recently enough), and
check_quorum's silence test, all from the heartbeat rounds' send times
(Raft thesis, section 6.4).

Engine (engine.pyx) is one cdef class, and a cdef class is defined in one
module: its concerns are functions of the engine's state, one module each,
which its methods call (read_index here is the body of Engine.read_index,
whose docstring says what it does).
"""
from raftcore.engine cimport Engine, SEQ_RING
from raftcore cimport engine_replication as replication


cdef object read_index(Engine e, double now):
    e.now = now
    e._check_proposable()
    cdef long long seq = replication.broadcast_heartbeat(e)
    return read_point(e), seq


cdef object lease_read(Engine e, double now):
    e.now = now
    e._check_proposable()
    if lease_valid(e, now):
        return read_point(e)
    return -1


cdef long long read_point(Engine e):
    # A new leader learns the true commit point only by committing an
    # entry of its term: until then its blank entry is the read point.
    if e.committed > e.term_start_index:
        return e.committed
    return e.term_start_index


cdef double quorum_contact_time(Engine e):
    """Send time of the latest round a quorum answered; -inf if unknown."""
    cdef long long acc
    if e.seq_quorum is None:
        return -1e300
    acc = e.seq_quorum.accepted
    if acc <= 0 or e.hb_seq - acc >= SEQ_RING:
        return -1e300
    return e.seq_times[acc % SEQ_RING]


cdef bint lease_valid(Engine e, double now):
    if e.transfer_to is not None or e.lease_forfeited:
        return False
    return now < quorum_contact_time(e) + e.lease_duration


cdef bint quorum_silent(Engine e, double now):
    cdef double t = quorum_contact_time(e)
    if t < e.leader_since:
        t = e.leader_since     # nothing answered yet: count from the start
    return now - t > e.election_max
