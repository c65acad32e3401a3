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
    # The application value, a Membership, or None (blank); read it through
    # the `payload` property, which decodes it again once released.
    cdef object _payload
    cdef readonly long long size      # payload bytes, for batch byte caps (0 if unknown)
    # The command's msgpack encoding, made once at the leader's door and then
    # written to the log and sent to followers as is (None: a bytes payload,
    # a blank or a membership entry, or an entry built without one).
    cdef readonly object encoded
    # _payload was dropped by release_payload (only ever with an encoding).
    cdef bint _released

    cpdef void release_payload(self)


cdef Entry make_entry(long long term, long long index, int kind, object payload)
cdef Entry make_encoded_entry(long long term, long long index, object payload, bytes encoded)
