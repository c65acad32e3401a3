"""Declarations of engine_reads.pyx, called by the engine."""
from raftcore.engine cimport Engine

cdef object read_index(Engine e, double now)
cdef object lease_read(Engine e, double now)
cdef long long read_point(Engine e)
cdef double quorum_contact_time(Engine e)
cdef bint lease_valid(Engine e, double now)
cdef bint quorum_silent(Engine e, double now)
