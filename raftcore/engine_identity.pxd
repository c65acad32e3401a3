"""The engine's identity rules (engine_identity.pyx), called by the engine."""
from raftcore.engine cimport Engine
from raftcore.membership cimport Membership
from raftcore.messages cimport VoteRequest, VoteResponse

cdef dict recorded_incarnations(Engine e)
cdef bint self_stale(Engine e)
cdef frozenset fresh_voters(Engine e)
cdef bint untouched_initializer(Engine e)
cdef bint elected(Engine e, set granted, set unproven)
cdef void note_grant(set unproven, target, VoteRequest req, VoteResponse resp)
cdef bint answer_counts(Engine e, target, incarnation)
cdef Membership with_incarnations(Engine e, Membership m)
cdef void maybe_pin(Engine e, bint all_known)
