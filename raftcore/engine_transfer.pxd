"""Declarations of engine_transfer.pyx, called by the engine."""
from raftcore.engine cimport Engine
from raftcore.messages cimport TransferLeaderRequest

cdef object transfer_leader(Engine e, target, double now)
cdef object handle_transfer_leader(Engine e, TransferLeaderRequest req, double now)
cdef void maybe_send_transfer(Engine e)
cdef void step_down_removed(Engine e)
