"""The engine's identity rules (engine_identity.pyx), called by the engine."""
from raftcore.engine cimport Engine
from raftcore.membership cimport Membership
from raftcore.messages cimport VoteRequest

cdef dict recorded_incarnations(Engine e)
cdef bint self_stale(Engine e)
cdef frozenset fresh_voters(Engine e)
cdef bint untouched_initializer(Engine e)
cdef bint may_vote_on_empty_log(Engine e, VoteRequest req)
cdef bint first_leader_unheard(Engine e)
cdef bint answer_counts(Engine e, target, incarnation)
cdef Membership with_incarnations(Engine e, Membership m)
cdef void maybe_pin(Engine e, bint all_known)
