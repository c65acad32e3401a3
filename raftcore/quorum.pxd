cdef struct VoterSlot:
    long long node_id
    long long value


cdef class QuorumTracker:
    cdef VoterSlot* slots      # per voter set, slots kept sorted by value, descending
    cdef int* offsets          # where each voter set starts in `slots`
    cdef int* sizes
    cdef int nconfigs
    cdef readonly long long accepted   # highest value held by a quorum of every set

    cdef bint update(self, long long node_id, long long value)
    cdef long long _recompute(self)
