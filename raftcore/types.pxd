# Core value types shared by every engine module.

cdef enum EntryKind:
    BLANK = 0
    NORMAL = 1
    MEMBERSHIP = 2


cdef class LogId:
    cdef readonly long long term
    cdef readonly long long index


cdef class Vote:
    cdef readonly long long term
    cdef readonly object node_id      # None: no vote cast in this term
    cdef readonly bint committed      # True once a quorum granted it (a leader's vote)


cdef class Entry:
    cdef readonly long long term
    cdef readonly long long index
    cdef readonly int kind
    cdef readonly object payload      # application value, a Membership, or None (blank)
    cdef readonly long long size      # payload bytes, for batch byte caps (0 if unknown)


cdef Entry make_entry(long long term, long long index, int kind, object payload)
