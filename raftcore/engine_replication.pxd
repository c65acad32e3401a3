"""Declarations of engine_replication.pyx, called by the engine."""
from raftcore.engine cimport Engine
from raftcore.quorum cimport QuorumTracker
from raftcore.progress cimport Progress
from raftcore.messages cimport AppendEntriesRequest, AppendEntriesResponse

cdef AppendEntriesResponse handle_append_entries(Engine e, AppendEntriesRequest req, double now)
cdef object handle_append_response(Engine e, target, AppendEntriesRequest req,
                                   AppendEntriesResponse resp, double now)
cdef void rebuild_replication(Engine e)
cdef QuorumTracker carried_seq_quorum(Engine e)
cdef void recount_commit_quorum(Engine e)
cdef bint first_entries_held(Engine e)
cdef void replicate_all(Engine e)
cdef void send_while_open(Engine e, Progress p)
cdef void send_entries(Engine e, Progress p)
cdef long long batch_end(Engine e, long long first)
cdef long long broadcast_heartbeat(Engine e)
