"""Declarations of engine_election.pyx, called by the engine."""
from raftcore.engine cimport Engine
from raftcore.messages cimport VoteRequest, VoteResponse

cdef object handle_vote_request(Engine e, VoteRequest req, double now)
cdef object handle_vote_response(Engine e, target, VoteRequest req, VoteResponse resp, double now)
cdef void campaign(Engine e)
cdef void start_election(Engine e, bint transfer)
cdef void become_leader(Engine e)
